//! `cargo xtask deb`: the Debian package, `target/debian/xdplb_<version>_amd64.deb`.
//!
//! Builds the release binary, has it write its man pages and shell
//! completions (`xdplb man --out target/deb-docs`, generated from the clap
//! definitions), then runs cargo-deb (installed by `cargo xtask setup`) on
//! lb-userspace's `[package.metadata.deb]`: binary, systemd unit, conffile
//! `/etc/xdplb/xdplb.toml`, man pages, completions, `/var/lib/xdplb`.

use crate::cmd::{cargo, header, repo_root, target_dir, Cmd};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Builds the package (rebuilding the binary unless `no_build`) and
/// returns its path.
pub fn run(no_build: bool) -> Result<PathBuf> {
    if !no_build {
        header("deb: cargo build -p lb-userspace --release");
        cargo(&["build", "-p", "lb-userspace", "--release"]).run()?;
    }
    let bin = target_dir()?.join("release").join("xdplb");
    anyhow::ensure!(bin.is_file(), "no {}: build first", bin.display());

    header("deb: man pages and completions");
    // cargo-deb's asset paths are relative to lb-userspace: this is
    // `../target/deb-docs` there, whatever CARGO_TARGET_DIR says.
    let docs = repo_root().join("target").join("deb-docs");
    let _ = std::fs::remove_dir_all(&docs);
    Cmd::new(&bin).args(["man", "--out"]).args([&docs]).run()?;

    header("deb: cargo deb");
    let out = target_dir()?.join("debian");
    let printed = cargo(&["deb", "-p", "lb-userspace", "--no-build", "--output"])
        .args([&out])
        .read()
        .context("cargo-deb failed (is it installed? `cargo xtask setup` installs it)")?;
    let deb = PathBuf::from(
        printed
            .lines()
            .last()
            .context("cargo deb printed no path")?
            .trim(),
    );
    anyhow::ensure!(deb.is_file(), "cargo deb reported {}", deb.display());
    println!("{}", deb.display());
    Ok(deb)
}

/// The package again from the same binary `bin`, with a higher version
/// (`<version>+upgrade`) in `target/debian-upgrade/`: what the operator
/// suite installs over the first one to test an upgrade. Build it before
/// [`run`]: cargo-deb removes older packages of the same name from
/// `target/debian` when it builds one elsewhere.
pub fn upgrade(bin: &std::path::Path) -> Result<PathBuf> {
    header("deb: the same package with a higher version (upgrade test)");
    let docs = repo_root().join("target").join("deb-docs");
    let _ = std::fs::remove_dir_all(&docs);
    Cmd::new(bin).args(["man", "--out"]).args([&docs]).run()?;
    // `xdplb 0.1.0`
    let printed = Cmd::new(bin).args(["--version"]).read()?;
    let version = printed
        .split_whitespace()
        .nth(1)
        .context("xdplb --version printed no version")?;
    let out = target_dir()?.join("debian-upgrade");
    let _ = std::fs::remove_dir_all(&out);
    let printed = cargo(&["deb", "-p", "lb-userspace", "--no-build", "--deb-version"])
        .args([format!("{version}+upgrade")])
        .args(["--output".as_ref(), out.as_os_str()])
        .read()?;
    let upgrade = PathBuf::from(
        printed
            .lines()
            .last()
            .context("cargo deb printed no path")?
            .trim(),
    );
    anyhow::ensure!(
        upgrade.is_file(),
        "cargo deb reported {}",
        upgrade.display()
    );
    Ok(upgrade)
}
