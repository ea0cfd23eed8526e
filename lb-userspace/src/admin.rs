//! The admin socket: how `xdplb status|drain|undrain|maint|ready|set
//! weight|reload` talk to the running controller.
//!
//! A unix stream socket (default `/run/xdplb.sock`, mode 0600, so root
//! only) carrying JSON lines. Each request is one line, each answer one
//! line; a connection may carry several requests in turn.
//!
//! ```text
//! → {"v":1,"cmd":"status"}
//! ← {"v":1,"ok":true,"status":{"pools":[...]}}
//! → {"v":1,"cmd":"drain","pool":"web","backend":"web-1"}
//! ← {"v":1,"ok":true,"message":"drained web/web-1"}
//! → {"v":1,"cmd":"set_weight","pool":"web","backend":"web-1","weight":0}
//! ← {"v":1,"ok":true,"message":"web/web-1 weight 0"}
//! → {"v":1,"cmd":"reload"}
//! ← {"v":1,"ok":false,"error":"xdplb.toml:3:1: ..."}
//! ```
//!
//! `v` is the protocol version ([`PROTOCOL_VERSION`]); a request with
//! another version, malformed JSON, an unknown command or an oversize line
//! gets an `ok:false` reply and never disturbs the daemon.
//!
//! [`serve`] is the server half (the controller runs it and answers the
//! [`Command`]s it sends); [`request`] is the client half.
use std::{
    future::Future,
    io,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, Semaphore},
    task::JoinSet,
};

use crate::{
    command::{AdminAction, Command, Proposal},
    status::{ChangePlan, Status},
};

/// The wire protocol version this build speaks (`"v"` in every message).
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line the server reads. Requests are a few dozen bytes;
/// the bound only keeps a broken or hostile client from growing a buffer.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;
/// Longest reply line the client reads. A status of every backend the maps
/// hold (4096) is about 1.5 MiB; this leaves ample room.
pub const MAX_REPLY_LINE: usize = 16 * 1024 * 1024;
/// A connection idle this long between requests is closed, so forgotten
/// clients do not hold tasks forever.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server waits for the controller to answer a command. A
/// reload re-reads and validates the config, which takes milliseconds; a
/// controller that takes longer is stuck, and the client should hear so.
pub const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client waits for a reply (the server's own bound on the
/// controller, plus slack).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Writing a reply to a client that does not read gives up after this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent admin connections. Operators and scripts use a handful; the
/// bound keeps a runaway script from exhausting file descriptors.
pub const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, Error)]
pub enum AdminError {
    #[error("no controller answering on {} (is `xdplb run` up?)", path.display())]
    NotRunning { path: PathBuf },
    #[error(
        "permission denied on {} (the admin socket is root only: run as root)",
        path.display()
    )]
    PermissionDenied { path: PathBuf },
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the controller on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the controller on {} did not answer within {}s", path.display(), timeout.as_secs())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("the controller on {} sent a malformed reply: {reason}", path.display())]
    BadReply { path: PathBuf, reason: String },
    #[error(
        "the controller on {} speaks admin protocol v{got}, this xdplb speaks v{expected} \
         (mismatched xdplb binaries?)",
        path.display()
    )]
    Version {
        path: PathBuf,
        got: u32,
        expected: u32,
    },
    /// The controller answered `ok: false`.
    #[error("{error}")]
    Refused { error: String },
    #[error(
        "another xdplb controller is answering on {}; stop it first or set \
         control.admin_socket to another path",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot remove stale admin socket {}: {source}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on admin socket {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make admin socket {} mode 0600: {source}", path.display())]
    Chmod {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What a client asks. On the wire: `{"v":1,"cmd":"<name>",...fields}`:
/// serde's internally tagged enum with `deny_unknown_fields`, every
/// variant a struct (a unit variant would let unknown fields pass).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// The controller's live view.
    Status {},
    /// Operator drain: no new flows, established ones continue.
    Drain {
        pool: String,
        backend: String,
    },
    Undrain {
        pool: String,
        backend: String,
    },
    /// Maintenance: no new flows, health checks stopped.
    Maint {
        pool: String,
        backend: String,
    },
    /// Back to ready: clears drain and maintenance (the operator's and
    /// the agent's), not a weight override.
    Ready {
        pool: String,
        backend: String,
    },
    /// A weight in place of the config's (0..=1000; 0 = no new flows);
    /// `null` (or absent) = back to the config's.
    #[serde(rename = "set_weight")]
    SetWeight {
        pool: String,
        backend: String,
        #[serde(default)]
        weight: Option<u32>,
    },
    /// Re-read the config file (same as SIGHUP).
    Reload {},
    /// What a reload of the config file at `config` (an absolute path the
    /// controller reads) would do; nothing is written.
    Plan {
        config: String,
    },
    /// What `drain` would do; nothing is written.
    #[serde(rename = "plan_drain")]
    PlanDrain {
        pool: String,
        backend: String,
    },
}

impl Request {
    /// The command names, for error messages.
    pub const NAMES: [&'static str; 9] = [
        "status",
        "drain",
        "undrain",
        "maint",
        "ready",
        "set_weight",
        "reload",
        "plan",
        "plan_drain",
    ];

    /// The request as one JSON line, with its version and newline.
    pub fn to_line(&self) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            v: u32,
            #[serde(flatten)]
            req: &'a Request,
        }
        let mut line = serde_json::to_string(&Wire {
            v: PROTOCOL_VERSION,
            req: self,
        })
        .expect("a request always serialises");
        line.push('\n');
        line
    }

    /// Parses one request line; the error is the reason to send back.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("malformed JSON: {e}"))?;
        let serde_json::Value::Object(mut obj) = value else {
            return Err("a request must be a JSON object".to_string());
        };
        match obj.remove("v") {
            Some(v) if v.as_u64() == Some(PROTOCOL_VERSION.into()) => {}
            Some(v) => {
                return Err(format!(
                    "unsupported protocol version {v} (this controller speaks {PROTOCOL_VERSION})"
                ))
            }
            None => {
                return Err(format!(
                    "missing protocol version \"v\" (this controller speaks {PROTOCOL_VERSION})"
                ))
            }
        }
        let unknown = match obj.get("cmd") {
            Some(serde_json::Value::String(c)) if !Request::NAMES.contains(&c.as_str()) => {
                Some(c.clone())
            }
            _ => None,
        };
        serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| match unknown {
            Some(c) => format!(
                "unknown command {c:?} (expected one of {})",
                Request::NAMES.join(", ")
            ),
            None if e.to_string().starts_with("missing field `cmd`") => {
                "missing command \"cmd\"".to_string()
            }
            None => e.to_string(),
        })
    }
}

/// The controller's answer. On the wire:
/// `{"v":1,"ok":true,...}` or `{"v":1,"ok":false,"error":"..."}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    /// Why the request failed (`ok: false` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was done, for a person: `drained web/web-1`, a reload summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The live view (`status` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// What a change would do (`plan`, `plan_drain`; `ok` is true also
    /// when the plan says it would be refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<ChangePlan>,
}

impl Response {
    pub fn status(status: Status) -> Response {
        Response {
            status: Some(status),
            ..Response::ok()
        }
    }

    pub fn message(message: impl Into<String>) -> Response {
        Response {
            message: Some(message.into()),
            ..Response::ok()
        }
    }

    pub fn error(error: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(error.into()),
            ..Response::ok()
        }
    }

    fn ok() -> Response {
        Response {
            v: PROTOCOL_VERSION,
            ok: true,
            error: None,
            plan: None,
            message: None,
            status: None,
        }
    }

    /// `Err(AdminError::Refused)` carrying the controller's reason when
    /// `ok` is false.
    pub fn into_result(self) -> Result<Response, AdminError> {
        if self.ok {
            Ok(self)
        } else {
            Err(AdminError::Refused {
                error: self
                    .error
                    .unwrap_or_else(|| "the controller refused without a reason".to_string()),
            })
        }
    }

    fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a response always serialises");
        line.push('\n');
        line
    }
}

/// Sends one request to the controller listening on `path` and returns its
/// answer (which may say `ok: false`; see [`Response::into_result`]).
pub async fn request(path: &Path, req: &Request) -> Result<Response, AdminError> {
    let io_err = |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => AdminError::NotRunning {
                path: path.to_path_buf(),
            },
            io::ErrorKind::PermissionDenied => AdminError::PermissionDenied {
                path: path.to_path_buf(),
            },
            _ => AdminError::Connect {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let exchange = async {
        let (rd, mut wr) = stream.into_split();
        wr.write_all(req.to_line().as_bytes())
            .await
            .map_err(io_err)?;
        let mut rd = BufReader::new(rd);
        match read_line(&mut rd, MAX_REPLY_LINE).await.map_err(io_err)? {
            Line::Complete(line) => Ok(line),
            Line::Eof => Err(AdminError::BadReply {
                path: path.to_path_buf(),
                reason: "connection closed without a reply".to_string(),
            }),
            Line::TooLong => Err(AdminError::BadReply {
                path: path.to_path_buf(),
                reason: format!("reply longer than {MAX_REPLY_LINE} bytes"),
            }),
        }
    };
    let line = tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .map_err(|_| AdminError::Timeout {
            path: path.to_path_buf(),
            timeout: CLIENT_TIMEOUT,
        })??;
    let resp: Response = serde_json::from_slice(&line).map_err(|e| AdminError::BadReply {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if resp.v != PROTOCOL_VERSION {
        return Err(AdminError::Version {
            path: path.to_path_buf(),
            got: resp.v,
            expected: PROTOCOL_VERSION,
        });
    }
    Ok(resp)
}

/// Serves the admin socket at `path` until `shutdown` completes, forwarding
/// each request to the controller as a [`Command`] on `commands`.
///
/// A stale socket file (nothing answers on it) is replaced; a live one
/// (another controller) is an error, as is any other kind of file. The
/// socket is made mode 0600 and removed again on shutdown.
pub async fn serve(
    path: &Path,
    commands: mpsc::Sender<Command>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AdminError> {
    serve_on(bind(path).await?, commands, shutdown).await;
    Ok(())
}

/// [`serve`] on a socket bound beforehand with [`bind`], so a controller
/// can fail at startup (another controller answering, say) before it
/// touches the data plane.
pub async fn serve_on(
    listener: Listener,
    commands: mpsc::Sender<Command>,
    shutdown: impl Future<Output = ()>,
) {
    tracing::info!(socket = %listener.path.display(), "admin socket listening");
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Dropping the set (when serve returns) aborts every connection task.
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        match accepted {
            Ok((stream, _)) => {
                let commands = commands.clone();
                let permit = Arc::clone(&permits).try_acquire_owned();
                conns.spawn(async move {
                    let Ok(_permit) = permit else {
                        reply_and_close(stream, "too many admin connections; try again").await;
                        return;
                    };
                    if let Err(e) = serve_connection(stream, commands).await {
                        tracing::debug!(error = %e, "admin connection ended");
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
}

/// A bound admin socket ([`bind`]). Removes its socket file on drop if the
/// file is still the one it created (another controller may have replaced
/// it).
#[derive(Debug)]
pub struct Listener {
    inner: UnixListener,
    path: PathBuf,
    ino: Option<(u64, u64)>,
}

impl Listener {
    async fn accept(&self) -> io::Result<(UnixStream, tokio::net::unix::SocketAddr)> {
        self.inner.accept().await
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| Some((m.dev(), m.ino())) == self.ino)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the admin socket at `path` (mode 0600): replaces a stale socket
/// file, refuses when another controller answers on it or when it is not a
/// socket.
pub async fn bind(path: &Path) -> Result<Listener, AdminError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(AdminError::InUse {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "removing stale admin socket");
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(AdminError::RemoveStale {
                            path: path.to_path_buf(),
                            source,
                        })
                    }
                }
            }
            // Gone meanwhile: nothing to remove.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AdminError::RemoveStale {
                    path: path.to_path_buf(),
                    source,
                })
            }
        },
        Ok(_) => {
            return Err(AdminError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(_) => {}
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| AdminError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let inner = UnixListener::bind(path).map_err(|source| AdminError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let md = std::fs::symlink_metadata(path).ok();
    let listener = Listener {
        inner,
        path: path.to_path_buf(),
        ino: md.map(|m| (m.dev(), m.ino())),
    };
    // Until this chmod the socket has the umask's mode; connections from
    // other users in that window are refused by the peer check below.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        AdminError::Chmod {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// Only root and the controller's own user may talk to it (the 0600 mode
/// says the same; this also covers the instant before the chmod).
fn peer_allowed(stream: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    match stream.peer_cred() {
        Ok(cred) => cred.uid() == 0 || cred.uid() == me,
        Err(_) => false,
    }
}

async fn reply_and_close(mut stream: UnixStream, error: &str) {
    let line = Response::error(error).to_line();
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(line.as_bytes())).await;
}

async fn serve_connection(stream: UnixStream, commands: mpsc::Sender<Command>) -> io::Result<()> {
    if !peer_allowed(&stream) {
        reply_and_close(stream, "permission denied: the admin socket is root only").await;
        return Ok(());
    }
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let line =
            match tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut rd, MAX_REQUEST_LINE)).await {
                Err(_) => return Ok(()),
                Ok(r) => r?,
            };
        let (reply, keep_going) = match line {
            Line::Eof => return Ok(()),
            Line::Complete(l) if l.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Complete(l) => (answer(&l, &commands).await, true),
            // The rest of an oversize line cannot be told from the next
            // request: answer, then hang up.
            Line::TooLong => (
                Response::error(format!("request longer than {MAX_REQUEST_LINE} bytes")),
                false,
            ),
        };
        tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(reply.to_line().as_bytes()))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client does not read"))??;
        if !keep_going {
            return Ok(());
        }
    }
}

/// Parses a request line, asks the controller, builds the reply.
async fn answer(line: &[u8], commands: &mpsc::Sender<Command>) -> Response {
    let req = match Request::parse(line) {
        Ok(r) => r,
        Err(e) => return Response::error(e),
    };
    match req {
        Request::Status {} => match ask(commands, |reply| Command::Status { reply }).await {
            Ok(status) => Response::status(status),
            Err(e) => Response::error(e),
        },
        Request::Drain { pool, backend } => {
            admin(commands, pool, backend, AdminAction::Drain).await
        }
        Request::Undrain { pool, backend } => {
            admin(commands, pool, backend, AdminAction::Undrain).await
        }
        Request::Maint { pool, backend } => {
            admin(commands, pool, backend, AdminAction::Maint).await
        }
        Request::Ready { pool, backend } => {
            admin(commands, pool, backend, AdminAction::Ready).await
        }
        Request::SetWeight {
            pool,
            backend,
            weight,
        } => admin(commands, pool, backend, AdminAction::Weight(weight)).await,
        Request::Plan { config } => {
            plan(
                commands,
                Proposal::Config {
                    path: config.into(),
                },
            )
            .await
        }
        Request::PlanDrain { pool, backend } => {
            plan(commands, Proposal::Drain { pool, backend }).await
        }
        Request::Reload {} => match ask(commands, |reply| Command::Reload { reply })
            .await
            .and_then(|r| r)
        {
            Ok(summary) if summary.trim().is_empty() => Response::message("reloaded: no changes"),
            Ok(summary) => Response::message(summary),
            Err(e) => Response::error(e),
        },
    }
}

async fn plan(commands: &mpsc::Sender<Command>, proposal: Proposal) -> Response {
    match ask(commands, |reply| Command::Plan { proposal, reply }).await {
        Ok(p) => Response {
            plan: Some(p),
            ..Response::ok()
        },
        Err(e) => Response::error(e),
    }
}

async fn admin(
    commands: &mpsc::Sender<Command>,
    pool: String,
    backend: String,
    action: AdminAction,
) -> Response {
    let what = format!("{pool}/{backend}");
    let asked = ask(commands, |reply| Command::Admin {
        pool,
        backend,
        action,
        reply,
    })
    .await;
    match asked.and_then(|r| r) {
        Ok(()) => Response::message(action.done(&what)),
        Err(e) => Response::error(e),
    }
}

/// Sends a command to the controller and waits (bounded) for its answer.
async fn ask<T>(
    commands: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    let gone = || "the controller is shutting down".to_string();
    tokio::time::timeout(CONTROLLER_TIMEOUT, async {
        commands.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    })
    .await
    .map_err(|_| {
        format!(
            "the controller did not answer within {}s",
            CONTROLLER_TIMEOUT.as_secs()
        )
    })?
}

enum Line {
    Complete(Vec<u8>),
    Eof,
    TooLong,
}

/// Reads one `\n`-terminated line of at most `max` bytes (a final line
/// without newline counts too).
async fn read_line<R: AsyncBufRead + AsyncRead + Unpin>(
    rd: &mut R,
    max: usize,
) -> io::Result<Line> {
    let mut buf = Vec::new();
    let n = rd.take(max as u64 + 1).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > max {
        return Ok(Line::TooLong);
    }
    Ok(Line::Complete(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    /// Answers commands like a controller with pool web and backend web-1.
    fn fake_controller() -> mpsc::Sender<Command> {
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Command::Status { reply } => {
                        let _ = reply.send(Status::sample());
                    }
                    Command::Admin {
                        pool,
                        backend,
                        reply,
                        ..
                    } => {
                        let r = if pool != "web" {
                            Err(format!("no pool {pool:?}"))
                        } else if backend != "web-1" {
                            Err(format!("pool web has no backend {backend:?}"))
                        } else {
                            Ok(())
                        };
                        let _ = reply.send(r);
                    }
                    Command::Reload { reply } => {
                        let _ = reply.send(Ok("pool web: 1 backend added".into()));
                    }
                    Command::Plan { proposal, reply } => {
                        let _ = reply.send(crate::status::ChangePlan {
                            accepted: false,
                            refused: Some(format!("{proposal:?}")),
                            ..Default::default()
                        });
                    }
                }
            }
        });
        tx
    }

    struct Server {
        path: PathBuf,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<Result<(), AdminError>>,
    }

    impl Server {
        async fn start(name: &str) -> Server {
            let path = std::env::temp_dir()
                .join(format!("xdplb-admin-{}-{name}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            Server::start_at(path).await
        }

        async fn start_at(path: PathBuf) -> Server {
            let (stop, mut rx) = watch::channel(false);
            let p = path.clone();
            let task = tokio::spawn(async move {
                serve(&p, fake_controller(), async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
            });
            for _ in 0..200 {
                if UnixStream::connect(&path).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Server { path, stop, task }
        }

        async fn stop(self) {
            self.stop.send(true).unwrap();
            self.task.await.unwrap().unwrap();
            assert!(!self.path.exists(), "socket removed on shutdown");
        }
    }

    async fn raw(path: &Path, lines: &[&[u8]]) -> Vec<serde_json::Value> {
        let s = UnixStream::connect(path).await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut rd = BufReader::new(rd);
        let mut out = Vec::new();
        for l in lines {
            wr.write_all(l).await.unwrap();
            let mut reply = String::new();
            rd.read_line(&mut reply).await.unwrap();
            out.push(serde_json::from_str(&reply).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn every_command_round_trips() {
        let srv = Server::start("roundtrip").await;
        let r = request(&srv.path, &Request::Status {}).await.unwrap();
        assert!(r.ok);
        assert_eq!(r.status, Some(Status::sample()));

        let drain = Request::Drain {
            pool: "web".into(),
            backend: "web-1".into(),
        };
        let r = request(&srv.path, &drain).await.unwrap();
        assert_eq!(r.message.as_deref(), Some("drained web/web-1"));
        let undrain = Request::Undrain {
            pool: "web".into(),
            backend: "web-1".into(),
        };
        let r = request(&srv.path, &undrain).await.unwrap();
        assert_eq!(r.message.as_deref(), Some("undrained web/web-1"));

        let r = request(
            &srv.path,
            &Request::Drain {
                pool: "web".into(),
                backend: "nope".into(),
            },
        )
        .await
        .unwrap();
        assert!(!r.ok);
        let e = r.into_result().unwrap_err().to_string();
        assert_eq!(e, "pool web has no backend \"nope\"");

        let r = request(&srv.path, &Request::Reload {}).await.unwrap();
        assert_eq!(r.message.as_deref(), Some("pool web: 1 backend added"));
        srv.stop().await;
    }

    #[tokio::test]
    async fn bad_requests_get_error_replies_and_serving_goes_on() {
        let srv = Server::start("bad").await;
        let replies = raw(
            &srv.path,
            &[
                b"{not json\n",
                b"[1,2]\n",
                b"{\"cmd\":\"status\"}\n",
                b"{\"v\":2,\"cmd\":\"status\"}\n",
                b"{\"v\":1,\"cmd\":\"explode\"}\n",
                b"{\"v\":1,\"cmd\":\"drain\",\"pool\":\"web\"}\n",
                b"{\"v\":1,\"cmd\":\"status\",\"extra\":1}\n",
                // Still serving on the same connection after all that.
                b"{\"v\":1,\"cmd\":\"status\"}\n",
            ],
        )
        .await;
        let errors: Vec<&str> = replies[..7]
            .iter()
            .map(|r| {
                assert_eq!(r["v"], 1);
                assert_eq!(r["ok"], false);
                r["error"].as_str().unwrap()
            })
            .collect();
        assert!(errors[0].starts_with("malformed JSON"), "{errors:?}");
        assert!(errors[1].contains("JSON object"));
        assert!(errors[2].contains("missing protocol version"));
        assert!(errors[3].contains("unsupported protocol version 2"));
        assert!(errors[4].contains("unknown command \"explode\""));
        assert!(errors[5].contains("backend"), "{}", errors[5]);
        assert!(errors[6].contains("extra"), "{}", errors[6]);
        assert_eq!(replies[7]["ok"], true);
        assert_eq!(replies[7]["status"]["pools"][0]["name"], "web");

        // An oversize line: an error reply, then the connection closes.
        let mut s = UnixStream::connect(&srv.path).await.unwrap();
        let big = vec![b'x'; MAX_REQUEST_LINE + 10];
        let _ = s.write_all(&big).await;
        let mut reply = String::new();
        BufReader::new(&mut s).read_line(&mut reply).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().contains("longer than"));

        // A client that connects and leaves does no harm either.
        drop(UnixStream::connect(&srv.path).await.unwrap());
        let r = request(&srv.path, &Request::Status {}).await.unwrap();
        assert!(r.ok);
        srv.stop().await;
    }

    #[tokio::test]
    async fn socket_is_0600_and_stale_one_is_replaced() {
        let path =
            std::env::temp_dir().join(format!("xdplb-admin-{}-stale.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        // A socket file nobody listens on: what a killed controller leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let srv = Server::start_at(path.clone()).await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(request(&path, &Request::Status {}).await.unwrap().ok);

        // A second server on the same live socket refuses to start.
        let second = serve(&path, fake_controller(), std::future::pending()).await;
        assert!(
            matches!(second, Err(AdminError::InUse { .. })),
            "{second:?}"
        );
        srv.stop().await;
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let path = std::env::temp_dir().join(format!("xdplb-admin-{}-file", std::process::id()));
        std::fs::write(&path, "keep me").unwrap();
        let r = serve(&path, fake_controller(), std::future::pending()).await;
        assert!(matches!(r, Err(AdminError::NotASocket { .. })), "{r:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn client_errors_say_what_to_do() {
        let path =
            std::env::temp_dir().join(format!("xdplb-admin-{}-none.sock", std::process::id()));
        let e = request(&path, &Request::Status {}).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "no controller answering on {} (is `xdplb run` up?)",
                path.display()
            )
        );
        // A stale socket file: connection refused, same message.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = request(&path, &Request::Status {}).await.unwrap_err();
        assert!(matches!(e, AdminError::NotRunning { .. }), "{e:?}");
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn a_gone_controller_is_an_error_reply() {
        let path =
            std::env::temp_dir().join(format!("xdplb-admin-{}-gone.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let (stop, mut stop_rx) = watch::channel(false);
        let p = path.clone();
        let task = tokio::spawn(async move {
            serve(&p, tx, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
        });
        for _ in 0..200 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let r = request(&path, &Request::Reload {}).await.unwrap();
        assert_eq!(r.error.as_deref(), Some("the controller is shutting down"));
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
    }

    #[test]
    fn wire_format() {
        assert_eq!(
            Request::Status {}.to_line(),
            "{\"v\":1,\"cmd\":\"status\"}\n"
        );
        let d = Request::Drain {
            pool: "web".into(),
            backend: "web-1".into(),
        };
        assert_eq!(
            d.to_line(),
            "{\"v\":1,\"cmd\":\"drain\",\"pool\":\"web\",\"backend\":\"web-1\"}\n"
        );
        assert_eq!(Request::parse(d.to_line().trim().as_bytes()), Ok(d));
        assert_eq!(
            Response::error("no").to_line(),
            "{\"v\":1,\"ok\":false,\"error\":\"no\"}\n"
        );
    }
}
