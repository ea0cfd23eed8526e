//! `cargo xtask test`: the CI pipeline. Each step prints a header; the
//! first failure stops the run with a non-zero exit.

use crate::cmd::{cargo, header, target_dir};
use anyhow::{Context, Result};

/// Crates linted with clippy (lb-ebpf is built for BPF by lb-userspace's
/// build script; checking it for the host pulls std in twice).
const CLIPPY_CRATES: &[&str] = &["lb-common", "lb-userspace", "xtask", "xdplb-tests"];

/// Crates whose tests run.
const TEST_CRATES: &[&str] = &["lb-common", "lb-userspace", "xtask", "xdplb-tests"];

pub fn run() -> Result<()> {
    crate::setup::run().context("setup")?;

    header("test: cargo fmt --all --check");
    cargo(&["fmt", "--all", "--check"]).run()?;

    header("test: cargo clippy");
    let mut args = vec!["clippy"];
    args.extend(CLIPPY_CRATES.iter().flat_map(|c| ["-p", c]));
    args.extend(["--all-targets", "--", "-D", "warnings"]);
    cargo(&args).run()?;

    header("test: cargo build -p lb-userspace --release");
    cargo(&["build", "-p", "lb-userspace", "--release"]).run()?;
    let bin = target_dir()?.join("release").join("xdplb");
    anyhow::ensure!(bin.is_file(), "release build produced no {}", bin.display());
    // The upgrade package first: cargo-deb removes older packages of the
    // same name from target/debian when it builds one elsewhere.
    let upgrade = crate::deb::upgrade(&bin)?;
    let deb = crate::deb::run(true)?;

    header("test: cargo test");
    let mut args = vec!["test"];
    args.extend(TEST_CRATES.iter().flat_map(|c| ["-p", c]));
    // Namespace tests share the host (bpffs, CPU): run them one at a time.
    args.extend(["--", "--test-threads=1"]);
    cargo(&args)
        .env("XDPLB_BIN", &bin)
        .env("XDPLB_DEB", &deb)
        .env("XDPLB_DEB_UPGRADE", &upgrade)
        .run()?;

    header("test: all passed");
    Ok(())
}
