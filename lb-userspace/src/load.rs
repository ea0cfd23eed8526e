//! Backend load: the agent protocol, the load score and its staleness.
//!
//! The wire format is HAProxy's agent-check reply (a state word and a weight
//! percent) extended with xdplb's utilisation fields:
//! `up 100% cpu=0.70 mem=0.60 disk=0.50 net=0.80`. This module holds the pure
//! part: [`parse_agent_reply`], [`load_score`] and [`LoadTracker`].
//! Submodules hold the I/O:
//! - [`client`]: [`client::query_agent`] and [`client::spawn_poller`], the
//!   controller side;
//! - [`agent`]: [`agent::serve_agent`] and [`agent::Sampler`], the
//!   backend-side `xdplb agent`;
//! - [`procfs`]: pure parsers of `/proc` text the sampler reads.

pub mod agent;
pub mod client;
pub mod procfs;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::Factors;

/// Longest reply line accepted. HAProxy reads agent replies into a small
/// buffer too; anything longer is not an agent talking.
pub const MAX_REPLY_LEN: usize = 1024;

/// How many poll intervals a silent agent's last score stays trusted.
pub const STALE_AFTER_INTERVALS: u64 = 3;

/// Score of a backend whose agent is silent: "unknown", halfway, so it keeps
/// serving but a backend known to be idle is preferred (operator contract).
pub const STALE_SCORE: f64 = 0.5;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("empty agent reply")]
    Empty,
    #[error("agent reply longer than {max} bytes", max = MAX_REPLY_LEN)]
    TooLong { len: usize },
    #[error("agent reply is not UTF-8")]
    NotUtf8,
    #[error("bad weight percent {token:?} (want 0% to 100%)")]
    BadPercent { token: String },
    #[error("bad utilisation {key}={value:?} (want a number in [0, 1])")]
    BadField { key: String, value: String },
    #[error("agent reply has no state, percent or utilisation: {line:?}")]
    NothingUseful { line: String },
    #[error("connect to agent {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("agent {addr}: no reply within {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("agent {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    FixedFile {
        path: PathBuf,
        #[source]
        source: Box<LoadError>,
    },
    #[error("{}: cannot read: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// HAProxy agent-check state words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Operationally up.
    Up,
    /// Operationally down.
    Down,
    /// Administratively ready again (undoes drain/maint).
    Ready,
    /// Administratively draining: no new flows.
    Drain,
    /// Administratively in maintenance: no new flows.
    Maint,
    /// Operationally down, stopping.
    Stopped,
    /// Operationally down, failed.
    Fail,
}

impl AgentState {
    fn parse(word: &str) -> Option<AgentState> {
        const WORDS: [(&str, AgentState); 7] = [
            ("up", AgentState::Up),
            ("down", AgentState::Down),
            ("ready", AgentState::Ready),
            ("drain", AgentState::Drain),
            ("maint", AgentState::Maint),
            ("stopped", AgentState::Stopped),
            ("fail", AgentState::Fail),
        ];
        WORDS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
            .map(|(_, s)| *s)
    }

    /// Says the backend must not be chosen at all.
    pub fn is_down(self) -> bool {
        matches!(
            self,
            AgentState::Down | AgentState::Stopped | AgentState::Fail
        )
    }

    /// Says the backend must take no new flows but keep its established ones.
    pub fn is_drain(self) -> bool {
        matches!(self, AgentState::Drain | AgentState::Maint)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Up => "up",
            AgentState::Down => "down",
            AgentState::Ready => "ready",
            AgentState::Drain => "drain",
            AgentState::Maint => "maint",
            AgentState::Stopped => "stopped",
            AgentState::Fail => "fail",
        }
    }
}

/// The agent publishes utilisation in steps of this size (5%).
pub const PUBLISH_STEP: f64 = 0.05;
/// A published field moves once a sample is a whole step from it. A
/// steady load whose samples jitter by up to ±half a step then settles on
/// one published value within a few samples and keeps it (a narrower band
/// flaps between the two steps around a load that sits near their
/// midpoint).
pub const PUBLISH_HYSTERESIS: f64 = PUBLISH_STEP;

/// Utilisation fractions in [0, 1]; `None` where the reply did not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Utilisation {
    pub cpu: Option<f64>,
    pub mem: Option<f64>,
    pub disk: Option<f64>,
    pub net: Option<f64>,
}

impl Utilisation {
    pub fn all(cpu: f64, mem: f64, disk: f64, net: f64) -> Self {
        Utilisation {
            cpu: Some(cpu),
            mem: Some(mem),
            disk: Some(disk),
            net: Some(net),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.mem.is_none() && self.disk.is_none() && self.net.is_none()
    }

    /// What the agent publishes after `self` was sampled, given what it
    /// published last: each field in steps of [`PUBLISH_STEP`], moving only
    /// when the sample is at least [`PUBLISH_HYSTERESIS`] away from the
    /// published value. Every gateway polling this agent reads the same
    /// line; with hysteresis that line stays put while the load only
    /// jitters, so gateways that poll at different moments still agree on
    /// every weight (and build the same Maglev ring).
    pub fn published(&self, prev: &Utilisation) -> Utilisation {
        let one = |sample: Option<f64>, prev: Option<f64>| {
            let s = sample?.clamp(0.0, 1.0);
            Some(match prev {
                Some(p) if (s - p).abs() < PUBLISH_HYSTERESIS => p,
                _ => (s / PUBLISH_STEP).round() * PUBLISH_STEP,
            })
        };
        Utilisation {
            cpu: one(self.cpu, prev.cpu),
            mem: one(self.mem, prev.mem),
            disk: one(self.disk, prev.disk),
            net: one(self.net, prev.net),
        }
    }

    /// The present fields as `key=value` tokens, two decimals.
    pub fn to_tokens(&self) -> String {
        let mut out = Vec::new();
        for (k, v) in [
            ("cpu", self.cpu),
            ("mem", self.mem),
            ("disk", self.disk),
            ("net", self.net),
        ] {
            if let Some(v) = v {
                out.push(format!("{k}={v:.2}"));
            }
        }
        out.join(" ")
    }
}

/// A parsed agent reply.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AgentReply {
    /// Last operational word (`up`, `down`, `stopped`, `fail`).
    pub oper: Option<AgentState>,
    /// Last administrative word (`ready`, `drain`, `maint`).
    pub admin: Option<AgentState>,
    /// Weight percent, 0..=100.
    pub weight_pct: Option<u8>,
    pub util: Utilisation,
}

impl AgentReply {
    /// The one word the planner acts on: down beats drain beats the rest,
    /// since HAProxy keeps the operational and administrative states apart
    /// and either can take a server out.
    pub fn effective_state(&self) -> Option<AgentState> {
        match (self.oper, self.admin) {
            (Some(o), _) if o.is_down() => Some(o),
            (_, Some(a)) if a.is_drain() => Some(a),
            (Some(o), _) => Some(o),
            (None, a) => a,
        }
    }

    /// Formats as the agent sends it (without the newline).
    pub fn to_line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(o) = self.oper {
            parts.push(o.as_str().to_string());
        }
        if let Some(a) = self.admin {
            parts.push(a.as_str().to_string());
        }
        if let Some(p) = self.weight_pct {
            parts.push(format!("{p}%"));
        }
        let u = self.util.to_tokens();
        if !u.is_empty() {
            parts.push(u);
        }
        parts.join(" ")
    }
}

/// Parses raw bytes from the wire (see [`parse_agent_reply`]).
pub fn parse_agent_reply_bytes(bytes: &[u8]) -> Result<AgentReply, LoadError> {
    if bytes.len() > MAX_REPLY_LEN {
        return Err(LoadError::TooLong { len: bytes.len() });
    }
    let line = std::str::from_utf8(bytes).map_err(|_| LoadError::NotUtf8)?;
    parse_agent_reply(line)
}

/// Parses one agent reply line, HAProxy-compatible: tokens separated by
/// spaces, commas or tabs; state words; `NN%`; and xdplb's `cpu=`, `mem=`,
/// `disk=`, `net=`. Unknown tokens (HAProxy's `maxconn:30`, future fields)
/// are ignored as HAProxy ignores them; a line with nothing we understand is
/// an error. Percents above 100 are clamped to 100: xdplb never raises a
/// backend above its configured weight.
pub fn parse_agent_reply(line: &str) -> Result<AgentReply, LoadError> {
    if line.len() > MAX_REPLY_LEN {
        return Err(LoadError::TooLong { len: line.len() });
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let mut reply = AgentReply::default();
    let mut useful = false;
    for token in line.split([' ', ',', '\t']).filter(|t| !t.is_empty()) {
        if let Some(state) = AgentState::parse(token) {
            if state.is_drain() || state == AgentState::Ready {
                reply.admin = Some(state);
            } else {
                reply.oper = Some(state);
            }
            useful = true;
        } else if let Some(num) = token.strip_suffix('%') {
            let pct: u32 = num.parse().map_err(|_| LoadError::BadPercent {
                token: token.chars().take(32).collect(),
            })?;
            reply.weight_pct = Some(pct.min(100) as u8);
            useful = true;
        } else if let Some((key, value)) = token.split_once('=') {
            let slot = match key.to_ascii_lowercase().as_str() {
                "cpu" => &mut reply.util.cpu,
                "mem" => &mut reply.util.mem,
                "disk" => &mut reply.util.disk,
                "net" => &mut reply.util.net,
                _ => continue,
            };
            let v: f64 = value
                .parse()
                .ok()
                .filter(|v: &f64| (0.0..=1.0).contains(v))
                .ok_or_else(|| LoadError::BadField {
                    key: key.to_string(),
                    value: value.chars().take(32).collect(),
                })?;
            *slot = Some(v);
            useful = true;
        }
    }
    if line.trim().is_empty() {
        return Err(LoadError::Empty);
    }
    if !useful {
        return Err(LoadError::NothingUseful {
            line: line.chars().take(64).collect(),
        });
    }
    Ok(reply)
}

/// `Σ factor · utilisation`, clamped to [0, 1].
///
/// Over the fields present only, renormalised by their factors' sum: an agent
/// that reports cpu alone is scored on cpu alone rather than looking idle on
/// the rest. No fields present (a plain HAProxy agent), or only fields whose
/// factor is 0, scores 0: the weight percent alone then steers it.
pub fn load_score(factors: &Factors, u: &Utilisation) -> f64 {
    let mut weighted = 0.0;
    let mut total = 0.0;
    for (f, v) in [
        (factors.cpu, u.cpu),
        (factors.mem, u.mem),
        (factors.disk, u.disk),
        (factors.net, u.net),
    ] {
        if let Some(v) = v {
            weighted += f * v;
            total += f;
        }
    }
    if total <= 0.0 {
        return 0.0;
    }
    (weighted / total).clamp(0.0, 1.0)
}

/// Per-backend memory of agent replies, with an injected clock (ms).
#[derive(Clone, Debug)]
pub struct LoadTracker {
    factors: Factors,
    last: Option<(u64, f64, AgentReply)>,
    consecutive_failures: u32,
}

impl LoadTracker {
    pub fn new(factors: Factors) -> Self {
        LoadTracker {
            factors,
            last: None,
            consecutive_failures: 0,
        }
    }

    /// Applies new factors (a reload); the last reply is rescored.
    pub fn set_factors(&mut self, factors: Factors) {
        self.factors = factors;
        if let Some((_, score, reply)) = &mut self.last {
            *score = load_score(&factors, &reply.util);
        }
    }

    pub fn on_reply(&mut self, now_ms: u64, reply: AgentReply) {
        let score = load_score(&self.factors, &reply.util);
        self.last = Some((now_ms, score, reply));
        self.consecutive_failures = 0;
    }

    pub fn on_failure(&mut self, _now_ms: u64) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The reply still trusted at `now_ms`: the last one, for
    /// [`STALE_AFTER_INTERVALS`] intervals after it arrived.
    fn fresh(&self, now_ms: u64, interval_ms: u64) -> Option<&(u64, f64, AgentReply)> {
        self.last.as_ref().filter(|(at, _, _)| {
            now_ms.saturating_sub(*at) <= STALE_AFTER_INTERVALS.saturating_mul(interval_ms)
        })
    }

    /// The last score while fresh, else [`STALE_SCORE`] (also before any
    /// reply: unknown load is treated as middling).
    pub fn score(&self, now_ms: u64, interval_ms: u64) -> f64 {
        self.fresh(now_ms, interval_ms)
            .map_or(STALE_SCORE, |(_, s, _)| *s)
    }

    /// The agent's state word while fresh. A silent agent's last word is
    /// forgotten with its score, so a crashed agent that last said `drain`
    /// does not hold the backend out forever (health checks still gate it).
    pub fn state(&self, now_ms: u64, interval_ms: u64) -> Option<AgentState> {
        self.fresh(now_ms, interval_ms)
            .and_then(|(_, _, r)| r.effective_state())
    }

    /// The agent's weight percent while fresh.
    pub fn weight_pct(&self, now_ms: u64, interval_ms: u64) -> Option<u8> {
        self.fresh(now_ms, interval_ms)
            .and_then(|(_, _, r)| r.weight_pct)
    }

    pub fn last_reply(&self) -> Option<&AgentReply> {
        self.last.as_ref().map(|(_, _, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> AgentReply {
        parse_agent_reply(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn published_utilisation_steps_with_hysteresis() {
        let near = |got: Option<f64>, want: f64| {
            assert!(
                got.is_some_and(|g| (g - want).abs() < 1e-9),
                "{got:?} vs {want}"
            )
        };
        let none = Utilisation::default();
        let p = Utilisation::all(0.41, 0.0, 1.2, 0.026).published(&none);
        near(p.cpu, 0.4);
        near(p.mem, 0.0);
        near(p.disk, 1.0);
        near(p.net, 0.05);
        // Jitter under a step keeps the published value.
        let q = Utilisation::all(0.435, 0.03, 0.98, 0.03).published(&p);
        near(q.cpu, 0.4);
        near(q.mem, 0.0);
        near(q.disk, 1.0);
        near(q.net, 0.05);
        // A real move goes through, to the nearest step.
        let r = Utilisation::all(0.61, 0.06, 0.5, 0.0).published(&q);
        near(r.cpu, 0.6);
        near(r.mem, 0.05);
        near(r.disk, 0.5);
        assert_eq!(Utilisation::default().published(&p), none);
    }

    #[test]
    fn plain_haproxy_forms() {
        let r = ok("up 75%\n");
        assert_eq!(r.oper, Some(AgentState::Up));
        assert_eq!(r.weight_pct, Some(75));
        assert!(r.util.is_empty());
        assert_eq!(ok("drain").effective_state(), Some(AgentState::Drain));
        assert_eq!(ok("maint").effective_state(), Some(AgentState::Maint));
        assert_eq!(ok("down").effective_state(), Some(AgentState::Down));
        assert_eq!(ok("stopped").effective_state(), Some(AgentState::Stopped));
        assert_eq!(ok("fail").effective_state(), Some(AgentState::Fail));
        assert_eq!(ok("ready").effective_state(), Some(AgentState::Ready));
        assert_eq!(ok("50%").weight_pct, Some(50));
        assert_eq!(ok("UP,ready,\t100%\r\n").weight_pct, Some(100));
        let r = ok("up ready 10% maxconn:30");
        assert_eq!(
            (r.oper, r.admin),
            (Some(AgentState::Up), Some(AgentState::Ready))
        );
        // Down beats drain, drain beats up.
        assert_eq!(ok("drain down").effective_state(), Some(AgentState::Down));
        assert_eq!(ok("up drain").effective_state(), Some(AgentState::Drain));
        assert_eq!(ok("up 150%").weight_pct, Some(100));
        assert_eq!(ok("0%").weight_pct, Some(0));
    }

    #[test]
    fn xdplb_fields() {
        let r = ok("up 100% cpu=0.70 mem=0.60 disk=0.50 net=0.80\n");
        assert_eq!(r.util, Utilisation::all(0.7, 0.6, 0.5, 0.8));
        assert_eq!(r.to_line(), "up 100% cpu=0.70 mem=0.60 disk=0.50 net=0.80");
        let partial = ok("cpu=1 net=0");
        assert_eq!(partial.util.cpu, Some(1.0));
        assert_eq!(partial.util.mem, None);
        assert_eq!(partial.oper, None);
        assert_eq!(ok("up gpu=0.5 cpu=0.1").util.cpu, Some(0.1));
        assert_eq!(ok("up ünïcode ☃ cpu=0.2").util.cpu, Some(0.2));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let bad = [
            "",
            "\n",
            "   \t,",
            "hello world",
            "☃☃☃",
            "cpu=NaN",
            "cpu=nan",
            "cpu=inf",
            "cpu=-0.1",
            "mem=1.5",
            "disk=",
            "net=abc",
            "up abc%",
            "up -5%",
            "up 99999999999999999999%",
            "%",
        ];
        for line in bad {
            assert!(parse_agent_reply(line).is_err(), "{line:?} accepted");
        }
        let long = format!("up {}", "x".repeat(2000));
        assert!(matches!(
            parse_agent_reply(&long),
            Err(LoadError::TooLong { .. })
        ));
        assert!(matches!(
            parse_agent_reply_bytes(&[0x75, 0x70, 0xff, 0xfe]),
            Err(LoadError::NotUtf8)
        ));
        assert!(parse_agent_reply_bytes(b"up 75%\n").is_ok());
    }

    #[test]
    fn score_arithmetic() {
        let f = Factors::default(); // 0.4 0.2 0.1 0.3
        let u = Utilisation::all(0.7, 0.6, 0.5, 0.8);
        let want = 0.4 * 0.7 + 0.2 * 0.6 + 0.1 * 0.5 + 0.3 * 0.8;
        assert!((load_score(&f, &u) - want).abs() < 1e-12);
        assert_eq!(load_score(&f, &Utilisation::all(1.0, 1.0, 1.0, 1.0)), 1.0);
        assert_eq!(load_score(&f, &Utilisation::all(0.0, 0.0, 0.0, 0.0)), 0.0);
        // Partial: renormalised over cpu and net (0.4 + 0.3).
        let partial = Utilisation {
            cpu: Some(1.0),
            net: Some(0.0),
            ..Utilisation::default()
        };
        assert!((load_score(&f, &partial) - 0.4 / 0.7).abs() < 1e-12);
        assert_eq!(load_score(&f, &Utilisation::default()), 0.0);
        let cpu_only = Factors {
            cpu: 1.0,
            mem: 0.0,
            disk: 0.0,
            net: 0.0,
        };
        let mem_only = Utilisation {
            mem: Some(0.9),
            ..Utilisation::default()
        };
        assert_eq!(load_score(&cpu_only, &mem_only), 0.0);
    }

    #[test]
    fn tracker_staleness() {
        let f = Factors::default();
        let mut t = LoadTracker::new(f);
        assert_eq!(t.score(0, 1000), STALE_SCORE);
        t.on_reply(1000, ok("drain 40% cpu=0.2 mem=0.2 disk=0.2 net=0.2"));
        assert!((t.score(1000, 1000) - 0.2).abs() < 1e-12);
        assert_eq!(t.state(1000, 1000), Some(AgentState::Drain));
        assert_eq!(t.weight_pct(1000, 1000), Some(40));
        for now in [2000, 3000, 4000] {
            t.on_failure(now);
            assert!((t.score(now, 1000) - 0.2).abs() < 1e-12, "at {now}");
        }
        assert_eq!(t.consecutive_failures(), 3);
        t.on_failure(4001);
        assert_eq!(t.score(4001, 1000), STALE_SCORE);
        assert_eq!(t.state(4001, 1000), None);
        assert_eq!(t.weight_pct(4001, 1000), None);
        t.on_reply(5000, ok("up cpu=0.9 mem=0.9 disk=0.9 net=0.9"));
        assert!((t.score(5000, 1000) - 0.9).abs() < 1e-12);
        assert_eq!(t.consecutive_failures(), 0);
        t.set_factors(Factors {
            cpu: 1.0,
            mem: 0.0,
            disk: 0.0,
            net: 0.0,
        });
        assert!((t.score(5000, 1000) - 0.9).abs() < 1e-12);
    }
}
