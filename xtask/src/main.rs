//! `cargo xtask` — the single front door for developers and CI.
//!
//! # Layout
//!
//! - [`setup`]: installs what building and testing need (the eBPF nightly
//!   with rust-src, bpf-linker, Debian packages, bpffs), idempotently; its
//!   `PROGRAMS` lists every external program the tests, demos and
//!   benchmarks run.
//! - [`test`]: the CI pipeline — fmt, clippy, release build, tests.
//! - [`demo`]: a guided run of xdplb in a namespace lab.
//! - [`bench`]: data-plane, controller and lab benchmarks.
//! - [`deb`]: the Debian package (cargo-deb).
//! - [`cmd`]: running external commands with a printed trace.

mod bench;
mod cmd;
mod deb;
mod demo;
#[path = "../../lb-userspace/ebpf_toolchain.rs"]
mod ebpf_toolchain;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Developer tasks for xdplb. Run from anywhere inside the repository.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install toolchains, bpf-linker, test packages and mount bpffs (idempotent).
    Setup {
        /// Also the packages only the benchmarks run (HAProxy, nginx, wrk,
        /// iperf3, git) and a benchmark peer's build takes (clang, llvm: see
        /// `bench dataplane --peer`); `cargo xtask bench` installs them itself.
        #[arg(long)]
        bench: bool,
    },
    /// Build the `xdplb` binary with its embedded eBPF object.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// The CI pipeline: setup, fmt, clippy, release build, tests (as root).
    Test,
    /// Run xdplb in a namespace lab and show it balancing.
    Demo {
        /// Which demo: `hot-warm` (one gateway: drain, failover, warm spare)
        /// `fleet` (three gateways behind a BIRD router: ECMP, BGP, BFD) or
        /// `pair` (two gateways with keepalived: a ring change, the master
        /// lost).
        #[arg(value_enum, default_value_t = demo::Which::HotWarm)]
        which: demo::Which,
    },
    /// Build the Debian package target/debian/xdplb_<version>_amd64.deb.
    Deb {
        /// Package the release binary already built.
        #[arg(long)]
        no_build: bool,
    },
    /// Set up (with the benchmarks' packages), run benchmarks and rewrite
    /// docs/BENCHMARKS.md (about 4 minutes).
    Bench {
        /// Which benchmark suite to run.
        #[arg(value_enum, default_value_t = bench::Suite::All)]
        suite: bench::Suite,
        /// One round of short runs (about a minute): indicative only.
        #[arg(long)]
        quick: bool,
        /// A directory holding Katran's balancer.bpf.o (built as
        /// docs/BENCHMARKS.md says): the data plane is then timed side by
        /// side with it, in the same run.
        #[arg(long, value_name = "DIR")]
        peer: Option<std::path::PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Setup { bench } => setup::run(if bench {
            setup::Step::Bench
        } else {
            setup::Step::Test
        }),
        Command::Build { release } => build(release),
        Command::Test => test::run(),
        Command::Demo { which } => demo::run(which),
        Command::Deb { no_build } => deb::run(no_build).map(drop),
        Command::Bench { suite, quick, peer } => {
            setup::run(setup::Step::Bench).and_then(|()| bench::run_with(suite, quick, peer))
        }
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// `cargo build -p lb-userspace [--release]`; aya-build compiles and embeds
/// the eBPF object from lb-userspace's build script.
fn build(release: bool) -> Result<()> {
    let mut args = vec!["build", "-p", "lb-userspace"];
    if release {
        args.push("--release");
    }
    cmd::cargo(&args).run()
}
