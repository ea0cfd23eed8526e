//! `cargo xtask demo`: sets the machine up, builds xdplb, then runs the
//! narrated hot-warm demo (`tests/src/bin/xdplb-demo.rs`) in a namespace
//! lab of its own, which it removes on exit and on Ctrl-C.

use anyhow::{Context, Result};

use crate::cmd::{cargo, header, target_dir};

pub fn run() -> Result<()> {
    crate::setup::run().context("setup")?;
    header("demo: building xdplb and the lab (release)");
    cargo(&[
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "-p",
        "xdplb-tests",
        "--bins",
    ])
    .run()?;
    let release = target_dir()?.join("release");
    header("demo: running");
    crate::cmd::Cmd::new(release.join("xdplb-demo"))
        .env("XDPLB_BIN", release.join("xdplb"))
        .env("LAB_BACKEND_BIN", release.join("lab-backend"))
        .run()
}
