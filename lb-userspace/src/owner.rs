//! One controller per pinned data plane: `xdplb run` holds an exclusive
//! `flock` on a lock file named after its pin path, for as long as it runs;
//! a second `xdplb run` on the same pin path (whatever its admin socket)
//! and `xdplb down` (unless `--force`) find it taken and name its pid.
//!
//! Why a file beside the pins and not in them: bpffs holds only BPF objects
//! and directories, no regular files. The lock lives in [`LOCK_DIR`] (on
//! tmpfs: a reboot, which also clears bpffs, clears it too), one file per
//! pin path, named by escaping the path as systemd does for unit names.
//! The kernel drops the lock when its holder dies, however it dies, so a
//! stale file never blocks anyone; the pid inside is only for the message.
use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, Write},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Component, Path, PathBuf},
};

use thiserror::Error;

/// Where the lock files live. `/run` is shared by `ip netns exec` and
/// `nsenter --net` alike (only `/sys` is remounted), so every way of
/// starting xdplb on one host sees the same locks.
pub const LOCK_DIR: &str = "/run/xdplb";

/// Attempts to take a lock whose file is being replaced under us (its
/// previous holder removed it on exit as we opened it).
const LOCK_ATTEMPTS: u32 = 3;

#[derive(Debug, Error)]
pub enum OwnerError {
    #[error(
        "another `xdplb run` (pid {pid}) owns the data plane pinned at {}; stop it first \
         (lock {})",
        pin_path.display(),
        lock.display()
    )]
    Taken {
        pin_path: PathBuf,
        pid: String,
        lock: PathBuf,
    },
    #[error("lock file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The lock file of `pin_path` inside `dir`. The path is normalised first
/// (`/sys/fs/bpf/x/` and `/sys/fs/bpf/./x` name the same pins).
pub fn lock_path(dir: &Path, pin_path: &Path) -> PathBuf {
    let normal: PathBuf = pin_path
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    dir.join(format!("{}.lock", escape(&normal.to_string_lossy())))
}

/// systemd-escape --path: `/` separates (becomes `-`), and every byte that
/// is not `[A-Za-z0-9_]` (or a `.` not leading) becomes `\xNN`, so two
/// different paths never share a name.
fn escape(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return "-".to_string();
    }
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i > 0 => out.push('.'),
            b if b.is_ascii_alphanumeric() || b == b'_' => out.push(b as char),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The held lock. Dropping it removes the file (we still hold the lock
/// then, so nobody can be holding a lock on it) and releases the lock.
#[derive(Debug)]
pub struct OwnerLock {
    /// Held, never read: closing it releases the flock.
    _file: File,
    path: PathBuf,
}

impl Drop for OwnerLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        // Closing `file` (dropped after this) releases the flock.
    }
}

impl OwnerLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OwnerError + '_ {
    move |source| OwnerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when someone else holds it.
fn try_flock(file: &File) -> std::io::Result<bool> {
    // SAFETY: a valid open fd.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn read_pid(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut s));
    match s.trim() {
        "" => "unknown".to_string(),
        pid => pid.to_string(),
    }
}

/// Takes the lock of `pin_path` for this process (writes our pid into it),
/// or says who holds it.
pub fn acquire(dir: &Path, pin_path: &Path) -> Result<OwnerLock, OwnerError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let path = lock_path(dir, pin_path);
    for _ in 0..LOCK_ATTEMPTS {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        if !try_flock(&file).map_err(io(&path))? {
            return Err(OwnerError::Taken {
                pin_path: pin_path.to_path_buf(),
                pid: read_pid(&mut file),
                lock: path,
            });
        }
        // The holder we raced with may have removed the file between our
        // open and our flock: then we lock an orphan inode, and must retry
        // on the file that the path names now.
        let same = match fs::metadata(&path) {
            Ok(m) => {
                let ours = file.metadata().map_err(io(&path))?;
                m.ino() == ours.ino() && m.dev() == ours.dev()
            }
            Err(_) => false,
        };
        if !same {
            continue;
        }
        file.set_len(0).map_err(io(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
        return Ok(OwnerLock { _file: file, path });
    }
    Err(OwnerError::Io {
        path,
        source: std::io::Error::other("the lock file kept being replaced"),
    })
}

/// The pid of the controller holding `pin_path`'s lock, if one runs.
pub fn holder(dir: &Path, pin_path: &Path) -> Result<Option<String>, OwnerError> {
    let path = lock_path(dir, pin_path);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    if try_flock(&file).map_err(io(&path))? {
        // Free (its holder died without removing it); our probe lock goes
        // with `file`.
        return Ok(None);
    }
    Ok(Some(read_pid(&mut file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xdplb-owner-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn escaping_is_unambiguous() {
        let d = Path::new("/run/xdplb");
        assert_eq!(
            lock_path(d, Path::new("/sys/fs/bpf/xdplb")),
            Path::new("/run/xdplb/sys-fs-bpf-xdplb.lock")
        );
        assert_eq!(
            lock_path(d, Path::new("/sys/fs/bpf/xdplb/")),
            lock_path(d, Path::new("/sys/fs/bpf/./xdplb"))
        );
        assert_ne!(
            lock_path(d, Path::new("/sys/fs/bpf/a-b")),
            lock_path(d, Path::new("/sys/fs/bpf/a/b"))
        );
        assert_eq!(escape("/x/a b-c"), "x-a\\x20b\\x2dc");
    }

    #[test]
    fn a_second_owner_is_refused_with_the_first_ones_pid() {
        let dir = tempdir("second");
        let pin = Path::new("/sys/fs/bpf/owner-test");
        assert_eq!(holder(&dir, pin).unwrap(), None);
        let lock = acquire(&dir, pin).unwrap();
        let me = std::process::id().to_string();
        // flock locks belong to the open file description: a second open,
        // even in this process, is a second owner.
        match acquire(&dir, pin) {
            Err(OwnerError::Taken { pid, .. }) => assert_eq!(pid, me),
            other => panic!("second acquire: {other:?}"),
        }
        let err = acquire(&dir, pin).unwrap_err().to_string();
        assert!(
            err.contains(&me) && err.contains("/sys/fs/bpf/owner-test"),
            "{err}"
        );
        assert_eq!(holder(&dir, pin).unwrap(), Some(me));
        // Another pin path is another owner.
        let other = acquire(&dir, Path::new("/sys/fs/bpf/owner-test-2")).unwrap();
        drop(lock);
        assert_eq!(holder(&dir, pin).unwrap(), None);
        let again = acquire(&dir, pin).unwrap();
        drop((again, other));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "lock files left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_file_left_by_a_dead_owner_does_not_block() {
        let dir = tempdir("stale");
        let pin = Path::new("/sys/fs/bpf/owner-stale");
        fs::create_dir_all(&dir).unwrap();
        fs::write(lock_path(&dir, pin), "999999\n").unwrap();
        assert_eq!(holder(&dir, pin).unwrap(), None);
        let lock = acquire(&dir, pin).unwrap();
        assert_eq!(
            fs::read_to_string(lock.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }
}
