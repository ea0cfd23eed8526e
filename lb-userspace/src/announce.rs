//! `[announce]`: the VIPs this gateway can serve, announced to the routers
//! through BIRD 2.
//!
//! xdplb speaks no BGP itself. It keeps `routes_file` holding two BIRD
//! static protocols (`xdplb_vips` for IPv4, `xdplb_vips6` for IPv6), one
//! blackhole route per announced VIP, and asks BIRD to re-read its config
//! (`configure` on the control socket). The operator's bird.conf includes
//! the file and exports those protocols to its BGP peers
//! (`deploy/bird/gateway.conf`).
//!
//! - [`routes_text`] is pure: announced VIPs in, file text out.
//! - [`write_routes`] replaces the file atomically (temporary file, rename).
//! - [`bird_configure`] speaks BIRD's control protocol (lines of a 4-digit
//!   code, `-` for "more follows", a space on the last line).
//! - [`Announcer`] is the task the controller feeds: it writes the file
//!   whenever the set changes and retries `configure` every second until
//!   BIRD takes it (BIRD not running is logged, never fatal).
//!
//! What is announced is decided by the controller: a VIP whose ring has at
//! least one active backend. A controller that stops leaves the file and
//! BIRD alone (the pinned data plane still forwards); `xdplb down`
//! withdraws everything ([`withdraw_all`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::AnnounceConfig;

/// Name of the IPv4 static protocol in the routes file (the operator's
/// export filter names it).
pub const PROTO_V4: &str = "xdplb_vips";
/// Name of the IPv6 static protocol in the routes file.
pub const PROTO_V6: &str = "xdplb_vips6";
/// How long one exchange with BIRD may take before it counts as failed.
const BIRD_TIMEOUT: Duration = Duration::from_secs(3);
/// A `configure` BIRD did not take is retried this often.
const RETRY_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum AnnounceError {
    #[error("cannot write routes file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach BIRD at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("BIRD at {socket} did not answer within {timeout:?}")]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("BIRD at {socket} refused `{command}`: {reply}")]
    Refused {
        socket: PathBuf,
        command: String,
        reply: String,
    },
    #[error("BIRD at {socket}: unexpected reply {line:?}")]
    Protocol { socket: PathBuf, line: String },
}

/// The routes file for `vips`: both protocol blocks, always, each with one
/// `/32` (or `/128`) blackhole route per VIP address in address order.
/// The same set gives the same bytes, so an unchanged set rewrites nothing.
pub fn routes_text(vips: &BTreeSet<IpAddr>) -> String {
    let block = |name: &str, family: &str, v6: bool| {
        let mut out = format!("protocol static {name} {{\n  {family};\n");
        for ip in vips.iter().filter(|ip| ip.is_ipv6() == v6) {
            let len = if v6 { 128 } else { 32 };
            out.push_str(&format!("  route {ip}/{len} blackhole;\n"));
        }
        out.push_str("}\n");
        out
    };
    format!(
        "# Written by xdplb ([announce]); replaced whole on every change. Do not edit.\n{}{}",
        block(PROTO_V4, "ipv4", false),
        block(PROTO_V6, "ipv6", true)
    )
}

/// Mode of the routes file: BIRD reads it as its group, nobody else.
pub const ROUTES_MODE: u32 = 0o640;

/// Replaces `path` with `text` atomically ([`crate::fsutil::write_atomic`]):
/// BIRD sees the old file or the new one, never a part. Mode
/// [`ROUTES_MODE`], group that of BIRD's control socket `socket` (the
/// group BIRD runs as: `bird` on Debian), else the group the file has (a
/// tmpfiles line made it before BIRD started), so BIRD, not running as
/// root, can read it.
pub fn write_routes(path: &Path, socket: &Path, text: &str) -> Result<(), AnnounceError> {
    use std::os::unix::fs::MetadataExt;
    let gid = std::fs::metadata(socket)
        .or_else(|_| std::fs::metadata(path))
        .ok()
        .map(|m| m.gid());
    crate::fsutil::write_atomic(path, text.as_bytes(), ROUTES_MODE, gid).map_err(|e| {
        AnnounceError::Write {
            path: path.to_path_buf(),
            source: e.source,
        }
    })
}

/// One reply line of BIRD's control protocol: `CODE-text` (more follows),
/// `CODE text` (last), or ` text` (continuation of the previous code).
fn parse_line(line: &str) -> Option<(u16, bool)> {
    let code = line.get(..4)?.parse::<u16>().ok()?;
    match line.as_bytes().get(4) {
        Some(b'-') => Some((code, false)),
        Some(b' ') | None => Some((code, true)),
        _ => None,
    }
}

/// Reads one complete reply; returns its last code and its text lines.
async fn read_reply(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    socket: &Path,
) -> Result<(u16, Vec<String>), AnnounceError> {
    let mut text = Vec::new();
    // A reply of more than this many lines is not one we asked for.
    for _ in 0..1000 {
        let line = lines
            .next_line()
            .await
            .map_err(|source| AnnounceError::Connect {
                socket: socket.to_path_buf(),
                source,
            })?
            .ok_or_else(|| AnnounceError::Protocol {
                socket: socket.to_path_buf(),
                line: "<connection closed>".into(),
            })?;
        if line.starts_with(' ') || line.starts_with('+') {
            text.push(line.trim().to_string());
            continue;
        }
        let (code, last) = parse_line(&line).ok_or_else(|| AnnounceError::Protocol {
            socket: socket.to_path_buf(),
            line: line.clone(),
        })?;
        text.push(line.get(5..).unwrap_or("").trim().to_string());
        if last {
            return Ok((code, text));
        }
    }
    Err(AnnounceError::Protocol {
        socket: socket.to_path_buf(),
        line: "<reply too long>".into(),
    })
}

/// A connection to BIRD's control socket, greeted.
struct Bird {
    socket: PathBuf,
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl Bird {
    async fn connect(socket: &Path) -> Result<Bird, AnnounceError> {
        let stream =
            UnixStream::connect(socket)
                .await
                .map_err(|source| AnnounceError::Connect {
                    socket: socket.to_path_buf(),
                    source,
                })?;
        let (r, w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let (code, hello) = read_reply(&mut lines, socket).await?;
        if code != 1 {
            return Err(AnnounceError::Protocol {
                socket: socket.to_path_buf(),
                line: hello.join("; "),
            });
        }
        Ok(Bird {
            socket: socket.to_path_buf(),
            lines,
            w,
        })
    }

    /// Sends one command; returns the reply's lines, or the refusal
    /// (codes 8xxx/9xxx) as an error.
    async fn ask(&mut self, command: &str) -> Result<Vec<String>, AnnounceError> {
        self.w
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|source| AnnounceError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (code, text) = read_reply(&mut self.lines, &self.socket).await?;
        if code >= 8000 {
            return Err(AnnounceError::Refused {
                socket: self.socket.clone(),
                command: command.to_string(),
                reply: format!("{code} {}", text.join("; ")),
            });
        }
        Ok(text)
    }
}

/// Runs `f` on a fresh connection to BIRD, within [`BIRD_TIMEOUT`].
async fn with_bird<T>(
    socket: &Path,
    f: impl AsyncFnOnce(&mut Bird) -> Result<T, AnnounceError>,
) -> Result<T, AnnounceError> {
    let exchange = async {
        let mut bird = Bird::connect(socket).await?;
        f(&mut bird).await
    };
    tokio::time::timeout(BIRD_TIMEOUT, exchange)
        .await
        .map_err(|_| AnnounceError::Timeout {
            socket: socket.to_path_buf(),
            timeout: BIRD_TIMEOUT,
        })?
}

/// `configure` over BIRD's control socket (what `birdc -s SOCKET
/// configure` does). Codes 0xxx are success; 8xxx/9xxx errors (a parse
/// error in the config, for one).
pub async fn bird_configure(socket: &Path) -> Result<String, AnnounceError> {
    with_bird(socket, async |b| Ok(b.ask("configure").await?.join("; "))).await
}

/// What BIRD has: the routes of `xdplb_vips` and `xdplb_vips6` (`show
/// route protocol …`), as addresses. A protocol BIRD does not know (the
/// routes file not included, or not read yet) is an error.
pub async fn bird_routes(socket: &Path) -> Result<BTreeSet<IpAddr>, AnnounceError> {
    with_bird(socket, async |b| {
        let mut have = BTreeSet::new();
        for proto in [PROTO_V4, PROTO_V6] {
            let lines = b.ask(&format!("show route protocol {proto}")).await?;
            have.extend(lines.iter().filter_map(|l| route_prefix(l)));
        }
        Ok(have)
    })
    .await
}

/// The address of a route line of `show route` (`198.18.2.10/32
/// blackhole [xdplb_vips 16:03:18.123] * (200)`); `None` for other lines
/// (`Table master4:`).
fn route_prefix(line: &str) -> Option<IpAddr> {
    let first = line.split_whitespace().next()?;
    let (addr, len) = first.split_once('/')?;
    len.parse::<u8>().ok()?;
    addr.parse().ok()
}

/// Writes an empty routes file and tells BIRD (`xdplb down`): every VIP of
/// this gateway is withdrawn.
pub async fn withdraw_all(cfg: &AnnounceConfig) -> Result<(), AnnounceError> {
    write_routes(
        &cfg.routes_file,
        &cfg.control_socket,
        &routes_text(&BTreeSet::new()),
    )?;
    bird_configure(&cfg.control_socket).await.map(|_| ())
}

/// What the controller wants announced: pool name → VIP address.
pub type Wanted = BTreeMap<String, IpAddr>;

/// What BIRD has, as last asked: `None` until it answered once (or
/// while it does not answer).
type Accepted = Arc<Mutex<Option<BTreeSet<IpAddr>>>>;

/// The task keeping `routes_file` and BIRD in step with what the
/// controller wants, and asking BIRD what it has. Dropping it stops the
/// task; the file stays.
pub struct Announcer {
    config: AnnounceConfig,
    tx: watch::Sender<Wanted>,
    wanted: Arc<Mutex<Wanted>>,
    accepted: Accepted,
    /// The first set is always sent (an empty one withdraws what an
    /// earlier run announced).
    sent: std::sync::atomic::AtomicBool,
    task: tokio::task::JoinHandle<()>,
    /// Retired: its task finishes on its own (see [`Announcer::retire`]).
    retired: bool,
}

impl Drop for Announcer {
    fn drop(&mut self) {
        if !self.retired {
            self.task.abort();
        }
    }
}

impl Announcer {
    /// Starts the task for `config`. Nothing is written before the first
    /// [`Announcer::set`], so a restarted controller withdraws nothing
    /// while it waits for its first probes.
    pub fn spawn(config: AnnounceConfig) -> Announcer {
        let (tx, rx) = watch::channel(Wanted::new());
        let accepted = Accepted::default();
        let task = tokio::spawn(keep_in_step(config.clone(), rx, accepted.clone()));
        Announcer {
            config,
            tx,
            wanted: Arc::new(Mutex::new(Wanted::new())),
            accepted,
            sent: std::sync::atomic::AtomicBool::new(false),
            task,
            retired: false,
        }
    }

    /// Withdraws what this announcer announced, then stops: its task
    /// writes the empty routes file, asks BIRD to `configure` once, and
    /// ends (`[announce]` left the config, or moved elsewhere). An
    /// announcer that never announced has nothing to withdraw.
    pub fn retire(mut self) {
        if self.sent.load(std::sync::atomic::Ordering::Relaxed) {
            self.set(Wanted::new());
            self.retired = true;
        }
    }

    /// Keeps `slot` running for `config` (started, replaced after a reload
    /// changed `[announce]`, or stopped without it) and hands it `wanted`.
    pub fn sync(slot: &mut Option<Announcer>, config: Option<&AnnounceConfig>, wanted: Wanted) {
        match (slot.as_ref(), config) {
            (Some(a), Some(c)) if a.config == *c => {}
            (_, config) => {
                if let Some(old) = slot.take() {
                    old.retire();
                }
                *slot = config.map(|c| Announcer::spawn(c.clone()));
            }
        }
        if let Some(a) = slot {
            a.set(wanted);
        }
    }

    /// Hands the task the set to announce (the first call always writes).
    pub fn set(&self, wanted: Wanted) {
        *self.wanted.lock().unwrap_or_else(|e| e.into_inner()) = wanted.clone();
        let first = !self.sent.swap(true, std::sync::atomic::Ordering::Relaxed);
        self.tx.send_if_modified(|cur| {
            if *cur != wanted || first {
                *cur = wanted;
                true
            } else {
                false
            }
        });
    }

    /// The intent: whether `pool`'s VIP is in the set handed to the task.
    pub fn announces(&self, pool: &str) -> bool {
        self.wanted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(pool)
    }

    /// What BIRD has: whether its `xdplb_vips[6]` protocol holds `vip`,
    /// as BIRD answered at most [`ASK_EVERY`] ago (false while BIRD does
    /// not answer).
    pub fn bird_has(&self, vip: IpAddr) -> bool {
        self.accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|have| have.contains(&vip))
    }
}

/// BIRD is asked what it has this often (and after every `configure`).
pub const ASK_EVERY: Duration = Duration::from_secs(1);

async fn keep_in_step(cfg: AnnounceConfig, mut rx: watch::Receiver<Wanted>, accepted: Accepted) {
    let ask = async |accepted: &Accepted| {
        let have = bird_routes(&cfg.control_socket).await;
        if let Err(e) = &have {
            debug!(error = %e, "BIRD did not say what it has");
        }
        *accepted.lock().unwrap_or_else(|e| e.into_inner()) = have.ok();
    };
    // Wait for the controller's first decision (what BIRD has meanwhile is
    // still reported).
    loop {
        tokio::select! {
            r = rx.changed() => match r {
                Ok(()) => break,
                Err(_) => return,
            },
            _ = tokio::time::sleep(ASK_EVERY) => ask(&accepted).await,
        }
    }
    let mut pending = true;
    let mut warned = false;
    let mut written: Option<String> = None;
    loop {
        let text = routes_text(&rx.borrow_and_update().values().copied().collect());
        if written.as_deref() != Some(text.as_str()) {
            match write_routes(&cfg.routes_file, &cfg.control_socket, &text) {
                Ok(()) => {
                    info!(file = %cfg.routes_file.display(), vips = ?rx.borrow().values().collect::<Vec<_>>(), "VIP routes written");
                    written = Some(text);
                    pending = true;
                }
                Err(e) => warn!(error = %e, "VIP routes not written; retrying"),
            }
        }
        if pending && written.is_some() {
            match bird_configure(&cfg.control_socket).await {
                Ok(reply) => {
                    debug!(reply, "BIRD reconfigured");
                    if warned {
                        info!(socket = %cfg.control_socket.display(), "BIRD reachable again; routes applied");
                    }
                    pending = false;
                    warned = false;
                }
                Err(e) if !warned => {
                    error!("BIRD did not take the VIP routes ({e}); retrying every second");
                    warned = true;
                }
                Err(e) => debug!(error = %e, "BIRD still unreachable"),
            }
        }
        ask(&accepted).await;
        // A BIRD restarted meanwhile re-reads the file itself; one that
        // lost the routes otherwise (a `configure` of its own that failed)
        // is told again.
        if !pending {
            let want: BTreeSet<IpAddr> = rx.borrow().values().copied().collect();
            let have = accepted.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if have.is_some_and(|h| h != want) {
                pending = true;
            }
        }
        let retry = pending || written.is_none();
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RETRY_EVERY), if retry => {}
            _ = tokio::time::sleep(ASK_EVERY), if !retry => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn routes_text_has_both_blocks_even_when_empty() {
        assert_eq!(
            routes_text(&BTreeSet::new()),
            "# Written by xdplb ([announce]); replaced whole on every change. Do not edit.\n\
             protocol static xdplb_vips {\n  ipv4;\n}\n\
             protocol static xdplb_vips6 {\n  ipv6;\n}\n"
        );
    }

    #[test]
    fn routes_text_sorts_and_splits_families() {
        let text = routes_text(&set(&["198.18.2.11", "2001:2:0:2::10", "198.18.2.10"]));
        assert_eq!(
            text,
            "# Written by xdplb ([announce]); replaced whole on every change. Do not edit.\n\
             protocol static xdplb_vips {\n  ipv4;\n  route 198.18.2.10/32 blackhole;\n  \
             route 198.18.2.11/32 blackhole;\n}\n\
             protocol static xdplb_vips6 {\n  ipv6;\n  route 2001:2:0:2::10/128 blackhole;\n}\n"
        );
    }

    #[test]
    fn write_routes_replaces_atomically_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("xdplb-announce-{}", std::process::id()));
        let path = dir.join("sub/vips.conf");
        let socket = dir.join("none.ctl");
        write_routes(&path, &socket, "one\n").unwrap();
        write_routes(&path, &socket, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("vips.conf")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, ROUTES_MODE);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reply_lines_parse() {
        assert_eq!(parse_line("0001 BIRD 2.0.12 ready."), Some((1, true)));
        assert_eq!(parse_line("0002-Reading configuration"), Some((2, false)));
        assert_eq!(parse_line("8002 parse error"), Some((8002, true)));
        assert_eq!(parse_line("hello"), None);
    }

    /// A fake BIRD on a unix socket: greets, answers `configure`.
    async fn fake_bird(path: &Path, answer: &'static str) -> tokio::task::JoinHandle<String> {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(b"0001 BIRD 2.0.12 ready.\n").await.unwrap();
            let mut lines = BufReader::new(r).lines();
            let cmd = lines.next_line().await.unwrap().unwrap();
            w.write_all(answer.as_bytes()).await.unwrap();
            cmd
        })
    }

    #[tokio::test]
    async fn configure_speaks_birds_protocol() {
        let dir = std::env::temp_dir().join(format!("xdplb-bird-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("ok.ctl");
        let bird = fake_bird(
            &sock,
            "0002-Reading configuration from /etc/bird.conf\n0003 Reconfigured\n",
        )
        .await;
        let reply = bird_configure(&sock).await.unwrap();
        assert!(reply.contains("Reconfigured"), "{reply}");
        assert_eq!(bird.await.unwrap(), "configure");

        let sock = dir.join("bad.ctl");
        let _bird = fake_bird(&sock, "8002 /etc/bird.conf:3:1 syntax error\n").await;
        let err = bird_configure(&sock).await.unwrap_err().to_string();
        assert!(
            err.contains("refused") && err.contains("syntax error"),
            "{err}"
        );

        let err = bird_configure(&dir.join("none.ctl")).await.unwrap_err();
        assert!(matches!(err, AnnounceError::Connect { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_announcer_writes_on_change_and_survives_a_missing_bird() {
        let dir = std::env::temp_dir().join(format!("xdplb-announcer-{}", std::process::id()));
        let cfg = AnnounceConfig {
            speaker: crate::config::Speaker::Bird,
            control_socket: dir.join("bird.ctl"),
            routes_file: dir.join("vips.conf"),
            hold_ms: crate::config::DEFAULT_HOLD_MS,
        };
        let mut slot = None;
        let wanted: Wanted = [("web".to_string(), "198.18.2.10".parse().unwrap())].into();
        Announcer::sync(&mut slot, Some(&cfg), wanted);
        assert!(slot.as_ref().unwrap().announces("web"));
        let read = || std::fs::read_to_string(&cfg.routes_file).unwrap_or_default();
        for _ in 0..100 {
            if read().contains("198.18.2.10/32") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(read().contains("route 198.18.2.10/32 blackhole;"));
        Announcer::sync(&mut slot, Some(&cfg), Wanted::new());
        assert!(!slot.as_ref().unwrap().announces("web"));
        for _ in 0..100 {
            if !read().contains("198.18.2.10") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(read(), routes_text(&BTreeSet::new()));
        Announcer::sync(&mut slot, None, Wanted::new());
        assert!(slot.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
