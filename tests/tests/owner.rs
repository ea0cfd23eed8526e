//! One owner per pinned data plane: a second `xdplb run` on the same pin
//! path refuses to start whatever its admin socket, `xdplb down` refuses
//! while a controller runs (naming its pid) unless `--force`, and `down`
//! removes only xdplb's own pins.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root, xdplb_bin, Lab,
};

fn has_xdp(d: &Deployment, iface: &str) -> Result<bool> {
    Ok(d.lab
        .exec_ok(d.lab.gw_ns(), &["ip", "-d", "link", "show", iface])?
        .contains("xdp"))
}

#[test]
fn a_second_controller_and_down_are_refused_while_one_runs() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::new(vec![PoolSpec::new(2, 0)])?;
    d.start_daemon()?;
    let pid = d.daemon.as_ref().context("daemon")?.pid().to_string();
    let pin = d.lab.pin_path();
    let pin_s = pin.to_string_lossy().into_owned();

    // Same pins, another admin socket and no metrics listener: nothing but
    // the pin path is shared.
    let other = d.lab.dir().join("other.toml");
    let text = std::fs::read_to_string(&d.config_path)?
        .replace("xdplb.sock", "other.sock")
        .replace(
            "metrics_listen = \"127.0.0.1:9434\"",
            "metrics_listen = \"\"",
        );
    std::fs::write(&other, text)?;
    let bin = xdplb_bin()?;
    let second = d.lab.spawn_net(
        d.lab.gw_ns(),
        &[
            bin.to_string_lossy().as_ref(),
            "run",
            "--config",
            other.to_string_lossy().as_ref(),
        ],
        &[],
    )?;
    let st = second.wait_exit(Duration::from_secs(10));
    ensure!(
        st.is_some_and(|s| !s.success()),
        "a second controller started on the same pins ({st:?}): {}",
        second.log()
    );
    let log = second.log();
    ensure!(
        log.contains("error:") && log.contains(&pid) && log.contains(&pin_s),
        "refusal names neither the owner's pid {pid} nor the pins: {log}"
    );

    // `down` refuses, names the pid, and changes nothing.
    let out = d.xdplb(&["down", "--pin-path", &pin_s])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "down ran under a live controller");
    ensure!(
        err.starts_with("error:") && err.contains(&pid) && err.contains("--force"),
        "{err}"
    );
    ensure!(pin.join("VIPS").exists() && has_xdp(&d, Lab::gw_ifaces()[0])?);
    let seen = d.spread(10)?;
    ensure!(seen.values().sum::<usize>() == 10, "{seen:?}");
    ensure!(d.status().is_ok(), "the running controller was disturbed");

    // With the controller gone, `down` removes xdplb's pins and leaves a
    // foreign entry (bpffs holds no regular files: a directory) alone.
    d.stop_daemon()?;
    let foreign = pin.join("someone-elses");
    std::fs::create_dir(&foreign)?;
    let out = d.xdplb(&["down", "--pin-path", &pin_s])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(stdout.contains("someone-elses"), "{stdout}");
    ensure!(foreign.is_dir(), "down removed a foreign entry");
    let left: Vec<String> = std::fs::read_dir(&pin)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ensure!(
        left == ["someone-elses"],
        "left under the pin path: {left:?}"
    );
    for iface in Lab::gw_ifaces() {
        ensure!(!has_xdp(&d, iface)?, "{iface} still has XDP after down");
    }
    std::fs::remove_dir(&foreign)?;
    std::fs::remove_dir(&pin)?;

    // --force takes it down under a running controller.
    d.start_daemon()?;
    let out = d.xdplb(&["down", "--force", "--pin-path", &pin_s])?;
    ensure!(
        out.status.success(),
        "down --force: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!pin.exists(), "pins left after down --force");
    for iface in Lab::gw_ifaces() {
        ensure!(
            !has_xdp(&d, iface)?,
            "{iface} still has XDP after down --force"
        );
    }
    d.stop_daemon()?;
    Ok(())
}
