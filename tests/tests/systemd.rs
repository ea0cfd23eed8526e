//! The systemd unit (`deploy/systemd/xdplb.service`): `systemd-analyze
//! verify` accepts it, and `xdplb run` speaks the `Type=notify` protocol it
//! declares — READY=1 once the maps are written, WATCHDOG=1 pings while
//! `WATCHDOG_USEC` is set, STOPPING=1 on SIGTERM. PID 1 here is not systemd:
//! the unit is verified, never started.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root, xdplb_bin,
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

#[test]
fn run_notifies_ready_watchdog_and_stopping() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::new(vec![PoolSpec::new(2, 0)])?;
    let sock_path = d.lab.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let started = Instant::now();
    // A 1 s watchdog: pings every 500 ms.
    d.start_daemon_with_env(&[
        ("NOTIFY_SOCKET", sock_path.to_str().context("path")?),
        ("WATCHDOG_USEC", "1000000"),
    ])?;
    let mut got: Vec<(Duration, String)> = Vec::new();
    let mut buf = [0u8; 512];
    let read_for = |got: &mut Vec<(Duration, String)>, buf: &mut [u8], d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if let Ok(n) = sock.recv(buf) {
                got.push((
                    started.elapsed(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
    };
    read_for(&mut got, &mut buf, Duration::from_secs(3));
    let ready = got.iter().filter(|(_, m)| m.contains("READY=1")).count();
    let pings = got.iter().filter(|(_, m)| m.contains("WATCHDOG=1")).count();
    ensure!(ready == 1, "READY=1 {ready} times: {got:?}");
    // `start_daemon` returned once every backend was probed: by then
    // READY=1 is out; 3 s more at one ping per 0.5 s gives about 6.
    ensure!((4..=10).contains(&pings), "{pings} watchdog pings: {got:?}");
    d.stop_daemon()?;
    read_for(&mut got, &mut buf, Duration::from_millis(300));
    ensure!(
        got.iter().any(|(_, m)| m.contains("STOPPING=1")),
        "no STOPPING=1: {got:?}"
    );
    Ok(())
}
