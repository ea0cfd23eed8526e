//! `cargo xtask demo`: builds a namespace lab (xdplb-tests' `Lab`), runs
//! `xdplb run` on its gateway and shows traffic being balanced, a backend
//! failing and a warm spare taking over.

use anyhow::{bail, Result};

pub fn run() -> Result<()> {
    bail!("demo: not yet")
}
