//! What the admin socket asks the running controller ([`Command`]). Its
//! own module so the imports run one way: `admin` (the socket) and
//! `controller` (which answers) both use it, and `controller` uses `admin`.
use tokio::sync::oneshot;

use std::path::PathBuf;

use crate::status::{ChangePlan, Status};

/// What the admin socket asks the running controller. Each carries the
/// channel its answer goes back on.
#[derive(Debug)]
pub enum Command {
    Status {
        reply: oneshot::Sender<Status>,
    },
    /// A runtime state: drain, undrain, maintenance, ready, weight.
    Admin {
        pool: String,
        backend: String,
        action: AdminAction,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// What a change would do, computed without writing anything.
    Plan {
        proposal: Proposal,
        reply: oneshot::Sender<ChangePlan>,
    },
    /// Re-read the config file: `Ok(summary of what changed)` or
    /// `Err(why it was refused)`; a refused config changes nothing.
    Reload {
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// What an operator sets on a backend at run time (HAProxy's runtime
/// API: `set server … state drain|maint|ready`, `set weight`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminAction {
    /// `xdplb drain`: no new flows, established ones continue.
    Drain,
    /// `xdplb undrain`: clears the operator's drain only.
    Undrain,
    /// `xdplb maint`: no new flows, health checks stopped.
    Maint,
    /// `xdplb ready`: clears the operator's drain and maintenance and the
    /// agent's kept drain or maintenance (not a weight override).
    Ready,
    /// `xdplb set weight`: `Some(0..=1000)` in place of the config's
    /// weight (0: no new flows), `None` back to the config's.
    Weight(Option<u32>),
}

impl AdminAction {
    /// What was done to `what` (`web/web-1`), for the operator.
    pub fn done(self, what: &str) -> String {
        match self {
            AdminAction::Drain => format!("drained {what}"),
            AdminAction::Undrain => format!("undrained {what}"),
            AdminAction::Maint => format!("{what} in maintenance"),
            AdminAction::Ready => format!("{what} ready"),
            AdminAction::Weight(Some(w)) => format!("{what} weight {w}"),
            AdminAction::Weight(None) => format!("{what} weight back to its config's"),
        }
    }
}

/// A change `xdplb plan` or `xdplb drain --dry-run` asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proposal {
    /// A reload of the config file at `path` (read by the controller).
    Config { path: PathBuf },
    /// `xdplb drain POOL BACKEND`.
    Drain { pool: String, backend: String },
}
