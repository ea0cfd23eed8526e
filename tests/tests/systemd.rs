//! The systemd unit (`deploy/systemd/xdplb.service`): `systemd-analyze
//! verify` accepts it, and `xdplb run` speaks the `Type=notify` protocol it
//! declares — READY=1 once every backend's first probe has ended and the
//! maps are written (shown against health endpoints that answer slowly),
//! WATCHDOG=1 pings while `WATCHDOG_USEC` is set, STOPPING=1 on SIGTERM. PID 1 here is not systemd:
//! the unit is verified, never started.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root, wait_until, xdplb_bin, Lab,
};

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/xdplb.service")
}

#[test]
fn unit_passes_systemd_analyze_verify() -> Result<()> {
    let unit = std::fs::read_to_string(unit_path())?;
    for needle in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/usr/bin/xdplb reload",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "StartLimitBurst=",
        "OnFailure=xdplb-fallback.service",
        "Requires=xdplb-bpffs.service",
        "ExecStopPost=-+/bin/systemctl --no-block start xdplb-hold.service",
        "KillSignal=SIGTERM",
        "CapabilityBoundingSet=",
        "CAP_BPF",
        "ProtectSystem=strict",
        "ReadWritePaths=-/sys/fs/bpf /run /var/lib/xdplb",
        "CAP_DAC_OVERRIDE",
        "RuntimeDirectoryMode=0755",
    ] {
        ensure!(unit.contains(needle), "the unit lacks {needle:?}");
    }
    // verify checks that ExecStart's binary exists: point it at the build.
    // (The packaged unit is verified against /usr/bin/xdplb, man pages
    // included, by the Debian package test.)
    let bin = xdplb_bin()?;
    let dir = std::env::temp_dir().join(format!("xdplb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Its helper units beside it, so its dependencies resolve.
    let mut copies = Vec::new();
    for name in [
        "xdplb.service",
        "xdplb-bpffs.service",
        "xdplb-hold.service",
        "xdplb-fallback.service",
    ] {
        let text = std::fs::read_to_string(unit_path().with_file_name(name))?;
        let copy = dir.join(name);
        std::fs::write(
            &copy,
            text.replace("/usr/bin/xdplb", &bin.to_string_lossy()),
        )?;
        copies.push(copy);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&copies)
        .output()
        .context("systemd-analyze (Debian package systemd; `cargo xtask setup` installs it)");
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    Ok(())
}

/// The side port each backend's slow health endpoint listens on.
const HEALTH_PORT: u16 = 8081;
/// How long that endpoint takes to answer a probe: long enough that a
/// READY=1 sent before the first probes ended would arrive well before
/// their answers (the daemon's first beat is 200 ms after its start).
const PROBE_HOLD: Duration = Duration::from_millis(600);
/// How long the test listens to the daemon before stopping it.
const LISTEN_FOR: Duration = Duration::from_secs(3);

/// When each health probe was answered, per backend.
type Answers = Arc<Mutex<Vec<(usize, Instant)>>>;

/// An HTTP server on `HEALTH_PORT` in backend `i`'s namespace answering
/// every request `200` after `PROBE_HOLD`, recording when it answered.
/// Runs until `stop`.
fn slow_health_server(
    lab: &Lab,
    i: usize,
    answers: Answers,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let listener = lab.run_in(lab.backend_ns(i), || {
        TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], HEALTH_PORT)))
    })??;
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        // Bounded by `stop`, which the test sets on every path out.
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let answers = answers.clone();
            std::thread::spawn(move || {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut req = Vec::new();
                let mut buf = [0u8; 512];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                // The endpoint's own slowness (what the test is about),
                // not a wait for anything.
                std::thread::sleep(PROBE_HOLD);
                let ok = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                    )
                    .is_ok();
                if ok {
                    answers.lock().unwrap().push((i, Instant::now()));
                }
            });
        }
    }))
}

#[test]
fn run_notifies_ready_after_the_first_probes_then_watchdog_and_stopping() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut pool = PoolSpec::new(2, 0);
    pool.health_port = Some(HEALTH_PORT);
    pool.interval_ms = 1000;
    pool.timeout_ms = 900;
    let mut d = Deployment::new(vec![pool])?;
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Answers = Arc::default();
    let result = (|| -> Result<()> {
        let servers = (0..2)
            .map(|i| slow_health_server(&d.lab, i, answers.clone(), stop.clone()))
            .collect::<Result<Vec<_>>>()?;
        // Read the notifications as they come, from before the start.
        let sock_path = d.lab.dir().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path)?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let got: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let reader = {
            let (got, stop) = (got.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                // Bounded by `stop`.
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        got.lock().unwrap().push((Instant::now(), msg));
                    }
                }
            })
        };
        // A 1 s watchdog: pings every 500 ms.
        d.start_daemon_with_env(&[
            ("NOTIFY_SOCKET", sock_path.to_str().context("path")?),
            ("WATCHDOG_USEC", "1000000"),
        ])?;
        let seen = |what: &str| -> Vec<Instant> {
            got.lock()
                .unwrap()
                .iter()
                .filter(|(_, m)| m.contains(what))
                .map(|(t, _)| *t)
                .collect()
        };
        let ready_at = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            !seen("READY=1").is_empty()
        });
        ensure!(ready_at, "no READY=1: {:?}", got.lock().unwrap());
        let ready = seen("READY=1")[0];
        // Each backend's first probe ended (its answer written) before
        // READY=1 arrived.
        let answered = answers.lock().unwrap().clone();
        let mut last_first = None;
        for i in 0..2 {
            let first = answered
                .iter()
                .filter(|(b, _)| *b == i)
                .map(|(_, t)| *t)
                .min()
                .with_context(|| format!("backend {i} was never probed: {answered:?}"))?;
            ensure!(
                first <= ready,
                "READY=1 came {:?} before backend {i}'s first probe was answered",
                first - ready
            );
            last_first = last_first.max(Some(first));
        }
        println!(
            "READY=1 {:?} after the last backend's first probe was answered",
            ready - last_first.unwrap_or(ready)
        );
        // A window of fixed length to count the watchdog's pings in.
        let listen_until = ready + LISTEN_FOR;
        std::thread::sleep(listen_until.saturating_duration_since(Instant::now()));
        let ready_count = seen("READY=1").len();
        let pings = seen("WATCHDOG=1")
            .into_iter()
            .filter(|t| *t >= ready && *t < listen_until)
            .count();
        ensure!(
            ready_count == 1,
            "READY=1 {ready_count} times: {:?}",
            got.lock().unwrap()
        );
        // 3 s at one ping per 0.5 s: about 6.
        ensure!(
            (4..=10).contains(&pings),
            "{pings} watchdog pings in {LISTEN_FOR:?}: {:?}",
            got.lock().unwrap()
        );
        d.stop_daemon()?;
        let stopping = wait_until(Duration::from_secs(1), Duration::from_millis(20), || {
            !seen("STOPPING=1").is_empty()
        });
        ensure!(stopping, "no STOPPING=1: {:?}", got.lock().unwrap());
        stop.store(true, Ordering::Relaxed);
        let _ = reader.join();
        for s in servers {
            let _ = s.join();
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    result
}
