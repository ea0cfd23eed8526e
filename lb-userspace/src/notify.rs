//! systemd service notifications (`Type=notify`): `READY=1` once the
//! controller has written the data plane for the first time, `WATCHDOG=1`
//! from its main loop while `WatchdogSec=` is set, `STOPPING=1` on the way
//! out. Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Tracks what has been sent to the service manager.
#[derive(Debug)]
pub struct Systemd {
    ready_sent: bool,
    /// Ping period: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    /// recommends, so one late loop turn does not trip the watchdog.
    watchdog_every: Option<Duration>,
    last_ping: Option<Instant>,
}

impl Systemd {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`) from the environment.
    pub fn from_env() -> Systemd {
        Systemd {
            ready_sent: false,
            watchdog_every: sd_notify::watchdog_enabled().map(|d| d / 2),
            last_ping: None,
        }
    }

    /// One turn of the main loop: `ready` once the first map sync is done.
    /// Sends READY=1 the first time, and a watchdog ping when one is due.
    pub fn beat(&mut self, ready: bool) {
        if ready && !self.ready_sent {
            self.ready_sent = true;
            send(&[
                NotifyState::Ready,
                NotifyState::Status("data plane synced; serving"),
            ]);
        }
        if let Some(every) = self.watchdog_every {
            if self.last_ping.is_none_or(|t| t.elapsed() >= every) {
                self.last_ping = Some(Instant::now());
                send(&[NotifyState::Watchdog]);
            }
        }
    }

    /// The controller is leaving (the data plane stays).
    pub fn stopping(&self) {
        send(&[
            NotifyState::Stopping,
            NotifyState::Status("controller stopped; data plane left forwarding"),
        ]);
    }
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
