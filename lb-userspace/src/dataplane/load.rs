//! Loading the program: a fresh data plane, or one adopting the pinned maps
//! (flow table, seed and all).
use std::{collections::HashMap as StdHashMap, fs, path::Path};

use aya::{
    maps::{Array, Map, MapData, MapError},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use lb_common::{
    limits::{MAX_BACKENDS, MAX_VIPS},
    maps, rings_len, BackendMeta, LAYOUT_VERSION, RING_SLOTS,
};

use super::{
    check_pinned_layout, ensure_local_bpffs, map_err, monotonic_coarse_ns, open_pinned, Dataplane,
    DataplaneError, Shape, Tuning, TunnelGlobals, PROGRAM_OBJECT,
};

/// The tail-called programs by `TAILS` slot (see `lb_common::TAIL_IPV6`).
pub(super) const TAIL_PROGRAMS: [(u32, &str); 7] = [
    (lb_common::TAIL_IPV6, maps::PROGRAM_IPV6),
    (lb_common::TAIL_UDP4, maps::PROGRAM_UDP4),
    (lb_common::TAIL_UDP4_REPLY, maps::PROGRAM_UDP4_REPLY),
    (lb_common::TAIL_UDP6, maps::PROGRAM_UDP6),
    (lb_common::TAIL_ICMP6, maps::PROGRAM_ICMP6),
    (lb_common::TAIL_FRAG4, maps::PROGRAM_FRAG4),
    (lb_common::TAIL_FRAG6, maps::PROGRAM_FRAG6),
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

/// Loads the entry program and every program it tail-calls, of either
/// object (the data plane's or explain's: the same names).
pub(super) fn load_programs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    for name in std::iter::once(maps::PROGRAM).chain(TAIL_PROGRAMS.map(|(_, n)| n)) {
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

/// `ebpf`'s tail-called programs by `TAILS` slot, as a `TAILS` table
/// takes them (each fd a clone: the table can be borrowed from `ebpf`).
pub(super) fn tail_fds(
    ebpf: &Ebpf,
) -> Result<Vec<(u32, aya::programs::ProgramFd)>, DataplaneError> {
    TAIL_PROGRAMS
        .iter()
        .map(|&(slot, name)| {
            let prog: &Xdp = ebpf
                .program(name)
                .and_then(|p| <&Xdp>::try_from(p).ok())
                .ok_or(DataplaneError::MissingMap { map: name })?;
            let fd = prog
                .fd()
                .and_then(|fd| fd.try_clone().map_err(Into::into))
                .map_err(|e| DataplaneError::Program {
                    source: Box::new(e),
                })?;
            Ok((slot, fd))
        })
        .collect()
}

/// Instructions the verifier processed for each of `ebpf`'s programs (the
/// kernel's `verified_insns`; `None` before Linux 5.16).
pub(super) fn verified_instructions(ebpf: &Ebpf) -> Vec<(&'static str, Option<u32>)> {
    std::iter::once(maps::PROGRAM)
        .chain(TAIL_PROGRAMS.map(|(_, n)| n))
        .map(|name| {
            let count = ebpf
                .program(name)
                .and_then(|p| <&Xdp>::try_from(p).ok())
                .and_then(|p| p.info().ok())
                .and_then(|i| i.verified_instruction_count());
            (name, count)
        })
        .collect()
}

fn pinned_max_entries(path: &Path) -> Option<u32> {
    let md = MapData::from_pin(path).ok()?;
    md.info().ok().map(|i| i.max_entries())
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

/// A fresh key for the flow table's tags.
pub(super) fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `bytes`. On failure (never on a
    // kernel with getrandom) the clock still makes seeds differ by host.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return monotonic_coarse_ns() ^ 0x9e37_79b9_7f4a_7c15;
    }
    u64::from_ne_bytes(bytes)
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
        // or the flows they hold would no longer be found. A seed `[sync]`
        // requires that the pins do not have is refused, never swapped in:
        // it would lose every pinned flow silently.
        let flow_seed = if shape.pin_path.join(maps::FLOW_SEED).exists() {
            let pinned = open_pinned::<Array<MapData, u64>>(&shape.pin_path, maps::FLOW_SEED)?
                .get(&0, 0)
                .map_err(map_err(maps::FLOW_SEED))?;
            if tuning.flow_seed.is_some_and(|want| want != pinned) {
                return Err(DataplaneError::FlowSeedMismatch {
                    path: shape.pin_path.clone(),
                });
            }
            pinned
        } else {
            tuning.flow_seed.unwrap_or_else(random_seed)
        };
        let flow_buckets = lb_common::flow_buckets(shape.flow_table_size);
        let ring_size = shape.ring_size;
        let TunnelGlobals {
            source_v4: tunnel_source,
            host_bits_v4: tunnel_host_bits,
            source_v6: tunnel_source_v6,
            host_bits_v6: tunnel_host_bits_v6,
        } = tuning.tunnel_globals();
        // The cap is the host's; each CPU enforces its share (a per-CPU
        // window, no shared counter for every insert to contend on).
        // (The possible CPUs, as the kernel sizes per-CPU maps; the online
        // ones if that file cannot be read.)
        let cpus = aya::util::nr_cpus()
            .ok()
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1);
        let inserts_per_cpu = tuning.inserts_per_cpu(cpus);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&shape.pin_path)
            .map_max_entries(maps::RINGS, rings_len(ring_size))
            .map_max_entries(maps::FLOWS, flow_buckets)
            .override_global("FLOW_TAG_SEED", &flow_seed, true)
            .override_global("FLOW_BUCKETS", &flow_buckets, true)
            .override_global("RING_SIZE", &ring_size, true)
            .override_global("MAX_FLOW_INSERTS_PER_SEC", &inserts_per_cpu, true)
            .override_global("ANSWER_COST_NS", &tuning.answer_cost_ns(), true)
            .override_global("TUNNEL_SOURCE_V4", &tunnel_source, true)
            .override_global("TUNNEL_HOST_BITS_V4", &tunnel_host_bits, true)
            // Not required: a program without IPv6 tunnels has no such
            // global, and aya skips a missing one only when told so.
            .override_global("TUNNEL_SOURCE_V6", &tunnel_source_v6, false)
            .override_global("TUNNEL_HOST_BITS_V6", &tunnel_host_bits_v6, false)
            .load(PROGRAM_OBJECT)
            .map_err(|source| DataplaneError::Load {
                source: Box::new(source),
            })?;
        load_programs(&mut ebpf)?;
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
        let vip_addrs = take(&mut ebpf, maps::VIP_ADDRS)?;
        let vip_addrs6 = take(&mut ebpf, maps::VIP_ADDRS6)?;
        let reply_addrs = take(&mut ebpf, maps::REPLY_ADDRS)?;
        let reply_addrs6 = take(&mut ebpf, maps::REPLY_ADDRS6)?;
        let extra_macs = take(&mut ebpf, maps::EXTRA_MACS)?;
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
            vip_addrs,
            vip_addrs6,
            reply_addrs,
            reply_addrs6,
            extra_macs,
            filtered: Default::default(),
            // Filled by the rebuilds below.
            filter_words: Vec::new(),
            vip_pools: StdHashMap::new(),
            generations,
            written: StdHashMap::new(),
        };
        // Adopted maps: the filter must cover every address they hold, and
        // the VIP addresses every VIP.
        dp.rebuild_addr_filter()?;
        dp.rebuild_vip_addrs()?;
        dp.rebuild_reply_addrs()?;
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
        let fds = tail_fds(&self.ebpf)?;
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
        verified_instructions(&self.ebpf)
    }

    /// The loaded XDP program (tests run it with `test_run`).
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(maps::PROGRAM)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("load() checked the program exists and is XDP")
    }

    pub(super) fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(maps::PROGRAM)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("load() checked the program exists and is XDP")
    }
}
