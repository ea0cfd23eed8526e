//! What the admin socket asks the running controller ([`Command`]). Its
//! own module so the imports run one way: `admin` (the socket) and
//! `controller` (which answers) both use it, and `controller` uses `admin`.
use tokio::sync::oneshot;

use crate::status::Status;

/// What the admin socket asks the running controller. Each carries the
/// channel its answer goes back on.
#[derive(Debug)]
pub enum Command {
    Status {
        reply: oneshot::Sender<Status>,
    },
    /// `drain = true` drains, `false` undrains.
    Drain {
        pool: String,
        backend: String,
        drain: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Re-read the config file: `Ok(summary of what changed)` or
    /// `Err(why it was refused)`; a refused config changes nothing.
    Reload {
        reply: oneshot::Sender<Result<String, String>>,
    },
}
