//! `xdplb serving`: whether this gateway can serve, for keepalived's
//! `track_script` (or any health check of a gateway): the controller
//! answers on its admin socket, the data plane is attached on every
//! configured interface, and some pool has an active backend. The first
//! thing missing is the one-line reason.
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::admin::{self, AdminError, Request};
use crate::config::Config;
use crate::dataplane;
use crate::planner::BackendState;
use crate::status::Status;

/// The controller must answer within this: keepalived's script `timeout`
/// is whole seconds, and a controller slower than this is not serving.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(900);

/// Why this gateway cannot serve (exit status 1, this line on stderr).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NotServing {
    #[error("not serving: the controller does not answer on {}: {reason}", socket.display())]
    Controller { socket: PathBuf, reason: String },
    #[error("not serving: the data plane is not attached on {iface}: {reason}")]
    Detached { iface: String, reason: String },
    #[error("not serving: no pool has an active backend ({pools})")]
    NoActiveBackend { pools: String },
}

/// How one configured interface was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// Its pinned link is attached to it.
    Attached,
    /// Why not (no pinned link, link detached or on another interface, no
    /// such interface).
    Not(String),
}

/// The verdict from what was observed, in the order an operator fixes
/// things: the controller, the data plane, the pools. `Ok` carries the
/// line printed on success.
pub fn judge(
    socket: &Path,
    status: Result<Status, String>,
    attachments: &[(String, Attachment)],
) -> Result<String, NotServing> {
    let status = status.map_err(|reason| NotServing::Controller {
        socket: socket.to_path_buf(),
        reason,
    })?;
    for (iface, a) in attachments {
        if let Attachment::Not(reason) = a {
            return Err(NotServing::Detached {
                iface: iface.clone(),
                reason: reason.clone(),
            });
        }
    }
    let serving: Vec<&str> = status
        .pools
        .iter()
        .filter(|p| p.backends.iter().any(|b| b.state == BackendState::Active))
        .map(|p| p.name.as_str())
        .collect();
    if serving.is_empty() {
        let pools = if status.pools.is_empty() {
            "no pools configured".to_string()
        } else {
            status
                .pools
                .iter()
                .map(|p| format!("{} empty", p.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(NotServing::NoActiveBackend { pools });
    }
    let ifaces: Vec<&str> = attachments.iter().map(|(i, _)| i.as_str()).collect();
    Ok(format!(
        "serving: controller answers, attached on {}, {} of {} pools with an active backend",
        ifaces.join(", "),
        serving.len(),
        status.pools.len()
    ))
}

/// Whether `iface` carries the XDP link pinned for it under `pin_path`.
pub fn attachment(pin_path: &Path, iface: &str) -> Attachment {
    let link = pin_path.join(format!("{}{iface}", lb_common::maps::LINK_PREFIX));
    if !link.exists() {
        return Attachment::Not(format!("no pinned link {}", link.display()));
    }
    let ifindex = match dataplane::xdp_link_ifindex(&link) {
        Ok(i) => i,
        Err(e) => return Attachment::Not(format!("cannot read {}: {e}", link.display())),
    };
    let Ok(name) = std::ffi::CString::new(iface) else {
        return Attachment::Not("interface name holds a NUL byte".to_string());
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let want = unsafe { libc::if_nametoindex(name.as_ptr()) };
    match (ifindex, want) {
        (_, 0) => Attachment::Not("no such interface in this network namespace".to_string()),
        (0, _) => Attachment::Not(format!("{} is detached", link.display())),
        (got, want) if got != want => Attachment::Not(format!(
            "{} is attached to ifindex {got}, the interface is {want}",
            link.display()
        )),
        _ => Attachment::Attached,
    }
}

/// Asks the controller for its status, within [`ANSWER_TIMEOUT`].
async fn ask(socket: &Path) -> Result<Status, String> {
    let reply = tokio::time::timeout(ANSWER_TIMEOUT, admin::request(socket, &Request::Status {}))
        .await
        .map_err(|_| format!("no answer within {} ms", ANSWER_TIMEOUT.as_millis()))?
        .and_then(|r| r.into_result())
        .map_err(|e: AdminError| e.to_string())?;
    reply
        .status
        .ok_or_else(|| "the controller answered without a status".to_string())
}

/// `xdplb serving` for the gateway `cfg` describes.
pub async fn check(cfg: &Config) -> Result<String, NotServing> {
    let socket = &cfg.control.admin_socket;
    let status = ask(socket).await;
    let pins = dataplane::resolve_pin_path(&cfg.dataplane.pin_path)
        .unwrap_or_else(|_| cfg.dataplane.pin_path.clone());
    let attachments: Vec<(String, Attachment)> = cfg
        .dataplane
        .interfaces
        .iter()
        .map(|i| (i.clone(), attachment(&pins, i)))
        .collect();
    judge(socket, status, &attachments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{BackendStatus, PoolStatus};

    fn backend(state: &str) -> BackendStatus {
        serde_json::from_value(serde_json::json!({
            "name": "b", "addr": "198.18.1.11:80", "role": "primary", "health": "up",
            "state": state, "weight": 1, "config_weight": 1, "load": 0.0, "flows": 0,
            "reason": "healthy", "operator_drained": false,
        }))
        .expect("a backend status")
    }

    fn pool(name: &str, states: &[&str]) -> PoolStatus {
        let mut p: PoolStatus = serde_json::from_value(serde_json::json!({
            "name": name, "vip": "198.18.2.10:80", "protocol": "tcp", "mode": "nat",
            "min_active": 1, "mean_load": null, "backends": [],
        }))
        .expect("a pool status");
        p.backends = states.iter().map(|s| backend(s)).collect();
        p
    }

    fn attached(ifaces: &[&str]) -> Vec<(String, Attachment)> {
        ifaces
            .iter()
            .map(|i| (i.to_string(), Attachment::Attached))
            .collect()
    }

    const SOCK: &str = "/run/xdplb/admin.sock";

    #[test]
    fn serving_when_all_three_hold() {
        let status = Status {
            pools: vec![pool("web", &["down", "active"]), pool("dns", &["down"])],
            ..Status::default()
        };
        let line =
            judge(Path::new(SOCK), Ok(status), &attached(&["eth0", "eth1"])).expect("serving");
        assert_eq!(
            line,
            "serving: controller answers, attached on eth0, eth1, 1 of 2 pools with an active backend"
        );
    }

    #[test]
    fn a_silent_controller_is_the_reason_first() {
        let err = judge(
            Path::new(SOCK),
            Err("no controller answering".into()),
            &[("eth0".into(), Attachment::Not("detached".into()))],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "not serving: the controller does not answer on /run/xdplb/admin.sock: no controller answering"
        );
    }

    #[test]
    fn a_detached_interface_names_itself() {
        let status = Status {
            pools: vec![pool("web", &["active"])],
            ..Status::default()
        };
        let mut a = attached(&["eth0"]);
        a.push(("eth1".into(), Attachment::Not("no pinned link".into())));
        let err = judge(Path::new(SOCK), Ok(status), &a).unwrap_err();
        assert_eq!(
            err,
            NotServing::Detached {
                iface: "eth1".into(),
                reason: "no pinned link".into()
            }
        );
    }

    #[test]
    fn every_pool_empty_is_not_serving() {
        // Draining and standby backends take no new flow: not serving.
        let status = Status {
            pools: vec![
                pool("web", &["down", "draining"]),
                pool("dns", &["standby"]),
            ],
            ..Status::default()
        };
        let err = judge(Path::new(SOCK), Ok(status), &attached(&["eth0"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not serving: no pool has an active backend (web empty, dns empty)"
        );
        let err = judge(Path::new(SOCK), Ok(Status::default()), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not serving: no pool has an active backend (no pools configured)"
        );
    }

    #[test]
    fn no_pinned_link_is_detached() {
        let dir = std::env::temp_dir().join(format!("xdplb-serving-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = attachment(&dir, "lo");
        std::fs::remove_dir_all(&dir).unwrap();
        match a {
            Attachment::Not(r) => assert!(r.starts_with("no pinned link "), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn no_controller_on_the_socket() {
        let sock = std::env::temp_dir().join(format!("xdplb-serving-{}.sock", std::process::id()));
        let err = ask(&sock).await.unwrap_err();
        assert!(err.starts_with("no controller answering on"), "{err}");
    }
}
