//! Operator state that outlives the data plane: `[control] state_file`
//! (HAProxy's server-state-file). It holds each backend's runtime states
//! ([`BackendAdmin`]: operator drain, maintenance, weight override, and
//! the drain or maintenance an agent asked for), so they survive a
//! controller restart, `xdplb down` and a reboot (which take the maps
//! away; the maps carry operator drains too).
//!
//! Version 2: `{"version":2,"backends":[{"pool","backend","drain","maint",
//! "agent_state","weight"}]}` (fields at their default left out).
//! Version 1 (`{"version":1,"drains":[{"pool","backend"}]}`) is still read.
//!
//! The file is JSON, written with [`crate::fsutil::write_atomic`] (a
//! temporary file beside it, synced, renamed over it, the directory
//! synced), so a crash mid-write leaves the old file or the new one. A file that cannot be read or
//! understood is moved aside, never overwritten with fewer drains.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Bumped if the file's meaning changes; a file of another version is
/// refused rather than misread.
const STATE_VERSION: u32 = 2;
/// The first version (operator drains only), still read.
const STATE_VERSION_DRAINS: u32 = 1;
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

/// A backend: (pool, backend).
pub type BackendKey = (String, String);

/// A backend's administrative state, as HAProxy's (`set server … state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new flows (if healthy).
    #[default]
    Ready,
    /// No new flows; established flows continue; still probed.
    Drain,
    /// No new flows, health checks stopped; established flows continue.
    Maint,
}

impl AdminState {
    pub const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

impl std::fmt::Display for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who set a backend's administrative state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetBy {
    /// `xdplb drain|maint` (the admin socket).
    Operator,
    /// The backend's load agent (`drain` or `maint` in its reply).
    Agent,
}

impl SetBy {
    pub fn as_str(self) -> &'static str {
        match self {
            SetBy::Operator => "operator",
            SetBy::Agent => "agent",
        }
    }
}

/// One backend's runtime states. The operator's and the agent's are kept
/// apart: an agent saying `up` or `ready` clears what the agent asked for,
/// never an operator's drain or maintenance; `xdplb ready` clears both
/// (as HAProxy's `set server … state ready`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendAdmin {
    /// `xdplb drain` (until `xdplb undrain` or `xdplb ready`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
    /// `xdplb maint` (until `xdplb ready`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maint: bool,
    /// The agent's last `drain` or `maint` (never `ready`): in force until
    /// the agent says `up` or `ready`, also while it does not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_state: Option<AdminState>,
    /// `xdplb set weight` (0..=1000), in place of the config's weight until
    /// `xdplb set weight … config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl BackendAdmin {
    /// Nothing set: the backend is as its config and observations say.
    pub fn is_default(&self) -> bool {
        *self == BackendAdmin::default()
    }

    /// The state in force and who set it: maintenance over drain, the
    /// operator's over the agent's.
    pub fn state(&self) -> (AdminState, Option<SetBy>) {
        if self.maint {
            (AdminState::Maint, Some(SetBy::Operator))
        } else if self.agent_state == Some(AdminState::Maint) {
            (AdminState::Maint, Some(SetBy::Agent))
        } else if self.drain {
            (AdminState::Drain, Some(SetBy::Operator))
        } else if self.agent_state == Some(AdminState::Drain) {
            (AdminState::Drain, Some(SetBy::Agent))
        } else {
            (AdminState::Ready, None)
        }
    }
}

/// Every backend's runtime states; backends with none are left out.
pub type AdminStates = BTreeMap<BackendKey, BackendAdmin>;

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    backends: Vec<BackendEntry>,
    /// Version 1 only.
    #[serde(default, skip_serializing)]
    drains: Vec<DrainEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BackendEntry {
    pool: String,
    backend: String,
    #[serde(flatten)]
    admin: BackendAdmin,
}

#[derive(Debug, Serialize, Deserialize)]
struct DrainEntry {
    pool: String,
    backend: String,
}

/// The runtime states saved in `path`; none if the file does not exist yet. A file
/// that cannot be read or understood is moved aside
/// (`PATH.unreadable-UNIXSECONDS`: [`StateError::MovedAside`]), so the
/// next save does not overwrite what it held; if it cannot be moved,
/// [`StateError::Stuck`]: the caller must not save over it.
pub fn load(path: &Path) -> Result<AdminStates, StateError> {
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

fn read(path: &Path) -> Result<AdminStates, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AdminStates::new()),
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
    match file.version {
        STATE_VERSION_DRAINS => Ok(file
            .drains
            .into_iter()
            .map(|d| {
                let admin = BackendAdmin {
                    drain: true,
                    ..BackendAdmin::default()
                };
                ((d.pool, d.backend), admin)
            })
            .collect()),
        STATE_VERSION => {
            let mut states = AdminStates::new();
            for e in file.backends {
                if let Some(w) = e.admin.weight.filter(|w| *w > crate::config::MAX_WEIGHT) {
                    return Err(invalid(format!(
                        "{}/{}: weight {w} (at most {})",
                        e.pool,
                        e.backend,
                        crate::config::MAX_WEIGHT
                    )));
                }
                if e.admin.agent_state == Some(AdminState::Ready) {
                    return Err(invalid(format!(
                        "{}/{}: agent_state \"ready\" (only \"drain\" or \"maint\" are kept)",
                        e.pool, e.backend
                    )));
                }
                if !e.admin.is_default() {
                    states.insert((e.pool, e.backend), e.admin);
                }
            }
            Ok(states)
        }
        v => Err(invalid(format!(
            "version {v} (this xdplb reads versions {STATE_VERSION_DRAINS} and {STATE_VERSION})"
        ))),
    }
}

/// Saves `states` to `path` atomically, creating its directory.
pub fn save(path: &Path, states: &AdminStates) -> Result<(), StateError> {
    let file = File {
        version: STATE_VERSION,
        backends: states
            .iter()
            .filter(|(_, a)| !a.is_default())
            .map(|((pool, backend), admin)| BackendEntry {
                pool: pool.clone(),
                backend: backend.clone(),
                admin: admin.clone(),
            })
            .collect(),
        drains: Vec::new(),
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
    fn states_round_trip_and_a_missing_file_is_empty() {
        let d = dir("rt");
        let path = d.join("sub").join("state.json");
        assert!(load(&path).unwrap().is_empty());
        let states: AdminStates = [
            (
                ("web".to_string(), "web-1".to_string()),
                BackendAdmin {
                    drain: true,
                    ..BackendAdmin::default()
                },
            ),
            (
                ("web".to_string(), "web-2".to_string()),
                BackendAdmin {
                    maint: true,
                    weight: Some(0),
                    ..BackendAdmin::default()
                },
            ),
            (
                ("api".to_string(), "a".to_string()),
                BackendAdmin {
                    agent_state: Some(AdminState::Maint),
                    weight: Some(1000),
                    ..BackendAdmin::default()
                },
            ),
        ]
        .into_iter()
        .collect();
        save(&path, &states).unwrap();
        assert_eq!(load(&path).unwrap(), states);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"agent_state\": \"maint\""), "{text}");
        assert!(!text.contains("drains"), "{text}");
        save(&path, &AdminStates::new()).unwrap();
        assert!(load(&path).unwrap().is_empty());
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_version_1_file_of_drains_is_read() {
        let d = dir("v1");
        fs::create_dir_all(&d).unwrap();
        let path = d.join("state.json");
        fs::write(
            &path,
            r#"{"version":1,"drains":[{"pool":"web","backend":"web-1"}]}"#,
        )
        .unwrap();
        let states = load(&path).unwrap();
        assert_eq!(states.len(), 1);
        let a = &states[&("web".to_string(), "web-1".to_string())];
        assert_eq!(a.state(), (AdminState::Drain, Some(SetBy::Operator)));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn maintenance_beats_drain_and_the_operator_beats_the_agent() {
        let mut a = BackendAdmin::default();
        assert_eq!(a.state(), (AdminState::Ready, None));
        a.agent_state = Some(AdminState::Drain);
        assert_eq!(a.state(), (AdminState::Drain, Some(SetBy::Agent)));
        a.drain = true;
        assert_eq!(a.state(), (AdminState::Drain, Some(SetBy::Operator)));
        a.agent_state = Some(AdminState::Maint);
        assert_eq!(a.state(), (AdminState::Maint, Some(SetBy::Agent)));
        a.maint = true;
        assert_eq!(a.state(), (AdminState::Maint, Some(SetBy::Operator)));
        // A weight override is no administrative state.
        let w = BackendAdmin {
            weight: Some(0),
            ..BackendAdmin::default()
        };
        assert_eq!(w.state(), (AdminState::Ready, None));
        assert!(!w.is_default());
    }

    #[test]
    fn an_out_of_range_weight_is_refused() {
        let d = dir("w");
        fs::create_dir_all(&d).unwrap();
        let path = d.join("state.json");
        fs::write(
            &path,
            r#"{"version":2,"backends":[{"pool":"web","backend":"b","weight":1001}]}"#,
        )
        .unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("web/b: weight 1001"), "{e}");
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
