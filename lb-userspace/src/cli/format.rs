//! Human and JSON output of `xdplb status` and `xdplb stats`: pure
//! functions from a snapshot to text, so they are tested without a daemon
//! or a data plane.
//!
//! Conventions follow `ip -s link` and `ipvsadm -Ln --stats`: a header
//! line of column names over the values, counts humanised with SI suffixes
//! (`1.2M`), bytes with binary ones (`3.4 MiB`), no colour.
use std::{collections::BTreeMap, time::Duration};

use lb_common::{
    GlobalCounter, BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_FREE, BACKEND_STANDBY,
};
use serde::Serialize;

use crate::{
    config::OnEmpty,
    dataplane::{BackendStats, Counters, VipStats},
    planner::WEIGHT_SCALE,
    status::Status,
};

/// An effective ring weight (scaled by [`WEIGHT_SCALE`]) in the config's
/// units, to a tenth: `100` for a full-weight backend of weight 100, `33.3`
/// a third into its slow start. An active backend never shows 0.
fn weight_in_config_units(weight: u32) -> String {
    let scale = u64::from(WEIGHT_SCALE);
    let tenths = (u64::from(weight) * 10 + scale / 2) / scale;
    let tenths = if weight > 0 { tenths.max(1) } else { 0 };
    match tenths % 10 {
        0 => (tenths / 10).to_string(),
        t => format!("{}.{t}", tenths / 10),
    }
}

/// A count with an SI suffix: `999`, `1.2k`, `3.4M`, `5.6G`, `7.8T`.
pub fn human_count(n: f64) -> String {
    const UNITS: [(f64, &str); 4] = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, unit) in UNITS {
        if n >= scale {
            return format!("{:.1}{unit}", n / scale);
        }
    }
    if n.fract() == 0.0 {
        format!("{n:.0}")
    } else {
        format!("{n:.1}")
    }
}

/// Bytes with a binary suffix: `512 B`, `1.5 KiB`, `3.4 MiB`, `2.0 GiB`.
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024.0 {
        return if n.fract() == 0.0 {
            format!("{n:.0} B")
        } else {
            format!("{n:.1} B")
        };
    }
    let mut v = n / 1024.0;
    for unit in UNITS {
        if v < 1024.0 || unit == "PiB" {
            return format!("{v:.1} {unit}");
        }
        v /= 1024.0;
    }
    unreachable!("the loop returns at PiB")
}

/// Column alignment in [`table`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Aligns `rows` under `header`, columns two spaces apart, each line
/// prefixed with `indent`. Trailing spaces are trimmed.
pub fn table(indent: &str, header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::from(indent);
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            let (l, r) = match header[i].1 {
                Align::Left => (0, pad),
                Align::Right => (pad, 0),
            };
            out.push_str(&" ".repeat(l));
            out.push_str(cell);
            out.push_str(&" ".repeat(r));
        }
        let mut out = out.trim_end().to_string();
        out.push('\n');
        out
    };
    let mut out = line(&mut header.iter().map(|(h, _)| *h));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// How long ago, coarsely: `12s`, `4m`, `3h`, `2d` (a clock that went
/// back reads `0s`).
pub fn human_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `xdplb status`: per pool a header line, then a table of its backends.
pub fn status_text(s: &Status) -> String {
    status_text_at(s, crate::status::now_unix_ms())
}

/// [`status_text`] at `now_unix_ms`: the SINCE column is the age of each
/// backend's last transition (the transitions themselves are in `--json`
/// and on the status page; here one line a backend stays one line).
pub fn status_text_at(s: &Status, now_unix_ms: u64) -> String {
    use Align::{Left, Right};
    if s.pools.is_empty() {
        return "no pools configured\n".to_string();
    }
    let mut out = String::new();
    if !s.detached.is_empty() {
        out.push_str(&format!(
            "DATA PLANE DETACHED from {}: nothing forwarded there, VIPs withdrawn\n\n",
            s.detached.join(", ")
        ));
    }
    for (i, p) in s.pools.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "pool {}  vip {}  {}  {}  min_active {}",
            p.name, p.vip, p.protocol, p.mode, p.min_active
        ));
        if let Some(m) = p.mean_load {
            out.push_str(&format!("  mean load {m:.2}"));
        }
        match (p.announced, p.announce_intent) {
            (Some(true), Some(false)) => out.push_str("  announced (BIRD has it; being withdrawn)"),
            (Some(true), _) => out.push_str("  announced"),
            (Some(false), Some(true)) => {
                out.push_str("  NOT announced (wanted, but BIRD does not have it)")
            }
            (Some(false), _) => out.push_str("  NOT announced"),
            (None, _) => {}
        }
        if p.empty {
            let what = if p.on_empty == OnEmpty::Drop {
                "dropped"
            } else {
                "rejected"
            };
            out.push_str(&format!("  EMPTY: no usable backend, new flows are {what}"));
        }
        out.push('\n');
        let rows: Vec<Vec<String>> = p
            .backends
            .iter()
            .map(|b| {
                let mut reason = b.reason.to_string();
                if let Some(e) = &b.last_error {
                    reason = format!("{reason}: {e}");
                }
                if b.unanswered {
                    reason = format!(
                        "{reason}; UNANSWERED: {} handshakes did not complete, none established",
                        b.half_open
                    );
                }
                vec![
                    b.name.clone(),
                    b.addr.clone(),
                    b.role.to_string(),
                    b.health.to_string(),
                    b.state.to_string(),
                    admin_cell(b),
                    b.transitions.last().map_or_else(
                        || "-".to_string(),
                        |t| human_age(now_unix_ms.saturating_sub(t.at_unix_ms)),
                    ),
                    weight_in_config_units(b.weight),
                    if p.mean_load.is_some() {
                        format!("{:.2}", b.load)
                    } else {
                        "-".to_string()
                    },
                    b.flows.to_string(),
                    reason,
                ]
            })
            .collect();
        out.push_str(&table(
            "  ",
            &[
                ("BACKEND", Left),
                ("ADDRESS", Left),
                ("ROLE", Left),
                ("HEALTH", Left),
                ("STATE", Left),
                ("ADMIN", Left),
                ("SINCE", Right),
                ("WEIGHT", Right),
                ("LOAD", Right),
                ("FLOWS", Right),
                ("REASON", Left),
            ],
            &rows,
        ));
    }
    if let Some(peers) = &s.sync {
        out.push('\n');
        for p in peers {
            let last = p.last_message_unix_ms.map_or("never".to_string(), |t| {
                format!("{} ago", human_age(now_unix_ms.saturating_sub(t)))
            });
            out.push_str(&format!(
                "sync peer {}  {}  last message {last}\n",
                p.peer,
                p.state.as_str()
            ));
        }
    }
    out
}

/// `xdplb plan` / `xdplb drain --dry-run`, for a person.
pub fn plan_text(p: &crate::status::ChangePlan) -> String {
    use Align::{Left, Right};
    let mut out = String::new();
    if !p.accepted {
        out.push_str(&format!(
            "would be REFUSED: {}\n",
            p.refused.as_deref().unwrap_or("no reason given")
        ));
        return out;
    }
    out.push_str(&format!(
        "would be accepted: {}\n",
        if p.summary.is_empty() {
            "no change".to_string()
        } else {
            p.summary.join("; ")
        }
    ));
    for pool in &p.pools {
        let quiet = pool.change == "unchanged"
            && pool.backends.is_empty()
            && pool.announce.is_none()
            && pool.ring_moved.unwrap_or(0) == 0;
        if quiet {
            continue;
        }
        out.push_str(&format!(
            "\npool {}  {}  {}\n",
            pool.name,
            match (&pool.vip, &pool.new_vip) {
                (Some(a), Some(b)) if a != b => format!("{a} → {b}"),
                (Some(a), _) | (None, Some(a)) => a.clone(),
                (None, None) => "-".to_string(),
            },
            pool.change
        ));
        if let Some(v) = &pool.vip_change {
            out.push_str(&format!("  {v}\n"));
        }
        let list = |what: &str, names: &[String], out: &mut String| {
            if !names.is_empty() {
                out.push_str(&format!("  {what}: {}\n", names.join(", ")));
            }
        };
        list("backends added", &pool.backends_added, &mut out);
        list("backends removed", &pool.backends_removed, &mut out);
        if !pool.reweighted.is_empty() {
            let r: Vec<String> = pool
                .reweighted
                .iter()
                .map(|r| format!("{} {} → {}", r.name, r.from, r.to))
                .collect();
            out.push_str(&format!("  re-weighted: {}\n", r.join(", ")));
        }
        match pool.ring_moved {
            Some(m) => out.push_str(&format!(
                "  ring: {m} of {} entries ({:.1}%) move to another backend\n",
                pool.ring_size,
                100.0 * f64::from(m) / f64::from(pool.ring_size.max(1))
            )),
            None => out.push_str("  ring: not comparable (no ring before or after)\n"),
        }
        out.push_str(&format!(
            "  established flows: {} drained, {} reset, {} stranded\n",
            pool.flows_drained, pool.flows_reset, pool.flows_stranded
        ));
        list("spares activated", &pool.spares_activated, &mut out);
        list("spares drained", &pool.spares_drained, &mut out);
        if let Some(a) = &pool.announce {
            out.push_str(&format!("  announcement: {a}\n"));
        }
        if !pool.backends.is_empty() {
            let rows: Vec<Vec<String>> = pool
                .backends
                .iter()
                .map(|b| {
                    vec![
                        b.name.clone(),
                        b.from.clone(),
                        b.to.clone(),
                        b.flows.to_string(),
                        b.fate.clone(),
                        format!("{:+}", b.ring_delta),
                    ]
                })
                .collect();
            out.push_str(&table(
                "  ",
                &[
                    ("BACKEND", Left),
                    ("NOW", Left),
                    ("AFTER", Left),
                    ("FLOWS", Right),
                    ("FLOWS GO", Left),
                    ("RING", Right),
                ],
                &rows,
            ));
        }
    }
    match p.census_age_ms {
        Some(ms) => out.push_str(&format!(
            "\nflow counts: the last census, {:.1} s old\n",
            ms as f64 / 1000.0
        )),
        None => out.push_str("\nflow counts: no census yet (counted as 0)\n"),
    }
    for a in &p.assumptions {
        out.push_str(&format!("assuming: {a}\n"));
    }
    out
}

/// The ADMIN column: the runtime state and who set it (`maint by
/// operator`, `drain by agent`, `ready`), and a weight override.
fn admin_cell(b: &crate::status::BackendStatus) -> String {
    let mut cell = b.admin_state.to_string();
    if let Some(by) = b.admin_set_by {
        cell = format!("{cell} by {}", by.as_str());
    }
    if let Some(w) = b.weight_override {
        cell = format!("{cell}, weight {w}");
    }
    cell
}

/// A backend slot's state as the operator contract names it.
pub fn backend_state_name(state: u8) -> &'static str {
    match state {
        BACKEND_ACTIVE => "active",
        BACKEND_DRAINING => "draining",
        BACKEND_STANDBY => "standby",
        BACKEND_DOWN => "down",
        BACKEND_FREE => "free",
        _ => "unknown",
    }
}

/// The `--json` shape of `xdplb stats`, with `T = u64` for cumulative
/// counters and `T = f64` for `--watch` rates (per second).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatsJson<T> {
    pub global: GlobalJson<T>,
    pub vips: Vec<VipJson<T>>,
    pub backends: Vec<BackendJson<T>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GlobalJson<T> {
    pub rx_packets: T,
    pub passed: T,
    pub redirected: T,
    /// Answered by the program itself (XDP_TX): RSTs for an empty pool,
    /// ICMP fragmentation-needed.
    pub answered: T,
    pub dropped: T,
    pub flow_misses: T,
    pub resteered: T,
    /// Passed because the next hop's neighbour entry was not resolved yet.
    pub pass_neigh_unresolved: T,
    /// Non-first fragments (no ports), passed.
    pub pass_fragment: T,
    /// Every drop reason, zero or not, so scripts can rely on the keys.
    pub drop_reasons: BTreeMap<&'static str, T>,
    /// Every notable non-drop event (`GlobalCounter::EVENTS`), zero or not.
    pub events: BTreeMap<&'static str, T>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VipJson<T> {
    pub pool: String,
    pub vip: String,
    /// "tcp" | "udp"
    pub protocol: String,
    pub packets: T,
    pub bytes: T,
    pub new_flows: T,
    /// New flows answered with a RST because the pool was empty.
    pub rejected: T,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendJson<T> {
    pub pool: String,
    pub name: String,
    pub addr: String,
    pub state: &'static str,
    pub packets: T,
    pub bytes: T,
    pub new_flows: T,
    pub reply_packets: T,
    pub reply_bytes: T,
}

/// `--watch --json`: the rates and the interval they were measured over.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RatesJson {
    pub interval_s: f64,
    #[serde(flatten)]
    pub rates: StatsJson<f64>,
}

impl<T: Copy> StatsJson<T> {
    /// Builds the shape from counters, mapping every value through `f`,
    /// which gets the current value and its previous one (if known).
    fn build(cur: &Counters, prev: Option<&Counters>, f: impl Fn(u64, Option<u64>) -> T) -> Self {
        let g = |c: GlobalCounter| f(cur.get(c), prev.map(|p| p.get(c)));
        let prev_vip = |v: &VipStats| -> Option<VipStats> {
            prev?.vips.iter().find(|p| p.index == v.index).cloned()
        };
        let prev_backend = |b: &BackendStats| -> Option<BackendStats> {
            prev?.backends.iter().find(|p| p.slot == b.slot).cloned()
        };
        StatsJson {
            global: GlobalJson {
                rx_packets: g(GlobalCounter::Rx),
                passed: g(GlobalCounter::Passed),
                redirected: g(GlobalCounter::Redirected),
                answered: g(GlobalCounter::Answered),
                dropped: g(GlobalCounter::Dropped),
                flow_misses: g(GlobalCounter::FlowMisses),
                resteered: g(GlobalCounter::Resteered),
                pass_neigh_unresolved: g(GlobalCounter::PassNeighUnresolved),
                pass_fragment: g(GlobalCounter::PassFragment),
                drop_reasons: GlobalCounter::DROP_REASONS
                    .iter()
                    .map(|&(c, name)| (name, g(c)))
                    .collect(),
                events: GlobalCounter::EVENTS
                    .iter()
                    .map(|&(c, name)| (name, g(c)))
                    .collect(),
            },
            vips: cur
                .vips
                .iter()
                .map(|v| {
                    let p = prev_vip(v).map(|p| p.counters);
                    VipJson {
                        pool: v.pool.clone(),
                        vip: v.vip.to_string(),
                        protocol: v.protocol.to_string(),
                        packets: f(v.counters.packets, p.map(|p| p.packets)),
                        bytes: f(v.counters.bytes, p.map(|p| p.bytes)),
                        new_flows: f(v.counters.new_flows, p.map(|p| p.new_flows)),
                        rejected: f(v.counters.rejected, p.map(|p| p.rejected)),
                    }
                })
                .collect(),
            backends: cur
                .backends
                .iter()
                .map(|b| {
                    let p = prev_backend(b).map(|p| p.counters);
                    let c = &b.counters;
                    BackendJson {
                        pool: b.pool.clone(),
                        name: b.name.clone(),
                        addr: b.addr.to_string(),
                        state: backend_state_name(b.state),
                        packets: f(c.packets, p.map(|p| p.packets)),
                        bytes: f(c.bytes, p.map(|p| p.bytes)),
                        new_flows: f(c.new_flows, p.map(|p| p.new_flows)),
                        reply_packets: f(c.reply_packets, p.map(|p| p.reply_packets)),
                        reply_bytes: f(c.reply_bytes, p.map(|p| p.reply_bytes)),
                    }
                })
                .collect(),
        }
    }
}

/// Cumulative counters in the `--json` shape.
pub fn stats_json(c: &Counters) -> StatsJson<u64> {
    StatsJson::build(c, None, |v, _| v)
}

/// Per-second rates between two snapshots `elapsed` apart. A VIP or
/// backend absent from `prev` (just added), or whose counter went down (the
/// data plane was reloaded afresh), reads 0 for this interval.
pub fn rates(prev: &Counters, cur: &Counters, elapsed: Duration) -> RatesJson {
    let secs = elapsed.as_secs_f64().max(1e-9);
    RatesJson {
        interval_s: elapsed.as_secs_f64(),
        rates: StatsJson::build(cur, Some(prev), |c, p| match p {
            Some(p) => c.saturating_sub(p) as f64 / secs,
            None => 0.0,
        }),
    }
}

/// How to print one value of a [`StatsJson`].
trait Human: Copy {
    fn count(self) -> String;
    fn bytes(self) -> String;
}

impl Human for u64 {
    fn count(self) -> String {
        human_count(self as f64)
    }
    fn bytes(self) -> String {
        human_bytes(self as f64)
    }
}

impl Human for f64 {
    fn count(self) -> String {
        human_count(self)
    }
    fn bytes(self) -> String {
        human_bytes(self)
    }
}

/// `xdplb stats`: a global block, then a VIP table and a backend table.
/// `unit` is `""` for totals and `"/s"` for rates.
fn stats_text_of<T: Human + PartialEq + Default>(s: &StatsJson<T>, unit: &str) -> String {
    use Align::{Left, Right};
    let g = &s.global;
    let mut out = String::new();
    // Flow misses, re-steers and the notable passes are events now: they
    // show on the events line, not as columns.
    let cols: Vec<String> = ["RX", "PASSED", "REDIRECTED", "ANSWERED", "DROPPED"]
        .iter()
        .map(|c| format!("{c}{unit}"))
        .collect();
    let header: Vec<(&str, Align)> = cols.iter().map(|c| (c.as_str(), Right)).collect();
    out.push_str(&table(
        "",
        &header,
        &[vec![
            g.rx_packets.count(),
            g.passed.count(),
            g.redirected.count(),
            g.answered.count(),
            g.dropped.count(),
        ]],
    ));
    let nonzero = |items: &mut dyn Iterator<Item = (&str, T)>| -> Vec<String> {
        items
            .filter(|(_, v)| *v != T::default())
            .map(|(k, v)| format!("{k} {}", v.count()))
            .collect()
    };
    let drops = nonzero(&mut g.drop_reasons.iter().map(|(k, v)| (*k, *v)));
    if !drops.is_empty() {
        out.push_str(&format!("dropped{unit}: {}\n", drops.join(", ")));
    }
    let events = nonzero(&mut g.events.iter().map(|(k, v)| (*k, *v)));
    if !events.is_empty() {
        out.push_str(&format!("events{unit}: {}\n", events.join(", ")));
    }

    out.push('\n');
    if s.vips.is_empty() {
        out.push_str("no VIPs in the data plane\n");
    } else {
        let (p, b, f, r) = (
            format!("PACKETS{unit}"),
            format!("BYTES{unit}"),
            format!("NEW FLOWS{unit}"),
            format!("REJECTED{unit}"),
        );
        let rows: Vec<Vec<String>> = s
            .vips
            .iter()
            .map(|v| {
                vec![
                    v.vip.clone(),
                    v.protocol.clone(),
                    v.pool.clone(),
                    v.packets.count(),
                    v.bytes.bytes(),
                    v.new_flows.count(),
                    v.rejected.count(),
                ]
            })
            .collect();
        out.push_str(&table(
            "",
            &[
                ("VIP", Left),
                ("PROTO", Left),
                ("POOL", Left),
                (&p, Right),
                (&b, Right),
                (&f, Right),
                (&r, Right),
            ],
            &rows,
        ));
    }
    if !s.backends.is_empty() {
        out.push('\n');
        let cols: Vec<String> = ["PACKETS", "BYTES", "NEW FLOWS", "REPLY PKTS", "REPLY BYTES"]
            .iter()
            .map(|c| format!("{c}{unit}"))
            .collect();
        let mut header = vec![
            ("BACKEND", Left),
            ("POOL", Left),
            ("ADDRESS", Left),
            ("STATE", Left),
        ];
        header.extend(cols.iter().map(|c| (c.as_str(), Right)));
        let rows: Vec<Vec<String>> = s
            .backends
            .iter()
            .map(|b| {
                vec![
                    b.name.clone(),
                    b.pool.clone(),
                    b.addr.clone(),
                    b.state.to_string(),
                    b.packets.count(),
                    b.bytes.bytes(),
                    b.new_flows.count(),
                    b.reply_packets.count(),
                    b.reply_bytes.bytes(),
                ]
            })
            .collect();
        out.push_str(&table("", &header, &rows));
    }
    out
}

/// `xdplb stats` (cumulative counters).
pub fn stats_text(c: &Counters) -> String {
    stats_text_of(&stats_json(c), "")
}

/// One `xdplb stats --watch` frame: rates per second.
pub fn rates_text(r: &RatesJson) -> String {
    format!(
        "rates per second over {:.1}s\n{}",
        r.interval_s,
        stats_text_of(&r.rates, "/s")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mode, Protocol, Role};
    use crate::planner::{BackendState, Reason};
    use crate::status::{BackendStatus, Health, PoolStatus, Transition};
    use lb_common::{BackendCounters, VipCounters};

    #[test]
    fn humanised_units() {
        assert_eq!(human_count(0.0), "0");
        assert_eq!(human_count(999.0), "999");
        assert_eq!(human_count(1234.0), "1.2k");
        assert_eq!(human_count(1_234_567.0), "1.2M");
        assert_eq!(human_count(5.6e9), "5.6G");
        assert_eq!(human_count(2.5), "2.5");
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(3.4 * 1024.0 * 1024.0), "3.4 MiB");
        assert_eq!(human_bytes(2.0 * 1024f64.powi(3)), "2.0 GiB");
        assert_eq!(human_bytes(3.0 * 1024f64.powi(6)), "3072.0 PiB");
        assert_eq!(human_age(0), "0s");
        assert_eq!(human_age(59_999), "59s");
        assert_eq!(human_age(60_000), "1m");
        assert_eq!(human_age(3_599_999), "59m");
        assert_eq!(human_age(3_600_000), "1h");
        assert_eq!(human_age(47 * 3_600_000), "47h");
        assert_eq!(human_age(3 * 86_400_000), "3d");
    }

    #[test]
    fn table_aligns() {
        let t = table(
            "  ",
            &[
                ("NAME", Align::Left),
                ("N", Align::Right),
                ("X", Align::Left),
            ],
            &[
                vec!["a".into(), "100".into(), "".into()],
                vec!["longer".into(), "2".into(), "y".into()],
            ],
        );
        assert_eq!(t, "  NAME      N  X\n  a       100\n  longer    2  y\n");
    }

    fn backend(name: &str, state: BackendState, health: Health) -> BackendStatus {
        BackendStatus {
            name: name.into(),
            addr: "198.18.1.11:8080".into(),
            role: Role::Primary,
            health,
            state,
            // What a controller sends for a full-weight backend of
            // config weight 100 (the ring's weights are scaled).
            weight: 100 * crate::planner::WEIGHT_SCALE,
            config_weight: 100,
            load: 0.42,
            flows: 12,
            half_open: 0,
            unanswered: false,
            reason: Reason::Healthy,
            operator_drained: false,
            admin_state: crate::state::AdminState::Ready,
            admin_set_by: None,
            weight_override: None,
            agent: None,
            last_error: None,
            rtt_ms: None,
            agent_up: None,
            agent_error: None,
            transitions: Vec::new(),
        }
    }

    #[test]
    fn plan_output() {
        use crate::status::{BackendChange, ChangePlan, PoolChange};
        let p = ChangePlan {
            accepted: true,
            refused: None,
            summary: vec!["changed pool web".into(), "added backend web/web-3".into()],
            pools: vec![PoolChange {
                name: "web".into(),
                change: "changed".into(),
                vip: Some("198.18.2.10:80".into()),
                new_vip: Some("198.18.2.10:80".into()),
                backends_added: vec!["web-3".into()],
                ring_moved: Some(340),
                ring_size: 1009,
                ring_moved_share: Some(340.0 / 1009.0),
                flows_drained: 2,
                backends: vec![BackendChange {
                    name: "web-3".into(),
                    from: "new".into(),
                    to: "active".into(),
                    flows: 0,
                    fate: "continue".into(),
                    ring_delta: 336,
                }],
                ..PoolChange::default()
            }],
            assumptions: vec![
                "not probed yet, taken as passing their health checks: web/web-3".into(),
            ],
            census_age_ms: Some(1500),
        };
        let want = "\
would be accepted: changed pool web; added backend web/web-3

pool web  198.18.2.10:80  changed
  backends added: web-3
  ring: 340 of 1009 entries (33.7%) move to another backend
  established flows: 2 drained, 0 reset, 0 stranded
  BACKEND  NOW  AFTER   FLOWS  FLOWS GO  RING
  web-3    new  active      0  continue  +336

flow counts: the last census, 1.5 s old
assuming: not probed yet, taken as passing their health checks: web/web-3
";
        assert_eq!(plan_text(&p), want);
        let refused = ChangePlan {
            refused: Some("x.toml: [dataplane] changed".into()),
            ..ChangePlan::default()
        };
        assert_eq!(
            plan_text(&refused),
            "would be REFUSED: x.toml: [dataplane] changed\n"
        );
    }

    #[test]
    fn status_output() {
        let mut down = backend("web-spare-1", BackendState::Down, Health::Down);
        down.role = Role::Spare;
        down.weight = 0;
        down.flows = 0;
        down.reason = Reason::HealthDown;
        down.last_error = Some("connection refused".into());
        const NOW: u64 = 1_780_000_000_000;
        down.transitions = vec![
            Transition {
                at_unix_ms: NOW - 3_600_000,
                from: BackendState::Down,
                to: BackendState::Standby,
                reason: "spare_idle".into(),
            },
            Transition {
                at_unix_ms: NOW - 75_000,
                from: BackendState::Standby,
                to: BackendState::Down,
                reason: "health_down: connection refused".into(),
            },
        ];
        let s = Status {
            pools: vec![
                PoolStatus {
                    name: "web".into(),
                    vip: "198.18.2.10:80".into(),
                    protocol: Protocol::Tcp,
                    mode: Mode::Nat,
                    min_active: 2,
                    on_empty: OnEmpty::Reject,
                    empty: false,
                    mean_load: Some(0.42),
                    announced: None,
                    announce_intent: None,
                    backends: vec![backend("web-1", BackendState::Active, Health::Up), down],
                },
                PoolStatus {
                    name: "api".into(),
                    vip: "[2001:2:0:2::11]:53".into(),
                    protocol: Protocol::Udp,
                    mode: Mode::Nat,
                    min_active: 1,
                    on_empty: OnEmpty::Reject,
                    empty: true,
                    mean_load: None,
                    announced: None,
                    announce_intent: None,
                    backends: vec![],
                },
            ],
            detached: Vec::new(),
            ..Status::default()
        };
        let want = "\
pool web  vip 198.18.2.10:80  tcp  nat  min_active 2  mean load 0.42
  BACKEND      ADDRESS           ROLE     HEALTH  STATE   ADMIN  SINCE  WEIGHT  LOAD  FLOWS  REASON
  web-1        198.18.1.11:8080  primary  up      active  ready      -     100  0.42     12  healthy
  web-spare-1  198.18.1.11:8080  spare    down    down    ready     1m       0  0.42      0  health_down: connection refused

pool api  vip [2001:2:0:2::11]:53  udp  nat  min_active 1  EMPTY: no usable backend, new flows are rejected
  BACKEND  ADDRESS  ROLE  HEALTH  STATE  ADMIN  SINCE  WEIGHT  LOAD  FLOWS  REASON
";
        assert_eq!(status_text_at(&s, NOW), want);
        assert_eq!(status_text(&Status::default()), "no pools configured\n");
        // An interface the program lost heads the table.
        let mut lost = s.clone();
        lost.detached = vec!["eth1".into()];
        assert!(status_text_at(&lost, NOW).starts_with(
            "DATA PLANE DETACHED from eth1: nothing forwarded there, VIPs withdrawn\n\npool web"
        ));
        // Runtime states: who set them, and a weight override.
        let mut admin = s.clone();
        let b = &mut admin.pools[0].backends[0];
        b.admin_state = crate::state::AdminState::Maint;
        b.admin_set_by = Some(crate::state::SetBy::Agent);
        b.weight_override = Some(300);
        assert!(
            status_text_at(&admin, NOW).contains("  active  maint by agent, weight 300      -"),
            "{}",
            status_text_at(&admin, NOW)
        );
        // A ramping or load-scaled weight, in config units too.
        let mut ramping = s.clone();
        ramping.pools[0].backends[0].weight = 33_334;
        assert!(
            status_text_at(&ramping, NOW).contains("      -    33.3  0.42"),
            "{}",
            status_text_at(&ramping, NOW)
        );

        // [sync]'s peers follow the pools, one line each; JSON has them as
        // the contract names them (and nothing without [sync]).
        let mut synced = s.clone();
        synced.sync = Some(vec![
            crate::status::SyncPeerStatus {
                peer: "198.18.1.3:7946".into(),
                state: crate::status::SyncPeerState::Up,
                last_message_unix_ms: Some(NOW - 400),
            },
            crate::status::SyncPeerStatus {
                peer: "198.18.1.4:7946".into(),
                state: crate::status::SyncPeerState::Down,
                last_message_unix_ms: None,
            },
        ]);
        assert!(
            status_text_at(&synced, NOW).ends_with(
                "\nsync peer 198.18.1.3:7946  up  last message 0s ago\n\
                 sync peer 198.18.1.4:7946  down  last message never\n"
            ),
            "{}",
            status_text_at(&synced, NOW)
        );
        let v = serde_json::to_value(&synced).unwrap();
        assert_eq!(
            v["sync"],
            serde_json::json!([
                {"peer": "198.18.1.3:7946", "state": "up", "last_message_unix_ms": NOW - 400},
                {"peer": "198.18.1.4:7946", "state": "down", "last_message_unix_ms": null},
            ])
        );
        assert!(serde_json::to_value(&s).unwrap().get("sync").is_none());

        // JSON carries the same facts for scripts.
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["pools"][0]["empty"], false);
        assert_eq!(v["pools"][1]["empty"], true);
        assert_eq!(v["pools"][1]["on_empty"], "reject");
        let last = &v["pools"][0]["backends"][1]["transitions"][1];
        assert_eq!(last["at_unix_ms"], NOW - 75_000);
        assert_eq!(last["from"], "standby");
        assert_eq!(last["to"], "down");
        assert_eq!(last["reason"], "health_down: connection refused");
        assert_eq!(
            v["pools"][0]["backends"][0]["transitions"],
            serde_json::json!([])
        );

        // A dropping pool says so.
        let mut dropping = s.clone();
        dropping.pools.truncate(1);
        dropping.pools[0].empty = true;
        dropping.pools[0].on_empty = OnEmpty::Drop;
        let text = status_text_at(&dropping, NOW);
        assert!(
            text.starts_with(
                "pool web  vip 198.18.2.10:80  tcp  nat  min_active 2  mean load 0.42  EMPTY: no usable backend, new flows are dropped\n"
            ),
            "{text}"
        );
    }

    fn counters(scale: u64) -> Counters {
        let mut global = vec![0u64; GlobalCounter::COUNT as usize];
        global[GlobalCounter::Rx as usize] = 1_500_000 * scale;
        global[GlobalCounter::Passed as usize] = 10 * scale;
        global[GlobalCounter::Redirected as usize] = 1_499_976 * scale;
        global[GlobalCounter::Answered as usize] = 12 * scale;
        global[GlobalCounter::Dropped as usize] = 2 * scale;
        global[GlobalCounter::DropNoBackend as usize] = 2 * scale;
        global[GlobalCounter::PassNeighUnresolved as usize] = 3 * scale;
        global[GlobalCounter::IcmpToBackend as usize] = 9 * scale;
        Counters {
            global,
            vips: vec![VipStats {
                index: 0,
                pool: "web".into(),
                vip: "198.18.2.10:80".parse().unwrap(),
                protocol: crate::config::Protocol::Tcp,
                counters: VipCounters {
                    packets: 900 * scale,
                    bytes: 3 * 1024 * 1024 * scale,
                    new_flows: 4 * scale,
                    rejected: 7 * scale,
                },
            }],
            backends: vec![BackendStats {
                slot: 0,
                pool: "web".into(),
                name: "web-1".into(),
                addr: "198.18.1.11:8080".parse().unwrap(),
                state: BACKEND_ACTIVE,
                counters: BackendCounters {
                    packets: 880 * scale,
                    bytes: 2048 * scale,
                    new_flows: 4 * scale,
                    reply_packets: 800 * scale,
                    reply_bytes: 640_000 * scale,
                },
            }],
        }
    }

    #[test]
    fn stats_output() {
        let want = "  RX  PASSED  REDIRECTED  ANSWERED  DROPPED
1.5M      10        1.5M        12        2
dropped: no_backend 2
events: icmp_to_backend 9, neigh_unresolved 3

VIP             PROTO  POOL  PACKETS    BYTES  NEW FLOWS  REJECTED
198.18.2.10:80  tcp    web       900  3.0 MiB          4         7

BACKEND  POOL  ADDRESS           STATE   PACKETS    BYTES  NEW FLOWS  REPLY PKTS  REPLY BYTES
web-1    web   198.18.1.11:8080  active      880  2.0 KiB          4         800    625.0 KiB
";
        assert_eq!(stats_text(&counters(1)), want);
    }

    #[test]
    fn stats_json_fields() {
        let v = serde_json::to_value(stats_json(&counters(1))).unwrap();
        assert_eq!(v["global"]["rx_packets"], 1_500_000);
        assert_eq!(v["global"]["passed"], 10);
        assert_eq!(v["global"]["dropped"], 2);
        assert_eq!(v["global"]["flow_misses"], 0);
        assert_eq!(v["global"]["drop_reasons"]["no_backend"], 2);
        assert_eq!(
            v["global"]["drop_reasons"].as_object().unwrap().len(),
            GlobalCounter::DROP_REASONS.len()
        );
        assert_eq!(v["global"]["answered"], 12);
        let events = v["global"]["events"].as_object().unwrap();
        assert_eq!(events.len(), GlobalCounter::EVENTS.len());
        assert_eq!(events["icmp_to_backend"], 9);
        assert_eq!(events["neigh_unresolved"], 3);
        assert_eq!(events["rejected"], 0);
        assert_eq!(v["vips"][0]["rejected"], 7);
        assert_eq!(v["vips"][0]["pool"], "web");
        assert_eq!(v["vips"][0]["vip"], "198.18.2.10:80");
        assert_eq!(v["vips"][0]["protocol"], "tcp");
        assert_eq!(v["vips"][0]["new_flows"], 4);
        assert_eq!(v["backends"][0]["name"], "web-1");
        assert_eq!(v["backends"][0]["state"], "active");
        assert_eq!(v["backends"][0]["packets"], 880);
    }

    #[test]
    fn rates_are_deltas_over_elapsed() {
        let r = rates(&counters(1), &counters(3), Duration::from_secs(2));
        assert_eq!(r.interval_s, 2.0);
        assert_eq!(r.rates.global.rx_packets, 1_500_000.0);
        assert_eq!(r.rates.vips[0].packets, 900.0);
        assert_eq!(r.rates.backends[0].new_flows, 4.0);
        // A counter that went down (fresh data plane) reads 0, not garbage.
        let r = rates(&counters(3), &counters(1), Duration::from_secs(1));
        assert_eq!(r.rates.global.rx_packets, 0.0);
        // A backend that was not there before reads 0 this interval.
        let mut before = counters(1);
        before.backends.clear();
        let r = rates(&before, &counters(2), Duration::from_secs(1));
        assert_eq!(r.rates.backends[0].packets, 0.0);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["interval_s"], 1.0);
        assert_eq!(v["vips"][0]["packets"], 900.0);
        let text = rates_text(&r);
        assert!(text.starts_with("rates per second over 1.0s\n"), "{text}");
        assert!(text.contains("PACKETS/s"), "{text}");
    }
}
