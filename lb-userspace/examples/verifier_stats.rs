//! `cargo run --release --example verifier_stats`: loads the embedded XDP
//! programs under a scratch pin path and prints, per program, how many
//! instructions the verifier processed to accept it (its complexity budget
//! is 1,000,000; every load, test and restart pays the verification time)
//! and the stack depth of each of its BPF functions (512 bytes is the
//! limit of a call chain).
//!
//! The kernel reports the stack only in the verifier's log, and aya asks
//! for a log only when a load fails. So this example puts itself between
//! aya and the kernel: it defines `syscall`, which aya calls for bpf(2),
//! and for BPF_PROG_LOAD without a log it hands the kernel a log buffer at
//! level BPF_LOG_STATS (a few summary lines; verification is unchanged)
//! and keeps what comes back. Every other call goes straight to libc's.
use std::{
    ffi::{c_long, CStr},
    sync::Mutex,
    time::Instant,
};

/// `BPF_PROG_LOAD` (uapi `enum bpf_cmd`).
const BPF_PROG_LOAD: c_long = 5;
/// `BPF_LOG_STATS`: only the verification statistics.
const BPF_LOG_STATS: u32 = 4;
const LOG_SIZE: usize = 1 << 16;

/// (program name, verifier log) per successful-or-not load, in order.
static LOGS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Offsets in `union bpf_attr` for BPF_PROG_LOAD (uapi/linux/bpf.h).
const ATTR_LOG_LEVEL: usize = 24;
const ATTR_LOG_SIZE: usize = 28;
const ATTR_LOG_BUF: usize = 32;
const ATTR_PROG_NAME: usize = 48;

/// libc's `syscall`, interposed (see the module comment). x86-64 passes
/// variadic integer arguments in the same registers as fixed ones, so six
/// fixed ones cover every call.
///
/// # Safety
/// As libc's `syscall`: the arguments must suit the call.
#[no_mangle]
pub unsafe extern "C" fn syscall(
    num: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    type Real = unsafe extern "C" fn(c_long, ...) -> c_long;
    // SAFETY: libc's own `syscall`, found past this executable.
    let real: Real = unsafe {
        let p = libc::dlsym(libc::RTLD_NEXT, c"syscall".as_ptr());
        assert!(!p.is_null(), "no libc syscall");
        std::mem::transmute::<*mut libc::c_void, Real>(p)
    };
    if num != libc::SYS_bpf || a1 != BPF_PROG_LOAD {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { real(num, a1, a2, a3, a4, a5, a6) };
    }
    let attr = a2 as *mut u8;
    // SAFETY: aya's bpf_attr for BPF_PROG_LOAD, at least up to prog_name.
    unsafe {
        let log_size = (attr.add(ATTR_LOG_SIZE) as *mut u32).read_unaligned();
        if log_size != 0 {
            return real(num, a1, a2, a3, a4, a5, a6);
        }
        let mut log = vec![0u8; LOG_SIZE];
        (attr.add(ATTR_LOG_LEVEL) as *mut u32).write_unaligned(BPF_LOG_STATS);
        (attr.add(ATTR_LOG_SIZE) as *mut u32).write_unaligned(LOG_SIZE as u32);
        (attr.add(ATTR_LOG_BUF) as *mut u64).write_unaligned(log.as_mut_ptr() as u64);
        let rc = real(num, a1, a2, a3, a4, a5, a6);
        (attr.add(ATTR_LOG_LEVEL) as *mut u32).write_unaligned(0);
        (attr.add(ATTR_LOG_SIZE) as *mut u32).write_unaligned(0);
        (attr.add(ATTR_LOG_BUF) as *mut u64).write_unaligned(0);
        let name =
            CStr::from_bytes_until_nul(std::slice::from_raw_parts(attr.add(ATTR_PROG_NAME), 16))
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
        let text = CStr::from_bytes_until_nul(&log)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Ok(mut logs) = LOGS.lock() {
            logs.push((name, text));
        }
        rc
    }
}

fn main() -> anyhow::Result<()> {
    let pin_path = std::env::temp_dir().join(format!("xdplb-verifier-{}", std::process::id()));
    let pin_path = std::path::PathBuf::from("/sys/fs/bpf").join(pin_path.file_name().unwrap());
    let shape = xdplb::dataplane::Shape {
        pin_path: pin_path.clone(),
        flow_table_size: 1024,
        ring_size: lb_common::limits::DEFAULT_RING_SIZE,
    };
    let started = Instant::now();
    // Tunnel sources of both families, so the tunnel paths are live code
    // (with none, the verifier prunes them as dead).
    let tuning = xdplb::dataplane::Tuning {
        tunnel_source_v4: Some("198.18.1.1/32".parse()?),
        tunnel_source_v6: Some("2001:2:0:1::1/128".parse()?),
        ..Default::default()
    };
    let loaded = xdplb::dataplane::Dataplane::load_tuned(shape, tuning);
    let elapsed = started.elapsed();
    let logs = LOGS.lock().map(|l| l.clone()).unwrap_or_default();
    // Then `xdplb explain`'s object over the same pins: the same programs
    // built with writes off and a trace (each verified on its own budget).
    let explain = loaded.as_ref().ok().map(|_| {
        xdplb::dataplane::Explainer::open(&pin_path, &tuning).map(|e| e.verified_instructions())
    });
    let explain_logs: Vec<(String, String)> = LOGS
        .lock()
        .map(|l| l[logs.len()..].to_vec())
        .unwrap_or_default();
    let result = loaded
        .map_err(anyhow::Error::from)
        .map(|dp| dp.verified_instructions());
    let _ = xdplb::dataplane::down(&pin_path);
    println!("loaded in {:.2} s", elapsed.as_secs_f64());
    print_counts("", result?, &logs);
    match explain {
        Some(Ok(counts)) => print_counts("explain ", counts, &explain_logs),
        Some(Err(e)) => println!("explain object: {e}"),
        None => {}
    }
    Ok(())
}

/// One line per program: instructions verified and its functions' stack.
fn print_counts(prefix: &str, counts: Vec<(&'static str, Option<u32>)>, logs: &[(String, String)]) {
    for (program, count) in counts {
        // The kernel keeps 15 bytes of a program's name.
        let stack = logs
            .iter()
            .rev()
            .find(|(name, _)| name == &program[..program.len().min(15)])
            .and_then(|(_, log)| {
                log.lines()
                    .find_map(|l| l.strip_prefix("stack depth "))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "?".into());
        match count {
            Some(n) => {
                println!("{prefix}{program}: {n} instructions verified; stack depth {stack}")
            }
            None => println!("{prefix}{program}: the kernel does not report verified instructions"),
        }
    }
}
