//! The data plane as user space sees it: load or adopt the XDP program and
//! its pinned maps, attach it, keep the maps in sync, read the counters.
//!
//! This is the only module that touches aya. Everything under the pin path
//! outlives the controller: maps, and one pinned XDP link per interface. A
//! restarted `xdplb run` reuses the pinned maps (flow table included) and
//! swaps its freshly loaded program into the pinned links atomically, so no
//! packet is ever without a program and no flow is forgotten.
//!
//! Ring updates never show a packet a half-written ring: each VIP has two
//! rings; the one not in use is written entry by entry, then the VIP's hash
//! entry is replaced in one update naming the other slot. Hash-map updates
//! are atomic for readers (RCU), array writes are not — hence the flip.
use std::{
    collections::HashMap as StdHashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::{Path, PathBuf},
};

use aya::{
    maps::{xdp::DevMapHash, Array, HashMap, Map, MapData, MapError, PerCpuArray},
    programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    backend_ref,
    limits::{MAX_BACKENDS, MAX_VIPS},
    maps, ref_slot, rings_len, Addr6, BackendCounters, BackendMeta, FlowSlot, GlobalCounter,
    IfaceMeta, L4Addr, L4Addr6, Name, ReplyEntry, ReplyEntry6, VipCounters, VipMeta, GENERATIONS,
    IFACE_SLOTS, IPPROTO_TCP, LAYOUT_VERSION, NAMES_LEN, NO_BACKEND, RING_SLOTS,
};
use thiserror::Error;

pub mod decap;
mod flows;

pub use flows::FlowTable;

pub use crate::config::{Endpoint, Protocol};

/// The XDP object built by `build.rs` (aya-build), embedded in the binary.
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("the embedded XDP object is empty (built with AYA_BUILD_SKIP?)")]
    NoObject,
    #[error("cannot prepare pin path {path}: {source}")]
    PinPath {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "xdplb runs in a private mount namespace (`ip netns exec`?) and the host has no \
         bpffs for {}: pins made here would vanish with this process. Mount one on the \
         host (`mount -t bpf bpf /sys/fs/bpf`), or start xdplb with \
         `nsenter --net=/run/netns/NAME` instead",
        pin_path.display()
    )]
    NoHostBpffs { pin_path: PathBuf },
    #[error(
        "no bpffs at {BPFFS_ROOT} for {}, and this process cannot tell whether it runs in the \
         system's mount namespace (/proc/1/ns/mnt: {reason}; a systemd unit's sandbox has a \
         private one): a bpffs mounted here could vanish with the process, and the pins with \
         it. Mount bpffs first where the system sees it: `systemctl start xdplb-bpffs` (the \
         packaged unit does before xdplb), or `mount -t bpf bpf {BPFFS_ROOT}` as root",
        pin_path.display()
    )]
    UnknownMountNamespace { pin_path: PathBuf, reason: String },
    #[error("cannot mount bpffs on /sys/fs/bpf: {source}")]
    MountBpffs {
        #[source]
        source: std::io::Error,
    },
    #[error(
        "pinned data plane at {path} was loaded with {what} = {pinned}, config says {wanted}; \
         run `xdplb down` first to start afresh (this drops established flows)"
    )]
    ShapeMismatch {
        path: PathBuf,
        what: &'static str,
        pinned: u32,
        wanted: u32,
    },
    #[error(
        "the data plane pinned at {} has layout version {pinned}; this xdplb uses {wanted}. \
         Run `xdplb down` first to start afresh (this drops established flows), or run the \
         xdplb that made these pins",
        path.display()
    )]
    LayoutVersion {
        path: PathBuf,
        pinned: u32,
        wanted: u32,
    },
    #[error(
        "pinned map {} {what} ({pinned}, this xdplb needs {wanted}){reason}: it was made by \
         another xdplb. Run `xdplb down` first to start afresh (this drops established \
         flows), or run the xdplb that made these pins",
        path.display()
    )]
    Layout {
        path: PathBuf,
        what: &'static str,
        pinned: u32,
        wanted: u32,
        reason: String,
    },
    #[error("loading the XDP program failed: {source}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("XDP program: {source}")]
    Program {
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching to interface {iface}: {source}")]
    Attach {
        iface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinned link {path}: {reason}")]
    Link { path: PathBuf, reason: String },
    #[error("cannot map the pinned flow table {}: {source}", path.display())]
    FlowTableMap {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map} missing from the object or pin path")]
    MissingMap { map: &'static str },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("no data plane pinned at {path} (is `xdplb run` started? wrong --pin-path?)")]
    NotPinned { path: PathBuf },
    #[error("ring for VIP index {vip_index} has {len} entries, expected {ring_size}")]
    RingLength {
        vip_index: u32,
        len: usize,
        ring_size: u32,
    },
    #[error("eBPF logger: {reason}")]
    Logger { reason: String },
    #[error("name {name:?} is longer than {max} bytes")]
    NameTooLong { name: String, max: usize },
    #[error("interface {iface}: {source}")]
    Interface {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listing this host's addresses: {source}")]
    LocalAddrs {
        #[source]
        source: std::io::Error,
    },
    #[error(
        "backend {backend} and VIP {vip} are of different address families (a pool is one family)"
    )]
    FamilyMismatch {
        backend: SocketAddr,
        vip: SocketAddr,
    },
    #[error("redirect map {map}: {source}")]
    TxPort {
        map: &'static str,
        #[source]
        source: Box<aya::maps::xdp::XdpMapError>,
    },
}

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        map,
        source: Box::new(source),
    }
}

/// How the maps are shaped; fixed for the life of a pinned data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub pin_path: PathBuf,
    pub ring_size: u32,
    pub flow_table_size: u32,
}

/// The program's load-time constants (not map shapes: a restart with new
/// values simply loads a program with them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Per CPU; 0 = no cap (see `[dataplane] max_flow_inserts_per_sec`).
    pub max_flow_inserts_per_sec: u32,
    /// Outer source of IPv4 `tunnel` pools (`[dataplane] tunnel_source`).
    pub tunnel_source_v4: Option<Ipv4Addr>,
    /// Outer source of IPv6 `tunnel` pools.
    pub tunnel_source_v6: Option<Ipv6Addr>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_flow_inserts_per_sec: lb_common::limits::DEFAULT_MAX_FLOW_INSERTS_PER_SEC,
            tunnel_source_v4: None,
            tunnel_source_v6: None,
        }
    }
}

/// `xdp_mode` from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native where the driver supports it, else generic (the kernel picks).
    Auto,
    Native,
    Generic,
}

impl AttachMode {
    pub(crate) fn xdp_mode(self) -> XdpMode {
        match self {
            AttachMode::Auto => XdpMode::Default,
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }
}

/// An IPv4 TCP endpoint as the maps key it.
pub fn l4addr(addr: SocketAddrV4) -> L4Addr {
    l4addr4(addr, IPPROTO_TCP)
}

/// An IPv4 endpoint of protocol `proto` (`IPPROTO_TCP`/`IPPROTO_UDP`) as
/// the maps key it.
pub fn l4addr4(addr: SocketAddrV4, proto: u8) -> L4Addr {
    L4Addr {
        addr: u32::from_ne_bytes(addr.ip().octets()),
        port: addr.port().to_be(),
        proto,
        _pad: 0,
    }
}

/// An IPv6 endpoint of protocol `proto` as `VIPS6` and `REPLIES6` key it.
pub fn l4addr6(addr: SocketAddrV6, proto: u8) -> L4Addr6 {
    L4Addr6 {
        addr: addr6(*addr.ip()),
        port: addr.port().to_be(),
        proto,
        _pad: 0,
    }
}

/// An IPv6 address as the maps hold it.
pub fn addr6(ip: Ipv6Addr) -> Addr6 {
    Addr6::from_octets(ip.octets())
}

/// The endpoint an [`L4Addr`] names.
pub fn socket_addr(a: &L4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(a.addr.to_ne_bytes()), u16::from_be(a.port))
}

/// The endpoint an [`L4Addr6`] names.
pub fn socket_addr6(a: &L4Addr6) -> SocketAddrV6 {
    SocketAddrV6::new(Ipv6Addr::from(a.addr.octets()), u16::from_be(a.port), 0, 0)
}

/// An endpoint's map key, by family.
enum Key {
    V4(L4Addr),
    V6(L4Addr6),
}

fn key_of(e: Endpoint) -> Key {
    match e.addr {
        SocketAddr::V4(a) => Key::V4(l4addr4(a, e.protocol.ipproto())),
        SocketAddr::V6(a) => Key::V6(l4addr6(a, e.protocol.ipproto())),
    }
}

/// The endpoint of a `VIPS` / `REPLIES` key; `None` for a protocol xdplb
/// never writes.
fn endpoint4(k: &L4Addr) -> Option<Endpoint> {
    Some(Endpoint {
        addr: SocketAddr::V4(socket_addr(k)),
        protocol: Protocol::from_ipproto(k.proto)?,
    })
}

fn endpoint6(k: &L4Addr6) -> Option<Endpoint> {
    Some(Endpoint {
        addr: SocketAddr::V6(socket_addr6(k)),
        protocol: Protocol::from_ipproto(k.proto)?,
    })
}

/// A backend's address from its `BACKENDS` entry, or for an IPv6 slot
/// (`BackendMeta::addr` 0: no IPv4 backend is 0.0.0.0) from
/// `BACKEND_ADDRS6`.
fn backend_addr(meta: &BackendMeta, v6: impl FnOnce() -> Option<Addr6>) -> SocketAddr {
    let port = u16::from_be(meta.port);
    if meta.addr != 0 {
        return SocketAddr::new(IpAddr::V4(Ipv4Addr::from(meta.addr.to_ne_bytes())), port);
    }
    let a = v6().unwrap_or_default();
    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a.octets())), port)
}

/// A backend slot as the controller writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSlot {
    pub slot: u32,
    pub vip_index: u32,
    /// Either family: an IPv6 slot keeps its address in `BACKEND_ADDRS6`.
    pub addr: SocketAddr,
    pub state: u8,
    pub flags: u8,
}

/// A loaded, pinned data plane.
pub struct Dataplane {
    shape: Shape,
    ebpf: Ebpf,
    vips: HashMap<MapData, L4Addr, VipMeta>,
    vips6: HashMap<MapData, L4Addr6, VipMeta>,
    backends: Array<MapData, BackendMeta>,
    backend_addrs6: Array<MapData, Addr6>,
    replies: HashMap<MapData, L4Addr, ReplyEntry>,
    replies6: HashMap<MapData, L4Addr6, ReplyEntry6>,
    rings: Array<MapData, u32>,
    names: Array<MapData, Name>,
    ifaces: Array<MapData, IfaceMeta>,
    tx_ports: DevMapHash<MapData>,
    local_addrs: HashMap<MapData, u32, u32>,
    local_addrs6: HashMap<MapData, Addr6, u32>,
    addr_filter: Array<MapData, u64>,
    /// The IPv4 keys of `VIPS` and `REPLIES` (by [`FilterSide`]), and the
    /// words of `ADDR_FILTER` as written: a word is recomputed from the
    /// keys and written only when it changes, with no map read.
    filtered: [std::collections::HashSet<L4Addr>; 2],
    filter_words: Vec<u64>,
    /// Each slot's generation as the pinned map holds it: rings are written
    /// as references carrying it (see `lb_common::backend_ref`).
    generations: Vec<u32>,
    /// What each (vip index, slot) ring holds as far as we wrote it: lets a
    /// ring update write only the entries that change. Empty after adopt.
    written: StdHashMap<(u32, u32), Vec<u32>>,
}

/// Where bpffs is mounted by convention.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// `statfs` type of a bpffs (`BPF_FS_MAGIC`, linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// How far up the process tree to look for the mount namespace we were
/// started from.
const MAX_ANCESTORS: usize = 64;

/// Whether `path` lives on a bpffs, and which one (its device).
fn bpffs_dev(path: &Path) -> Option<u64> {
    use std::os::unix::{ffi::OsStrExt, fs::MetadataExt};
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a NUL-terminated path and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    (st.f_type as i64 == BPF_FS_MAGIC)
        .then(|| fs::metadata(path).ok().map(|m| m.dev()))
        .flatten()
}

/// `path`, or its nearest ancestor that exists (a pin path is created on
/// first load).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
}

fn mount_ns(pid: &str) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

fn parent_of(pid: &str) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ppid = rest.split_whitespace().nth(1)?;
    (ppid != "0").then(|| ppid.to_string())
}

/// The root of the host's file system as this process can reach it, when
/// this process has a private mount namespace (e.g. under `ip netns exec`,
/// which unshares one and mounts a fresh `/sys` in it): `/proc/1/root`,
/// or, where PID 1 is out of reach (a sandbox's init), the root of the
/// nearest ancestor in another mount namespace — the one we were started
/// from. `None` in the host's mount namespace.
fn host_root() -> Option<PathBuf> {
    let own = mount_ns("self")?;
    if let Some(init) = mount_ns("1") {
        return (init != own).then(|| PathBuf::from("/proc/1/root"));
    }
    let mut pid = parent_of("self")?;
    for _ in 0..MAX_ANCESTORS {
        match mount_ns(&pid) {
            Some(ns) if ns != own => return Some(PathBuf::from(format!("/proc/{pid}/root"))),
            _ => pid = parent_of(&pid)?,
        }
    }
    None
}

fn private_mount_namespace() -> bool {
    host_root().is_some()
}

/// The host's view of `path`: the same path under the host's root.
fn host_view(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The path through which the pins at `pin_path` (as the host names them)
/// are reached from this process.
///
/// Pins must outlive the process. In the host's mount namespace that is
/// `pin_path` itself. In a private one (`ip netns exec` mounts a fresh
/// `/sys`, with no bpffs, or one that dies with the namespace) the pins
/// are made and read through the host's bpffs (via `/proc/1/root`, see
/// [`host_root`]) unless
/// the bpffs here is the host's very mount. Never silently private: with
/// no host bpffs to use, it is an error that names the fix.
pub fn resolve_pin_path(pin_path: &Path) -> Result<PathBuf, DataplaneError> {
    let Some(root) = host_root() else {
        return Ok(pin_path.to_path_buf());
    };
    let here = bpffs_dev(existing_ancestor(pin_path));
    let host_path = host_view(&root, pin_path);
    let host = bpffs_dev(existing_ancestor(&host_path));
    match (here, host) {
        (Some(h), Some(o)) if h == o => Ok(pin_path.to_path_buf()),
        (_, Some(_)) => {
            tracing::info!(
                pin_path = %pin_path.display(),
                via = %host_path.display(),
                "private mount namespace (ip netns exec?): using the host's bpffs, so the \
                 pins outlive this process"
            );
            Ok(host_path)
        }
        (_, None) => Err(DataplaneError::NoHostBpffs {
            pin_path: pin_path.to_path_buf(),
        }),
    }
}

/// Like [`resolve_pin_path`], for `xdplb run`: first mounts bpffs on
/// `/sys/fs/bpf` where the pins are made if it is not mounted yet (it is
/// not by default on these machines) — in the host's mount namespace when
/// this process has a private one.
pub fn prepare_pin_path(pin_path: &Path) -> Result<PathBuf, DataplaneError> {
    let bpffs = Path::new(BPFFS_ROOT);
    if let Some(root) = host_root() {
        if pin_path.starts_with(bpffs) && bpffs_dev(&host_view(&root, bpffs)).is_none() {
            mount_host_bpffs(&root)?;
        }
    }
    ensure_local_bpffs(pin_path)?;
    resolve_pin_path(pin_path)
}

/// Mounts bpffs on `/sys/fs/bpf` when `pin_path` lives under it, it is not
/// mounted yet, and this is the host's mount namespace (a private one was
/// dealt with by [`prepare_pin_path`]).
pub(crate) fn ensure_local_bpffs(pin_path: &Path) -> Result<(), DataplaneError> {
    let root = Path::new(BPFFS_ROOT);
    if pin_path.starts_with(root) && !private_mount_namespace() && bpffs_dev(root).is_none() {
        // Without CAP_SYS_PTRACE (as in the packaged unit) PID 1's mount
        // namespace cannot be read: a private one (systemd's sandbox) then
        // looks like the host's, and a bpffs mounted in it dies with it.
        if std::process::id() != 1 {
            if let Err(e) = fs::read_link("/proc/1/ns/mnt") {
                return Err(DataplaneError::UnknownMountNamespace {
                    pin_path: pin_path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        }
        mount_bpffs()?;
    }
    Ok(())
}

fn mount_bpffs() -> Result<(), DataplaneError> {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, dst, ty) = (c("bpf"), c(BPFFS_ROOT), c("bpf"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(DataplaneError::MountBpffs {
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Mounts bpffs on the host's `/sys/fs/bpf`. A mount must be made from
/// inside the namespace it goes into, and a threaded process cannot enter
/// another mount namespace, so a child (`nsenter`) does it.
fn mount_host_bpffs(root: &Path) -> Result<(), DataplaneError> {
    // `root` is /proc/PID/root; PID's mount namespace is beside it.
    let ns = root.with_file_name("ns").join("mnt");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--mount={}", ns.display()))
        .args(["--", "mount", "-t", "bpf", "bpf", BPFFS_ROOT])
        .output()
        .map_err(|source| DataplaneError::MountBpffs { source })?;
    if !out.status.success() {
        return Err(DataplaneError::MountBpffs {
            source: std::io::Error::other(format!(
                "in the host's mount namespace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    tracing::info!("mounted bpffs on the host's {BPFFS_ROOT}");
    Ok(())
}

/// How the kernel sees a map: what adoption compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// The first difference between a pinned map and what this program needs,
/// as (what, pinned, wanted). Pure.
pub fn layout_difference(pinned: MapShape, wanted: MapShape) -> Option<(&'static str, u32, u32)> {
    [
        ("map type", pinned.map_type, wanted.map_type),
        ("key size", pinned.key_size, wanted.key_size),
        ("value size", pinned.value_size, wanted.value_size),
        ("max entries", pinned.max_entries, wanted.max_entries),
    ]
    .into_iter()
    .find(|(_, p, w)| p != w)
}

/// Refuses pins this program cannot adopt, before anything is loaded: a
/// `VERSION` of another layout, or any pinned map whose type, key size,
/// value size or entry count differs from what the embedded program
/// declares (sized by `shape`, as the kernel reports it). Without this, a
/// pinned map of another size would be reopened and misread.
fn check_pinned_layout(shape: &Shape) -> Result<(), DataplaneError> {
    let dir = &shape.pin_path;
    let version_pin = dir.join(maps::VERSION);
    if version_pin.exists() {
        let version: Array<MapData, u32> = open_pinned(dir, maps::VERSION)?;
        let pinned = version.get(&0, 0).map_err(map_err(maps::VERSION))?;
        if pinned != LAYOUT_VERSION {
            return Err(DataplaneError::LayoutVersion {
                path: dir.clone(),
                pinned,
                wanted: LAYOUT_VERSION,
            });
        }
    }
    let Ok(obj) = aya_obj::Object::parse(PROGRAM_OBJECT) else {
        return Ok(());
    };
    for (name, map) in &obj.maps {
        if map.pinning() != aya_obj::maps::PinningType::ByName {
            continue;
        }
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|md| md.info())
            .map_err(|e| DataplaneError::Layout {
                path: path.clone(),
                what: "cannot be read",
                pinned: 0,
                wanted: 0,
                reason: e.to_string(),
            })?;
        let max_entries = match name.as_str() {
            maps::RINGS => rings_len(shape.ring_size),
            maps::FLOWS => lb_common::flow_buckets(shape.flow_table_size),
            _ => map.max_entries(),
        };
        let pinned = MapShape {
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        let wanted = MapShape {
            map_type: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries,
        };
        // A different ring_size or flow_table_size alone has its own,
        // clearer message (below, in `load`).
        let sized_by_config = matches!(name.as_str(), maps::RINGS | maps::FLOWS);
        let same_but_size = (MapShape {
            max_entries: 0,
            ..pinned
        }) == (MapShape {
            max_entries: 0,
            ..wanted
        });
        if sized_by_config && same_but_size {
            continue;
        }
        if let Some((what, p, w)) = layout_difference(pinned, wanted) {
            return Err(DataplaneError::Layout {
                path,
                what,
                pinned: p,
                wanted: w,
                reason: String::new(),
            });
        }
    }
    Ok(())
}

/// The tail-called programs by `TAILS` slot (see `lb_common::TAIL_IPV6`).
const TAIL_PROGRAMS: [(u32, &str); 4] = [
    (lb_common::TAIL_IPV6, maps::PROGRAM_IPV6),
    (lb_common::TAIL_UDP4, maps::PROGRAM_UDP4),
    (lb_common::TAIL_UDP6, maps::PROGRAM_UDP6),
    (lb_common::TAIL_ICMP6, maps::PROGRAM_ICMP6),
];

/// Loads (verifies) `prog`, again if the verifier was interrupted: it gives
/// up with EAGAIN whenever a signal is pending for the loading thread (a
/// SIGHUP or SIGCHLD during a three-second verification), which says
/// nothing about the program. libbpf retries the same way, five times.
pub(crate) fn load_program(prog: &mut Xdp) -> Result<(), DataplaneError> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match prog.load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                tracing::debug!(attempt, "verification interrupted by a signal: again");
                attempt += 1;
            }
            r => {
                return r.map_err(|e| DataplaneError::Program {
                    source: Box::new(e),
                })
            }
        }
    }
}

/// Loads the IPv4 UDP, IPv6, IPv6 UDP and ICMPv6 programs the main one
/// tail-calls.
fn load_tails(ebpf: &mut aya::Ebpf) -> Result<(), DataplaneError> {
    for (_, name) in TAIL_PROGRAMS {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingMap { map: name })?
            .try_into()
            .map_err(|e| DataplaneError::Program {
                source: Box::new(e),
            })?;
        load_program(prog)?;
    }
    Ok(())
}

/// A half of `ADDR_FILTER`: the addresses of `VIPS` (packets to them) or
/// of `REPLIES` (packets from them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FilterSide {
    Vips = 0,
    Backends = 1,
}

impl FilterSide {
    /// Its first word in `ADDR_FILTER`.
    fn base(self) -> u32 {
        match self {
            FilterSide::Vips => 0,
            FilterSide::Backends => lb_common::ADDR_FILTER_BACKENDS,
        }
    }
}

fn pinned_max_entries(path: &Path) -> Option<u32> {
    let md = MapData::from_pin(path).ok()?;
    md.info().ok().map(|i| i.max_entries())
}

impl Dataplane {
    /// Loads the program, creating the maps under the pin path or reusing
    /// the ones already pinned there (flow table and all).
    pub fn load(shape: Shape) -> Result<Dataplane, DataplaneError> {
        Dataplane::load_tuned(shape, Tuning::default())
    }

    /// [`Dataplane::load`] with the program's constants set.
    pub fn load_tuned(shape: Shape, tuning: Tuning) -> Result<Dataplane, DataplaneError> {
        if PROGRAM_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        ensure_local_bpffs(&shape.pin_path)?;
        fs::create_dir_all(&shape.pin_path).map_err(|source| DataplaneError::PinPath {
            path: shape.pin_path.clone(),
            source,
        })?;
        check_pinned_layout(&shape)?;
        for (map, what, wanted, per) in [
            (
                maps::RINGS,
                "ring_size",
                rings_len(shape.ring_size),
                MAX_VIPS * RING_SLOTS,
            ),
            (
                maps::FLOWS,
                "flow_table_size",
                lb_common::flow_buckets(shape.flow_table_size),
                1,
            ),
        ] {
            if let Some(pinned) = pinned_max_entries(&shape.pin_path.join(map)) {
                if pinned != wanted {
                    // A flow table's entry count is buckets; the operator
                    // wrote flows.
                    let flows = if map == maps::FLOWS {
                        lb_common::FLOW_WAYS as u32
                    } else {
                        1
                    };
                    return Err(DataplaneError::ShapeMismatch {
                        path: shape.pin_path.clone(),
                        what,
                        pinned: pinned / per * flows,
                        wanted: wanted / per * flows,
                    });
                }
            }
        }
        // The flow table's tags are keyed: adopted pins keep their seed,
        // or the flows they hold would no longer be found.
        let flow_seed = if shape.pin_path.join(maps::FLOW_SEED).exists() {
            open_pinned::<Array<MapData, u64>>(&shape.pin_path, maps::FLOW_SEED)?
                .get(&0, 0)
                .map_err(map_err(maps::FLOW_SEED))?
        } else {
            random_seed()
        };
        let flow_buckets = lb_common::flow_buckets(shape.flow_table_size);
        let ring_size = shape.ring_size;
        // Network order, as the program writes it into the outer header.
        let tunnel_source = tuning
            .tunnel_source_v4
            .map_or(0, |a| u32::from_ne_bytes(a.octets()));
        let tunnel_source_v6 = tuning.tunnel_source_v6.map_or(Addr6::default(), addr6);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&shape.pin_path)
            .map_max_entries(maps::RINGS, rings_len(ring_size))
            .map_max_entries(maps::FLOWS, flow_buckets)
            .override_global("FLOW_TAG_SEED", &flow_seed, true)
            .override_global("FLOW_BUCKETS", &flow_buckets, true)
            .override_global("RING_SIZE", &ring_size, true)
            .override_global(
                "MAX_FLOW_INSERTS_PER_SEC",
                &tuning.max_flow_inserts_per_sec,
                true,
            )
            .override_global("TUNNEL_SOURCE_V4", &tunnel_source, true)
            // Not required: a program without IPv6 tunnels has no such
            // global, and aya skips a missing one only when told so.
            .override_global("TUNNEL_SOURCE_V6", &tunnel_source_v6, false)
            .load(PROGRAM_OBJECT)
            .map_err(|source| DataplaneError::Load {
                source: Box::new(source),
            })?;
        let prog: &mut Xdp = ebpf
            .program_mut(maps::PROGRAM)
            .ok_or(DataplaneError::MissingMap { map: maps::PROGRAM })?
            .try_into()
            .map_err(|e| DataplaneError::Program {
                source: Box::new(e),
            })?;
        load_program(prog)?;
        load_tails(&mut ebpf)?;
        let vips = take(&mut ebpf, maps::VIPS)?;
        let vips6 = take(&mut ebpf, maps::VIPS6)?;
        let backends: Array<MapData, BackendMeta> = take(&mut ebpf, maps::BACKENDS)?;
        let backend_addrs6 = take(&mut ebpf, maps::BACKEND_ADDRS6)?;
        let replies = take(&mut ebpf, maps::REPLIES)?;
        let replies6 = take(&mut ebpf, maps::REPLIES6)?;
        let rings = take(&mut ebpf, maps::RINGS)?;
        let names = take(&mut ebpf, maps::NAMES)?;
        let ifaces = take(&mut ebpf, maps::IFACES)?;
        let tx_ports = take(&mut ebpf, maps::TX_PORTS)?;
        let local_addrs = take(&mut ebpf, maps::LOCAL_ADDRS)?;
        let local_addrs6 = take(&mut ebpf, maps::LOCAL_ADDRS6)?;
        let addr_filter = take(&mut ebpf, maps::ADDR_FILTER)?;
        let generations = (0..MAX_BACKENDS)
            .map(|slot| {
                backends
                    .get(&slot, 0)
                    .map(|m: BackendMeta| m.generation)
                    .map_err(map_err(maps::BACKENDS))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Adopted pins passed the checks above; fresh ones (or pins from
        // before versioning, whose shapes matched) are stamped now.
        let mut version: Array<MapData, u32> = take(&mut ebpf, maps::VERSION)?;
        version
            .set(0, LAYOUT_VERSION, 0)
            .map_err(map_err(maps::VERSION))?;
        let mut seed: Array<MapData, u64> = take(&mut ebpf, maps::FLOW_SEED)?;
        seed.set(0, flow_seed, 0)
            .map_err(map_err(maps::FLOW_SEED))?;
        let mut dp = Dataplane {
            shape,
            ebpf,
            vips,
            vips6,
            backends,
            backend_addrs6,
            replies,
            replies6,
            rings,
            names,
            ifaces,
            tx_ports,
            local_addrs,
            local_addrs6,
            addr_filter,
            filtered: Default::default(),
            // Filled by the rebuild below.
            filter_words: Vec::new(),
            generations,
            written: StdHashMap::new(),
        };
        // Adopted maps: the filter must cover every address they hold.
        dp.rebuild_addr_filter()?;
        dp.install_tails()?;
        Ok(dp)
    }

    /// The program's log channel into `sink` (aya-log; the program logs
    /// only on paths that should never run). The caller flushes it when its
    /// fd is readable.
    pub fn logger<T: log::Log>(
        &mut self,
        sink: T,
    ) -> Result<aya_log::EbpfLogger<T>, DataplaneError> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, sink).map_err(|e| {
            DataplaneError::Logger {
                reason: e.to_string(),
            }
        })
    }

    /// Points the pinned `TAILS` table at this instance's programs. A
    /// load does it, so a restarted controller's programs serve from the
    /// moment they load; a second instance over the same pins (a
    /// benchmark's differently tuned copy) takes them over until this is
    /// called again.
    pub fn install_tails(&mut self) -> Result<(), DataplaneError> {
        let mut fds = Vec::new();
        for (slot, name) in TAIL_PROGRAMS {
            let prog: &Xdp = self
                .ebpf
                .program(name)
                .and_then(|p| <&Xdp>::try_from(p).ok())
                .ok_or(DataplaneError::MissingMap { map: name })?;
            let fd = prog
                .fd()
                .map_err(|e| DataplaneError::Program {
                    source: Box::new(e),
                })?
                .try_clone()
                .map_err(|e| DataplaneError::Program {
                    source: Box::new(aya::programs::ProgramError::from(e)),
                })?;
            fds.push((slot, fd));
        }
        let map = self
            .ebpf
            .map_mut(maps::TAILS)
            .ok_or(DataplaneError::MissingMap { map: maps::TAILS })?;
        let mut tails: aya::maps::ProgramArray<&mut MapData> =
            aya::maps::ProgramArray::try_from(map).map_err(map_err(maps::TAILS))?;
        for (slot, fd) in &fds {
            tails.set(*slot, fd, 0).map_err(map_err(maps::TAILS))?;
        }
        Ok(())
    }

    /// Instructions the verifier processed for each of the balancer's
    /// programs (the kernel's `verified_insns`; `None` before Linux 5.16).
    pub fn verified_instructions(&self) -> Vec<(&'static str, Option<u32>)> {
        [
            maps::PROGRAM,
            maps::PROGRAM_UDP4,
            maps::PROGRAM_IPV6,
            maps::PROGRAM_UDP6,
            maps::PROGRAM_ICMP6,
        ]
        .into_iter()
        .map(|name| {
            let count = self
                .ebpf
                .program(name)
                .and_then(|p| <&Xdp>::try_from(p).ok())
                .and_then(|p| p.info().ok())
                .and_then(|i| i.verified_instruction_count());
            (name, count)
        })
        .collect()
    }

    /// The loaded XDP program (tests run it with `test_run`).
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(maps::PROGRAM)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("load() checked the program exists and is XDP")
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(maps::PROGRAM)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("load() checked the program exists and is XDP")
    }

    fn link_path(&self, iface: &str) -> PathBuf {
        self.shape
            .pin_path
            .join(format!("{}{iface}", maps::LINK_PREFIX))
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

    /// The VIPs currently in the maps (both families), with their meta.
    /// An entry of a protocol xdplb never writes is skipped.
    pub fn read_vips(&self) -> Result<Vec<(Endpoint, VipMeta)>, DataplaneError> {
        let mut out = Vec::new();
        for item in self.vips.iter() {
            let (k, meta) = item.map_err(map_err(maps::VIPS))?;
            out.extend(endpoint4(&k).map(|e| (e, meta)));
        }
        for item in self.vips6.iter() {
            let (k, meta) = item.map_err(map_err(maps::VIPS6))?;
            out.extend(endpoint6(&k).map(|e| (e, meta)));
        }
        Ok(out)
    }

    /// All backend slots in use.
    pub fn read_backends(&self) -> Result<Vec<BackendSlot>, DataplaneError> {
        let mut out = Vec::new();
        for slot in 0..MAX_BACKENDS {
            let meta = self
                .backends
                .get(&slot, 0)
                .map_err(map_err(maps::BACKENDS))?;
            if meta.state != lb_common::BACKEND_FREE {
                let v6 = || self.backend_addrs6.get(&slot, 0).ok();
                out.push(BackendSlot {
                    slot,
                    vip_index: meta.vip_index,
                    addr: backend_addr(&meta, v6),
                    state: meta.state,
                    flags: meta.flags,
                });
            }
        }
        Ok(out)
    }

    pub fn read_name(&self, index: u32) -> Result<String, DataplaneError> {
        let n = self.names.get(&index, 0).map_err(map_err(maps::NAMES))?;
        Ok(n.as_str().to_string())
    }

    pub fn write_name(&mut self, index: u32, name: &str) -> Result<(), DataplaneError> {
        let n = Name::new(name).ok_or_else(|| DataplaneError::NameTooLong {
            name: name.to_string(),
            max: lb_common::NAME_MAX,
        })?;
        self.names.set(index, n, 0).map_err(map_err(maps::NAMES))
    }

    /// Publishes `ring` (backend slots, `ring_size` long, or [`NO_BACKEND`])
    /// for the VIP `vip` (a bare `SocketAddrV4` is a TCP VIP; see
    /// [`Endpoint::udp`]) with `flags` (`VIP_F_*`) and its protocol's
    /// default `flow_idle_ms` (TCP 0, UDP 30 s; see
    /// [`Dataplane::publish_vip_idle`]).
    pub fn publish_vip(
        &mut self,
        vip: impl Into<Endpoint>,
        vip_index: u32,
        ring: &[u32],
        flags: u32,
    ) -> Result<(), DataplaneError> {
        let vip = vip.into();
        let idle = vip.protocol.default_flow_idle_ms();
        self.publish_vip_idle(vip, vip_index, ring, flags, idle)
    }

    /// [`Dataplane::publish_vip`] with the VIP's `flow_idle_ms`: the ring is
    /// written into the idle slot as references carrying each slot's
    /// generation, then made live with one atomic `VIPS`/`VIPS6` update.
    pub fn publish_vip_idle(
        &mut self,
        vip: impl Into<Endpoint>,
        vip_index: u32,
        ring: &[u32],
        flags: u32,
        flow_idle_ms: u32,
    ) -> Result<(), DataplaneError> {
        let key = key_of(vip.into());
        let ring_size = self.shape.ring_size;
        if ring.len() != ring_size as usize {
            return Err(DataplaneError::RingLength {
                vip_index,
                len: ring.len(),
                ring_size,
            });
        }
        let ring: Vec<u32> = ring
            .iter()
            .map(|&slot| match self.generations.get(slot as usize) {
                Some(&g) if slot != NO_BACKEND => backend_ref(slot, g),
                _ => NO_BACKEND,
            })
            .collect();
        let ring = ring.as_slice();
        let live = match &key {
            Key::V4(k) => self.vips.get(k, 0).ok(),
            Key::V6(k) => self.vips6.get(k, 0).ok(),
        };
        if let Some(live) = live {
            if live.index == vip_index
                && live.flags == flags
                && live.flow_idle_ms == flow_idle_ms
                && self
                    .written
                    .get(&(vip_index, live.ring_slot))
                    .map(Vec::as_slice)
                    == Some(ring)
            {
                return Ok(());
            }
        }
        let slot = match live {
            Some(m) if m.index == vip_index => (m.ring_slot + 1) % RING_SLOTS,
            _ => 0,
        };
        let base = (vip_index * RING_SLOTS + slot) * ring_size;
        let previous = self.written.remove(&(vip_index, slot));
        for (i, &backend) in ring.iter().enumerate() {
            if previous.as_ref().is_some_and(|p| p[i] == backend) {
                continue;
            }
            self.rings
                .set(base + i as u32, backend, 0)
                .map_err(map_err(maps::RINGS))?;
        }
        self.written.insert((vip_index, slot), ring.to_vec());
        let meta = VipMeta {
            index: vip_index,
            ring_slot: slot,
            flags,
            flow_idle_ms,
        };
        match key {
            Key::V4(k) => {
                // The filter bit first: a VIP the filter hides is a VIP
                // whose packets pass to the kernel.
                self.filter(FilterSide::Vips, k, true)?;
                self.vips.insert(k, meta, 0).map_err(map_err(maps::VIPS))
            }
            Key::V6(k) => self.vips6.insert(k, meta, 0).map_err(map_err(maps::VIPS6)),
        }
    }

    /// Stops balancing a VIP: its packets pass to the kernel from now on.
    pub fn remove_vip(&mut self, vip: impl Into<Endpoint>) -> Result<(), DataplaneError> {
        let (r, map, v4) = match key_of(vip.into()) {
            Key::V4(k) => (self.vips.remove(&k), maps::VIPS, Some(k)),
            Key::V6(k) => (self.vips6.remove(&k), maps::VIPS6, None),
        };
        self.removed(r, map, FilterSide::Vips, v4)
    }

    /// After an entry of `map` was removed (`r`): an entry already absent is
    /// no error; an IPv4 key (`v4`) leaves `side` of the address filter.
    fn removed(
        &mut self,
        r: Result<(), MapError>,
        map: &'static str,
        side: FilterSide,
        v4: Option<L4Addr>,
    ) -> Result<(), DataplaneError> {
        match r {
            Ok(()) => {}
            Err(e) if absent(&e) => return Ok(()),
            Err(e) => return Err(map_err(map)(e)),
        }
        match v4 {
            Some(k) => self.filter(side, k, false),
            None => Ok(()),
        }
    }

    /// Records `key` (before its entry is written) or forgets it (after
    /// its entry is removed), and brings its word of `ADDR_FILTER` up to
    /// date.
    fn filter(
        &mut self,
        side: FilterSide,
        key: L4Addr,
        present: bool,
    ) -> Result<(), DataplaneError> {
        let keys = &mut self.filtered[side as usize];
        if present {
            keys.insert(key);
        } else {
            keys.remove(&key);
        }
        let (word, _) = lb_common::addr_filter_word(key.addr);
        self.sync_filter_word(side, word)
    }

    /// Recomputes word `word` of `side` from the keys and writes it if it
    /// changed.
    fn sync_filter_word(&mut self, side: FilterSide, word: u32) -> Result<(), DataplaneError> {
        let want = self.filtered[side as usize]
            .iter()
            .map(|k| lb_common::addr_filter_word(k.addr))
            .filter(|&(w, _)| w == word)
            .fold(0, |acc, (_, bit)| acc | bit);
        let at = side.base() + word;
        if self.filter_words[at as usize] != want {
            self.addr_filter
                .set(at, want, 0)
                .map_err(map_err(maps::ADDR_FILTER))?;
            self.filter_words[at as usize] = want;
        }
        Ok(())
    }

    /// Takes the keys from `VIPS` and `REPLIES` and writes every word of
    /// `ADDR_FILTER` (on load: a predecessor's pinned maps must all be
    /// covered, and nothing else).
    fn rebuild_addr_filter(&mut self) -> Result<(), DataplaneError> {
        let vips = self
            .vips
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(maps::VIPS))?;
        let replies = self
            .replies
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(maps::REPLIES))?;
        self.filtered = [vips, replies];
        let mut words = vec![0u64; 2 * lb_common::ADDR_FILTER_WORDS as usize];
        for side in [FilterSide::Vips, FilterSide::Backends] {
            for key in &self.filtered[side as usize] {
                let (word, bit) = lb_common::addr_filter_word(key.addr);
                words[(side.base() + word) as usize] |= bit;
            }
        }
        for (at, &word) in words.iter().enumerate() {
            self.addr_filter
                .set(at as u32, word, 0)
                .map_err(map_err(maps::ADDR_FILTER))?;
        }
        self.filter_words = words;
        Ok(())
    }

    /// Writes a slot's state. A slot that was free gets a new generation
    /// first: references written for its previous occupant (ring entries,
    /// flows) stop matching it. An IPv6 slot's address goes into
    /// `BACKEND_ADDRS6` before its state, so no packet finds the slot
    /// active without its address.
    pub fn write_backend(&mut self, b: &BackendSlot) -> Result<(), DataplaneError> {
        let current = self
            .backends
            .get(&b.slot, 0)
            .map_err(map_err(maps::BACKENDS))?;
        let generation = if current.state == lb_common::BACKEND_FREE {
            (current.generation + 1) % GENERATIONS
        } else {
            current.generation
        };
        let addr = match b.addr {
            SocketAddr::V4(a) => u32::from_ne_bytes(a.ip().octets()),
            SocketAddr::V6(a) => {
                self.backend_addrs6
                    .set(b.slot, addr6(*a.ip()), 0)
                    .map_err(map_err(maps::BACKEND_ADDRS6))?;
                0
            }
        };
        let meta = BackendMeta {
            addr,
            port: b.addr.port().to_be(),
            state: b.state,
            flags: b.flags,
            vip_index: b.vip_index,
            generation,
        };
        self.backends
            .set(b.slot, meta, 0)
            .map_err(map_err(maps::BACKENDS))?;
        if let Some(g) = self.generations.get_mut(b.slot as usize) {
            *g = generation;
        }
        Ok(())
    }

    /// Releases a slot. Its flows were re-steered already (it was down or
    /// drained); a stale flow entry naming it re-selects on its next packet.
    /// The generation stays, so the next occupant's is new.
    pub fn free_backend(&mut self, slot: u32) -> Result<(), DataplaneError> {
        let generation = self.generations.get(slot as usize).copied().unwrap_or(0);
        let meta = BackendMeta {
            generation,
            ..BackendMeta::default()
        };
        self.backends
            .set(slot, meta, 0)
            .map_err(map_err(maps::BACKENDS))
    }

    /// Replies from `backend` (its address, port and protocol; a bare
    /// `SocketAddrV4` is TCP) are rewritten to come from `vip`, of the same
    /// family.
    pub fn write_reply(
        &mut self,
        backend: impl Into<Endpoint>,
        vip: impl Into<SocketAddr>,
        slot: u32,
        vip_index: u32,
    ) -> Result<(), DataplaneError> {
        let backend = backend.into();
        let vip = vip.into();
        match (key_of(backend), vip) {
            (Key::V4(k), SocketAddr::V4(v)) => {
                let entry = ReplyEntry {
                    vip_addr: u32::from_ne_bytes(v.ip().octets()),
                    vip_port: v.port().to_be(),
                    _pad: 0,
                    backend: slot,
                    vip_index,
                };
                self.filter(FilterSide::Backends, k, true)?;
                self.replies
                    .insert(k, entry, 0)
                    .map_err(map_err(maps::REPLIES))
            }
            (Key::V6(k), SocketAddr::V6(v)) => {
                let entry = ReplyEntry6 {
                    vip_addr: addr6(*v.ip()),
                    vip_port: v.port().to_be(),
                    _pad: 0,
                    backend: slot,
                    vip_index,
                };
                self.replies6
                    .insert(k, entry, 0)
                    .map_err(map_err(maps::REPLIES6))
            }
            _ => Err(DataplaneError::FamilyMismatch {
                backend: backend.addr,
                vip,
            }),
        }
    }

    pub fn remove_reply(&mut self, backend: impl Into<Endpoint>) -> Result<(), DataplaneError> {
        let (r, map, v4) = match key_of(backend.into()) {
            Key::V4(k) => (self.replies.remove(&k), maps::REPLIES, Some(k)),
            Key::V6(k) => (self.replies6.remove(&k), maps::REPLIES6, None),
        };
        self.removed(r, map, FilterSide::Backends, v4)
    }

    /// Entry `i` of ring `slot` of a VIP, as the data plane sees it: the
    /// backend slot it names, or [`NO_BACKEND`].
    pub fn ring_entry(&self, vip_index: u32, slot: u32, i: u32) -> Result<u32, DataplaneError> {
        let idx = (vip_index * RING_SLOTS + slot) * self.shape.ring_size + i;
        let r = self.rings.get(&idx, 0).map_err(map_err(maps::RINGS))?;
        Ok(if r == NO_BACKEND { r } else { ref_slot(r) })
    }

    /// Tells the program about this host: the MAC of each attached
    /// interface (frames for other MACs pass), the redirect targets
    /// (`TX_PORTS`), and the host's IPv4 addresses (traffic from a backend
    /// to one of them is ours, not a reply). Entries no longer true are
    /// removed. Cheap enough to repeat every few seconds.
    pub fn sync_host(&mut self, interfaces: &[String]) -> Result<(), DataplaneError> {
        let mut wanted = StdHashMap::new();
        for iface in interfaces {
            let io = |source| DataplaneError::Interface {
                iface: iface.clone(),
                source,
            };
            let ifindex = ifindex(iface).map_err(io)?;
            wanted.insert(ifindex, hw_addr(iface).map_err(io)?);
        }
        for slot in 0..IFACE_SLOTS {
            let meta = self.ifaces.get(&slot, 0).map_err(map_err(maps::IFACES))?;
            if meta.ifindex != 0 && !wanted.contains_key(&meta.ifindex) {
                self.ifaces
                    .set(slot, IfaceMeta::default(), 0)
                    .map_err(map_err(maps::IFACES))?;
                let _ = self.tx_ports.remove(meta.ifindex);
            }
        }
        for (&ifindex, &mac) in &wanted {
            let slot = ifindex % IFACE_SLOTS;
            let meta = IfaceMeta {
                ifindex,
                mac,
                _pad: [0; 2],
            };
            let current = self.ifaces.get(&slot, 0).map_err(map_err(maps::IFACES))?;
            if current.ifindex != 0
                && current.ifindex != ifindex
                && wanted.contains_key(&current.ifindex)
            {
                // The program then takes every frame on this interface as
                // addressed to it (no promiscuous-mode filter).
                tracing::warn!(
                    ifindex,
                    other = current.ifindex,
                    "two interfaces share a MAC-filter slot; frames for other hosts on the \
                     second are not told apart"
                );
            } else if current != meta {
                self.ifaces
                    .set(slot, meta, 0)
                    .map_err(map_err(maps::IFACES))?;
            }
            if self.tx_ports.get(ifindex, 0).map(|v| v.if_index).ok() != Some(ifindex) {
                self.tx_ports
                    .insert(ifindex, ifindex, None, 0)
                    .map_err(|e| DataplaneError::TxPort {
                        map: maps::TX_PORTS,
                        source: Box::new(e),
                    })?;
            }
        }
        let (local, local6) =
            local_addrs().map_err(|source| DataplaneError::LocalAddrs { source })?;
        sync_set(&mut self.local_addrs, local, maps::LOCAL_ADDRS)?;
        sync_set(&mut self.local_addrs6, local6, maps::LOCAL_ADDRS6)
    }

    /// The host addresses the program knows (`LOCAL_ADDRS`, `LOCAL_ADDRS6`).
    pub fn local_addrs(&self) -> Vec<IpAddr> {
        let v4 = self.local_addrs.keys().filter_map(Result::ok);
        let v6 = self.local_addrs6.keys().filter_map(Result::ok);
        v4.map(|a| IpAddr::V4(Ipv4Addr::from(a.to_ne_bytes())))
            .chain(v6.map(|a| IpAddr::V6(Ipv6Addr::from(a.octets()))))
            .collect()
    }
}

/// Makes the set `map` (key → 1) hold exactly `wanted`.
fn sync_set<K: aya::Pod + PartialEq>(
    map: &mut HashMap<MapData, K, u32>,
    wanted: Vec<K>,
    name: &'static str,
) -> Result<(), DataplaneError> {
    let known: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for k in &known {
        if !wanted.contains(k) {
            let _ = map.remove(k);
        }
    }
    for k in wanted {
        if !known.contains(&k) {
            map.insert(k, 1, 0).map_err(map_err(name))?;
        }
    }
    Ok(())
}

/// Whether a map error says the key was not there. aya 0.14 reports a
/// delete of a missing hash key as the syscall's ENOENT, not as
/// `KeyNotFound`: a removal that finds nothing has nothing to do.
fn absent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// The ifindex of `iface` in this thread's network namespace (sysfs may
/// show another namespace's).
fn ifindex(iface: &str) -> std::io::Result<u32> {
    let name = std::ffi::CString::new(iface).map_err(std::io::Error::other)?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// The hardware address of `iface` (SIOCGIFHWADDR).
fn hw_addr(iface: &str) -> std::io::Result<[u8; 6]> {
    // SAFETY: plain ioctl on a datagram socket with a zeroed ifreq whose
    // name we fill (NUL-terminated, within IFNAMSIZ).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr
            .ifr_name
            .iter_mut()
            .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
        {
            *d = s as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        let sa = ifr.ifr_ifru.ifru_hwaddr.sa_data;
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(sa.iter()) {
            *m = *b as u8;
        }
        Ok(mac)
    }
}

/// Every IPv4 and IPv6 address configured in this network namespace, as
/// `LOCAL_ADDRS` and `LOCAL_ADDRS6` key them.
pub(crate) fn local_addrs() -> std::io::Result<(Vec<u32>, Vec<Addr6>)> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut out6 = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: non-null sockaddr; its family says how to read it.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let addr = sin.sin_addr.s_addr;
                if !out.contains(&addr) {
                    out.push(addr);
                }
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let addr = Addr6::from_octets(sin6.sin6_addr.s6_addr);
                if !out6.contains(&addr) {
                    out6.push(addr);
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok((out, out6))
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap { map: name })?;
    T::try_from(map).map_err(map_err(name))
}

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

/// BPF_LINK_DETACH on a pinned link (aya 0.14 only closes fds and hides
/// them). Best effort: a link that cannot be opened or detached is still
/// unpinned by the caller, and detaches a little later.
pub(crate) fn detach_pinned_link(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    /// `union bpf_attr`, as large as the kernel's (unused tail zeroed).
    #[repr(C)]
    struct Attr {
        words: [u64; 16],
    }
    let Ok(cpath) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    let mut attr = Attr { words: [0; 16] };
    // BPF_OBJ_GET: pathname (u64 pointer), bpf_fd, file_flags.
    attr.words[0] = cpath.as_ptr() as u64;
    // SAFETY: bpf(2) with an attr of the kernel's size; the path outlives it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &mut attr as *mut Attr,
            std::mem::size_of::<Attr>() as u32,
        )
    };
    if fd < 0 {
        return;
    }
    let mut attr = Attr { words: [0; 16] };
    // BPF_LINK_DETACH: link_fd (u32, the first field).
    attr.words[0] = fd as u64;
    // SAFETY: as above; `fd` is ours and closed right after.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &mut attr as *mut Attr,
            std::mem::size_of::<Attr>() as u32,
        );
        libc::close(fd as i32);
    }
}

/// A counter snapshot, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub global: Vec<u64>,
    /// (vip index, pool name, vip, counters), for VIPs in the map.
    pub vips: Vec<VipStats>,
    pub backends: Vec<BackendStats>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VipStats {
    pub index: u32,
    pub pool: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub counters: VipCounters,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BackendStats {
    pub slot: u32,
    pub pool: String,
    pub name: String,
    pub addr: SocketAddr,
    pub state: u8,
    pub counters: BackendCounters,
}

impl Counters {
    pub fn get(&self, c: GlobalCounter) -> u64 {
        self.global.get(c as usize).copied().unwrap_or(0)
    }
}

/// Reads counters from the pinned maps; needs no controller.
pub struct CounterReader {
    global: PerCpuArray<MapData, u64>,
    vip_stats: PerCpuArray<MapData, VipCounters>,
    backend_stats: PerCpuArray<MapData, BackendCounters>,
    vips: HashMap<MapData, L4Addr, VipMeta>,
    vips6: HashMap<MapData, L4Addr6, VipMeta>,
    backends: Array<MapData, BackendMeta>,
    backend_addrs6: Array<MapData, Addr6>,
    names: Array<MapData, Name>,
}

impl CounterReader {
    pub fn open(pin_path: &Path) -> Result<CounterReader, DataplaneError> {
        Ok(CounterReader {
            global: open_pinned(pin_path, maps::GLOBAL_STATS)?,
            vip_stats: open_pinned(pin_path, maps::VIP_STATS)?,
            backend_stats: open_pinned(pin_path, maps::BACKEND_STATS)?,
            vips: open_pinned(pin_path, maps::VIPS)?,
            vips6: open_pinned(pin_path, maps::VIPS6)?,
            backends: open_pinned(pin_path, maps::BACKENDS)?,
            backend_addrs6: open_pinned(pin_path, maps::BACKEND_ADDRS6)?,
            names: open_pinned(pin_path, maps::NAMES)?,
        })
    }

    fn name(&self, index: u32) -> String {
        self.names
            .get(&index, 0)
            .map(|n| n.as_str().to_string())
            .unwrap_or_default()
    }

    pub fn read(&self) -> Result<Counters, DataplaneError> {
        let mut global = Vec::with_capacity(GlobalCounter::COUNT as usize);
        for i in 0..GlobalCounter::COUNT {
            let per_cpu = self
                .global
                .get(&i, 0)
                .map_err(map_err(maps::GLOBAL_STATS))?;
            global.push(per_cpu.iter().sum());
        }
        // The program counts verdicts only; every packet gets exactly one.
        global[GlobalCounter::Rx as usize] = GlobalCounter::VERDICTS
            .iter()
            .map(|&v| global[v as usize])
            .sum();
        let mut vips = Vec::new();
        let v4 = self.vips.iter().map(|i| {
            i.map(|(k, m)| (endpoint4(&k), m))
                .map_err(map_err(maps::VIPS))
        });
        let v6 = self.vips6.iter().map(|i| {
            i.map(|(k, m)| (endpoint6(&k), m))
                .map_err(map_err(maps::VIPS6))
        });
        for item in v4.chain(v6) {
            let (endpoint, meta) = item?;
            let Some(endpoint) = endpoint else {
                continue;
            };
            if meta.index >= MAX_VIPS {
                // Only a bug writes that (the program drops its packets as
                // internal errors); one bad entry must not hide the rest.
                continue;
            }
            let per_cpu = self
                .vip_stats
                .get(&meta.index, 0)
                .map_err(map_err(maps::VIP_STATS))?;
            let mut c = VipCounters::default();
            for v in per_cpu.iter() {
                c.packets += v.packets;
                c.bytes += v.bytes;
                c.new_flows += v.new_flows;
                c.rejected += v.rejected;
            }
            vips.push(VipStats {
                index: meta.index,
                pool: self.name(meta.index),
                vip: endpoint.addr,
                protocol: endpoint.protocol,
                counters: c,
            });
        }
        vips.sort_by_key(|v| v.index);
        let pool_of: StdHashMap<u32, String> =
            vips.iter().map(|v| (v.index, v.pool.clone())).collect();
        let mut backends = Vec::new();
        for slot in 0..MAX_BACKENDS {
            let meta = self
                .backends
                .get(&slot, 0)
                .map_err(map_err(maps::BACKENDS))?;
            if meta.state == lb_common::BACKEND_FREE {
                continue;
            }
            let per_cpu = self
                .backend_stats
                .get(&slot, 0)
                .map_err(map_err(maps::BACKEND_STATS))?;
            let mut c = BackendCounters::default();
            for v in per_cpu.iter() {
                c.packets += v.packets;
                c.bytes += v.bytes;
                c.new_flows += v.new_flows;
                c.reply_packets += v.reply_packets;
                c.reply_bytes += v.reply_bytes;
            }
            backends.push(BackendStats {
                slot,
                pool: pool_of
                    .get(&meta.vip_index)
                    .cloned()
                    .unwrap_or_else(|| self.name(meta.vip_index)),
                name: self.name(MAX_VIPS + slot),
                addr: backend_addr(&meta, || self.backend_addrs6.get(&slot, 0).ok()),
                state: meta.state,
                counters: c,
            });
        }
        Ok(Counters {
            global,
            vips,
            backends,
        })
    }
}

/// Established flows per backend slot: flow-table entries seen within
/// `idle` whose client has not sent FIN or RST. Abandoned connections stay
/// in the table until their slot is needed; the flag and the recency cut
/// keep them out of the count. Closed flows (RST, or FIN both ways) past
/// their linger, and flows idle past their VIP's `flow_idle_ms` (which the
/// program would select afresh anyway), are cleared on the way, so their
/// slots are free before any live flow's. Reads the table through its
/// mapping (a 16 MiB scan at the default size); stops after counting
/// `limit` flows.
pub fn flow_counts(
    pin_path: &Path,
    limit: usize,
    idle: std::time::Duration,
) -> Result<StdHashMap<u32, u64>, DataplaneError> {
    flow_census(pin_path, limit, idle).map(|c| c.established)
}

/// What a walk of the flow tables found, per backend slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowCensus {
    /// See [`flow_counts`].
    pub established: StdHashMap<u32, u64>,
    /// Recent TCP flows whose client never sent an ACK: the handshake did
    /// not complete (the backend's SYN-ACK never reached the client).
    pub half_open: StdHashMap<u32, u64>,
}

/// What the census makes of one flow entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowVerdict {
    /// Over (closed and lingered out, or idle past its VIP's
    /// `flow_idle_ms`): removed.
    Reap,
    /// Closing, or not seen within the census's idle cut: not counted.
    Skip,
    /// Counted as established on this backend slot.
    Established(u32),
    /// Counted as half open on this backend slot.
    HalfOpen(u32),
}

/// Judges a flow entry whose VIP has `flow_idle_ms`, at `now` (the
/// program's clock), counting only flows seen within `idle_ns`. UDP has no
/// handshake and no FIN: a UDP flow is established from its first packet,
/// and ends only by going quiet. Pure.
pub fn judge_flow(entry: &FlowSlot, flow_idle_ms: u32, now: u64, idle_ns: u64) -> FlowVerdict {
    // The program may stamp an entry after `now` was read (another CPU's
    // coarse clock ticked): that entry is fresh, not 52 days old. (A flow
    // idle for over half the clock's 52-day span reads as fresh too.)
    let age = match entry.age_ns(now) {
        a if a >= 1u64 << (32 + lb_common::FLOW_SEEN_SHIFT - 1) => 0,
        a => a,
    };
    if lb_common::flow_idle(flow_idle_ms, age) {
        return FlowVerdict::Reap;
    }
    let slot = ref_slot(entry.backend);
    let flags = entry.flags();
    if flags & lb_common::FLOW_F_UDP != 0 {
        return if age > idle_ns {
            FlowVerdict::Skip
        } else {
            FlowVerdict::Established(slot)
        };
    }
    if lb_common::flow_closed(flags) {
        return if age > lb_common::limits::FLOW_LINGER_NS {
            FlowVerdict::Reap
        } else {
            FlowVerdict::Skip
        };
    }
    if flags & lb_common::FLOW_F_CLOSING != 0 || age > idle_ns {
        return FlowVerdict::Skip;
    }
    if flags & lb_common::FLOW_F_ACKED == 0 {
        FlowVerdict::HalfOpen(slot)
    } else {
        FlowVerdict::Established(slot)
    }
}

/// `flow_idle_ms` of the VIP a backend slot serves, from the pinned
/// `BACKENDS`, `VIPS` and `VIPS6`; each slot looked up once.
struct IdleTimes {
    by_vip: StdHashMap<u32, u32>,
    backends: Array<MapData, BackendMeta>,
    by_slot: StdHashMap<u32, u32>,
}

impl IdleTimes {
    fn open(pin_path: &Path) -> Result<IdleTimes, DataplaneError> {
        let vips: HashMap<MapData, L4Addr, VipMeta> = open_pinned(pin_path, maps::VIPS)?;
        let vips6: HashMap<MapData, L4Addr6, VipMeta> = open_pinned(pin_path, maps::VIPS6)?;
        let by_vip = vips
            .iter()
            .flatten()
            .map(|(_, m)| m)
            .chain(vips6.iter().flatten().map(|(_, m)| m))
            .map(|m| (m.index, m.flow_idle_ms))
            .collect();
        Ok(IdleTimes {
            by_vip,
            backends: open_pinned(pin_path, maps::BACKENDS)?,
            by_slot: StdHashMap::new(),
        })
    }

    fn of_slot(&mut self, slot: u32) -> Result<u32, DataplaneError> {
        if let Some(&ms) = self.by_slot.get(&slot) {
            return Ok(ms);
        }
        let ms = if slot < MAX_BACKENDS {
            let vip = self
                .backends
                .get(&slot, 0)
                .map_err(map_err(maps::BACKENDS))?
                .vip_index;
            self.by_vip.get(&vip).copied().unwrap_or(0)
        } else {
            0
        };
        self.by_slot.insert(slot, ms);
        Ok(ms)
    }
}

/// [`flow_counts`] with the half-open flows counted too.
pub fn flow_census(
    pin_path: &Path,
    limit: usize,
    idle: std::time::Duration,
) -> Result<FlowCensus, DataplaneError> {
    let table = FlowTable::open(pin_path)?;
    let mut idle_of = IdleTimes::open(pin_path)?;
    let now = monotonic_coarse_ns();
    let idle = idle.as_nanos() as u64;
    let mut census = FlowCensus::default();
    let mut counted = 0;
    for (index, flow) in table.occupied() {
        let flow_idle_ms = idle_of.of_slot(ref_slot(flow.backend))?;
        let (map, slot) = match judge_flow(&flow, flow_idle_ms, now, idle) {
            FlowVerdict::Established(s) => (&mut census.established, s),
            FlowVerdict::HalfOpen(s) => (&mut census.half_open, s),
            FlowVerdict::Skip => continue,
            FlowVerdict::Reap => {
                // Given to another flow since it was read: fine.
                table.clear(index, flow.tag);
                continue;
            }
        };
        *map.entry(slot).or_insert(0) += 1;
        counted += 1;
        if counted >= limit {
            break;
        }
    }
    Ok(census)
}

/// A fresh key for the flow table's tags.
fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `bytes`. On failure (never on a
    // kernel with getrandom) the clock still makes seeds differ by host.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return monotonic_coarse_ns() ^ 0x9e37_79b9_7f4a_7c15;
    }
    u64::from_ne_bytes(bytes)
}

/// The clock the program stamps flows with (`bpf_ktime_get_coarse_ns`).
fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Index of a backend's name in `NAMES`.
pub const fn backend_name_index(slot: u32) -> u32 {
    MAX_VIPS + slot
}

const _: () = assert!(NAMES_LEN == MAX_VIPS + MAX_BACKENDS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_census_judges_each_protocol_by_its_own_rules() {
        const S: u64 = 1_000_000_000;
        let now = 1000 * S;
        let idle = 30 * S;
        let e = |flags: u16, age_ms: u64| FlowSlot {
            tag: 0x1234_5600 | flags as u64,
            backend: backend_ref(7, 3),
            seen: lb_common::flow_seen(now - age_ms * 1_000_000),
        };
        let udp_flags = lb_common::FLOW_F_UDP | lb_common::FLOW_F_ACKED;
        let tcp = |entry, flow_idle_ms| judge_flow(&entry, flow_idle_ms, now, idle);
        let udp = |entry: FlowSlot, flow_idle_ms| {
            let entry = FlowSlot {
                tag: entry.tag | udp_flags as u64,
                ..entry
            };
            judge_flow(&entry, flow_idle_ms, now, idle)
        };
        let acked = lb_common::FLOW_F_ACKED;
        assert_eq!(tcp(e(acked, 1000), 0), FlowVerdict::Established(7));
        assert_eq!(tcp(e(0, 1000), 0), FlowVerdict::HalfOpen(7));
        assert_eq!(tcp(e(acked, 31_000), 0), FlowVerdict::Skip);
        assert_eq!(
            tcp(e(acked | lb_common::FLOW_F_CLOSING, 1000), 0),
            FlowVerdict::Skip
        );
        assert_eq!(tcp(e(lb_common::FLOW_F_RESET, 1000), 0), FlowVerdict::Skip);
        assert_eq!(tcp(e(lb_common::FLOW_F_RESET, 5000), 0), FlowVerdict::Reap);
        // A TCP pool may idle flows out too.
        assert_eq!(tcp(e(acked, 20_000), 10_000), FlowVerdict::Reap);
        // UDP: established from the first packet, no FIN to wait for; gone
        // past idle + 1 s of clock resolution, not before (the entry's
        // clock ticks in ~1 ms units, hence the margins).
        assert_eq!(udp(e(0, 1000), 30_000), FlowVerdict::Established(7));
        assert_eq!(udp(e(0, 30_000), 30_000), FlowVerdict::Established(7));
        assert_eq!(udp(e(0, 32_000), 30_000), FlowVerdict::Reap);
        assert_eq!(udp(e(0, 5_990), 5_000), FlowVerdict::Established(7));
        assert_eq!(udp(e(0, 6_010), 5_000), FlowVerdict::Reap);
        // flow_idle_ms 0: never reaped, only left out of the count.
        assert_eq!(udp(e(0, 300_000), 0), FlowVerdict::Skip);
        // Stamped after `now` was read (another CPU's clock ticked): fresh.
        let ahead = FlowSlot {
            seen: lb_common::flow_seen(now + S / 100),
            ..e(0, 0)
        };
        assert_eq!(udp(ahead, 5_000), FlowVerdict::Established(7));
    }

    #[test]
    fn layout_differences_name_the_first_field_that_differs() {
        let want = MapShape {
            map_type: 2,
            key_size: 4,
            value_size: 64,
            max_entries: 4160,
        };
        assert_eq!(layout_difference(want, want), None);
        let older = MapShape {
            value_size: 32,
            max_entries: 100,
            ..want
        };
        assert_eq!(layout_difference(older, want), Some(("value size", 32, 64)));
        let hash = MapShape {
            map_type: 1,
            ..want
        };
        assert_eq!(layout_difference(hash, want), Some(("map type", 1, 2)));
    }
}
