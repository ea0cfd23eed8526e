//! The controller's live view, as `xdplb status` shows it and the admin
//! socket carries it. Field names are the operator contract
//! (docs/INTERFACE.md, "JSON"); more fields are allowed. Fields with a
//! fixed set of values are enums, serialised as the contract's strings.
use serde::{Deserialize, Serialize};

use crate::{
    config::{Mode, OnEmpty, Protocol, Role},
    planner::{BackendState, Reason},
    state::{AdminState, SetBy},
};

/// A backend's health verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    /// Also a backend not probed yet.
    Down,
}

impl Health {
    pub const fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pools: Vec<PoolStatus>,
    /// Configured interfaces the program is not attached to (deleted, or
    /// detached by `xdplb down`): nothing is announced meanwhile. Absent
    /// when it is attached to all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detached: Vec<String>,
    /// `[sync]`'s peers, in config order; absent without `[sync]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<Vec<SyncPeerStatus>>,
    /// Flow sync's counts since the controller started; absent without
    /// `[sync]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_counters: Option<SyncCounters>,
}

/// Whether a flow sync peer is heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPeerState {
    /// A valid message arrived lately (peers send at least a heartbeat a
    /// second).
    Up,
    /// Nothing valid for a few seconds, or never.
    Down,
}

impl SyncPeerState {
    pub const fn as_str(self) -> &'static str {
        match self {
            SyncPeerState::Up => "up",
            SyncPeerState::Down => "down",
        }
    }
}

/// One `[sync]` peer as status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPeerStatus {
    /// Its address, as configured.
    pub peer: String,
    pub state: SyncPeerState,
    /// When its last valid message arrived (this host's clock); `null`
    /// before the first.
    pub last_message_unix_ms: Option<u64>,
}

/// Flow sync's counts (the metrics' `xdplb_sync_*_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCounters {
    pub messages_sent: u64,
    pub entries_sent: u64,
    /// Messages not sent: over a peer's rate bound, or the socket refused.
    pub messages_unsent: u64,
    pub messages_received: u64,
    pub entries_received: u64,
    /// Datagrams dropped: not from a peer, unauthenticated, malformed,
    /// oversize, replayed, or over the receive rate.
    pub messages_rejected: u64,
    /// Entries recorded in this gateway's flow table.
    pub entries_inserted: u64,
    /// Entries the table held already (its own entry stands).
    pub entries_present: u64,
    /// Entries not recorded: a backend this gateway does not have or has
    /// down, or no empty way in the flow's buckets.
    pub entries_rejected: u64,
    /// Socket or map errors (each kind logged once until it clears).
    pub errors: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    /// "198.18.2.10:80", "[2001:2:0:2::10]:80"
    pub vip: String,
    /// "tcp" | "udp"
    #[serde(default)]
    pub protocol: Protocol,
    /// "nat" | "dsr" | "tunnel"
    pub mode: Mode,
    pub min_active: u32,
    /// "reject" | "drop": what the VIP does with new flows while empty.
    #[serde(default)]
    pub on_empty: OnEmpty,
    /// True when no backend can take a new flow (the VIP's ring is empty):
    /// new flows are rejected or dropped, as `on_empty` says. False until
    /// the controller has published the pool's ring.
    #[serde(default)]
    pub empty: bool,
    /// Mean load of the serving backends, when the pool has `[pool.load]`.
    pub mean_load: Option<f64>,
    /// With `[announce]`: whether BIRD has the VIP's route (its
    /// `xdplb_vips[6]` protocol holds it, as BIRD answered within the last
    /// second) — what the routers can be sent. Absent without `[announce]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced: Option<bool>,
    /// With `[announce]`: whether xdplb wants the VIP announced (its ring
    /// has an active backend and the data plane is attached). `true` with
    /// `announced` false: BIRD does not have it (not running, or it cannot
    /// read the routes file). Absent without `[announce]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_intent: Option<bool>,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    /// "198.18.1.11:8080", "[2001:2:0:1::11]:8080"
    pub addr: String,
    /// "primary" | "spare"
    pub role: Role,
    /// "up" | "down" (a backend not probed yet is "down").
    pub health: Health,
    /// "active" | "draining" | "standby" | "down"
    pub state: BackendState,
    /// Effective weight the Maglev ring was built with (0 unless active).
    pub weight: u32,
    /// Configured weight.
    pub config_weight: u32,
    /// Load score in [0, 1]; 0 when the pool has no `[pool.load]`.
    pub load: f64,
    /// Established flows in the flow table pinned to this backend.
    pub flows: u64,
    /// Recent flows to it whose client never sent an ACK: handshakes that
    /// did not complete.
    #[serde(default)]
    pub half_open: u64,
    /// Its probes may succeed, but clients' handshakes with it do not
    /// complete and none is established: its answers do not reach them (a
    /// dsr or tunnel backend without the VIP on a loopback, or answering
    /// by another route than the clients').
    #[serde(default)]
    pub unanswered: bool,
    /// Why it is in this state (planner reason, snake_case).
    pub reason: Reason,
    pub operator_drained: bool,
    /// "ready" | "drain" | "maint": the runtime state in force
    /// (maintenance over drain).
    #[serde(default)]
    pub admin_state: AdminState,
    /// "operator" | "agent": who set `admin_state`; absent while ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_set_by: Option<SetBy>,
    /// `xdplb set weight`'s weight, in place of `config_weight`; absent
    /// without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_override: Option<u32>,
    /// Last agent reply, verbatim, if the pool polls agents.
    pub agent: Option<String>,
    /// Last probe error, if the last probe failed.
    pub last_error: Option<String>,
    /// Smoothed round trip of successful health probes, in milliseconds;
    /// `None` before the first success.
    pub rtt_ms: Option<f64>,
    /// Whether the backend's load agent answers (`None`: the pool polls no
    /// agents, or none was asked yet).
    pub agent_up: Option<bool>,
    /// Why the last agent query failed, while it fails.
    pub agent_error: Option<String>,
    /// Its last few state changes, oldest first (at most
    /// [`KEEP_TRANSITIONS`]).
    #[serde(default)]
    pub transitions: Vec<Transition>,
}

/// Wall-clock time in unix ms: what transitions are stamped with and their
/// age is measured against (the controller's own clock is monotonic and
/// starts at zero).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How many state changes each backend keeps: enough to tell a flapping
/// backend from one that failed once, few enough that the status document
/// of a thousand backends stays small.
pub const KEEP_TRANSITIONS: usize = 8;

/// One change of a backend's published state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// When the controller published the new state (unix time, ms).
    pub at_unix_ms: u64,
    /// "active" | "draining" | "standby" | "down"; "down" for a backend
    /// that had no state yet (not probed).
    pub from: BackendState,
    pub to: BackendState,
    /// The `reason` status gave with the new state; with the probe error
    /// when health took it down, and the ramp when it starts slowly.
    pub reason: String,
}

/// The last [`KEEP_TRANSITIONS`] transitions: a ring, the oldest dropped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransitionLog {
    ring: std::collections::VecDeque<Transition>,
}

impl TransitionLog {
    pub fn record(&mut self, t: Transition) {
        if self.ring.len() == KEEP_TRANSITIONS {
            self.ring.pop_front();
        }
        self.ring.push_back(t);
    }

    /// Oldest first.
    pub fn to_vec(&self) -> Vec<Transition> {
        self.ring.iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
impl Status {
    /// One pool `web` on 198.18.2.10:80 with one healthy active backend
    /// `web-1` holding 3 flows: the fixture unit tests start from.
    pub fn sample() -> Status {
        Status {
            pools: vec![PoolStatus {
                name: "web".into(),
                vip: "198.18.2.10:80".into(),
                protocol: Protocol::Tcp,
                mode: Mode::Nat,
                min_active: 1,
                on_empty: OnEmpty::Reject,
                empty: false,
                mean_load: None,
                announced: None,
                announce_intent: None,
                backends: vec![BackendStatus {
                    name: "web-1".into(),
                    addr: "198.18.1.11:8080".into(),
                    role: Role::Primary,
                    health: Health::Up,
                    state: BackendState::Active,
                    weight: 100,
                    config_weight: 100,
                    load: 0.0,
                    flows: 3,
                    half_open: 0,
                    unanswered: false,
                    reason: Reason::Healthy,
                    operator_drained: false,
                    admin_state: AdminState::Ready,
                    admin_set_by: None,
                    weight_override: None,
                    agent: None,
                    last_error: None,
                    rtt_ms: None,
                    agent_up: None,
                    agent_error: None,
                    transitions: Vec::new(),
                }],
            }],
            detached: Vec::new(),
            ..Status::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(at: u64) -> Transition {
        Transition {
            at_unix_ms: at,
            from: BackendState::Active,
            to: BackendState::Down,
            reason: format!("health_down: probe {at}"),
        }
    }

    #[test]
    fn the_transition_log_keeps_the_newest_few_in_order() {
        let mut log = TransitionLog::default();
        assert!(log.is_empty());
        for at in 1..=3 {
            log.record(t(at));
        }
        assert_eq!(
            log.to_vec()
                .iter()
                .map(|t| t.at_unix_ms)
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for at in 4..=20 {
            log.record(t(at));
        }
        assert_eq!(log.len(), KEEP_TRANSITIONS);
        let kept: Vec<u64> = log.to_vec().iter().map(|t| t.at_unix_ms).collect();
        assert_eq!(kept, (13..=20).collect::<Vec<_>>(), "oldest dropped first");
        assert_eq!(log.to_vec()[KEEP_TRANSITIONS - 1], t(20));
        // A ring: recording never grows what it holds beyond the bound.
        assert!(log.ring.capacity() < 2 * KEEP_TRANSITIONS);
    }

    /// The typed fields serialise as the contract's strings: the document
    /// keeps its shape.
    #[test]
    fn the_status_document_keeps_the_contracts_strings() {
        let mut s = Status::sample();
        s.pools[0].backends[0].transitions.push(t(7));
        let v = serde_json::to_value(&s).unwrap();
        let p = &v["pools"][0];
        assert_eq!(
            [&p["protocol"], &p["mode"], &p["on_empty"]],
            ["tcp", "nat", "reject"]
        );
        let b = &p["backends"][0];
        assert_eq!(
            [&b["role"], &b["health"], &b["state"], &b["reason"]],
            ["primary", "up", "active", "healthy"]
        );
        let tr = &b["transitions"][0];
        assert_eq!([&tr["from"], &tr["to"]], ["active", "down"]);
        assert_eq!(serde_json::from_value::<Status>(v).unwrap(), s);
    }

    #[test]
    fn a_status_from_an_older_controller_has_no_transitions() {
        let mut v = serde_json::to_value(Status::sample()).unwrap();
        v["pools"][0]["backends"][0]
            .as_object_mut()
            .unwrap()
            .remove("transitions");
        let s: Status = serde_json::from_value(v).unwrap();
        assert!(s.pools[0].backends[0].transitions.is_empty());
    }
}

/// What `xdplb plan` (a reload of another config) or `xdplb drain …
/// --dry-run` would do, computed by the running controller against its
/// live image, observations and last flow census; nothing is written.
/// Field names are the operator contract (docs/INTERFACE.md, "JSON").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangePlan {
    /// Whether the change would be accepted (a reload: applied).
    pub accepted: bool,
    /// Why it would be refused, in the words `xdplb reload` uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// What the reload would report (`added backend web/web-4`, …).
    #[serde(default)]
    pub summary: Vec<String>,
    /// Per pool of the running config and of the new one.
    #[serde(default)]
    pub pools: Vec<PoolChange>,
    /// What the prediction takes for granted (new backends pass their
    /// health checks, slow start has run its course, …).
    #[serde(default)]
    pub assumptions: Vec<String>,
    /// Age of the flow census the flow counts come from, in ms (`None`:
    /// no census yet, flows counted as 0).
    #[serde(default)]
    pub census_age_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolChange {
    pub name: String,
    /// "added" | "removed" | "changed" | "unchanged"
    pub change: String,
    /// The VIP now and after (`None`: the pool is not there).
    pub vip: Option<String>,
    pub new_vip: Option<String>,
    /// Why its established flows cannot continue on the VIP entry they
    /// use (address, protocol or mode changed; pool removed): they are
    /// counted as stranded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_change: Option<String>,
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
    pub reweighted: Vec<Reweight>,
    /// Ring entries (of `ring_size`) whose backend changes; `None` when
    /// the live ring's inputs are not known (a ring adopted from the pins
    /// before the first sync) or the pool has no ring before or after.
    pub ring_moved: Option<u32>,
    pub ring_size: u32,
    /// `ring_moved / ring_size`: the share of new flows (by hash) that go
    /// to another backend than before.
    pub ring_moved_share: Option<f64>,
    /// Established flows (last census) on backends that stop taking new
    /// flows and keep their established ones.
    pub flows_drained: u64,
    /// Established flows re-steered on their next packet (`on_down =
    /// "reset"`: a backend going down).
    pub flows_reset: u64,
    /// Established flows whose VIP entry goes or changes meaning.
    pub flows_stranded: u64,
    pub spares_activated: Vec<String>,
    pub spares_drained: Vec<String>,
    /// Each backend whose state changes, and what happens to its flows.
    pub backends: Vec<BackendChange>,
    /// With `[announce]`: "announced" | "withdrawn" when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reweight {
    pub name: String,
    pub from: u32,
    pub to: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendChange {
    pub name: String,
    /// State now ("active" | "draining" | "standby" | "down"; "new" for a
    /// backend the change adds).
    pub from: String,
    /// State after ("removed" for a backend the change takes out).
    pub to: String,
    /// Established flows on it (last census).
    pub flows: u64,
    /// What happens to them: "continue" | "drained" | "reset" |
    /// "stranded".
    pub fate: String,
    /// Ring entries it gains (positive) or loses (negative).
    pub ring_delta: i64,
}
