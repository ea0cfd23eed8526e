//! What the demos (`cargo xtask demo`, `demo fleet`, `demo pair`) share:
//! headings, and pauses that end early on Ctrl-C or SIGTERM so the demo
//! can remove what it built.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Notes SIGINT and SIGTERM instead of dying of them: [`pause`] then fails,
/// and the demo's cleanup runs.
pub fn catch_interrupts() {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether SIGINT or SIGTERM came since [`catch_interrupts`].
fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Waits `d`, failing as soon as the demo is interrupted.
pub fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if interrupted() {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A step's heading (bold on a terminal).
pub fn say(title: &str) {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(1) } == 1 {
        println!("\n\x1b[1m== {title}\x1b[0m");
    } else {
        println!("\n== {title}");
    }
}
