//! `xdplb decap`: the backend side of a `tunnel` pool. A small XDP program
//! of its own (`lb-ebpf/src/decap.rs`, its own maps under its own pin
//! path) strips the outer header of IPIP and IPv6-in-IPv6 packets
//! addressed to this host from an allowed outer source (the gateways'
//! `tunnel_source`) and passes the inner packet, which must be addressed
//! to this host too, to the kernel, so a backend needs no ipip device or
//! module. Its link is pinned, so it outlives the command.
//!
//! The host's addresses are read when decap is started: an address added
//! later (a VIP put on lo afterwards) is not opened until `xdplb decap` is
//! run again (it swaps the program in place and rewrites the sets).
use std::{
    collections::HashMap as StdHashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap, MapData, PerCpuArray,
    },
    programs::{links::FdLink, links::PinnedLink, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{
    decap::{DecapCounter, ADDRS, ADDRS6, ALLOW, ALLOW6, DEFAULT_PIN_PATH, PROGRAM, STATS},
    maps::LINK_PREFIX,
    Addr6,
};

use ipnet::IpNet;

use super::{
    detach_pinned_link, ensure_local_bpffs, local_addrs, map_err, open_pinned, AttachMode,
    DataplaneError,
};

/// The decap object built by `build.rs` (aya-build), embedded in the binary.
static DECAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf-decap"));

fn link_path(pin_path: &Path, iface: &str) -> PathBuf {
    pin_path.join(format!("{LINK_PREFIX}{iface}"))
}

/// Where decap on `iface` pins by default: `<DEFAULT_PIN_PATH>/<netns>/<iface>`,
/// with `<netns>` this process's network namespace as [`netns_identity`]
/// names it. Backends run as namespaces of one host share one bpffs: each
/// gets maps of its own, and `--down` in the same namespace finds them.
pub fn default_pin_path(iface: &str) -> std::io::Result<PathBuf> {
    Ok(Path::new(DEFAULT_PIN_PATH)
        .join(netns_identity()?)
        .join(iface))
}

/// A name for this process's network namespace that stays the same while
/// it lives: its `ip netns` name when it has one (`ns-NAME`), `host` for
/// PID 1's, else its inode (`ns-inode-N`).
pub fn netns_identity() -> std::io::Result<String> {
    let id = |path: &Path| fs::metadata(path).map(|m| (m.dev(), m.ino()));
    let own = id(Path::new("/proc/self/ns/net"))?;
    // `ip netns identify`: the named namespaces are nsfs mounts whose
    // stat is the namespace's.
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            if id(&e.path()).ok() == Some(own) {
                return Ok(format!("ns-{}", e.file_name().to_string_lossy()));
            }
        }
    }
    if id(Path::new("/proc/1/ns/net")).ok() == Some(own) {
        return Ok("host".to_string());
    }
    Ok(format!("ns-inode-{}", own.1))
}

/// The decap program, loaded with its maps pinned under a pin path.
pub struct Decap {
    ebpf: Ebpf,
    pin_path: PathBuf,
    /// This host's IPv4 addresses (network order): the IPIP endpoints it
    /// opens.
    pub addrs: Vec<u32>,
    /// This host's IPv6 addresses: the IPv6-in-IPv6 endpoints it opens.
    pub addrs6: Vec<Addr6>,
}

impl Decap {
    /// Loads the program, writes this host's addresses (its network
    /// namespace's) as the tunnel endpoints and inner destinations to
    /// accept, and `allow` as the outer sources whose tunnels are opened
    /// (replacing what an earlier run wrote).
    pub fn load(pin_path: &Path, allow: &[IpNet]) -> Result<Decap, DataplaneError> {
        if DECAP_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        ensure_local_bpffs(pin_path)?;
        fs::create_dir_all(pin_path).map_err(|source| DataplaneError::PinPath {
            path: pin_path.to_path_buf(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_path)
            .load(DECAP_OBJECT)
            .map_err(|source| DataplaneError::Load {
                source: Box::new(source),
            })?;
        let mut addrs: HashMap<MapData, u32, u32> = {
            let map = ebpf
                .take_map(ADDRS)
                .ok_or(DataplaneError::MissingMap { map: ADDRS })?;
            HashMap::try_from(map).map_err(map_err(ADDRS))?
        };
        let (local, local6) =
            local_addrs().map_err(|source| DataplaneError::LocalAddrs { source })?;
        let known: Vec<u32> = addrs.keys().filter_map(Result::ok).collect();
        for a in known.iter().filter(|a| !local.contains(a)) {
            let _ = addrs.remove(a);
        }
        for &a in &local {
            addrs.insert(a, 1, 0).map_err(map_err(ADDRS))?;
        }
        let mut addrs6: HashMap<MapData, Addr6, u32> = {
            let map = ebpf
                .take_map(ADDRS6)
                .ok_or(DataplaneError::MissingMap { map: ADDRS6 })?;
            HashMap::try_from(map).map_err(map_err(ADDRS6))?
        };
        let known6: Vec<Addr6> = addrs6.keys().filter_map(Result::ok).collect();
        for a in known6.iter().filter(|a| !local6.contains(a)) {
            let _ = addrs6.remove(a);
        }
        for a in &local6 {
            addrs6.insert(a, 1, 0).map_err(map_err(ADDRS6))?;
        }
        let mut allow4: LpmTrie<MapData, u32, u32> = {
            let map = ebpf
                .take_map(ALLOW)
                .ok_or(DataplaneError::MissingMap { map: ALLOW })?;
            LpmTrie::try_from(map).map_err(map_err(ALLOW))?
        };
        let mut allow6: LpmTrie<MapData, Addr6, u32> = {
            let map = ebpf
                .take_map(ALLOW6)
                .ok_or(DataplaneError::MissingMap { map: ALLOW6 })?;
            LpmTrie::try_from(map).map_err(map_err(ALLOW6))?
        };
        let (want4, want6) = allow_keys(allow);
        sync_trie(&mut allow4, &want4, ALLOW)?;
        sync_trie(&mut allow6, &want6, ALLOW6)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(DataplaneError::MissingMap { map: PROGRAM })?
            .try_into()
            .map_err(|e| DataplaneError::Program {
                source: Box::new(e),
            })?;
        super::load_program(prog)?;
        Ok(Decap {
            ebpf,
            pin_path: pin_path.to_path_buf(),
            addrs: local,
            addrs6: local6,
        })
    }

    /// The loaded program (tests run it with `test_run`).
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("load() checked the program exists and is XDP")
    }

    /// Attaches to `iface`, or swaps into the link pinned there, and pins
    /// the link so it outlives this process.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), DataplaneError> {
        let path = link_path(&self.pin_path, iface);
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("load() checked the program exists and is XDP");
        let attach_err = |source| DataplaneError::Attach {
            iface: iface.to_string(),
            source: Box::new(source),
        };
        let link_err = |reason: String| DataplaneError::Link {
            path: path.clone(),
            reason,
        };
        if path.exists() {
            let pinned = PinnedLink::from_pin(&path).map_err(|e| link_err(e.to_string()))?;
            let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned))
                .map_err(|e| link_err(e.to_string()))?;
            prog.attach_to_link(link).map_err(attach_err)?;
        } else {
            let id = prog.attach(iface, mode.xdp_mode()).map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            let fd_link = FdLink::try_from(link).map_err(|e| link_err(e.to_string()))?;
            fd_link.pin(&path).map_err(|e| link_err(e.to_string()))?;
        }
        Ok(())
    }
}

/// An LPM trie key as (prefix length, network address as the program
/// loads it).
type Prefix<A> = (u32, A);

/// The allow lists' keys per family (each network masked to its prefix).
fn allow_keys(allow: &[IpNet]) -> (Vec<Prefix<u32>>, Vec<Prefix<Addr6>>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for net in allow.iter().map(IpNet::trunc) {
        match net {
            IpNet::V4(n) => v4.push((
                n.prefix_len() as u32,
                u32::from_ne_bytes(n.network().octets()),
            )),
            IpNet::V6(n) => v6.push((
                n.prefix_len() as u32,
                Addr6::from_octets(n.network().octets()),
            )),
        }
    }
    (v4, v6)
}

/// Makes the LPM trie `map` hold exactly `wanted` (each → 1).
fn sync_trie<K: aya::Pod + PartialEq>(
    map: &mut LpmTrie<MapData, K, u32>,
    wanted: &[Prefix<K>],
    name: &'static str,
) -> Result<(), DataplaneError> {
    let known: Vec<Key<K>> = map.keys().filter_map(Result::ok).collect();
    for k in &known {
        if !wanted.contains(&(k.prefix_len(), k.data())) {
            let _ = map.remove(k);
        }
    }
    for &(len, data) in wanted {
        map.insert(&Key::new(len, data), 1, 0)
            .map_err(map_err(name))?;
    }
    Ok(())
}

/// Loads decap and attaches it to `iface`, opening tunnels from `allow`.
/// Returns the tunnel endpoints it opens, as text.
pub fn attach(
    pin_path: &Path,
    iface: &str,
    mode: AttachMode,
    allow: &[IpNet],
) -> Result<Vec<String>, DataplaneError> {
    let mut d = Decap::load(pin_path, allow)?;
    d.attach(iface, mode)?;
    let v4 = d
        .addrs
        .iter()
        .map(|a| std::net::Ipv4Addr::from(a.to_ne_bytes()).to_string());
    let v6 = d
        .addrs6
        .iter()
        .map(|a| std::net::Ipv6Addr::from(a.octets()).to_string());
    Ok(v4.chain(v6).collect())
}

/// Detaches decap from `iface`. When no interface keeps it, its maps and
/// pin directory go too. `false` if it was not attached there.
pub fn detach(pin_path: &Path, iface: &str) -> Result<bool, DataplaneError> {
    let path = link_path(pin_path, iface);
    if !path.exists() {
        return Ok(false);
    }
    detach_pinned_link(&path);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataplaneError::PinPath { path, source }
    };
    fs::remove_file(&path).map_err(io(&path))?;
    let links_left = fs::read_dir(pin_path)
        .map_err(io(pin_path))?
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(LINK_PREFIX));
    if !links_left {
        remove_pins(pin_path)?;
    }
    Ok(true)
}

/// Removes decap's maps and its pin directory (once no link is pinned
/// there: `detach` checks).
pub fn remove_pins(pin_path: &Path) -> Result<(), DataplaneError> {
    for map in [ADDRS, ADDRS6, ALLOW, ALLOW6, STATS] {
        let p = pin_path.join(map);
        if p.exists() {
            fs::remove_file(&p).map_err(|source| DataplaneError::PinPath { path: p, source })?;
        }
    }
    let _ = fs::remove_dir(pin_path);
    Ok(())
}

/// After `--down` at the default pin path: removes the namespace's
/// directory and the root above it once they are empty (never anything
/// else: `remove_dir` fails on a directory that is not).
pub fn remove_empty_parents(pin_path: &Path) {
    for dir in pin_path.ancestors().skip(1).take(2) {
        if fs::remove_dir(dir).is_err() {
            break;
        }
    }
}

/// The decap counters, summed over CPUs, by label.
pub fn counters(pin_path: &Path) -> Result<StdHashMap<&'static str, u64>, DataplaneError> {
    let stats: PerCpuArray<MapData, u64> = open_pinned(pin_path, STATS)?;
    let mut out = StdHashMap::new();
    for (c, label) in DecapCounter::ALL {
        let per_cpu = stats.get(&(c as u32), 0).map_err(map_err(STATS))?;
        out.insert(label, per_cpu.iter().sum());
    }
    Ok(out)
}
