//! Where the pins live: bpffs found, or mounted, in the host's mount
//! namespace, so the pins outlive the process that made them.
use std::{
    fs,
    path::{Path, PathBuf},
};

use super::DataplaneError;

/// Where bpffs is mounted by convention.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// `statfs` type of a bpffs (`BPF_FS_MAGIC`, linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// How far up the process tree to look for the mount namespace we were
/// started from.
const MAX_ANCESTORS: usize = 64;

/// Whether `path` lives on a bpffs, and which one (its device).
fn bpffs_dev(path: &Path) -> Option<u64> {
    use std::os::unix::{ffi::OsStrExt, fs::MetadataExt};
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a NUL-terminated path and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    (st.f_type as i64 == BPF_FS_MAGIC)
        .then(|| fs::metadata(path).ok().map(|m| m.dev()))
        .flatten()
}

/// `path`, or its nearest ancestor that exists (a pin path is created on
/// first load).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
}

fn mount_ns(pid: &str) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

fn parent_of(pid: &str) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ppid = rest.split_whitespace().nth(1)?;
    (ppid != "0").then(|| ppid.to_string())
}

/// The root of the host's file system as this process can reach it, when
/// this process has a private mount namespace (e.g. under `ip netns exec`,
/// which unshares one and mounts a fresh `/sys` in it): `/proc/1/root`,
/// or, where PID 1 is out of reach (a sandbox's init), the root of the
/// nearest ancestor in another mount namespace — the one we were started
/// from. `None` in the host's mount namespace.
fn host_root() -> Option<PathBuf> {
    let own = mount_ns("self")?;
    if let Some(init) = mount_ns("1") {
        return (init != own).then(|| PathBuf::from("/proc/1/root"));
    }
    let mut pid = parent_of("self")?;
    for _ in 0..MAX_ANCESTORS {
        match mount_ns(&pid) {
            Some(ns) if ns != own => return Some(PathBuf::from(format!("/proc/{pid}/root"))),
            _ => pid = parent_of(&pid)?,
        }
    }
    None
}

fn private_mount_namespace() -> bool {
    host_root().is_some()
}

/// The host's view of `path`: the same path under the host's root.
fn host_view(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The path through which the pins at `pin_path` (as the host names them)
/// are reached from this process.
///
/// Pins must outlive the process. In the host's mount namespace that is
/// `pin_path` itself. In a private one (`ip netns exec` mounts a fresh
/// `/sys`, with no bpffs, or one that dies with the namespace) the pins
/// are made and read through the host's bpffs (via `/proc/1/root`, see
/// [`host_root`]) unless
/// the bpffs here is the host's very mount. Never silently private: with
/// no host bpffs to use, it is an error that names the fix.
pub fn resolve_pin_path(pin_path: &Path) -> Result<PathBuf, DataplaneError> {
    let Some(root) = host_root() else {
        return Ok(pin_path.to_path_buf());
    };
    let here = bpffs_dev(existing_ancestor(pin_path));
    let host_path = host_view(&root, pin_path);
    let host = bpffs_dev(existing_ancestor(&host_path));
    match (here, host) {
        (Some(h), Some(o)) if h == o => Ok(pin_path.to_path_buf()),
        (_, Some(_)) => {
            tracing::info!(
                pin_path = %pin_path.display(),
                via = %host_path.display(),
                "private mount namespace (ip netns exec?): using the host's bpffs, so the \
                 pins outlive this process"
            );
            Ok(host_path)
        }
        (_, None) => Err(DataplaneError::NoHostBpffs {
            pin_path: pin_path.to_path_buf(),
        }),
    }
}

/// Like [`resolve_pin_path`], for `xdplb run`: first mounts bpffs on
/// `/sys/fs/bpf` where the pins are made if it is not mounted yet (it is
/// not by default on these machines) — in the host's mount namespace when
/// this process has a private one.
pub fn prepare_pin_path(pin_path: &Path) -> Result<PathBuf, DataplaneError> {
    let bpffs = Path::new(BPFFS_ROOT);
    if let Some(root) = host_root() {
        if pin_path.starts_with(bpffs) && bpffs_dev(&host_view(&root, bpffs)).is_none() {
            mount_host_bpffs(&root)?;
        }
    }
    ensure_local_bpffs(pin_path)?;
    resolve_pin_path(pin_path)
}

/// Mounts bpffs on `/sys/fs/bpf` when `pin_path` lives under it, it is not
/// mounted yet, and this is the host's mount namespace (a private one was
/// dealt with by [`prepare_pin_path`]).
pub(crate) fn ensure_local_bpffs(pin_path: &Path) -> Result<(), DataplaneError> {
    let root = Path::new(BPFFS_ROOT);
    if pin_path.starts_with(root) && !private_mount_namespace() && bpffs_dev(root).is_none() {
        // Without CAP_SYS_PTRACE (as in the packaged unit) PID 1's mount
        // namespace cannot be read: a private one (systemd's sandbox) then
        // looks like the host's, and a bpffs mounted in it dies with it.
        if std::process::id() != 1 {
            if let Err(e) = fs::read_link("/proc/1/ns/mnt") {
                return Err(DataplaneError::UnknownMountNamespace {
                    pin_path: pin_path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        }
        mount_bpffs()?;
    }
    Ok(())
}

fn mount_bpffs() -> Result<(), DataplaneError> {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, dst, ty) = (c("bpf"), c(BPFFS_ROOT), c("bpf"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(DataplaneError::MountBpffs {
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Mounts bpffs on the host's `/sys/fs/bpf`. A mount must be made from
/// inside the namespace it goes into, and a threaded process cannot enter
/// another mount namespace, so a child (`nsenter`) does it.
fn mount_host_bpffs(root: &Path) -> Result<(), DataplaneError> {
    // `root` is /proc/PID/root; PID's mount namespace is beside it.
    let ns = root.with_file_name("ns").join("mnt");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--mount={}", ns.display()))
        .args(["--", "mount", "-t", "bpf", "bpf", BPFFS_ROOT])
        .output()
        .map_err(|source| DataplaneError::MountBpffs { source })?;
    if !out.status.success() {
        return Err(DataplaneError::MountBpffs {
            source: std::io::Error::other(format!(
                "in the host's mount namespace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    tracing::info!("mounted bpffs on the host's {BPFFS_ROOT}");
    Ok(())
}
