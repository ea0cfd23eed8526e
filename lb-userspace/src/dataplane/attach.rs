//! Attaching to interfaces through pinned XDP links, and detaching the
//! ones the config dropped.
use std::{fs, path::PathBuf};

use aya::programs::{links::FdLink, links::PinnedLink};
use lb_common::maps;

use super::{pinned_link_ifindex, AttachMode, Dataplane, DataplaneError};

/// Where a configured interface stands with the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Its pinned link runs the program on it.
    Attached,
    /// Its pinned link lost it: the interface was deleted (and maybe
    /// created again, under a new index).
    Defunct,
    /// No pinned link: never attached, or `xdplb down` took it away.
    Unpinned,
}

impl Dataplane {
    fn link_path(&self, iface: &str) -> PathBuf {
        self.shape
            .pin_path
            .join(format!("{}{iface}", maps::LINK_PREFIX))
    }

    /// Where `iface` stands: its pinned link attached to it as it is now
    /// (same index), defunct, or not pinned at all.
    pub fn link_state(&self, iface: &str) -> LinkState {
        let path = self.link_path(iface);
        if !path.exists() {
            return LinkState::Unpinned;
        }
        let now = super::host::ifindex(iface).ok();
        match pinned_link_ifindex(&path) {
            Some(i) if i != 0 && Some(i) == now => LinkState::Attached,
            _ => LinkState::Defunct,
        }
    }

    /// Gives an interface whose link is defunct the program again (it was
    /// deleted and created again: a rebuilt VLAN or bond, a veth re-added):
    /// the dead link's pin goes, a new link is attached and pinned.
    /// Returns whether it attached: an interface still missing, or one
    /// with no pin (never ours, or taken away by `xdplb down`), is left
    /// alone.
    pub fn reattach(&mut self, iface: &str, mode: AttachMode) -> Result<bool, DataplaneError> {
        if self.link_state(iface) != LinkState::Defunct || super::host::ifindex(iface).is_err() {
            return Ok(false);
        }
        let path = self.link_path(iface);
        fs::remove_file(&path).map_err(|source| DataplaneError::PinPath {
            path: path.clone(),
            source,
        })?;
        self.attach(iface, mode)?;
        Ok(true)
    }

    /// The driver behind `iface` (ETHTOOL_GDRVINFO), e.g. "veth".
    pub fn driver(iface: &str) -> Option<String> {
        // struct ethtool_drvinfo: cmd, driver[32], version[32], ...
        let mut info = [0u8; 196];
        info[..4].copy_from_slice(&0x0000_0003u32.to_ne_bytes()); // ETHTOOL_GDRVINFO
                                                                  // SAFETY: ifreq is plain data; the ioctl writes into `info`, which
                                                                  // is as large as struct ethtool_drvinfo.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                return None;
            }
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, s) in ifr
                .ifr_name
                .iter_mut()
                .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
            {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_data = info.as_mut_ptr().cast();
            let rc = libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr);
            libc::close(fd);
            if rc != 0 {
                return None;
            }
        }
        let name = &info[4..36];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Some(String::from_utf8_lossy(&name[..end]).into_owned())
    }

    /// Attaches to `iface`: swaps this program into the pinned link if one
    /// exists (no gap, no lost flow), else attaches afresh and pins the
    /// link so it outlives this process.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), DataplaneError> {
        let path = self.link_path(iface);
        let attach_err = |source| DataplaneError::Attach {
            iface: iface.to_string(),
            source: Box::new(source),
        };
        if path.exists() {
            let link_err = |reason: String| DataplaneError::Link {
                path: path.clone(),
                reason,
            };
            let pinned = PinnedLink::from_pin(&path).map_err(|e| link_err(e.to_string()))?;
            let fd_link: FdLink = pinned.into();
            let link = aya::programs::xdp::XdpLink::try_from(fd_link)
                .map_err(|e| link_err(e.to_string()))?;
            self.program_mut()
                .attach_to_link(link)
                .map_err(attach_err)?;
            return Ok(());
        }
        let prog = self.program_mut();
        let id = prog.attach(iface, mode.xdp_mode()).map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let fd_link = FdLink::try_from(link).map_err(|e| DataplaneError::Link {
            path: path.clone(),
            reason: format!("XDP link is not a bpf_link (kernel too old?): {e}"),
        })?;
        fd_link.pin(&path).map_err(|e| DataplaneError::Link {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(())
    }

    /// Whether any interface's link is still pinned: the pin is a link's
    /// last reference, so no pin means no attachment (`xdplb down` removes
    /// them). An unreadable pin directory counts as detached.
    pub fn has_links(&self) -> bool {
        fs::read_dir(&self.shape.pin_path).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(maps::LINK_PREFIX)
            })
        })
    }

    /// Detaches the pinned links of interfaces not in `keep` (an interface
    /// dropped from the config since the data plane was pinned). Returns
    /// the interfaces detached.
    pub fn prune_links(&self, keep: &[String]) -> Result<Vec<String>, DataplaneError> {
        let dir = &self.shape.pin_path;
        let entries = fs::read_dir(dir).map_err(|source| DataplaneError::PinPath {
            path: dir.clone(),
            source,
        })?;
        let mut detached = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(iface) = name.strip_prefix(maps::LINK_PREFIX) else {
                continue;
            };
            if keep.iter().any(|k| k == iface) {
                continue;
            }
            // The pin is the link's last reference: removing it detaches.
            fs::remove_file(entry.path()).map_err(|source| DataplaneError::PinPath {
                path: entry.path(),
                source,
            })?;
            detached.push(iface.to_string());
        }
        detached.sort();
        Ok(detached)
    }
}
