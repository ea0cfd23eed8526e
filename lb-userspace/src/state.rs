//! Operator state that outlives the data plane: `[control] state_file`
//! (HAProxy's server-state-file). It holds the operator drains, so a drain
//! survives a controller restart (the pinned maps carry it too), and also
//! `xdplb down` and a reboot (which take the maps away).
//!
//! The file is JSON, written whole to a temporary file beside it and renamed
//! over it, so a crash mid-write leaves the old file or the new one.
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

/// The drains saved in `path`; none if the file does not exist yet.
pub fn load(path: &Path) -> Result<BTreeSet<Drain>, StateError> {
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
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
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
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, text).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
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
    fn a_broken_or_foreign_file_is_refused_with_its_name() {
        let d = dir("bad");
        fs::create_dir_all(&d).unwrap();
        let path = d.join("state.json");
        fs::write(&path, "{not json").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
        fs::write(&path, r#"{"version":9,"drains":[]}"#).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
