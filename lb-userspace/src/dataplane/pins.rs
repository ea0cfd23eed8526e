//! The pins as files: opening a pinned map, telling xdplb's pins from
//! others, and `xdplb down`.
use std::{fs, path::Path};

use aya::maps::{Map, MapData, MapError};
use lb_common::maps;

use super::{map_err, DataplaneError, PROGRAM_OBJECT};

pub(crate) fn open_pinned<T>(pin_path: &Path, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = pin_path.join(name);
    if !path.exists() {
        return Err(DataplaneError::NotPinned {
            path: pin_path.to_path_buf(),
        });
    }
    let md = MapData::from_pin(&path).map_err(map_err(name))?;
    let map = Map::from_map_data(md).map_err(map_err(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// Map names xdplb pins: every map of the embedded program (so a map the
/// program gains is covered without a list to update), and the ones
/// lb-common names (for a binary built without the program).
fn own_map_names() -> std::collections::HashSet<String> {
    let mut names: std::collections::HashSet<String> = [
        maps::VIPS,
        maps::BACKENDS,
        maps::RINGS,
        maps::FLOWS,
        maps::REPLIES,
        maps::FIB_CACHE,
        maps::GLOBAL_STATS,
        maps::VIP_STATS,
        maps::BACKEND_STATS,
        maps::NAMES,
        maps::VERSION,
        maps::TAILS,
        maps::VIPS6,
        maps::BACKEND_ADDRS6,
        maps::REPLIES6,
        maps::FLOW_SEED,
        maps::ADDR_FILTER,
        maps::FIB_CACHE6,
        maps::LOCAL_ADDRS6,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(obj) = aya_obj::Object::parse(PROGRAM_OBJECT) {
        names.extend(obj.maps.keys().cloned());
    }
    names
}

/// True for a pin xdplb made: one of its maps, or an XDP link.
pub fn is_own_pin(name: &str) -> bool {
    name.starts_with(maps::LINK_PREFIX) || own_map_names().contains(name)
}

/// What `down` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Interfaces whose XDP link was removed (so detached).
    pub detached: Vec<String>,
    /// Entries under the pin path that xdplb did not make: left alone,
    /// and with them the pin directory.
    pub foreign: Vec<String>,
}

/// Detaches every pinned link under `pin_path` and removes xdplb's pins
/// (its maps and links, nothing else), then the directory if that leaves
/// it empty.
pub fn down(pin_path: &Path) -> Result<DownReport, DataplaneError> {
    let entries = match fs::read_dir(pin_path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataplaneError::NotPinned {
                path: pin_path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(DataplaneError::PinPath {
                path: pin_path.to_path_buf(),
                source,
            })
        }
    };
    let own = own_map_names();
    let mut report = DownReport::default();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let link = name.strip_prefix(maps::LINK_PREFIX);
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir || (link.is_none() && !own.contains(&name)) {
            report.foreign.push(name);
            continue;
        }
        if link.is_some() {
            // Removing the pin drops the link's last reference, but the
            // kernel releases it asynchronously: detach it first, so the
            // interface has no program by the time `down` returns.
            detach_pinned_link(&entry.path());
        }
        fs::remove_file(entry.path()).map_err(|source| DataplaneError::PinPath {
            path: entry.path(),
            source,
        })?;
        if let Some(iface) = link {
            report.detached.push(iface.to_string());
        }
    }
    if report.foreign.is_empty() {
        fs::remove_dir(pin_path).map_err(|source| DataplaneError::PinPath {
            path: pin_path.to_path_buf(),
            source,
        })?;
    }
    report.detached.sort();
    report.foreign.sort();
    Ok(report)
}

/// `union bpf_attr`, as large as the kernel's (unused tail zeroed), for
/// the three raw bpf(2) calls below: aya 0.14 neither detaches a pinned
/// link nor exposes an XDP link's ifindex.
#[repr(C)]
struct BpfAttr {
    words: [u64; 16],
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_TYPE_XDP: u32 = 6;

/// bpf(2) `cmd` with `attr`: its return value, or the error it set.
fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> std::io::Result<libc::c_long> {
    // SAFETY: bpf(2) with an attr of the kernel's size; whatever pointers
    // the caller put in it outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BpfAttr,
            std::mem::size_of::<BpfAttr>() as u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The BPF object pinned at `path` (BPF_OBJ_GET), as an fd of ours.
fn open_pinned_object(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    let mut attr = BpfAttr { words: [0; 16] };
    // BPF_OBJ_GET: pathname (u64 pointer), bpf_fd, file_flags.
    attr.words[0] = cpath.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: a new fd the kernel just gave us, owned by no one else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// The interface a pinned XDP link is attached to (`bpf_link_info`'s
/// `xdp.ifindex`, read with BPF_OBJ_GET_INFO_BY_FD): 0 once the link is
/// detached (its interface deleted, or BPF_LINK_DETACH); `None` when the
/// pin cannot be read or is no XDP link.
pub(crate) fn pinned_link_ifindex(path: &Path) -> Option<u32> {
    xdp_link_ifindex(path).ok()
}

/// BPF_LINK_DETACH on a pinned link (aya 0.14 only closes fds and hides
/// them). Best effort: a link that cannot be opened or detached is still
/// unpinned by the caller, and detaches a little later.
pub(crate) fn detach_pinned_link(path: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(fd) = open_pinned_object(path) else {
        return;
    };
    let mut attr = BpfAttr { words: [0; 16] };
    // BPF_LINK_DETACH: link_fd (u32, the first field).
    attr.words[0] = fd.as_raw_fd() as u64;
    let _ = bpf(BPF_LINK_DETACH, &mut attr);
}

/// Where the XDP link pinned at `path` is attached: the interface index
/// the kernel reports for it (`bpf_link_info.xdp.ifindex`), 0 once the
/// link is detached (its interface gone, or `BPF_LINK_DETACH`).
pub fn xdp_link_ifindex(path: &Path) -> Result<u32, String> {
    use std::os::fd::AsRawFd;
    /// `struct bpf_link_info`: type, id, prog_id, then a union (8-aligned)
    /// whose `xdp` member starts with the ifindex; the rest left zeroed.
    #[repr(C)]
    struct LinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        union: [u64; 8],
    }
    let fd = open_pinned_object(path).map_err(|e| e.to_string())?;
    let mut info = LinkInfo {
        link_type: 0,
        id: 0,
        prog_id: 0,
        _pad: 0,
        union: [0; 8],
    };
    let mut attr = BpfAttr { words: [0; 16] };
    // BPF_OBJ_GET_INFO_BY_FD: bpf_fd (u32), info_len (u32), info (u64);
    // the kernel writes at most info_len bytes into `info`.
    attr.words[0] = (fd.as_raw_fd() as u64) | ((std::mem::size_of::<LinkInfo>() as u64) << 32);
    attr.words[1] = &mut info as *mut LinkInfo as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|e| e.to_string())?;
    if info.link_type != BPF_LINK_TYPE_XDP {
        return Err(format!("not an XDP link (link type {})", info.link_type));
    }
    let b = info.union[0].to_ne_bytes();
    Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}
