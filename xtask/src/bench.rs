//! `cargo xtask bench [dataplane|controller|lab|all]`.
//!
//! - `dataplane`: per-packet cost of the XDP program under BPF_PROG_TEST_RUN.
//! - `controller`: planner / Maglev table build times.
//! - `lab`: end-to-end throughput and latency through a namespace lab.

use anyhow::{bail, Result};
use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    Dataplane,
    Controller,
    Lab,
    All,
}

pub fn run(suite: Suite) -> Result<()> {
    match suite {
        Suite::Dataplane => dataplane(),
        Suite::Controller => controller(),
        Suite::Lab => lab(),
        Suite::All => {
            dataplane()?;
            controller()?;
            lab()
        }
    }
}

fn dataplane() -> Result<()> {
    bail!("bench dataplane: not yet")
}

fn controller() -> Result<()> {
    bail!("bench controller: not yet")
}

fn lab() -> Result<()> {
    bail!("bench lab: not yet")
}
