//! Files other programs read while xdplb replaces them: the routes file
//! (BIRD), the state file, the last applied config.
//!
//! [`write_atomic`] writes a temporary file beside the target (tempfile),
//! gives it its mode and group explicitly (the service's `UMask=0077`
//! would otherwise make it root-only), syncs it, renames it over the
//! target (tempfile's `persist`) and syncs the directory: a reader sees
//! the old file or the new one, never a part, and a crash loses neither.
use std::{
    fs::{self, File, Permissions},
    io::Write,
    os::unix::fs::{chown, PermissionsExt},
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Replaces `path` with `bytes`, mode `mode` (e.g. `0o640`) and, when
/// given, group `gid`. Creates the parent directory (mode 0755) if needed.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    gid: Option<u32>,
) -> Result<(), WriteError> {
    let err = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(err)?;
        fs::set_permissions(dir, Permissions::from_mode(0o755)).map_err(err)?;
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".xdplb-")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(err)?;
    if let Some(gid) = gid {
        chown(tmp.path(), None, Some(gid)).map_err(err)?;
    }
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    // The rename is durable once the directory is.
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_with_the_mode_and_group_given_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("xdplb-fsutil-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub/file");
        write_atomic(&path, b"one\n", 0o600, None).unwrap();
        // A group other than our own: the test runs as root (CI) or as a
        // member of its own primary group only.
        let gid = if unsafe { libc::geteuid() } == 0 {
            1
        } else {
            unsafe { libc::getegid() }
        };
        write_atomic(&path, b"two\n", 0o640, Some(gid)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o640);
        assert_eq!(meta.gid(), gid);
        assert_eq!(fs::metadata(dir.join("sub")).unwrap().mode() & 0o777, 0o755);
        let names: Vec<_> = fs::read_dir(dir.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file")]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
