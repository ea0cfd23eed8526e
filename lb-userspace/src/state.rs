//! Operator state that outlives the data plane: `[control] state_file`
//! (HAProxy's server-state-file). It holds the operator drains, so a drain
//! survives a controller restart (the pinned maps carry it too), and also
//! `xdplb down` and a reboot (which take the maps away).
//!
//! The file is JSON, written with [`crate::fsutil::write_atomic`] (a
//! temporary file beside it, synced, renamed over it, the directory
//! synced), so a crash mid-write leaves the old file or the new one. A file that cannot be read or
//! understood is moved aside, never overwritten with fewer drains.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Bumped if the file's meaning changes; a file of another version is
/// refused rather than misread.
const STATE_VERSION: u32 = 1;
/// The state file is root's: it names backends, nothing anyone else needs.
const STATE_MODE: u32 = 0o600;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "state file {}: {reason}; moved aside to {} (its drains are not restored: \
         re-apply them, or fix the file and restart)",
        path.display(),
        aside.display()
    )]
    MovedAside {
        path: PathBuf,
        aside: PathBuf,
        reason: String,
    },
    #[error(
        "state file {}: {reason}; it cannot be moved aside ({source}), so it is left as it \
         is and no drain is saved until it is fixed",
        path.display()
    )]
    Stuck {
        path: PathBuf,
        reason: String,
        #[source]
        source: std::io::Error,
    },
}

/// A drained backend: (pool, backend).
pub type Drain = (String, String);

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    drains: Vec<DrainEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct DrainEntry {
    pool: String,
    backend: String,
}

/// The drains saved in `path`; none if the file does not exist yet. A file
/// that cannot be read or understood is moved aside
/// (`PATH.unreadable-UNIXSECONDS`: [`StateError::MovedAside`]), so the
/// next save does not overwrite what it held; if it cannot be moved,
/// [`StateError::Stuck`]: the caller must not save over it.
pub fn load(path: &Path) -> Result<BTreeSet<Drain>, StateError> {
    match read(path) {
        Err(e @ (StateError::Io { .. } | StateError::Invalid { .. })) => {
            Err(move_aside(path, e.to_string()))
        }
        r => r,
    }
}

/// Moves an unreadable state file aside; the error to report.
fn move_aside(path: &Path, error: String) -> StateError {
    let reason = error
        .strip_prefix(&format!("state file {}: ", path.display()))
        .unwrap_or(&error)
        .to_string();
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(
        ".unreadable-{}",
        crate::status::now_unix_ms() / 1000
    ));
    let aside = PathBuf::from(aside);
    match fs::rename(path, &aside) {
        Ok(()) => StateError::MovedAside {
            path: path.to_path_buf(),
            aside,
            reason,
        },
        Err(source) => StateError::Stuck {
            path: path.to_path_buf(),
            reason,
            source,
        },
    }
}

fn read(path: &Path) -> Result<BTreeSet<Drain>, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let invalid = |reason: String| StateError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let file: File = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if file.version != STATE_VERSION {
        return Err(invalid(format!(
            "version {} (this xdplb reads version {STATE_VERSION})",
            file.version
        )));
    }
    Ok(file
        .drains
        .into_iter()
        .map(|d| (d.pool, d.backend))
        .collect())
}

/// Saves `drains` to `path` atomically, creating its directory.
pub fn save(path: &Path, drains: &BTreeSet<Drain>) -> Result<(), StateError> {
    let file = File {
        version: STATE_VERSION,
        drains: drains
            .iter()
            .map(|(pool, backend)| DrainEntry {
                pool: pool.clone(),
                backend: backend.clone(),
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&file).expect("plain data serialises");
    text.push('\n');
    // Synced before the rename, and the rename synced with its directory:
    // after a crash the file is the old one or the new one, whole.
    crate::fsutil::write_atomic(path, text.as_bytes(), STATE_MODE, None).map_err(|e| {
        StateError::Io {
            path: path.to_path_buf(),
            source: e.source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xdplb-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn drains_round_trip_and_a_missing_file_is_empty() {
        let d = dir("rt");
        let path = d.join("sub").join("state.json");
        assert!(load(&path).unwrap().is_empty());
        let drains: BTreeSet<Drain> = [("web".into(), "web-1".into()), ("api".into(), "a".into())]
            .into_iter()
            .collect();
        save(&path, &drains).unwrap();
        assert_eq!(load(&path).unwrap(), drains);
        save(&path, &BTreeSet::new()).unwrap();
        assert!(load(&path).unwrap().is_empty());
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_broken_or_foreign_file_is_refused_with_its_name_and_moved_aside() {
        let d = dir("bad");
        fs::create_dir_all(&d).unwrap();
        let path = d.join("state.json");
        fs::write(&path, "{not json").unwrap();
        let e = load(&path).unwrap_err();
        let StateError::MovedAside { aside, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(fs::read_to_string(aside).unwrap(), "{not json");
        assert!(!path.exists());
        let e = e.to_string();
        assert!(e.contains("state.json") && e.contains("moved aside"), "{e}");
        fs::remove_dir_all(&d).unwrap();
        fs::create_dir_all(&d).unwrap();
        fs::write(&path, r#"{"version":9,"drains":[]}"#).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
