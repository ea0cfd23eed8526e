//! The Debian package (`cargo xtask deb`): its contents, and an install on
//! this machine — `xdplb check` on the shipped config, the man page, the
//! unit verified in place — then a purge that leaves the machine as it was.
//! It refuses to run where dpkg knows a package xdplb in any state (installed,
//! or removed with its config files kept).
//! Nothing starts: a `policy-rc.d` refuses service starts meanwhile, and the
//! package neither enables nor starts the unit anyway.
//!
//! `cargo xtask test` builds the package and passes its path in
//! `XDPLB_DEB`; without it this test fails (skips under
//! `XDPLB_ALLOW_SKIP=1`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{bail, ensure, Context, Result};
use xdplb_tests::{skip_or_fail, skip_unless_root};

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

fn run(args: &[&str]) -> Result<Output> {
    Command::new(args[0])
        .args(&args[1..])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .with_context(|| format!("cannot run {args:?}"))
}

fn run_ok(args: &[&str]) -> Result<String> {
    let out = run(args)?;
    ensure!(
        out.status.success(),
        "{args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed() -> bool {
    run(&["dpkg-query", "-W", "-f=${Status}", "xdplb"])
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// What dpkg knows of a package named xdplb (`${Status}`, e.g. `install ok
/// installed` or `deinstall ok config-files`), if anything: `dpkg-query`
/// fails for a package it has no record of.
fn dpkg_knows_xdplb() -> Result<Option<String>> {
    let out = run(&["dpkg-query", "-W", "-f=${Status}", "xdplb"])?;
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(
        (out.status.success() && !status.is_empty() && !status.ends_with(" not-installed"))
            .then_some(status),
    )
}

/// Purges the package (and removes a policy-rc.d it created) on drop, so a
/// failed assertion leaves nothing installed.
struct Installed {
    own_policy: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run(&["dpkg", "--purge", "xdplb"]);
        if self.own_policy {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

const FILES: [&str; 17] = [
    "./usr/bin/xdplb",
    "./usr/share/man/man1/xdplb-maint.1.gz",
    "./usr/share/man/man1/xdplb-set-weight.1.gz",
    "./usr/share/man/man1/xdplb-serving.1.gz",
    "./usr/share/doc/xdplb/PAIR.md",
    "./usr/share/doc/xdplb/examples/keepalived/keepalived-gwa.conf",
    "./usr/lib/systemd/system/xdplb.service",
    "./etc/xdplb/xdplb.toml",
    "./usr/share/man/man1/xdplb.1.gz",
    "./usr/share/man/man1/xdplb-run.1.gz",
    "./usr/share/man/man5/xdplb.toml.5.gz",
    "./usr/share/doc/xdplb/INTERFACE.md",
    "./usr/share/bash-completion/completions/xdplb",
    "./usr/share/zsh/vendor-completions/_xdplb",
    "./usr/share/fish/vendor_completions.d/xdplb.fish",
    "./usr/share/doc/xdplb/copyright",
    "./usr/share/xdplb/grafana/xdplb.json",
];

#[test]
fn package_installs_checks_and_purges_cleanly() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let Some(deb) = std::env::var_os("XDPLB_DEB").map(PathBuf::from) else {
        skip_or_fail(
            "needs XDPLB_DEB, the package to test (`cargo xtask test` builds it and sets it)",
        );
        return Ok(());
    };
    // Whatever dpkg knows of xdplb is someone's: an installed package, or
    // one removed but not purged (`config-files`: its /etc/xdplb kept),
    // which this test's purge would delete. Touch nothing then.
    if let Some(status) = dpkg_knows_xdplb()? {
        bail!(
            "dpkg knows a package xdplb on this machine ({status}): not touching it \
             (`dpkg --purge xdplb` first, if it may go)"
        );
    }
    let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or("");
    ensure!(
        name.starts_with("xdplb_") && name.ends_with("_amd64.deb"),
        "package named {name}"
    );
    let deb_s = deb.to_str().context("path")?;

    // Contents.
    let list = run_ok(&["dpkg-deb", "-c", deb_s])?;
    for f in FILES {
        ensure!(
            list.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "{f} missing from the package:\n{list}"
        );
    }
    let package = run_ok(&["dpkg-deb", "-f", deb_s, "Package"])?;
    ensure!(package.trim() == "xdplb", "package name {package}");
    let dir = std::env::temp_dir().join(format!("xdplb-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    run_ok(&["dpkg-deb", "-x", deb_s, dir.to_str().context("path")?])?;
    let shipped = std::fs::read_to_string(dir.join("etc/xdplb/xdplb.toml"));
    let version = run_ok(&[
        dir.join("usr/bin/xdplb").to_str().context("path")?,
        "--version",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    ensure!(shipped? == std::fs::read_to_string(repo.join("deploy/debian/xdplb.toml"))?);
    ensure!(version?.starts_with("xdplb "));

    // Install, refusing service starts meanwhile.
    let own_policy = !Path::new(POLICY_RC_D).exists();
    if own_policy {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(POLICY_RC_D, "#!/bin/sh\n# xdplb deb test\nexit 101\n")?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
    }
    let guard = Installed { own_policy };
    run_ok(&["dpkg", "-i", deb_s])?;
    ensure!(installed());
    let out = run_ok(&["xdplb", "check", "--config", "/etc/xdplb/xdplb.toml"])?;
    ensure!(out.starts_with("ok: 0 pools"), "{out}");
    let cf = run_ok(&["dpkg-query", "-W", "-f=${Conffiles}", "xdplb"])?;
    ensure!(cf.contains("/etc/xdplb/xdplb.toml"), "conffiles: {cf}");
    let page = run_ok(&["man", "-l", "/usr/share/man/man1/xdplb.1.gz"])?;
    ensure!(page.contains("xdplb") && page.contains("run"), "{page}");
    let page = run_ok(&["man", "-l", "/usr/share/man/man1/xdplb-run.1.gz"])?;
    ensure!(page.contains("--config"), "{page}");
    // The config schema, as the shipped config's header points to it.
    let page = run_ok(&["man", "5", "xdplb.toml"])?;
    for key in [
        "[dataplane]",
        "flow_table_size",
        "[pool.health]",
        "slow_start_ms",
    ] {
        ensure!(page.contains(key), "man 5 xdplb.toml lacks {key}:\n{page}");
    }
    // The unit as installed, its ExecStart and man pages included.
    let out = run(&["systemd-analyze", "verify", "xdplb.service"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && err.trim().is_empty(),
        "verify: {err}"
    );
    let state = std::fs::metadata("/var/lib/xdplb").context("/var/lib/xdplb")?;
    use std::os::unix::fs::PermissionsExt;
    ensure!(state.is_dir() && state.permissions().mode() & 0o777 == 0o700);

    drop(guard);
    if let Some(status) = dpkg_knows_xdplb()? {
        bail!("dpkg still knows xdplb after the purge: {status}");
    }
    for gone in ["/usr/bin/xdplb", "/etc/xdplb", "/var/lib/xdplb"] {
        ensure!(!Path::new(gone).exists(), "{gone} left behind by purge");
    }
    if own_policy {
        ensure!(!Path::new(POLICY_RC_D).exists());
    }
    Ok(())
}
