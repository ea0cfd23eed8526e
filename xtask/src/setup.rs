//! `cargo xtask setup`: everything building and testing need, installed
//! idempotently. Each step says what it checks and skips what is present;
//! a second run does nothing.

use crate::cmd::{header, Cmd};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// bpf-linker release known to link with nightly's LLVM (shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-deb release that builds with rustc 1.95 (`cargo xtask deb`).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Debian packages the tests and benchmarks run. Each entry lists
/// alternatives; the first with an install candidate is used.
const DEBIAN_PACKAGES: &[&[&str]] = &[
    &["iproute2"],
    &["ethtool"],
    &["nftables"],
    &["haproxy"],
    &["iperf3"],
    &["wrk"],
    &["nginx-light", "nginx"],
    &["curl"],
    &["python3"],
    // `systemd-analyze verify` of the unit (PID 1 need not be systemd).
    &["systemd"],
    // `man -l` on the packaged man pages.
    &["man-db"],
    // The status page test: Debian's Chromium, driven over WebDriver.
    &["chromium"],
    &["chromium-driver"],
    // BIRD 2: the fleet lab's routers and gateways speak BGP + BFD with it
    // (inside lab namespaces only; the guard below keeps the package's
    // service from starting a BIRD in the root namespace).
    &["bird2"],
];

/// `cargo xtask setup --bench`: what building a peer for `cargo xtask
/// bench dataplane --peer DIR` takes (Katran's balancer is C, compiled to
/// LLVM IR by clang and to BPF by llc; its build stays outside this
/// repository, see docs/BENCHMARKS.md).
const BENCH_PACKAGES: &[&[&str]] = &[&["clang"], &["llvm"]];

/// Where bpffs is expected (aya pins and xdplb's default pin path live here).
const BPFFS: &str = "/sys/fs/bpf";

/// Everything building and testing need; `bench`: and a peer's build.
pub fn run_with(bench: bool) -> Result<()> {
    run()?;
    if bench {
        header("setup: Debian packages for a benchmark peer (--bench)");
        debian_packages(BENCH_PACKAGES)?;
    }
    Ok(())
}

pub fn run() -> Result<()> {
    header("setup: rust toolchains");
    toolchains()?;
    header("setup: bpf-linker");
    bpf_linker()?;
    header("setup: cargo-deb");
    cargo_deb()?;
    header("setup: Debian packages");
    debian_packages(DEBIAN_PACKAGES)?;
    header("setup: bpffs");
    bpffs()?;
    Ok(())
}

fn toolchains() -> Result<()> {
    let list = Cmd::new("rustup").args(["toolchain", "list"]).read()?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        println!("nightly toolchain: present");
    } else {
        Cmd::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .run()?;
    }
    ensure_components(Some("nightly"), &["rust-src"])?;
    // The active (stable) toolchain of the repository.
    ensure_components(None, &["rustfmt", "clippy"])
}

/// Adds the missing ones of `components` to `toolchain` (None: the active one).
fn ensure_components(toolchain: Option<&str>, components: &[&str]) -> Result<()> {
    let mut list = vec!["component", "list", "--installed"];
    if let Some(tc) = toolchain {
        list.extend(["--toolchain", tc]);
    }
    let installed = Cmd::new("rustup").args(&list).read()?;
    // Installed names look like `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    let has = |c: &str| {
        installed
            .lines()
            .any(|l| l == c || l.strip_prefix(c).is_some_and(|r| r.starts_with('-')))
    };
    let missing: Vec<&str> = components.iter().copied().filter(|c| !has(c)).collect();
    let which = toolchain.unwrap_or("active toolchain");
    if missing.is_empty() {
        println!("{which}: {} present", components.join(", "));
        return Ok(());
    }
    let mut add = vec!["component", "add"];
    add.extend(&missing);
    if let Some(tc) = toolchain {
        add.extend(["--toolchain", tc]);
    }
    Cmd::new("rustup").args(&add).run()
}

/// bpf-linker built against the nightly toolchain's own libLLVM.
fn bpf_linker() -> Result<()> {
    if Cmd::new("bpf-linker").args(["--version"]).succeeds() {
        println!("bpf-linker: present");
        return Ok(());
    }
    let sysroot = nightly(Cmd::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .read()?
        .trim()
        .to_owned();
    let vv = nightly(Cmd::new("rustc").args(["+nightly", "-vV"])).read()?;
    let major = llvm_major(&vv).context("`rustc +nightly -vV` has no `LLVM version:` line")?;
    let lib = Path::new(&sysroot).join("lib");
    let versioned = find_libllvm(&lib, &major)?;
    let link = lib.join("libLLVM.so");
    if std::fs::read_link(&link).ok().as_deref() == Some(Path::new(&versioned)) {
        println!("{}: links to {versioned}", link.display());
    } else {
        println!("+ ln -sf {versioned} {}", link.display());
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", link.display())),
        }
        std::os::unix::fs::symlink(&versioned, &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
    }
    let feature = format!("llvm-{major}");
    nightly(Cmd::new("cargo"))
        .env("LLVM_PREFIX", &sysroot)
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &feature,
            "--locked",
        ])
        .run()?;
    if !Cmd::new("bpf-linker").args(["--version"]).succeeds() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` fails (is ~/.cargo/bin on PATH?)"
        );
    }
    Ok(())
}

/// cargo-deb, pinned, for `cargo xtask deb`.
fn cargo_deb() -> Result<()> {
    let have = Cmd::new("cargo-deb").args(["--version"]).read().ok();
    if have
        .as_deref()
        .is_some_and(|v| v.contains(CARGO_DEB_VERSION))
    {
        println!("cargo-deb {CARGO_DEB_VERSION}: present");
        return Ok(());
    }
    crate::cmd::cargo(&[
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
    ])
    .run()
}

/// A rustup-proxied command with the outer cargo's toolchain choice removed.
fn nightly(cmd: Cmd) -> Cmd {
    [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "CARGO",
        "CARGO_TARGET_DIR",
    ]
    .iter()
    .fold(cmd, |c, k| c.env_remove(k))
}

/// `LLVM version: 22.1.2` → `22`.
fn llvm_major(rustc_vv: &str) -> Option<String> {
    let version = rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?
        .trim();
    let major = version.split('.').next()?;
    (!major.is_empty() && major.bytes().all(|b| b.is_ascii_digit())).then(|| major.to_owned())
}

/// The versioned library, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn find_libllvm(lib: &Path, major: &str) -> Result<String> {
    let prefix = format!("libLLVM.so.{major}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(lib).with_context(|| format!("cannot list {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            found.push(name);
        }
    }
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no {prefix}* in {}: is the nightly toolchain complete? (`rustup component add llvm-tools --toolchain nightly` does not provide it; reinstall nightly)",
            lib.display()
        )
    })
}

fn is_installed(pkg: &str) -> bool {
    Cmd::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .read()
        .map(|s| s.trim() == "install ok installed")
        .unwrap_or(false)
}

fn has_candidate(pkg: &str) -> bool {
    Cmd::new("apt-cache")
        .args(["policy", pkg])
        .read()
        .map(|s| {
            s.lines()
                .filter_map(|l| l.trim().strip_prefix("Candidate:"))
                .any(|c| c.trim() != "(none)")
        })
        .unwrap_or(false)
}

fn debian_packages(packages: &[&[&str]]) -> Result<()> {
    let missing: Vec<&[&str]> = packages
        .iter()
        .copied()
        .filter(|alts| !alts.iter().any(|p| is_installed(p)))
        .collect();
    if missing.is_empty() {
        let names: Vec<&str> = packages.iter().map(|a| a[0]).collect();
        println!("present: {}", names.join(" "));
        return Ok(());
    }
    require_root("install Debian packages")?;
    Cmd::new("apt-get").args(["update"]).run()?;
    let mut install = Vec::new();
    for alts in missing {
        match alts.iter().find(|p| has_candidate(p)) {
            Some(p) => install.push(*p),
            None => eprintln!(
                "warning: no install candidate for {}: skipped (tests that need it will fail)",
                alts.join(" or ")
            ),
        }
    }
    if install.is_empty() {
        return Ok(());
    }
    // Keep the packaged daemons (nginx, haproxy, bird) from starting in the
    // root namespace: tests run their own instances inside the lab.
    let _guard = NoServiceStart::new()?;
    Cmd::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&install)
        .run()
}

/// Installs a `policy-rc.d` that forbids service starts while it lives,
/// unless one already exists (containers usually have one).
struct NoServiceStart {
    created: bool,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoServiceStart {
    fn new() -> Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(Self { created: false });
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# cargo xtask setup: no service starts\nexit 101\n",
        )
        .with_context(|| format!("cannot write {POLICY_RC_D}"))?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { created: true })
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, kind) = (f.next(), f.next(), f.next());
        dir == Some(BPFFS) && kind == Some("bpf")
    });
    if mounted {
        println!("{BPFFS}: bpf filesystem mounted");
        return Ok(());
    }
    require_root("mount bpffs")?;
    Cmd::new("mount").args(["-t", "bpf", "bpf", BPFFS]).run()
}

fn require_root(what: &str) -> Result<()> {
    let uid = Cmd::new("id").args(["-u"]).read()?;
    if uid.trim() != "0" {
        bail!("setup needs root to {what}; run `cargo xtask setup` as root");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.2\n";
        assert_eq!(llvm_major(vv).as_deref(), Some("22"));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
        assert_eq!(llvm_major("LLVM version: x.1\n"), None);
    }
}
