//! Versioned pinned layouts: a controller refuses pins made for another
//! layout — a `VERSION` of another number, or a map of another shape — with
//! an error that names the remedy, and leaves them (and the forwarding
//! data plane) alone. `xdplb down` and a fresh start then work.

use std::{ffi::CString, os::fd::RawFd, path::Path, time::Duration};

use anyhow::{bail, ensure, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root, xdplb_bin,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// `bpf(cmd, attr)` with `attr` as a zero-padded `union bpf_attr`.
fn bpf(cmd: libc::c_long, words: &[u64]) -> Result<i64> {
    let mut attr = [0u64; 16];
    attr[..words.len()].copy_from_slice(words);
    // SAFETY: a valid, zero-padded attr buffer of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) };
    if rc < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn two(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

fn obj_get(path: &Path) -> Result<RawFd> {
    let c = CString::new(path.to_string_lossy().as_bytes())?;
    Ok(bpf(BPF_OBJ_GET, &[c.as_ptr() as u64, 0])? as RawFd)
}

/// `VERSION[0] = v` in the pinned map.
fn set_version(pin: &Path, v: u32) -> Result<()> {
    let fd = obj_get(&pin.join("VERSION"))?;
    let key = 0u32;
    let r = bpf(
        BPF_MAP_UPDATE_ELEM,
        &[
            u64::from(fd as u32),
            &key as *const u32 as u64,
            &v as *const u32 as u64,
            0,
        ],
    );
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    r.map(|_| ())
}

/// Pins an array map of `value_size` bytes, one entry, at `path`.
fn pin_array(path: &Path, value_size: u32) -> Result<()> {
    let fd = bpf(
        BPF_MAP_CREATE,
        &[two(BPF_MAP_TYPE_ARRAY, 4), two(value_size, 1)],
    )? as RawFd;
    let c = CString::new(path.to_string_lossy().as_bytes())?;
    let r = bpf(BPF_OBJ_PIN, &[c.as_ptr() as u64, u64::from(fd as u32)]);
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    r.map(|_| ())
}

/// `xdplb run` on the current config, expected to refuse: its log.
fn refused_start(d: &Deployment) -> Result<String> {
    let bin = xdplb_bin()?;
    let child = d.lab.spawn_net(
        d.lab.gw_ns(),
        &[
            bin.to_string_lossy().as_ref(),
            "run",
            "--config",
            d.config_path.to_string_lossy().as_ref(),
        ],
        &[],
    )?;
    let st = child.wait_exit(Duration::from_secs(10));
    ensure!(
        st.is_some_and(|s| !s.success()),
        "xdplb run adopted pins of another layout ({st:?}): {}",
        child.log()
    );
    Ok(child.log())
}

#[test]
fn pins_of_another_layout_are_refused_with_the_remedy() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::new(vec![PoolSpec::new(2, 0)])?;
    d.start_daemon()?;
    d.stop_daemon()?;
    let pin = d.lab.pin_path();

    // Pins stamped with another layout version.
    set_version(&pin, lb_common::LAYOUT_VERSION + 1)?;
    let log = refused_start(&d)?;
    ensure!(
        log.contains("layout version") && log.contains("xdplb down"),
        "{log}"
    );
    // Refused before touching anything: the old data plane still forwards.
    let seen = d.spread(10)?;
    ensure!(seen.values().sum::<usize>() == 10, "{seen:?}");

    // Same version, but a map of another shape (as an older build would
    // have pinned it): NAMES with 8-byte values.
    set_version(&pin, lb_common::LAYOUT_VERSION)?;
    std::fs::remove_file(pin.join("NAMES"))?;
    pin_array(&pin.join("NAMES"), 8)?;
    let log = refused_start(&d)?;
    ensure!(
        log.contains("NAMES") && log.contains("value size") && log.contains("xdplb down"),
        "{log}"
    );

    // The remedy works.
    let out = d.xdplb(&["down", "--pin-path", &pin.to_string_lossy()])?;
    ensure!(
        out.status.success(),
        "down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.start_daemon()?;
    let seen = d.spread(10)?;
    ensure!(seen.values().sum::<usize>() == 10, "{seen:?}");
    Ok(())
}
