//! The `xdplb` binary as an operator runs it: help texts, exit codes, the
//! one-line `error:` messages, `check`, `stats` and `down` against a real
//! pinned data plane, the agent, and the admin socket seen from outside.
//!
//! Everything binds 127.0.0.1 only; pin paths and sockets carry the test
//! process id and are removed even when a test fails.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use lb_common::BACKEND_ACTIVE;
use xdplb::{
    admin,
    controller::Command as ControllerCommand,
    dataplane::{self, backend_name_index, BackendSlot, Dataplane, Shape},
    status::Status,
};

const BIN: &str = env!("CARGO_BIN_EXE_xdplb");
const CONFIG_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A path unique to this test process and call, under `dir`.
fn unique(dir: &str, stem: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    PathBuf::from(dir).join(format!("xdplb-clitest-{}-{n}-{stem}", std::process::id()))
}

fn xdplb(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run xdplb")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the command failed with exactly one `error: ...` line on stderr
/// containing `needle`.
fn assert_one_error_line(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err:?}");
    assert!(lines[0].starts_with("error: "), "{err:?}");
    assert!(lines[0].contains(needle), "{needle:?} not in {err:?}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True if a root-only test should return at once, skipped: only when
/// `XDPLB_ALLOW_SKIP=1` asks for skips; otherwise it fails, so no test
/// passes by not running. A skip is recorded in `XDPLB_SKIP_LOG` (a
/// `binary::test<TAB>reason` line, as `xdplb_tests::skip_or_fail` writes
/// it) for `cargo xtask test`'s summary.
fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    let test = format!(
        "cli::{}",
        std::thread::current().name().unwrap_or("(unnamed test)")
    );
    let reason = "needs root (bpf)";
    assert!(
        std::env::var_os("XDPLB_ALLOW_SKIP").is_some_and(|v| v == "1"),
        "{test} {reason}: it cannot run here (set XDPLB_ALLOW_SKIP=1 to skip such tests instead)"
    );
    eprintln!("skipped: {test} {reason} (XDPLB_ALLOW_SKIP=1)");
    if let Some(log) = std::env::var_os("XDPLB_SKIP_LOG") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the skip log");
        f.write_all(format!("{test}\t{reason}\n").as_bytes())
            .expect("record the skip");
    }
    true
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A child process sent SIGTERM (then SIGKILL) on drop.
struct Proc(Option<Child>);

fn sigterm(child: &Child) {
    // SAFETY: kill on our own child's pid, which we have not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        Proc(Some(
            Command::new(BIN)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn xdplb"),
        ))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }

    /// SIGTERM, then waits (bounded) for the exit; returns its output.
    fn terminate(mut self) -> Output {
        let mut child = self.0.take().expect("running");
        sigterm(&child);
        let end = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("xdplb did not exit on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("collect output")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            sigterm(&child);
            let end = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// `xdplb run --config PATH`, started and waited for until its admin
/// socket answers. The daemon tests (status, metrics with traffic) use it
/// inside their namespaces; it is SIGTERMed on drop.
#[allow(dead_code)]
pub struct Daemon {
    proc: Proc,
    pub socket: PathBuf,
}

#[allow(dead_code)]
impl Daemon {
    pub fn start(config: &Path, socket: &Path) -> Daemon {
        let proc = Proc::spawn(&["run", "--config", &config.to_string_lossy()]);
        let mut d = Daemon {
            proc,
            socket: socket.to_path_buf(),
        };
        let up = wait_until(Duration::from_secs(20), || {
            UnixStream::connect(socket).is_ok()
                || d.proc
                    .child()
                    .try_wait()
                    .map(|s| s.is_some())
                    .unwrap_or(true)
        });
        assert!(up, "xdplb run: no admin socket at {}", socket.display());
        if let Ok(Some(st)) = d.proc.child().try_wait() {
            let mut err = String::new();
            if let Some(mut e) = d.proc.child().stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("xdplb run exited {st}: {err}");
        }
        d
    }

    /// `xdplb ARGS --socket SOCKET`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut a = args.to_vec();
        let s = self.socket.to_string_lossy().into_owned();
        a.extend(["--socket", &s]);
        xdplb(&a)
    }

    /// SIGTERM; the daemon's output.
    pub fn stop(self) -> Output {
        self.proc.terminate()
    }
}

/// What each subcommand's help must say beyond its flags and defaults.
const HELP_NEEDLES: &[(&str, &[&str])] = &[
    ("run", &["/etc/xdplb/xdplb.toml", "SIGHUP"]),
    (
        "explain",
        &["BPF_PROG_TEST_RUN", "changing nothing", "/sys/fs/bpf/xdplb"],
    ),
    (
        "down",
        &["/sys/fs/bpf/xdplb", "--config", "--withdraw-wait"],
    ),
    (
        "withdraw",
        &["/etc/xdplb/xdplb.toml", "--after-hold", "hold_ms"],
    ),
    ("serving", &["/etc/xdplb/xdplb.toml", "track_script"]),
    ("check", &["/etc/xdplb/xdplb.toml", "line"]),
    ("status", &["/run/xdplb.sock", "--json"]),
    ("stats", &["/sys/fs/bpf/xdplb", "--watch", "--json"]),
    (
        "drain",
        &["/run/xdplb.sock", "<POOL>", "<BACKEND>", "--dry-run"],
    ),
    ("undrain", &["/run/xdplb.sock", "<POOL>", "<BACKEND>"]),
    (
        "maint",
        &["/run/xdplb.sock", "<POOL>", "<BACKEND>", "health checks"],
    ),
    (
        "ready",
        &["/run/xdplb.sock", "<POOL>", "<BACKEND>", "set weight"],
    ),
    ("set", &["weight"]),
    (
        "plan",
        &["/run/xdplb.sock", "--config", "--json", "refused"],
    ),
    ("reload", &["/run/xdplb.sock", "SIGHUP"]),
    (
        "agent",
        &[
            "0.0.0.0:9777",
            "--fixed",
            "--fixed-file",
            "--weight-percent",
            "100",
        ],
    ),
    (
        "decap",
        &[
            "tunnel",
            "--interface",
            "/sys/fs/bpf/xdplb-decap/<netns>/<IFACE>",
            "--stats",
            "--allow-any",
            "RFC 6040",
        ],
    ),
];

/// Every subcommand clap defines (hidden ones aside): listed in the
/// top-level help, and its own `--help` names each of its options and
/// shows each default, plus what [`HELP_NEEDLES`] says it must.
#[test]
fn every_subcommand_has_help_with_its_defaults() {
    use clap::CommandFactory;
    let o = xdplb(&["--help"]);
    assert!(o.status.success());
    let top = stdout(&o);
    let cli = xdplb::cli::Cli::command();
    let subcommands: Vec<&clap::Command> =
        cli.get_subcommands().filter(|c| !c.is_hide_set()).collect();
    assert!(
        subcommands.len() >= 10,
        "clap lists {} subcommands",
        subcommands.len()
    );
    for (name, _) in HELP_NEEDLES {
        assert!(
            subcommands.iter().any(|c| c.get_name() == *name),
            "HELP_NEEDLES names {name}, which clap does not define"
        );
    }
    for sub in subcommands {
        let cmd = sub.get_name();
        assert!(
            top.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "top-level help lacks {cmd}:\n{top}"
        );
        let o = xdplb(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help: {}", stderr(&o));
        let help = stdout(&o);
        let needles = HELP_NEEDLES
            .iter()
            .find(|(n, _)| *n == cmd)
            .unwrap_or_else(|| panic!("`xdplb {cmd}`: say in HELP_NEEDLES what its help must show"))
            .1;
        let mut want: Vec<String> = needles.iter().map(|n| n.to_string()).collect();
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                want.push(format!("--{long}"));
            }
            if !arg.is_hide_default_value_set() {
                want.extend(
                    arg.get_default_values()
                        .iter()
                        .map(|v| v.to_string_lossy().into_owned()),
                );
            }
        }
        for n in want {
            assert!(
                help.contains(&n),
                "`xdplb {cmd} --help` lacks {n:?}:\n{help}"
            );
        }
    }
}

#[test]
fn usage_errors_are_one_line() {
    let o = xdplb(&["status", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    assert_one_error_line(&o, "--bogus");
    let o = xdplb(&["drain", "web"]);
    assert_one_error_line(&o, "<BACKEND>");
}

#[test]
fn decap_refuses_to_attach_without_allow() {
    // Refused before anything is loaded, attached or pinned: the pin path
    // must not come into being.
    let pins = unique("/sys/fs/bpf", "decap");
    let pin_arg = pins.to_string_lossy().into_owned();
    let o = xdplb(&["decap", "--interface", "lo", "--pin-path", &pin_arg]);
    assert_eq!(o.status.code(), Some(1));
    assert_one_error_line(&o, "without --allow CIDR");
    assert!(stderr(&o).contains("--allow-any"), "{}", stderr(&o));
    assert!(!pins.exists(), "{} was created", pins.display());
    // Both at once is a usage error; a bad CIDR names itself.
    let o = xdplb(&[
        "decap",
        "--interface",
        "lo",
        "--allow",
        "198.51.100.7/32",
        "--allow-any",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_one_error_line(&o, "--allow-any");
    let o = xdplb(&["decap", "--interface", "lo", "--allow", "198.51.100.300"]);
    assert_eq!(o.status.code(), Some(2));
    assert_one_error_line(&o, "198.51.100.300");
}

#[test]
fn check_accepts_the_shipped_configs() {
    for (file, want) in [
        ("xdplb.toml", "ok: 1 pool, 4 backends"),
        ("minimal.toml", "ok: 1 pool, 2 backends"),
        ("ipv6-udp.toml", "ok: 3 pools, 7 backends"),
    ] {
        let path = format!("{CONFIG_DIR}/{file}");
        let o = xdplb(&["check", "--config", &path]);
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        assert_eq!(stdout(&o).trim(), want);
    }
}

#[test]
fn check_names_file_line_and_column() {
    let path = unique("/tmp", "bad.toml");
    std::fs::write(
        &path,
        "[dataplane]\n\
         interfaces = [\"eth0\"]\n\
         \n\
         [[pool]]\n\
         name = \"web\"\n\
         vip = \"198.18.2.10:80\"\n\
         \x20 [pool.health]\n\
         \x20 rise = 0\n\
         \x20 [[pool.backend]]\n\
         \x20 name = \"web-1\"\n\
         \x20 addr = \"198.18.1.11:8080\"\n",
    )
    .unwrap();
    let o = xdplb(&["check", "--config", &path.to_string_lossy()]);
    std::fs::remove_file(&path).unwrap();
    assert_one_error_line(&o, &format!("{}:8:", path.display()));
    assert!(stderr(&o).contains("rise"), "{}", stderr(&o));

    // A misspelt on_empty points at its value.
    let path = unique("/tmp", "bad-on-empty.toml");
    std::fs::write(
        &path,
        "[dataplane]\n\
         interfaces = [\"eth0\"]\n\
         [[pool]]\n\
         name = \"web\"\n\
         vip = \"198.18.2.10:80\"\n\
         on_empty = \"rejct\"\n\
         \x20 [[pool.backend]]\n\
         \x20 name = \"web-1\"\n\
         \x20 addr = \"198.18.1.11:8080\"\n",
    )
    .unwrap();
    let o = xdplb(&["check", "--config", &path.to_string_lossy()]);
    std::fs::remove_file(&path).unwrap();
    assert_one_error_line(&o, &format!("{}:6:12:", path.display()));
    assert!(stderr(&o).contains("on_empty \"rejct\""), "{}", stderr(&o));

    let o = xdplb(&["check", "--config", "/nonexistent/xdplb.toml"]);
    assert_one_error_line(&o, "/nonexistent/xdplb.toml");
}

#[test]
fn daemon_commands_without_a_daemon_say_so() {
    let sock = unique("/tmp", "none.sock");
    let s = sock.to_string_lossy().into_owned();
    let want = format!("no controller answering on {s} (is `xdplb run` up?)");
    for args in [
        vec!["status", "--socket", &s],
        vec!["status", "--json", "--socket", &s],
        vec!["drain", "web", "web-1", "--socket", &s],
        vec!["undrain", "web", "web-1", "--socket", &s],
        vec!["reload", "--socket", &s],
    ] {
        let o = xdplb(&args);
        assert_one_error_line(&o, &want);
        assert!(stdout(&o).is_empty());
    }
    // A stale socket file (a killed daemon's) reads the same.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let o = xdplb(&["status", "--socket", &s]);
    std::fs::remove_file(&sock).unwrap();
    assert_one_error_line(&o, &want);
}

#[test]
fn stats_and_down_without_a_data_plane() {
    let pin = unique("/tmp", "nopin");
    let p = pin.to_string_lossy().into_owned();
    let o = xdplb(&["stats", "--pin-path", &p]);
    assert_one_error_line(
        &o,
        &format!("no data plane pinned at {p} (is `xdplb run` started? wrong --pin-path?)"),
    );
    let o = xdplb(&["stats", "--json", "--watch", "1", "--pin-path", &p]);
    assert_one_error_line(&o, "no data plane pinned");
    let o = xdplb(&["down", "--pin-path", &p]);
    assert_one_error_line(
        &o,
        &format!("nothing to take down: no data plane pinned at {p}"),
    );
    let o = xdplb(&[
        "explain",
        "198.18.0.2:40000",
        "198.18.2.10:80",
        "--pin-path",
        &p,
    ]);
    assert_one_error_line(&o, &format!("no running data plane at {p}"));
    assert!(!pin.exists(), "explain created {p}");
}

/// A fake controller answering like one with pool `web` and backend
/// `web-1`, and the admin server in front of it, on a runtime of its own.
struct FakeController {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeController {
    fn start() -> FakeController {
        let socket = unique("/tmp", "admin.sock");
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let path = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel(8);
                tokio::spawn(async move {
                    while let Some(cmd) = rx.recv().await {
                        match cmd {
                            ControllerCommand::Status { reply } => {
                                let _ = reply.send(Status::default());
                            }
                            ControllerCommand::Admin {
                                pool,
                                backend,
                                reply,
                                ..
                            } => {
                                let _ = reply.send(
                                    if (pool.as_str(), backend.as_str()) == ("web", "web-1") {
                                        Ok(())
                                    } else {
                                        Err(format!("no backend {backend:?} in pool {pool:?}"))
                                    },
                                );
                            }
                            ControllerCommand::Reload { reply } => {
                                let _ = reply.send(Err(
                                    "/etc/xdplb/xdplb.toml:8:3: rise must be at least 1".into(),
                                ));
                            }
                            // Refuses a config named refused.toml; else
                            // accepts, saying what it was asked.
                            ControllerCommand::Plan { proposal, reply } => {
                                use xdplb::command::Proposal;
                                let said = match &proposal {
                                    Proposal::Config { path } => path.display().to_string(),
                                    Proposal::Drain { pool, backend } => {
                                        format!("drain {pool}/{backend}")
                                    }
                                };
                                let refused = said.ends_with("refused.toml");
                                let _ = reply.send(xdplb::status::ChangePlan {
                                    accepted: !refused,
                                    refused: refused
                                        .then(|| format!("{said}: [dataplane] changed")),
                                    summary: vec![said],
                                    ..Default::default()
                                });
                            }
                        }
                    }
                });
                admin::serve(&path, tx, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        assert!(
            wait_until(Duration::from_secs(5), || UnixStream::connect(&socket)
                .is_ok()),
            "admin server did not come up"
        );
        FakeController {
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        assert!(!self.socket.exists(), "admin socket left behind");
    }
}

#[test]
fn admin_socket_from_outside() {
    let fake = FakeController::start();
    let s = fake.socket.to_string_lossy().into_owned();

    // Raw: malformed requests get error replies, the connection and the
    // server keep serving.
    let mut conn = UnixStream::connect(&fake.socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rd = BufReader::new(conn.try_clone().unwrap());
    let mut ask = |line: &str| -> serde_json::Value {
        conn.write_all(line.as_bytes()).unwrap();
        let mut reply = String::new();
        rd.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    };
    let r = ask("this is not json\n");
    assert_eq!((r["v"].as_u64(), r["ok"].as_bool()), (Some(1), Some(false)));
    assert!(
        r["error"].as_str().unwrap().contains("malformed JSON"),
        "{r}"
    );
    let r = ask("{\"v\":1,\"cmd\":\"selfdestruct\"}\n");
    assert!(
        r["error"].as_str().unwrap().contains("unknown command"),
        "{r}"
    );
    let r = ask("{\"v\":9,\"cmd\":\"status\"}\n");
    assert!(r["error"].as_str().unwrap().contains("version"), "{r}");
    let r = ask("{\"v\":1,\"cmd\":\"status\"}\n");
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["status"]["pools"].is_array(), "{r}");
    drop(conn);

    // Through the binary.
    let o = xdplb(&["status", "--json", "--socket", &s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v, serde_json::json!({"pools": []}));
    let o = xdplb(&["status", "--socket", &s]);
    assert_eq!(stdout(&o), "no pools configured\n");

    let o = xdplb(&["drain", "web", "web-1", "--socket", &s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "drained web/web-1\n");
    let o = xdplb(&["undrain", "web", "web-1", "--socket", &s]);
    assert_eq!(stdout(&o), "undrained web/web-1\n");
    let o = xdplb(&["drain", "web", "nope", "--socket", &s]);
    assert_eq!(o.status.code(), Some(1));
    assert_one_error_line(&o, "no backend \"nope\" in pool \"web\"");
    let o = xdplb(&["reload", "--socket", &s]);
    assert_one_error_line(&o, "xdplb.toml:8:3: rise must be at least 1");

    // Runtime states: each command reaches the controller as its own
    // request and prints what was done.
    for (args, want) in [
        (&["maint", "web", "web-1"][..], "web/web-1 in maintenance\n"),
        (&["ready", "web", "web-1"][..], "web/web-1 ready\n"),
        (
            &["set", "weight", "web", "web-1", "0"][..],
            "web/web-1 weight 0\n",
        ),
        (
            &["set", "weight", "web", "web-1", "1000"][..],
            "web/web-1 weight 1000\n",
        ),
        (
            &["set", "weight", "web", "web-1", "config"][..],
            "web/web-1 weight back to its config's\n",
        ),
    ] {
        let o = xdplb(&[args, &["--socket", &s][..]].concat());
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), want, "{args:?}");
    }
    // Plans: the path reaches the controller absolute (it reads it from
    // its own directory); a refusal exits 1 with the reason.
    let o = xdplb(&["plan", "--config", "new.toml", "--socket", &s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cwd = std::env::current_dir().unwrap();
    assert!(
        stdout(&o).starts_with(&format!(
            "would be accepted: {}\n",
            cwd.join("new.toml").display()
        )),
        "{}",
        stdout(&o)
    );
    let o = xdplb(&[
        "plan",
        "--config",
        "/x/refused.toml",
        "--json",
        "--socket",
        &s,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["accepted"], false);
    assert_eq!(v["refused"], "/x/refused.toml: [dataplane] changed");
    assert_one_error_line(&o, "refused: /x/refused.toml: [dataplane] changed");
    let o = xdplb(&["drain", "web", "web-1", "--dry-run", "--socket", &s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("would be accepted: drain web/web-1\n"),
        "{}",
        stdout(&o)
    );
    let o = xdplb(&["drain", "web", "web-1", "--json", "--socket", &s]);
    assert_eq!(o.status.code(), Some(2), "--json needs --dry-run");

    let o = xdplb(&["maint", "web", "nope", "--socket", &s]);
    assert_one_error_line(&o, "no backend \"nope\" in pool \"web\"");
    // Out of range: refused by the command line, nothing sent.
    for bad in ["1001", "1.5", "heavy"] {
        let o = xdplb(&["set", "weight", "web", "web-1", bad, "--socket", &s]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(
            stderr(&o).contains("0..=1000 (0: no new flows) or `config`"),
            "{bad}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn agent_answers_one_line_and_stops_on_sigterm() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let agent = Proc::spawn(&[
        "agent",
        "--listen",
        &listen,
        "--fixed",
        "cpu=0.5 mem=0.5 disk=0.5 net=0.5",
    ]);
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut line = String::new();
    let answered = wait_until(Duration::from_secs(10), || {
        let Ok(s) = TcpStream::connect(addr) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        line.clear();
        BufReader::new(s).read_line(&mut line).is_ok() && !line.is_empty()
    });
    assert!(answered, "agent on {listen} did not answer");
    let reply = xdplb::load::parse_agent_reply(line.trim()).expect("parses");
    assert_eq!(reply.util.cpu, Some(0.5));
    assert_eq!(reply.weight_pct, Some(100));
    assert_eq!(line, "up 100% cpu=0.50 mem=0.50 disk=0.50 net=0.50\n");

    let out = agent.terminate();
    assert!(out.status.success(), "agent exit {}", out.status);
    assert!(
        stderr(&out).contains(&listen),
        "listen address logged: {}",
        stderr(&out)
    );
}

#[test]
fn agent_with_a_bad_fixed_spec_fails_cleanly() {
    let o = xdplb(&["agent", "--listen", "127.0.0.1:0", "--fixed", "cpu=7"]);
    assert_one_error_line(&o, "cpu");
}

/// Pins of a data plane loaded by the test; taken down on drop if the test
/// did not.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = dataplane::down(&self.0);
        }
    }
}

#[test]
fn stats_and_down_on_a_real_data_plane() {
    if skip_unless_root() {
        return;
    }
    let pin = PathBuf::from(format!("/sys/fs/bpf/xdplb-clitest-{}", std::process::id()));
    let pins = Pins(pin.clone());
    let vip: SocketAddrV4 = "198.18.2.10:80".parse().unwrap();
    let backend: SocketAddrV4 = "198.18.1.11:8080".parse().unwrap();
    {
        let mut dp = Dataplane::load(Shape {
            pin_path: pin.clone(),
            ring_size: 1009,
            flow_table_size: 1024,
        })
        .expect("load data plane");
        dp.write_name(0, "web").unwrap();
        dp.write_name(backend_name_index(0), "web-1").unwrap();
        dp.write_backend(&BackendSlot {
            slot: 0,
            vip_index: 0,
            addr: backend.into(),
            state: BACKEND_ACTIVE,
            flags: 0,
        })
        .unwrap();
        dp.publish_vip(vip, 0, &vec![0; 1009], lb_common::VIP_F_REJECT_EMPTY)
            .unwrap();
        // Frames "arrive" on lo for explain (its MAC is the program's).
        dp.sync_host(&["lo".to_string()]).unwrap();
    }
    let p = pin.to_string_lossy().into_owned();

    // explain, before any counter is read below: they must all still be 0.
    let o = xdplb(&[
        "explain",
        "198.18.0.2:40000",
        "198.18.2.10:80",
        "--json",
        "--interface",
        "lo",
        "--pin-path",
        &p,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["programs"], serde_json::json!(["xdplb"]), "{v}");
    assert_eq!(v["pool"], "web", "{v}");
    assert_eq!(v["flow"]["lookup"], "miss", "{v}");
    assert_eq!(v["flow"]["insert"], true, "{v}");
    assert_eq!(v["ring_backend"], 0, "{v}");
    assert_eq!(v["backend"]["name"], "web-1", "{v}");
    assert_eq!(v["backend"]["state"], "active", "{v}");
    assert_eq!(v["protocol"], "tcp", "{v}");
    assert_eq!(v["flags"], "syn", "{v}");
    let o = xdplb(&[
        "explain",
        "198.18.0.2:40000",
        "198.18.2.10:80",
        "--flags",
        "ack",
        "--interface",
        "lo",
        "--pin-path",
        &p,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("backend:  web-1 (slot 0, active)") && text.contains("verdict:  XDP_"),
        "{text}"
    );
    let o = xdplb(&[
        "explain",
        "198.18.0.2:40000",
        "[2001:2:0:2::10]:80",
        "--interface",
        "lo",
        "--pin-path",
        &p,
    ]);
    assert_one_error_line(&o, "are not of one address family");

    let o = xdplb(&["stats", "--json", "--pin-path", &p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for field in [
        "rx_packets",
        "passed",
        "redirected",
        "dropped",
        "flow_misses",
    ] {
        assert_eq!(v["global"][field], 0, "{field}: {v}");
    }
    assert_eq!(v["vips"][0]["pool"], "web");
    assert_eq!(v["vips"][0]["vip"], "198.18.2.10:80");
    for field in ["packets", "bytes", "new_flows"] {
        assert_eq!(v["vips"][0][field], 0, "{field}: {v}");
        assert_eq!(v["backends"][0][field], 0, "{field}: {v}");
    }
    assert_eq!(v["vips"][0]["rejected"], 0, "{v}");
    assert_eq!(v["global"]["answered"], 0, "{v}");
    let events = v["global"]["events"].as_object().expect("events");
    assert_eq!(events.len(), lb_common::GlobalCounter::EVENTS.len(), "{v}");
    for (_, label) in lb_common::GlobalCounter::EVENTS {
        assert_eq!(events[label], 0, "{label}: {v}");
    }
    assert_eq!(v["backends"][0]["pool"], "web");
    assert_eq!(v["backends"][0]["name"], "web-1");
    assert_eq!(v["backends"][0]["addr"], "198.18.1.11:8080");
    assert_eq!(v["backends"][0]["state"], "active");

    let o = xdplb(&["stats", "--pin-path", &p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("198.18.2.10:80") && text.contains("web-1"),
        "{text}"
    );
    assert!(
        text.contains("REJECTED") && text.contains("ANSWERED"),
        "{text}"
    );

    // --watch: one JSON object of rates per interval, until SIGTERM. Read
    // as they come: two intervals' worth, within a bounded wait.
    let mut watch = Proc::spawn(&["stats", "--json", "--watch", "0.2", "--pin-path", &p]);
    let out_pipe = watch.child().stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out_pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut printed = Vec::new();
    while printed.len() < 2 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => printed.push(line),
            Err(_) => break,
        }
    }
    let out = watch.terminate();
    let _ = reader.join();
    assert!(
        out.status.success(),
        "watch exit {}: {}",
        out.status,
        stderr(&out)
    );
    assert!(
        printed.len() == 2,
        "--watch 0.2 printed {} lines of rates in 5 s: {printed:?}",
        printed.len()
    );
    let lines: Vec<serde_json::Value> = printed
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines[0]["interval_s"].as_f64().unwrap() > 0.1);
    assert_eq!(lines[0]["vips"][0]["packets"], 0.0);

    let o = xdplb(&["down", "--pin-path", &p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("removed pins at {p}")),
        "{}",
        stdout(&o)
    );
    assert!(!pin.exists(), "pins left at {p}");
    drop(pins);
}
