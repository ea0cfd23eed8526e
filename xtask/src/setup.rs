//! `cargo xtask setup [--bench]`: everything building and testing need,
//! installed idempotently. Each step says what it checks and skips what is
//! present; a second run does nothing.
//!
//! [`PROGRAMS`] is the one list of the external programs the tests, demos
//! and benchmarks run, each with where it comes from; a unit test
//! ([`scan`]) reads their sources and fails naming any program run there
//! and missing from it.

use crate::cmd::{header, Cmd};
use crate::ebpf_toolchain::EBPF_TOOLCHAIN;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[cfg(test)]
mod scan;

/// bpf-linker release known to link with the eBPF toolchain's LLVM
/// (shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-deb release that builds with rustc 1.95 (`cargo xtask deb`).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Which programs a run of setup installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// What `cargo xtask test` and the demos run.
    Test,
    /// That, and what only `cargo xtask bench` runs (HAProxy, nginx, wrk,
    /// iperf3, git for the report's commit) or a benchmark peer's build
    /// needs (clang, llvm).
    Bench,
}

/// Where a program comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// A Debian package: the first of the alternatives with an install
    /// candidate is installed.
    Debian(&'static [&'static str]),
    /// Built with `cargo install` by this setup (bpf-linker, cargo-deb).
    CargoInstall,
    /// A prerequisite the README names (rustup and the toolchains it
    /// manages); setup cannot install it.
    Prerequisite,
    /// xdplb itself, as the Debian package test installs it.
    UnderTest,
}

/// An external program the tests, demos or benchmarks execute.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    pub name: &'static str,
    pub source: Source,
    /// The step that installs it: [`Step::Bench`] for programs only the
    /// benchmarks run.
    pub step: Step,
}

const fn deb(name: &'static str, packages: &'static [&'static str]) -> Program {
    Program {
        name,
        source: Source::Debian(packages),
        step: Step::Test,
    }
}

const fn bench_deb(name: &'static str, packages: &'static [&'static str]) -> Program {
    Program {
        name,
        source: Source::Debian(packages),
        step: Step::Bench,
    }
}

const fn other(name: &'static str, source: Source) -> Program {
    Program {
        name,
        source,
        step: Step::Test,
    }
}

/// Every external program the tests, demos and benchmarks run (by the
/// name they run it by), and where it comes from. `scan` keeps it
/// complete.
pub const PROGRAMS: &[Program] = &[
    // The lab: namespaces, links, addresses, routes; `ss` in the benchmarks.
    deb("ip", &["iproute2"]),
    deb("ss", &["iproute2"]),
    deb("ethtool", &["ethtool"]),
    deb("nft", &["nftables"]),
    deb("sysctl", &["procps"]),
    deb("ping", &["iputils-ping"]),
    // Captures on backends (tests/tests/direct).
    deb("tcpdump", &["tcpdump"]),
    deb("curl", &["curl"]),
    deb("nsenter", &["util-linux"]),
    deb("setsid", &["util-linux"]),
    deb("mount", &["mount"]),
    deb("umount", &["mount"]),
    deb("ldd", &["libc-bin"]),
    deb("base64", &["coreutils"]),
    deb("cat", &["coreutils"]),
    deb("date", &["coreutils"]),
    deb("id", &["coreutils"]),
    deb("sleep", &["coreutils"]),
    deb("timeout", &["coreutils"]),
    deb("uname", &["coreutils"]),
    // The package test and this setup.
    deb("dpkg", &["dpkg"]),
    deb("dpkg-deb", &["dpkg"]),
    deb("dpkg-query", &["dpkg"]),
    deb("apt-get", &["apt"]),
    deb("apt-cache", &["apt"]),
    deb("update-rc.d", &["init-system-helpers"]),
    // `man -l` on the packaged man pages.
    deb("man", &["man-db"]),
    // `systemd-analyze verify` of the unit (PID 1 need not be systemd).
    deb("systemd-analyze", &["systemd"]),
    // The status page test: Debian's Chromium, driven over WebDriver.
    deb("chromium", &["chromium"]),
    deb("chromedriver", &["chromium-driver"]),
    // BIRD 2: the fleet lab's routers and gateways speak BGP + BFD with it
    // (inside lab namespaces only; its service stays disabled).
    deb("bird", &["bird2"]),
    deb("birdc", &["bird2"]),
    // The operator suite: a Debian root booted with systemd-nspawn, entered
    // with nsenter; keepalived inside it.
    deb("mmdebstrap", &["mmdebstrap"]),
    deb("systemd-nspawn", &["systemd-container"]),
    deb("keepalived", &["keepalived"]),
    // Benchmarks only (`cargo xtask setup --bench`, run by `cargo xtask bench`).
    bench_deb("haproxy", &["haproxy"]),
    bench_deb("nginx", &["nginx-light", "nginx"]),
    bench_deb("wrk", &["wrk"]),
    bench_deb("iperf3", &["iperf3"]),
    bench_deb("git", &["git"]),
    // A benchmark peer's build (`bench dataplane --peer DIR`: Katran's
    // balancer is C, compiled to LLVM IR by clang and to BPF by llc; its
    // build stays outside this repository, see docs/BENCHMARKS.md).
    bench_deb("clang", &["clang"]),
    bench_deb("llc", &["llvm"]),
    other("bpf-linker", Source::CargoInstall),
    other("cargo-deb", Source::CargoInstall),
    other("rustup", Source::Prerequisite),
    other("rustc", Source::Prerequisite),
    other("cargo", Source::Prerequisite),
    other("xdplb", Source::UnderTest),
];

/// Packaged daemons that must not run in the root namespace: tests run
/// their own instances inside lab namespaces. Setup leaves each disabled
/// at boot (systemd and SysV links), and never lets apt start one.
const SERVICES: &[&str] = &["nginx", "haproxy", "bird", "keepalived", "iperf3"];

/// Where bpffs is expected (aya pins and xdplb's default pin path live here).
const BPFFS: &str = "/sys/fs/bpf";

pub fn run(step: Step) -> Result<()> {
    header(&format!(
        "setup: rust toolchains ({EBPF_TOOLCHAIN} for eBPF)"
    ));
    toolchains()?;
    header("setup: bpf-linker");
    bpf_linker()?;
    header("setup: cargo-deb");
    cargo_deb()?;
    header("setup: Debian packages");
    debian_packages(step)?;
    header("setup: packaged services disabled at boot");
    disable_services()?;
    header("setup: bpffs");
    bpffs()?;
    Ok(())
}

fn toolchains() -> Result<()> {
    let list = Cmd::new("rustup").args(["toolchain", "list"]).read()?;
    if list.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)) {
        println!("{EBPF_TOOLCHAIN}: present");
    } else {
        Cmd::new("rustup")
            .args([
                "toolchain",
                "install",
                EBPF_TOOLCHAIN,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ])
            .run()?;
    }
    ensure_components(Some(EBPF_TOOLCHAIN), &["rust-src"])?;
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

/// bpf-linker built against the eBPF toolchain's own libLLVM. One built
/// against another toolchain (e.g. a `nightly` that has moved on) is
/// rebuilt.
fn bpf_linker() -> Result<()> {
    let sysroot = pinned(Cmd::new("rustc").args([
        format!("+{EBPF_TOOLCHAIN}").as_str(),
        "--print",
        "sysroot",
    ]))
    .read()?
    .trim()
    .to_owned();
    let lib = Path::new(&sysroot).join("lib");
    let installed = find_in_path("bpf-linker");
    if let Some(bin) = &installed {
        match linked_llvm(bin) {
            Some(llvm) if llvm.starts_with(&lib) => {
                if Cmd::new(bin).args(["--version"]).succeeds() {
                    println!("bpf-linker: present, linked to {}", llvm.display());
                    return Ok(());
                }
                println!("bpf-linker: `--version` fails; rebuilding");
            }
            Some(llvm) => println!(
                "bpf-linker: linked to {}, not {EBPF_TOOLCHAIN}'s LLVM; rebuilding",
                llvm.display()
            ),
            None => println!("bpf-linker: no libLLVM among its libraries; rebuilding"),
        }
    }
    let vv =
        pinned(Cmd::new("rustc").args([format!("+{EBPF_TOOLCHAIN}").as_str(), "-vV"])).read()?;
    let major = llvm_major(&vv)
        .with_context(|| format!("`rustc +{EBPF_TOOLCHAIN} -vV` has no `LLVM version:` line"))?;
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
    let toolchain = format!("+{EBPF_TOOLCHAIN}");
    let mut args = vec![
        toolchain.as_str(),
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        &feature,
        "--locked",
    ];
    if installed.is_some() {
        args.push("--force");
    }
    pinned(Cmd::new("cargo"))
        .env("LLVM_PREFIX", &sysroot)
        .args(&args)
        .run()?;
    let bin = find_in_path("bpf-linker")
        .context("bpf-linker was installed but is not on PATH (is ~/.cargo/bin on PATH?)")?;
    if !Cmd::new(&bin).args(["--version"]).succeeds() {
        bail!(
            "bpf-linker was installed but `{} --version` fails",
            bin.display()
        );
    }
    Ok(())
}

/// The libLLVM `bin` loads, as the dynamic linker resolves it (`ldd`).
fn linked_llvm(bin: &Path) -> Option<PathBuf> {
    let out = Cmd::new("ldd").args([bin]).read().ok()?;
    libllvm_of_ldd(&out)
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly => /path/libLLVM.so.22.1-… (0x…)`
/// → the path.
fn libllvm_of_ldd(ldd: &str) -> Option<PathBuf> {
    ldd.lines().find_map(|l| {
        let (name, rest) = l.trim().split_once(" => ")?;
        if !name.starts_with("libLLVM") {
            return None;
        }
        let path = rest.split_whitespace().next()?;
        path.starts_with('/').then(|| PathBuf::from(path))
    })
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
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

/// A rustup-proxied command with the outer cargo's toolchain choice
/// removed, so its `+toolchain` argument decides.
fn pinned(cmd: Cmd) -> Cmd {
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
            "no {prefix}* in {}: is {EBPF_TOOLCHAIN} complete? (reinstall it: `rustup toolchain uninstall {EBPF_TOOLCHAIN}`, then `cargo xtask setup`)",
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

/// The Debian packages `step` installs, each as its alternatives, once
/// each, with the programs that need it.
fn debian_packages_of(step: Step) -> Vec<(&'static [&'static str], Vec<&'static str>)> {
    let mut out: Vec<(&'static [&'static str], Vec<&'static str>)> = Vec::new();
    for p in PROGRAMS {
        let Source::Debian(alts) = p.source else {
            continue;
        };
        if p.step == Step::Bench && step == Step::Test {
            continue;
        }
        match out.iter_mut().find(|(a, _)| *a == alts) {
            Some((_, programs)) => programs.push(p.name),
            None => out.push((alts, vec![p.name])),
        }
    }
    out
}

fn debian_packages(step: Step) -> Result<()> {
    let wanted = debian_packages_of(step);
    let missing: Vec<&(&[&str], Vec<&str>)> = wanted
        .iter()
        .filter(|(alts, _)| !alts.iter().any(|p| is_installed(p)))
        .collect();
    if missing.is_empty() {
        let names: Vec<&str> = wanted.iter().map(|(a, _)| a[0]).collect();
        println!("present: {}", names.join(" "));
        return Ok(());
    }
    for (alts, programs) in &missing {
        println!(
            "missing: {} (runs {})",
            alts.join(" or "),
            programs.join(", ")
        );
    }
    require_root("install Debian packages")?;
    Cmd::new("apt-get").args(["update"]).run()?;
    let mut install = Vec::new();
    let mut unavailable = Vec::new();
    for (alts, _) in missing {
        match alts.iter().find(|p| has_candidate(p)) {
            Some(p) => install.push(*p),
            None => unavailable.push(alts.join(" or ")),
        }
    }
    if !unavailable.is_empty() {
        bail!(
            "no install candidate for {} (is the Debian archive in the apt sources?)",
            unavailable.join(", ")
        );
    }
    // Keep the packaged daemons (nginx, haproxy, bird, keepalived) from
    // starting in the root namespace: tests run their own instances inside
    // the lab.
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

/// Where boot would start `service` from: systemd's `*.wants` links to its
/// unit under /etc/systemd/system, and SysV start links (`S??service`) in
/// /etc/rc?.d. Empty when it is disabled (or not installed).
fn boot_links(service: &str) -> Vec<PathBuf> {
    let unit = format!("{service}.service");
    let mut found = Vec::new();
    let dirs = |root: &str| -> Vec<PathBuf> {
        std::fs::read_dir(root)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for dir in dirs("/etc/systemd/system") {
        let is_wants = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".wants"));
        let link = dir.join(&unit);
        if is_wants && link.symlink_metadata().is_ok() {
            found.push(link);
        }
    }
    for dir in dirs("/etc") {
        let is_rc = dir.file_name().is_some_and(|n| {
            let n = n.to_string_lossy();
            n.len() == 5 && n.starts_with("rc") && n.ends_with(".d")
        });
        if !is_rc {
            continue;
        }
        for link in dirs(&dir.to_string_lossy()) {
            let name = link.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| is_sysv_start_link(&n, service)) {
                found.push(link);
            }
        }
    }
    found
}

/// `S01nginx` starts nginx; `K01nginx` stops it.
fn is_sysv_start_link(name: &str, service: &str) -> bool {
    name.strip_prefix('S')
        .filter(|r| r.len() > 2 && r.as_bytes()[..2].iter().all(u8::is_ascii_digit))
        .is_some_and(|r| &r[2..] == service)
}

/// Leaves every [`SERVICES`] entry disabled at boot. systemd: its
/// `*.wants` links go, as `systemctl disable` would remove them (which
/// needs systemd as PID 1; deb-systemd-helper runs only under dpkg);
/// Debian's maintainer scripts then see the unit as disabled by the admin
/// (`deb-systemd-helper was-enabled` checks those links) and keep it so on
/// upgrades. SysV: `update-rc.d NAME disable`.
fn disable_services() -> Result<()> {
    for service in SERVICES {
        let links = boot_links(service);
        if links.is_empty() {
            continue;
        }
        require_root("disable packaged services")?;
        let mut sysv = false;
        for link in &links {
            if link.starts_with("/etc/systemd") {
                println!("+ rm {}", link.display());
                std::fs::remove_file(link)
                    .with_context(|| format!("cannot remove {}", link.display()))?;
            } else {
                sysv = true;
            }
        }
        if sysv {
            Cmd::new("update-rc.d").args([service, "disable"]).run()?;
        }
        let left = boot_links(service);
        if !left.is_empty() {
            bail!("{service} is still enabled at boot: {left:?}");
        }
    }
    println!("disabled at boot: {}", SERVICES.join(" "));
    Ok(())
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

    #[test]
    fn libllvm_path_from_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibLLVM.so.22.1-rust-1.97.0-nightly => /root/.rustup/toolchains/nightly-2026-05-20-x86_64-unknown-linux-gnu/lib/libLLVM.so.22.1-rust-1.97.0-nightly (0x00007fe781a00000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n";
        assert_eq!(
            libllvm_of_ldd(ldd),
            Some(PathBuf::from("/root/.rustup/toolchains/nightly-2026-05-20-x86_64-unknown-linux-gnu/lib/libLLVM.so.22.1-rust-1.97.0-nightly"))
        );
        assert_eq!(libllvm_of_ldd("\tlibLLVM.so.22 => not found\n"), None);
        assert_eq!(
            libllvm_of_ldd("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"),
            None
        );
    }

    #[test]
    fn sysv_start_links() {
        assert!(is_sysv_start_link("S01nginx", "nginx"));
        assert!(!is_sysv_start_link("K01nginx", "nginx"));
        assert!(!is_sysv_start_link("S01nginx-debug", "nginx"));
        assert!(!is_sysv_start_link("Snginx", "nginx"));
    }

    /// Each program is listed once; `test` installs everything but the
    /// benchmarks' programs.
    #[test]
    fn the_program_list_is_consistent() {
        let mut names: Vec<&str> = PROGRAMS.iter().map(|p| p.name).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a program listed twice");
        let packages = |step| -> Vec<&[&str]> {
            debian_packages_of(step)
                .into_iter()
                .map(|(a, _)| a)
                .collect()
        };
        let test = packages(Step::Test);
        let bench = packages(Step::Bench);
        assert!(test.contains(&&["tcpdump"][..]));
        assert!(!test.contains(&&["wrk"][..]));
        assert!(bench.contains(&&["wrk"][..]) && bench.len() > test.len());
        for s in ["mmdebstrap", "systemd-container", "keepalived", "bird2"] {
            assert!(test.contains(&&[s][..]), "{s} not installed by setup");
        }
    }

    /// The install state of this machine: none of the packaged daemons
    /// starts at boot, whether or not its package is installed (`cargo
    /// xtask setup`, which `cargo xtask test` runs first, disables them).
    #[test]
    fn packaged_services_are_disabled_at_boot() {
        let enabled: Vec<(&str, Vec<PathBuf>)> = SERVICES
            .iter()
            .map(|s| (*s, boot_links(s)))
            .filter(|(_, links)| !links.is_empty())
            .collect();
        assert!(
            enabled.is_empty(),
            "enabled at boot (run `cargo xtask setup`): {enabled:?}"
        );
    }
}
