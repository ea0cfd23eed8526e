//! `xdplb explain`'s half in the data plane: the explain object (lb-ebpf's
//! `explain.rs`, the data plane's code built with its writes turned off
//! and a trace recorded) loaded over a running data plane's pinned maps,
//! and one frame run through it with BPF_PROG_TEST_RUN.
//!
//! Nothing under the pin path is written: the object's pinned maps are
//! opened from their pins (a missing one is refused before loading, or
//! aya would create and pin it), its programs are never attached, and its
//! tail-call table, trace and per-CPU scratch maps are its own.
use std::path::{Path, PathBuf};

use aya::{
    maps::{Array, MapData, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{limits::MAX_VIPS, maps, ExplainTrace, BACKEND_FREE, IFACE_SLOTS, RING_SLOTS};

use super::{
    load::{load_programs, tail_fds, verified_instructions},
    map_err, open_pinned, DataplaneError, Tuning,
};

/// The explain object built by `build.rs` (aya-build), embedded.
static EXPLAIN_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf-explain"));

/// The explain programs over one pin path's maps.
pub struct Explainer {
    ebpf: Ebpf,
    /// Held: the kernel empties a program array when its last user-space
    /// reference goes.
    _tails: ProgramArray<MapData>,
    trace: Array<MapData, ExplainTrace>,
    pin_path: PathBuf,
    ring_size: u32,
}

/// One frame's run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explained {
    /// The XDP action the program returned.
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    pub trace: ExplainTrace,
}

fn pinned_max_entries(pin_path: &Path, name: &'static str) -> Result<u32, DataplaneError> {
    let md = MapData::from_pin(pin_path.join(name)).map_err(map_err(name))?;
    md.info().map(|i| i.max_entries()).map_err(map_err(name))
}

impl Explainer {
    /// Loads the explain programs over the data plane pinned at
    /// `pin_path`, with the data plane's load-time constants: the flow
    /// table's seed and shape and the ring size from the pins, the tunnel
    /// sources and answer rate from `tuning` (the config's).
    pub fn open(pin_path: &Path, tuning: &Tuning) -> Result<Explainer, DataplaneError> {
        if EXPLAIN_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let obj = aya_obj::Object::parse(EXPLAIN_OBJECT).map_err(|e| DataplaneError::Load {
            source: Box::new(aya::EbpfError::ParseError(e)),
        })?;
        let mut missing: Vec<String> = obj
            .maps
            .iter()
            .filter(|(_, m)| m.pinning() == aya_obj::maps::PinningType::ByName)
            .map(|(name, _)| name.clone())
            .filter(|name| !pin_path.join(name).exists())
            .collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(DataplaneError::NotRunning {
                path: pin_path.to_path_buf(),
                missing,
            });
        }
        let seed: u64 = open_pinned::<Array<MapData, u64>>(pin_path, maps::FLOW_SEED)?
            .get(&0, 0)
            .map_err(map_err(maps::FLOW_SEED))?;
        let flow_buckets = pinned_max_entries(pin_path, maps::FLOWS)?;
        let rings_len = pinned_max_entries(pin_path, maps::RINGS)?;
        let ring_size = rings_len / (MAX_VIPS * RING_SLOTS);
        let tunnel = tuning.tunnel_globals();
        // No insert cap: the data plane's window is per CPU and its own;
        // explain reports the insert the table would get room for.
        let no_cap = 0u32;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_path)
            .map_max_entries(maps::RINGS, rings_len)
            .map_max_entries(maps::FLOWS, flow_buckets)
            .override_global("FLOW_TAG_SEED", &seed, true)
            .override_global("FLOW_BUCKETS", &flow_buckets, true)
            .override_global("RING_SIZE", &ring_size, true)
            .override_global("MAX_FLOW_INSERTS_PER_SEC", &no_cap, true)
            .override_global("ANSWER_COST_NS", &tuning.answer_cost_ns(), true)
            .override_global("TUNNEL_SOURCE_V4", &tunnel.source_v4, true)
            .override_global("TUNNEL_HOST_BITS_V4", &tunnel.host_bits_v4, true)
            .override_global("TUNNEL_SOURCE_V6", &tunnel.source_v6, false)
            .override_global("TUNNEL_HOST_BITS_V6", &tunnel.host_bits_v6, false)
            .load(EXPLAIN_OBJECT)
            .map_err(|source| DataplaneError::Load {
                source: Box::new(source),
            })?;
        load_programs(&mut ebpf)?;
        let fds = tail_fds(&ebpf)?;
        let mut tails: ProgramArray<MapData> = ProgramArray::try_from(
            ebpf.take_map(maps::TAILS)
                .ok_or(DataplaneError::MissingMap { map: maps::TAILS })?,
        )
        .map_err(map_err(maps::TAILS))?;
        for (slot, fd) in &fds {
            tails.set(*slot, fd, 0).map_err(map_err(maps::TAILS))?;
        }
        let trace = Array::try_from(
            ebpf.take_map(maps::EXPLAIN)
                .ok_or(DataplaneError::MissingMap { map: maps::EXPLAIN })?,
        )
        .map_err(map_err(maps::EXPLAIN))?;
        Ok(Explainer {
            ebpf,
            _tails: tails,
            trace,
            pin_path: pin_path.to_path_buf(),
            ring_size,
        })
    }

    /// Instructions the verifier processed for each explain program (the
    /// kernel's `verified_insns`; `None` before Linux 5.16).
    pub fn verified_instructions(&self) -> Vec<(&'static str, Option<u32>)> {
        verified_instructions(&self.ebpf)
    }

    /// Entries of each VIP ring (`ring_size`), read from the pins.
    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// Runs `frame`, arriving on interface `ifindex`, through the explain
    /// programs once.
    pub fn run(&mut self, frame: &[u8], ifindex: u32) -> Result<Explained, DataplaneError> {
        self.trace
            .set(0, ExplainTrace::EMPTY, 0)
            .map_err(map_err(maps::EXPLAIN))?;
        let prog: &Xdp = self
            .ebpf
            .program(maps::PROGRAM)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .ok_or(DataplaneError::MissingMap { map: maps::PROGRAM })?;
        // `struct xdp_md`: data_end (the length) and ingress_ifindex.
        let mut md = [0u8; 24];
        md[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        md[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        // Room for what the program may add: an outer header, an answer.
        let mut out = vec![0u8; frame.len() + 256];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&md),
                ..Default::default()
            })
            .map_err(|e| DataplaneError::Program {
                source: Box::new(e),
            })?;
        out.truncate(res.data_size_out as usize);
        let trace = self.trace.get(&0, 0).map_err(map_err(maps::EXPLAIN))?;
        Ok(Explained {
            action: res.return_value,
            frame: out,
            trace,
        })
    }

    /// A backend slot's state (`BACKEND_*`), or `None` for a free slot.
    pub fn backend_state(&self, slot: u32) -> Result<Option<u8>, DataplaneError> {
        let backends: Array<MapData, lb_common::BackendMeta> =
            open_pinned(&self.pin_path, maps::BACKENDS)?;
        let meta = backends.get(&slot, 0).map_err(map_err(maps::BACKENDS))?;
        Ok((meta.state != BACKEND_FREE).then_some(meta.state))
    }

    /// A name from the `NAMES` map (a pool's by VIP index, a backend's by
    /// `backend_name_index`).
    pub fn name(&self, index: u32) -> Result<String, DataplaneError> {
        let names: Array<MapData, lb_common::Name> = open_pinned(&self.pin_path, maps::NAMES)?;
        let n = names.get(&index, 0).map_err(map_err(maps::NAMES))?;
        Ok(n.as_str().to_string())
    }

    /// The MAC the data plane holds for attached interface `ifindex`
    /// (`IFACES`), if it is attached.
    pub fn iface_mac(&self, ifindex: u32) -> Result<Option<[u8; 6]>, DataplaneError> {
        let ifaces: Array<MapData, lb_common::IfaceMeta> =
            open_pinned(&self.pin_path, maps::IFACES)?;
        let meta = ifaces
            .get(&(ifindex % IFACE_SLOTS), 0)
            .map_err(map_err(maps::IFACES))?;
        Ok((meta.ifindex == ifindex).then_some(meta.mac))
    }

    /// The attached interface whose MAC is `mac` (the source MAC of a
    /// frame the program sends out of it).
    pub fn iface_of_mac(&self, mac: [u8; 6]) -> Result<Option<u32>, DataplaneError> {
        let ifaces: Array<MapData, lb_common::IfaceMeta> =
            open_pinned(&self.pin_path, maps::IFACES)?;
        for slot in 0..IFACE_SLOTS {
            let meta = ifaces.get(&slot, 0).map_err(map_err(maps::IFACES))?;
            if meta.ifindex != 0 && meta.mac == mac {
                return Ok(Some(meta.ifindex));
            }
        }
        Ok(None)
    }
}
