//! The operator suite's machine: a Debian 12 root built by mmdebstrap from
//! the Debian archive, booted with systemd-nspawn (systemd 252 as its PID
//! 1), and the lab hosts around it — a client namespace and a backend
//! namespace joined to the container's two veths.
//!
//! ```text
//!  client ns xo<pid>-c               container xo<pid> (booted systemd)          backend ns xo<pid>-b
//!  ve-xo<pid> 198.18.0.1 ─── veth ── host0 198.18.0.2
//!  (GRO on) 198.18.2.0/24 via .0.2   eth1  198.18.1.1 ─────────── veth ── vb-xo<pid> 198.18.1.11, .12
//!                                    forwarding on                         (GRO on) default via .1.1
//! ```
//!
//! - The root is cached under `target/operator/root` with the recipe that
//!   built it (`recipe.txt`): a changed recipe builds it again. Each run
//!   boots an overlay of it (`target/operator/run-<pid>`), so the cache
//!   stays clean.
//! - systemd-nspawn runs inside the client namespace (`nsenter --net`), so
//!   the host ends of its veths are created there, never in the root
//!   namespace; the backend-side one is then moved to the backend namespace.
//! - The container is driven with `nsenter -t LEADER -a` (the host has no
//!   systemd, so no machinectl): `systemctl`, `apt-get`, `journalctl`,
//!   `birdc`, `xdplb` run inside it as an operator would run them.
//! - Dropping [`Machine`] tears everything down, also on a failed
//!   assertion: backends killed, the container powered off (killed after a
//!   bound), the overlay unmounted and removed, the namespaces deleted.
//!   [`Machine::cleanup_stale`] does the same for a run that died.

use crate::wait_until;
use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Packages of the root: Debian's systemd as PID 1, BIRD and keepalived
/// as they ship, and what the scenarios run inside (apt is in minbase).
/// man-db: the package recommends it, and the container has no network
/// for apt to fetch it.
pub const ROOT_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "bird2",
    "keepalived",
    "curl",
    "procps",
    "ethtool",
    "man-db",
];
/// The Debian release the container runs.
pub const SUITE: &str = "bookworm";
/// Where the host's apt sources name the Debian archive.
const SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// Namespace and machine name prefix (followed by the creator's pid).
const MARK: &str = "xo";
/// How long the container may take to boot (to `systemctl is-system-running`).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a powered-off container may take to exit before it is killed.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on any one command run inside the container.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Client-side addresses (the container's host0 and the client).
pub const CLIENT_ADDR: &str = "198.18.0.1";
pub const GATEWAY_CLIENT_ADDR: &str = "198.18.0.2";
/// Backend-side address of the container (eth1), the backends' gateway.
pub const GATEWAY_BACKEND_ADDR: &str = "198.18.1.1";
/// The VIP the scenarios balance (routed to the container by the client).
pub const VIP: &str = "198.18.2.10";
/// Backends: name and address (port [`BACKEND_PORT`]), in the backend namespace.
pub const BACKENDS: [(&str, &str); 2] = [("web-1", "198.18.1.11"), ("web-2", "198.18.1.12")];
pub const BACKEND_PORT: u16 = 8080;

/// The cached root for the current recipe, built if missing or stale.
pub fn cached_root(cache: &Path) -> Result<PathBuf> {
    let mirror = debian_mirror()?;
    let recipe = format!(
        "mmdebstrap --variant=minbase --include={} {SUITE} ROOT {mirror}\n",
        ROOT_PACKAGES.join(",")
    );
    let root = cache.join("root");
    if fs::read_to_string(cache.join("recipe.txt")).ok().as_deref() == Some(recipe.as_str())
        && root.join("usr/lib/systemd/systemd").exists()
    {
        return Ok(root);
    }
    fs::create_dir_all(cache)?;
    let building = cache.join(format!("root.building-{}", std::process::id()));
    let _ = fs::remove_dir_all(&building);
    eprintln!("operator: building the {SUITE} root (mmdebstrap, about a minute)");
    let started = Instant::now();
    let out = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet"])
        .arg(format!("--include={}", ROOT_PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&building)
        .arg(&mirror)
        .stdin(Stdio::null())
        .output()
        .context("mmdebstrap (Debian package mmdebstrap; `cargo xtask setup` installs it)")?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&building);
        bail!(
            "mmdebstrap: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Replace the old root (a stale recipe) only now that the new one is whole.
    let _ = fs::remove_file(cache.join("recipe.txt"));
    let _ = fs::remove_dir_all(&root);
    fs::rename(&building, &root)?;
    fs::write(cache.join("recipe.txt"), &recipe)?;
    eprintln!(
        "operator: root built in {:.0?}",
        started.elapsed().as_secs_f64()
    );
    Ok(root)
}

/// The Debian archive the host's apt uses (`URIs:` of the first stanza).
fn debian_mirror() -> Result<String> {
    let text = fs::read_to_string(SOURCES).with_context(|| format!("reading {SOURCES}"))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("URIs:"))
        .map(|u| u.trim().to_string())
        .find(|u| !u.contains("security"))
        .with_context(|| format!("no URIs: line in {SOURCES}"))
}

/// Runs a host command, failing with its output when it fails.
fn host(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {args:?}"))?;
    ensure!(
        out.status.success(),
        "{args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a command inside the container printed, and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// stdout and stderr together, for messages.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Ran {
    fn from(o: Output) -> Ran {
        Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The booted container and its lab.
pub struct Machine {
    name: String,
    client_ns: String,
    backend_ns: String,
    run_dir: PathBuf,
    merged: PathBuf,
    nspawn: Option<Child>,
    leader: u32,
    backends: Vec<(String, Child)>,
}

impl Machine {
    /// Boots an overlay of `root` (run files under `cache`) and builds the
    /// lab around it; `prepare` edits the container's file system (through
    /// the path of its root) before it boots.
    pub fn boot(
        root: &Path,
        cache: &Path,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Machine> {
        let pid = std::process::id();
        let name = format!("{MARK}{pid}");
        let run_dir = cache.join(format!("run-{pid}"));
        let _ = fs::remove_dir_all(&run_dir);
        let merged = run_dir.join("merged");
        for d in ["upper", "work", "merged"] {
            fs::create_dir_all(run_dir.join(d))?;
        }
        let mut m = Machine {
            client_ns: format!("{name}-c"),
            backend_ns: format!("{name}-b"),
            name,
            run_dir,
            merged,
            nspawn: None,
            leader: 0,
            backends: Vec::new(),
        };
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            root.display(),
            m.run_dir.join("upper").display(),
            m.run_dir.join("work").display()
        );
        host(&[
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            &opts,
            &m.merged.to_string_lossy(),
        ])?;
        prepare(&m.merged)?;
        host(&["ip", "netns", "add", &m.client_ns])?;
        host(&["ip", "netns", "add", &m.backend_ns])?;
        let log = fs::File::create(m.run_dir.join("nspawn.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", m.client_ns))
            .args(["--", "systemd-nspawn", "-D"])
            .arg(&m.merged)
            .args(["-M", &m.name, "-b", "--network-veth"])
            .arg(format!("--network-veth-extra={}:eth1", m.backend_link()))
            .args([
                "--capability=all",
                "--system-call-filter=bpf",
                "--register=no",
                "--keep-unit",
                "--console=passive",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("systemd-nspawn (Debian package systemd-container)")?;
        let nspawn_pid = child.id();
        m.nspawn = Some(child);
        // The container's PID 1 is nspawn's child, once it has exec'd systemd.
        let mut leader = None;
        wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            leader = children(nspawn_pid).into_iter().find(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "systemd")
            });
            leader.is_some()
        });
        m.leader = leader.with_context(|| {
            format!(
                "systemd-nspawn started no systemd within 20 s:\n{}",
                fs::read_to_string(m.run_dir.join("nspawn.log")).unwrap_or_default()
            )
        })?;
        // systemctl needs PID 1's private socket, made early in the boot.
        let bus = wait_until(BOOT_TIMEOUT, Duration::from_millis(100), || {
            m.sh("test -S /run/systemd/private").is_ok_and(|r| r.ok())
        });
        ensure!(
            bus,
            "the container's systemd opened no socket within {BOOT_TIMEOUT:?}"
        );
        let up = m.sh_for(BOOT_TIMEOUT, "systemctl is-system-running --wait")?;
        ensure!(
            up.stdout.trim() == "running",
            "the container booted {}: {}\n{}",
            up.stdout.trim(),
            up.stderr,
            m.sh("systemctl --failed --no-pager")?.text()
        );
        m.wire()?;
        Ok(m)
    }

    /// The host end of the container's backend-side veth.
    fn backend_link(&self) -> String {
        format!("vb-{}", self.name)
    }

    /// The host end of the container's client-side veth (nspawn's name).
    fn client_link(&self) -> String {
        let mut n = format!("ve-{}", self.name);
        n.truncate(15);
        n
    }

    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }

    /// The container's root as the host sees it (to copy files in).
    pub fn root(&self) -> &Path {
        &self.merged
    }

    /// Addresses, routes, forwarding and GRO on the far ends.
    fn wire(&self) -> Result<()> {
        let (c, b) = (self.client_ns.as_str(), self.backend_ns.as_str());
        let (cl, bl) = (self.client_link(), self.backend_link());
        host(&["ip", "-n", c, "link", "set", &bl, "netns", b])?;
        for (ns, link) in [(c, &cl), (b, &bl)] {
            host(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            host(&["ip", "-n", ns, "link", "set", link, "up"])?;
            // Frames XDP redirects into a veth need GRO (or XDP) on its peer.
            host(&[
                "ip", "netns", "exec", ns, "ethtool", "-K", link, "gro", "on",
            ])?;
        }
        host(&[
            "ip",
            "-n",
            c,
            "addr",
            "add",
            &format!("{CLIENT_ADDR}/24"),
            "dev",
            &cl,
        ])?;
        host(&[
            "ip",
            "-n",
            c,
            "route",
            "add",
            "198.18.2.0/24",
            "via",
            GATEWAY_CLIENT_ADDR,
        ])?;
        for (_, addr) in BACKENDS {
            host(&[
                "ip",
                "-n",
                b,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &bl,
            ])?;
        }
        host(&[
            "ip",
            "-n",
            b,
            "route",
            "add",
            "default",
            "via",
            GATEWAY_BACKEND_ADDR,
        ])?;
        // The container's own network namespace, from the host's mount
        // namespace (its /proc/sys is read-only inside).
        let net = format!("--net=/proc/{}/ns/net", self.leader);
        let inside = |args: &[&str]| -> Result<String> {
            let mut all = vec!["nsenter", net.as_str(), "--"];
            all.extend(args);
            host(&all)
        };
        inside(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{GATEWAY_CLIENT_ADDR}/24"),
            "dev",
            "host0",
        ])?;
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{GATEWAY_BACKEND_ADDR}/24"),
            "dev",
            "eth1",
        ])?;
        inside(&["ip", "link", "set", "host0", "up"])?;
        inside(&["ip", "link", "set", "eth1", "up"])?;
        Ok(())
    }

    /// Starts `lab-backend` for backend `i` in the backend namespace.
    pub fn start_backend(&mut self, bin: &Path, i: usize) -> Result<()> {
        let (name, addr) = BACKENDS[i];
        ensure!(
            !self.backends.iter().any(|(n, _)| n == name),
            "{name} already runs"
        );
        let log = fs::File::create(self.run_dir.join(format!("{name}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.backend_ns])
            .arg(bin)
            .args([
                "--listen",
                &format!("{addr}:{BACKEND_PORT}"),
                "--name",
                name,
                "--workers",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.backends.push((name.to_string(), child));
        Ok(())
    }

    /// Kills backend `name` (its connections are reset).
    pub fn stop_backend(&mut self, name: &str) -> Result<()> {
        let i = self
            .backends
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("{name} does not run"))?;
        let (_, mut child) = self.backends.remove(i);
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// `sh -c script` inside the container (all its namespaces), bounded
    /// by [`COMMAND_TIMEOUT`].
    pub fn sh(&self, script: &str) -> Result<Ran> {
        self.sh_for(COMMAND_TIMEOUT, script)
    }

    /// [`Machine::sh`], failing unless it exits 0.
    pub fn sh_ok(&self, script: &str) -> Result<String> {
        let r = self.sh(script)?;
        ensure!(
            r.ok(),
            "in the container: {script}: exit {:?}\n{}",
            r.code,
            r.text()
        );
        Ok(r.stdout)
    }

    pub fn sh_for(&self, bound: Duration, script: &str) -> Result<Ran> {
        let out = Command::new("timeout")
            .args(["--kill-after=5", &format!("{}", bound.as_secs().max(1))])
            .args(["nsenter", "-t", &self.leader.to_string(), "-a", "--"])
            .args(["/usr/bin/env", "-i"])
            .args([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "DEBIAN_FRONTEND=noninteractive",
                "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0",
            ])
            .args(["/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("nsenter into the container for {script:?}"))?;
        let r = Ran::from(out);
        ensure!(
            r.code != Some(124),
            "in the container: {script}: timed out after {bound:?}\n{}",
            r.text()
        );
        Ok(r)
    }

    /// `curl` from the client namespace: the body, or why not.
    pub fn curl(&self, url: &str) -> Result<String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client_ns,
                "curl",
                "-sS",
                "--max-time",
                "2",
                url,
            ])
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Removes namespaces and run directories of operator runs whose
    /// process is gone (a killed test), powering off their containers.
    pub fn cleanup_stale(cache: &Path) {
        let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
        let me = std::process::id();
        if let Ok(entries) = fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = stale_pid(&name, "-") {
                    if pid != me && !alive(pid) {
                        eprintln!("operator: removing stale namespace {name}");
                        kill_netns_pids(&name);
                        let _ = host(&["ip", "netns", "del", &name]);
                    }
                }
            }
        }
        if let Ok(entries) = fs::read_dir(cache) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name
                    .strip_prefix("run-")
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if pid != me && !alive(pid) {
                    eprintln!("operator: removing stale run {name}");
                    let merged = e.path().join("merged");
                    let _ = host(&["umount", "-l", &merged.to_string_lossy()]);
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        for (_, mut c) in self.backends.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut nspawn) = self.nspawn.take() {
            // SIGRTMIN+4 asks systemd for a clean poweroff.
            if self.leader != 0 {
                // SAFETY: plain kill(2) on the container's PID 1.
                unsafe { libc::kill(self.leader as libc::pid_t, libc::SIGRTMIN() + 4) };
            }
            let exited = wait_until(POWEROFF_TIMEOUT, Duration::from_millis(50), || {
                matches!(nspawn.try_wait(), Ok(Some(_)))
            });
            if !exited {
                eprintln!(
                    "operator: the container did not power off in {POWEROFF_TIMEOUT:?}; killing it"
                );
                if self.leader != 0 {
                    // SAFETY: as above; killing PID 1 of a PID namespace ends it.
                    unsafe { libc::kill(self.leader as libc::pid_t, libc::SIGKILL) };
                }
                let _ = nspawn.kill();
                let _ = nspawn.wait();
            }
        }
        if let Err(e) = host(&["umount", &self.merged.to_string_lossy()]) {
            eprintln!("operator: {e:#}; unmounting lazily");
            let _ = host(&["umount", "-l", &self.merged.to_string_lossy()]);
        }
        let _ = fs::remove_dir_all(&self.run_dir);
        for ns in [&self.client_ns, &self.backend_ns] {
            kill_netns_pids(ns);
            if let Err(e) = host(&["ip", "netns", "del", ns]) {
                eprintln!("operator: {e:#}");
            }
        }
    }
}

/// Children of `pid` (all its threads').
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// `xo<pid><sep>…` → pid.
fn stale_pid(name: &str, sep: &str) -> Option<u32> {
    let rest = name.strip_prefix(MARK)?;
    let (pid, _) = rest.split_once(sep)?;
    pid.parse().ok()
}

fn kill_netns_pids(ns: &str) {
    if let Ok(pids) = host(&["ip", "netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
