//! What can go wrong loading, adopting, attaching and writing the data plane.
use std::{net::SocketAddr, path::PathBuf};

use aya::maps::MapError;
use thiserror::Error;

use super::bpffs::BPFFS_ROOT;

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
        "pinned data plane at {} keys its flow table otherwise than [sync] secret requires \
         (sync added, or the secret changed): its pinned flows could not be found under the \
         new key. Run `xdplb down` first to start afresh (this drops established flows once)",
        path.display()
    )]
    FlowSeedMismatch { path: PathBuf },
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
    #[error(
        "no running data plane at {}: its pins are missing ({}); start one with `xdplb run`, \
         or name its pin path with --pin-path",
        path.display(),
        missing.join(", ")
    )]
    NotRunning { path: PathBuf, missing: Vec<String> },
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
