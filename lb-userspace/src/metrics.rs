//! Prometheus exposition: what `control.metrics_listen` serves.
//!
//! Three sources, one registry, encoded by `prometheus-client` in the
//! Prometheus text format (0.0.4):
//! - data-plane counters, read from the pinned maps at scrape time by a
//!   collector (the maps hold cumulative totals, so they are exposed as
//!   counters with their current value; a scrape never sees a stale copy);
//! - backend gauges (up, active, load, weight, flows) from the latest
//!   [`Status`] the controller publishes with [`Metrics::set_status`];
//! - the health-check duration histogram the probes feed through
//!   [`Metrics::health_checks`].
//!
//! | name | type | labels |
//! |---|---|---|
//! | `xdplb_rx_packets_total`, `xdplb_passed_packets_total`, `xdplb_redirected_packets_total`, `xdplb_flow_misses_total`, `xdplb_resteered_flows_total` | counter | |
//! | `xdplb_answered_packets_total` | counter | |
//! | `xdplb_dropped_packets_total` | counter | `reason` |
//! | `xdplb_events_total` | counter | `event` |
//! | `xdplb_vip_{packets,bytes,new_flows,rejected}_total` | counter | `pool`, `vip` |
//! | `xdplb_backend_{packets,bytes,new_flows,reply_packets,reply_bytes}_total` | counter | `pool`, `backend` |
//! | `xdplb_backend_{up,active,load,weight,flows}` | gauge | `pool`, `backend` |
//! | `xdplb_backend_admin_state` | gauge (1 for the state in force, 0 for the others) | `pool`, `backend`, `state` (`ready`, `drain`, `maint`), `set_by` (`operator`, `agent`; empty while ready) |
//! | `xdplb_backend_weight_override` | gauge (only with an override) | `pool`, `backend` |
//! | `xdplb_dataplane_up` | gauge | |
//! | `xdplb_health_check_duration_seconds` | histogram | `pool`, `result` |
//!
//! [`crate::web`] serves it on `metrics_listen`, with `/status.json` and
//! the status page.
use std::{
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use lb_common::GlobalCounter;
use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet},
    metrics::{family::Family, histogram::Histogram, MetricType},
    registry::Registry,
};

use crate::{
    dataplane::{CounterReader, Counters, DataplaneError},
    planner::BackendState,
    state::AdminState,
    status::{Health, Status, SyncPeerState},
};

/// Histogram buckets, seconds: 0.5 ms (a probe on the same host) to 5 s
/// (past any sane `timeout_ms`), roughly ×2–×2.5 apart.
pub const HEALTH_CHECK_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0,
];

type HealthLabels = [(&'static str, String); 2];
type CounterSource = dyn Fn() -> Result<Counters, DataplaneError> + Send + Sync;

/// The controller's metrics. Cheap to share (`Arc`); every method takes
/// `&self`.
pub struct Metrics {
    registry: Registry,
    health: Family<HealthLabels, Histogram, fn() -> Histogram>,
    status: Arc<Mutex<Option<Status>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn health_histogram() -> Histogram {
    Histogram::new(HEALTH_CHECK_BUCKETS)
}

impl Metrics {
    /// Metrics whose data-plane counters are read from the maps pinned at
    /// `pin_path` on every scrape.
    pub fn new(pin_path: PathBuf) -> Arc<Metrics> {
        Metrics::with_counter_source(move || CounterReader::open(&pin_path)?.read())
    }

    /// Metrics reading data-plane counters from `source` on every scrape
    /// (tests, or a controller that already holds the maps open).
    pub fn with_counter_source(
        source: impl Fn() -> Result<Counters, DataplaneError> + Send + Sync + 'static,
    ) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let health: Family<HealthLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(health_histogram);
        registry.register(
            "xdplb_health_check_duration_seconds",
            "Duration of backend health checks, by pool and result (success or failure)",
            health.clone(),
        );
        let status = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(DataplaneCollector {
            source: Box::new(source),
        }));
        registry.register_collector(Box::new(StatusCollector {
            status: Arc::clone(&status),
        }));
        Arc::new(Metrics {
            registry,
            health,
            status,
        })
    }

    /// The health-check histograms of `pool`, `[failure, success]`, for a
    /// caller to keep and observe into: a thousand checks a second then
    /// build no label set and take no lock on the family. Labelled by pool
    /// and result only: per-backend series would multiply 14 buckets by
    /// every backend for little gain.
    pub fn health_checks(&self, pool: &str) -> [Histogram; 2] {
        ["failure", "success"].map(|result| {
            self.health
                .get_or_create(&[("pool", pool.to_string()), ("result", result.to_string())])
                .clone()
        })
    }

    /// Publishes the controller's latest view (backend gauges).
    pub fn set_status(&self, status: &Status) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status.clone());
    }

    /// The latest view published (`/status.json`); None before the first
    /// sync.
    pub fn status(&self) -> Option<Status> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The exposition text, as a scrape gets it. Reads the pinned maps.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; a collector error would be a bug
        // in the encoding calls below.
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// Data-plane counters, read at collect time.
struct DataplaneCollector {
    source: Box<CounterSource>,
}

impl fmt::Debug for DataplaneCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataplaneCollector")
    }
}

type Labels2 = [(&'static str, String); 2];
type Labels4 = [(&'static str, String); 4];

fn counter<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

fn counter1(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge<L: EncodeLabelSet, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let counters = match (self.source)() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(error = %e, "metrics: no data-plane counters");
                None
            }
        };
        enc.encode_descriptor(
            "xdplb_dataplane_up",
            "1 if the data plane's pinned maps could be read at this scrape",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&i64::from(counters.is_some()))?;
        // Without a data plane the counter families are left out entirely,
        // rather than reported as zero (which would read as a reset).
        let Some(c) = counters else {
            return Ok(());
        };
        let globals = [
            (
                "xdplb_rx_packets",
                "Packets the XDP program saw",
                GlobalCounter::Rx,
            ),
            (
                "xdplb_passed_packets",
                "Packets passed to the kernel (not for a VIP, or a notable pass)",
                GlobalCounter::Passed,
            ),
            (
                "xdplb_redirected_packets",
                "Packets rewritten and redirected",
                GlobalCounter::Redirected,
            ),
            (
                "xdplb_answered_packets",
                "Packets the program answered itself (XDP_TX): RSTs for an empty pool, ICMP fragmentation-needed",
                GlobalCounter::Answered,
            ),
            (
                "xdplb_flow_misses",
                "Non-SYN VIP packets with no flow entry, selected again by the ring",
                GlobalCounter::FlowMisses,
            ),
            (
                "xdplb_resteered_flows",
                "Established flows moved off a backend that went down",
                GlobalCounter::Resteered,
            ),
        ];
        for (name, help, g) in globals {
            counter1(&mut enc, name, help, c.get(g))?;
        }
        counter(
            &mut enc,
            "xdplb_dropped_packets",
            "Packets dropped, by reason",
            GlobalCounter::DROP_REASONS
                .iter()
                .map(|&(g, reason)| ([("reason", reason.to_string())], c.get(g))),
        )?;

        counter(
            &mut enc,
            "xdplb_events",
            "Notable packets the program handled without dropping them, by event",
            GlobalCounter::EVENTS
                .iter()
                .map(|&(g, event)| ([("event", event.to_string())], c.get(g))),
        )?;

        let vip = |v: &crate::dataplane::VipStats| -> Labels2 {
            [("pool", v.pool.clone()), ("vip", v.vip.to_string())]
        };
        type VipField = fn(&lb_common::VipCounters) -> u64;
        let vip_fields: [(&str, &str, VipField); 4] = [
            ("xdplb_vip_packets", "Client packets to the VIP", |c| {
                c.packets
            }),
            ("xdplb_vip_bytes", "Client bytes to the VIP", |c| c.bytes),
            (
                "xdplb_vip_new_flows",
                "New flows (SYNs placed by the ring) to the VIP",
                |c| c.new_flows,
            ),
            (
                "xdplb_vip_rejected",
                "New flows answered with a RST from the VIP because its pool had no usable backend",
                |c| c.rejected,
            ),
        ];
        for (name, help, f) in vip_fields {
            counter(
                &mut enc,
                name,
                help,
                c.vips.iter().map(|v| (vip(v), f(&v.counters))),
            )?;
        }

        let backend = |b: &crate::dataplane::BackendStats| -> Labels2 {
            [("pool", b.pool.clone()), ("backend", b.name.clone())]
        };
        type BackendField = fn(&lb_common::BackendCounters) -> u64;
        let backend_fields: [(&str, &str, BackendField); 5] = [
            (
                "xdplb_backend_packets",
                "Client packets forwarded to the backend",
                |c| c.packets,
            ),
            (
                "xdplb_backend_bytes",
                "Client bytes forwarded to the backend",
                |c| c.bytes,
            ),
            (
                "xdplb_backend_new_flows",
                "New flows sent to the backend",
                |c| c.new_flows,
            ),
            (
                "xdplb_backend_reply_packets",
                "Backend replies rewritten back to the VIP",
                |c| c.reply_packets,
            ),
            (
                "xdplb_backend_reply_bytes",
                "Backend reply bytes rewritten back to the VIP",
                |c| c.reply_bytes,
            ),
        ];
        for (name, help, f) in backend_fields {
            counter(
                &mut enc,
                name,
                help,
                c.backends.iter().map(|b| (backend(b), f(&b.counters))),
            )?;
        }
        Ok(())
    }
}

/// Backend gauges from the controller's latest [`Status`].
struct StatusCollector {
    status: Arc<Mutex<Option<Status>>>,
}

impl fmt::Debug for StatusCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatusCollector")
    }
}

impl Collector for StatusCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let status = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        let rows = || {
            status.pools.iter().flat_map(|p| {
                p.backends.iter().map(move |b| {
                    let labels: Labels2 = [("pool", p.name.clone()), ("backend", b.name.clone())];
                    (labels, b)
                })
            })
        };
        gauge(
            &mut enc,
            "xdplb_backend_up",
            "1 if the backend passes its health checks",
            rows().map(|(l, b)| (l, i64::from(b.health == Health::Up))),
        )?;
        gauge(
            &mut enc,
            "xdplb_backend_active",
            "1 if the backend gets new flows (state active)",
            rows().map(|(l, b)| (l, i64::from(b.state == BackendState::Active))),
        )?;
        gauge(
            &mut enc,
            "xdplb_backend_load",
            "Load score in [0, 1] from the backend's agent",
            rows().map(|(l, b)| (l, b.load)),
        )?;
        gauge(
            &mut enc,
            "xdplb_backend_weight",
            "Effective weight in the Maglev ring (0 unless active)",
            rows().map(|(l, b)| (l, i64::from(b.weight))),
        )?;
        gauge(
            &mut enc,
            "xdplb_backend_admin_state",
            "1 for the backend's runtime state in force (xdplb drain/maint/ready, or its agent's drain/maint), 0 for the others",
            rows().flat_map(|(l, b)| {
                let by = b.admin_set_by.map_or("", |s| s.as_str());
                AdminState::ALL.into_iter().map(move |state| {
                    let [pool, backend] = l.clone();
                    let labels: Labels4 = [
                        pool,
                        backend,
                        ("state", state.as_str().to_string()),
                        ("set_by", by.to_string()),
                    ];
                    (labels, i64::from(b.admin_state == state))
                })
            }),
        )?;
        gauge(
            &mut enc,
            "xdplb_backend_weight_override",
            "Weight set by xdplb set weight in place of the config's (only while set)",
            rows().filter_map(|(l, b)| b.weight_override.map(|w| (l, i64::from(w)))),
        )?;
        gauge(
            &mut enc,
            "xdplb_backend_rtt_seconds",
            "Smoothed round trip of the backend's successful health probes",
            rows().filter_map(|(l, b)| b.rtt_ms.map(|ms| (l, ms / 1000.0))),
        )?;
        gauge(
            &mut enc,
            "xdplb_agent_up",
            "1 if the backend's load agent answers (pools with [pool.load])",
            rows().filter_map(|(l, b)| b.agent_up.map(|up| (l, i64::from(up)))),
        )?;
        gauge(
            &mut enc,
            "xdplb_backend_flows",
            "Established flows pinned to the backend in the flow table",
            rows().map(|(l, b)| (l, i64::try_from(b.flows).unwrap_or(i64::MAX))),
        )?;
        gauge(
            &mut enc,
            "xdplb_vip_announced",
            "1 if BIRD has the VIP's route to announce to the routers ([announce]; what BIRD answered, not what xdplb wants)",
            status.pools.iter().filter_map(|p| {
                let labels: Labels2 = [("pool", p.name.clone()), ("vip", p.vip.clone())];
                p.announced.map(|a| (labels, i64::from(a)))
            }),
        )?;
        if let Some(peers) = &status.sync {
            gauge(
                &mut enc,
                "xdplb_sync_peer_up",
                "1 if the [sync] peer is heard from (a valid message within the last 3 s)",
                peers.iter().map(|p| {
                    let labels: [(&'static str, String); 1] = [("peer", p.peer.clone())];
                    (labels, i64::from(p.state == SyncPeerState::Up))
                }),
            )?;
        }
        if let Some(c) = status.sync_counters {
            let counts: [(&str, &str, u64); 10] = [
                ("xdplb_sync_messages_sent", "Flow sync messages sent to peers", c.messages_sent),
                ("xdplb_sync_entries_sent", "Flow entries sent to peers", c.entries_sent),
                (
                    "xdplb_sync_messages_unsent",
                    "Flow sync messages not sent: over a peer's rate bound, or the socket refused",
                    c.messages_unsent,
                ),
                (
                    "xdplb_sync_messages_received",
                    "Flow sync messages accepted from peers",
                    c.messages_received,
                ),
                (
                    "xdplb_sync_entries_received",
                    "Flow entries in accepted messages",
                    c.entries_received,
                ),
                (
                    "xdplb_sync_messages_rejected",
                    "Datagrams dropped: not from a peer, unauthenticated, malformed, oversize, replayed or over the receive rate",
                    c.messages_rejected,
                ),
                (
                    "xdplb_sync_entries_inserted",
                    "Received flow entries recorded in the flow table",
                    c.entries_inserted,
                ),
                (
                    "xdplb_sync_entries_present",
                    "Received flow entries this gateway's table held already (its own entry stands)",
                    c.entries_present,
                ),
                (
                    "xdplb_sync_entries_rejected",
                    "Received flow entries not recorded: backend unknown or down here, or no empty way",
                    c.entries_rejected,
                ),
                ("xdplb_sync_errors", "Flow sync socket or map errors", c.errors),
            ];
            for (name, help, v) in counts {
                counter1(&mut enc, name, help, v)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dataplane::{BackendStats, VipStats};
    use crate::status::{BackendStatus, PoolStatus};
    use lb_common::{BackendCounters, VipCounters};
    use std::collections::BTreeMap;

    fn fake_counters() -> Counters {
        let mut global = vec![0u64; GlobalCounter::COUNT as usize];
        global[GlobalCounter::Rx as usize] = 100;
        global[GlobalCounter::Passed as usize] = 10;
        global[GlobalCounter::Redirected as usize] = 88;
        global[GlobalCounter::Dropped as usize] = 2;
        global[GlobalCounter::DropNoBackend as usize] = 2;
        global[GlobalCounter::FlowMisses as usize] = 1;
        global[GlobalCounter::Answered as usize] = 5;
        for (i, &(c, _)) in GlobalCounter::EVENTS.iter().enumerate() {
            global[c as usize] = 10 + i as u64;
        }
        Counters {
            global,
            vips: vec![VipStats {
                index: 0,
                pool: "web".into(),
                vip: "198.18.2.10:80".parse().unwrap(),
                protocol: crate::config::Protocol::Tcp,
                counters: VipCounters {
                    packets: 90,
                    bytes: 9000,
                    new_flows: 4,
                    rejected: 3,
                },
            }],
            backends: vec![BackendStats {
                slot: 0,
                pool: "web".into(),
                name: "web-1".into(),
                addr: "198.18.1.11:8080".parse().unwrap(),
                state: lb_common::BACKEND_ACTIVE,
                counters: BackendCounters {
                    packets: 88,
                    bytes: 8800,
                    new_flows: 4,
                    reply_packets: 80,
                    reply_bytes: 64000,
                },
            }],
        }
    }

    fn fake_status() -> Status {
        let b = |name: &str, health: Health, state: BackendState, weight, load| BackendStatus {
            name: name.into(),
            addr: "198.18.1.11:8080".into(),
            role: crate::config::Role::Primary,
            health,
            state,
            weight,
            config_weight: 100,
            load,
            flows: 7,
            half_open: 0,
            unanswered: false,
            reason: crate::planner::Reason::Healthy,
            operator_drained: false,
            admin_state: crate::state::AdminState::Ready,
            admin_set_by: None,
            weight_override: None,
            agent: None,
            last_error: None,
            rtt_ms: (health == Health::Up).then_some(1.5),
            agent_up: (health == Health::Up).then_some(true),
            agent_error: None,
            transitions: Vec::new(),
        };
        Status {
            pools: vec![PoolStatus {
                name: "web".into(),
                vip: "198.18.2.10:80".into(),
                protocol: crate::config::Protocol::Tcp,
                mode: crate::config::Mode::Nat,
                min_active: 1,
                on_empty: crate::config::OnEmpty::Reject,
                empty: false,
                mean_load: Some(0.25),
                announced: Some(true),
                announce_intent: Some(true),
                backends: vec![
                    b("web-1", Health::Up, BackendState::Active, 75, 0.25),
                    BackendStatus {
                        admin_state: crate::state::AdminState::Maint,
                        admin_set_by: Some(crate::state::SetBy::Agent),
                        weight_override: Some(300),
                        ..b("web \"2\"", Health::Down, BackendState::Down, 0, 0.5)
                    },
                ],
            }],
            detached: Vec::new(),
            ..Status::default()
        }
    }

    /// One parsed sample: name, labels, value.
    type Sample = (String, BTreeMap<String, String>, f64);

    /// A strict parser for the text exposition format (0.0.4): comments
    /// must be well-formed HELP/TYPE lines, every sample must belong to the
    /// family announced by the last TYPE line, labels must be quoted with
    /// valid escapes.
    fn parse_exposition(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        let mut current: Option<(String, String)> = None;
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !n.starts_with(|c: char| c.is_ascii_digit())
        };
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(valid_name(name), "bad HELP name in {line:?}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut f = rest.split(' ');
                let (name, ty) = (f.next().unwrap(), f.next().unwrap());
                assert!(valid_name(name));
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                    "{line:?}"
                );
                assert!(
                    types.insert(name.to_string(), ty.to_string()).is_none(),
                    "family {name} announced twice"
                );
                current = Some((name.to_string(), ty.to_string()));
                continue;
            }
            assert!(!line.starts_with('#'), "stray comment {line:?}");
            let (name_labels, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match name_labels.split_once('{') {
                None => (name_labels.to_string(), BTreeMap::new()),
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels close");
                    (n.to_string(), parse_labels(body))
                }
            };
            assert!(valid_name(&name), "{line:?}");
            let (fam, ty) = current.as_ref().expect("sample before TYPE");
            let ok = match ty.as_str() {
                "histogram" => [
                    format!("{fam}_bucket"),
                    format!("{fam}_sum"),
                    format!("{fam}_count"),
                ]
                .contains(&name),
                _ => &name == fam,
            };
            assert!(ok, "sample {name} outside its family {fam}");
            samples.push((name, labels, value));
        }
        (types, samples)
    }

    fn parse_labels(body: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut chars = body.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "label value quoted");
            let mut value = String::new();
            loop {
                match chars.next().expect("label value ends") {
                    '\\' => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        c => panic!("bad escape {c:?}"),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            out.insert(key, value);
            match chars.next() {
                Some(',') | None => {}
                c => panic!("expected , got {c:?}"),
            }
        }
        out
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
            .2
    }

    const EVERY_FAMILY: [(&str, &str); 29] = [
        ("xdplb_dataplane_up", "gauge"),
        ("xdplb_rx_packets_total", "counter"),
        ("xdplb_passed_packets_total", "counter"),
        ("xdplb_redirected_packets_total", "counter"),
        ("xdplb_flow_misses_total", "counter"),
        ("xdplb_resteered_flows_total", "counter"),
        ("xdplb_answered_packets_total", "counter"),
        ("xdplb_dropped_packets_total", "counter"),
        ("xdplb_events_total", "counter"),
        ("xdplb_vip_packets_total", "counter"),
        ("xdplb_vip_bytes_total", "counter"),
        ("xdplb_vip_new_flows_total", "counter"),
        ("xdplb_vip_rejected_total", "counter"),
        ("xdplb_backend_packets_total", "counter"),
        ("xdplb_backend_bytes_total", "counter"),
        ("xdplb_backend_new_flows_total", "counter"),
        ("xdplb_backend_reply_packets_total", "counter"),
        ("xdplb_backend_reply_bytes_total", "counter"),
        ("xdplb_backend_up", "gauge"),
        ("xdplb_backend_active", "gauge"),
        ("xdplb_backend_load", "gauge"),
        ("xdplb_backend_weight", "gauge"),
        ("xdplb_backend_flows", "gauge"),
        ("xdplb_backend_rtt_seconds", "gauge"),
        ("xdplb_backend_admin_state", "gauge"),
        ("xdplb_backend_weight_override", "gauge"),
        ("xdplb_agent_up", "gauge"),
        ("xdplb_vip_announced", "gauge"),
        ("xdplb_health_check_duration_seconds", "histogram"),
    ];

    #[test]
    fn render_parses_and_has_every_family() {
        let m = Metrics::with_counter_source(|| Ok(fake_counters()));
        m.set_status(&fake_status());
        let [failure, success] = m.health_checks("web");
        success.observe(Duration::from_micros(700).as_secs_f64());
        // Taken again (another backend of the pool): the same series.
        m.health_checks("web")[1].observe(Duration::from_millis(30).as_secs_f64());
        failure.observe(Duration::from_millis(300).as_secs_f64());
        let text = m.render();
        let (types, samples) = parse_exposition(&text);
        for (name, ty) in EVERY_FAMILY {
            assert_eq!(
                types.get(name).map(String::as_str),
                Some(ty),
                "{name}\n{text}"
            );
            // A TYPE line is written whatever the data: the family must
            // also carry a sample.
            let prefix = format!("{name}_");
            assert!(
                samples
                    .iter()
                    .any(|(n, _, _)| n == name || n.starts_with(&prefix)),
                "{name} has no sample\n{text}"
            );
        }
        let web1 = [("pool", "web"), ("backend", "web-1")];
        assert_eq!(value(&samples, "xdplb_dataplane_up", &[]), 1.0);
        assert_eq!(
            value(
                &samples,
                "xdplb_vip_announced",
                &[("pool", "web"), ("vip", "198.18.2.10:80")]
            ),
            1.0
        );
        assert_eq!(value(&samples, "xdplb_rx_packets_total", &[]), 100.0);
        assert_eq!(
            value(
                &samples,
                "xdplb_dropped_packets_total",
                &[("reason", "no_backend")]
            ),
            2.0
        );
        let reasons = samples
            .iter()
            .filter(|(n, _, _)| n == "xdplb_dropped_packets_total")
            .count();
        assert_eq!(reasons, GlobalCounter::DROP_REASONS.len());
        // Every event is exported, zero or not, under its label.
        let events: Vec<&Sample> = samples
            .iter()
            .filter(|(n, _, _)| n == "xdplb_events_total")
            .collect();
        assert_eq!(events.len(), GlobalCounter::EVENTS.len());
        for (i, &(_, label)) in GlobalCounter::EVENTS.iter().enumerate() {
            assert_eq!(
                value(&samples, "xdplb_events_total", &[("event", label)]),
                10.0 + i as f64,
                "{label}"
            );
        }
        assert_eq!(value(&samples, "xdplb_answered_packets_total", &[]), 5.0);
        assert_eq!(
            value(
                &samples,
                "xdplb_vip_rejected_total",
                &[("pool", "web"), ("vip", "198.18.2.10:80")]
            ),
            3.0
        );
        assert_eq!(
            value(
                &samples,
                "xdplb_vip_bytes_total",
                &[("pool", "web"), ("vip", "198.18.2.10:80")]
            ),
            9000.0
        );
        assert_eq!(value(&samples, "xdplb_backend_packets_total", &web1), 88.0);
        assert_eq!(value(&samples, "xdplb_backend_up", &web1), 1.0);
        assert_eq!(value(&samples, "xdplb_backend_active", &web1), 1.0);
        assert_eq!(value(&samples, "xdplb_backend_load", &web1), 0.25);
        assert_eq!(value(&samples, "xdplb_backend_weight", &web1), 75.0);
        assert_eq!(value(&samples, "xdplb_backend_rtt_seconds", &web1), 0.0015);
        assert_eq!(value(&samples, "xdplb_agent_up", &web1), 1.0);
        // Not known, not made up: no rtt before a success, no agent_up
        // where no agent was asked.
        for family in ["xdplb_backend_rtt_seconds", "xdplb_agent_up"] {
            assert!(
                !samples.iter().any(|(n, l, _)| n == family
                    && l.get("backend").map(String::as_str) == Some("web \"2\"")),
                "{family} for a backend without one"
            );
        }
        // A label value with quotes survives escaping.
        let web2 = [("pool", "web"), ("backend", "web \"2\"")];
        assert_eq!(value(&samples, "xdplb_backend_up", &web2), 0.0);
        // Runtime states: one series per state, 1 for the one in force.
        let admin = |backend, state, by| {
            value(
                &samples,
                "xdplb_backend_admin_state",
                &[
                    ("pool", "web"),
                    ("backend", backend),
                    ("state", state),
                    ("set_by", by),
                ],
            )
        };
        assert_eq!(admin("web \"2\"", "maint", "agent"), 1.0);
        assert_eq!(admin("web \"2\"", "ready", "agent"), 0.0);
        assert_eq!(admin("web-1", "ready", ""), 1.0);
        assert_eq!(admin("web-1", "drain", ""), 0.0);
        assert_eq!(
            value(&samples, "xdplb_backend_weight_override", &web2),
            300.0
        );
        assert!(!samples
            .iter()
            .any(|(n, l, _)| n == "xdplb_backend_weight_override"
                && l.get("backend").map(String::as_str) == Some("web-1")));

        let ok = [("pool", "web"), ("result", "success")];
        assert_eq!(
            value(&samples, "xdplb_health_check_duration_seconds_count", &ok),
            2.0
        );
        let b = |le| {
            value(
                &samples,
                "xdplb_health_check_duration_seconds_bucket",
                &[("pool", "web"), ("result", "success"), ("le", le)],
            )
        };
        assert_eq!(b("0.0005"), 0.0);
        assert_eq!(b("0.001"), 1.0);
        assert_eq!(b("0.05"), 2.0);
        assert_eq!(b("+Inf"), 2.0);
        let fail = [("pool", "web"), ("result", "failure")];
        assert_eq!(
            value(&samples, "xdplb_health_check_duration_seconds_count", &fail),
            1.0
        );
    }

    #[test]
    fn sync_peers_and_counts_are_metrics_with_sync_only() {
        let m = Metrics::with_counter_source(|| Ok(fake_counters()));
        m.set_status(&fake_status());
        let (types, _) = parse_exposition(&m.render());
        assert!(
            !types.keys().any(|k| k.starts_with("xdplb_sync_")),
            "{types:?}"
        );
        let mut status = fake_status();
        status.sync = Some(vec![
            crate::status::SyncPeerStatus {
                peer: "198.18.1.3:7946".into(),
                state: SyncPeerState::Up,
                last_message_unix_ms: Some(1),
            },
            crate::status::SyncPeerStatus {
                peer: "[2001:2:0:1::3]:7946".into(),
                state: SyncPeerState::Down,
                last_message_unix_ms: None,
            },
        ]);
        status.sync_counters = Some(crate::status::SyncCounters {
            messages_sent: 11,
            entries_sent: 300,
            messages_received: 7,
            entries_received: 76,
            messages_rejected: 2,
            entries_inserted: 70,
            entries_present: 4,
            entries_rejected: 2,
            ..Default::default()
        });
        m.set_status(&status);
        let (types, samples) = parse_exposition(&m.render());
        assert_eq!(types["xdplb_sync_peer_up"], "gauge");
        let up = |peer| value(&samples, "xdplb_sync_peer_up", &[("peer", peer)]);
        assert_eq!(up("198.18.1.3:7946"), 1.0);
        assert_eq!(up("[2001:2:0:1::3]:7946"), 0.0);
        for (name, v) in [
            ("xdplb_sync_messages_sent_total", 11.0),
            ("xdplb_sync_entries_sent_total", 300.0),
            ("xdplb_sync_messages_unsent_total", 0.0),
            ("xdplb_sync_messages_received_total", 7.0),
            ("xdplb_sync_entries_received_total", 76.0),
            ("xdplb_sync_messages_rejected_total", 2.0),
            ("xdplb_sync_entries_inserted_total", 70.0),
            ("xdplb_sync_entries_present_total", 4.0),
            ("xdplb_sync_entries_rejected_total", 2.0),
            ("xdplb_sync_errors_total", 0.0),
        ] {
            assert_eq!(types[name], "counter", "{name}");
            assert_eq!(value(&samples, name, &[]), v, "{name}");
        }
    }

    #[test]
    fn without_a_data_plane_only_the_up_gauge_says_so() {
        let m = Metrics::new(PathBuf::from("/nonexistent/xdplb-metrics-test"));
        let (types, samples) = parse_exposition(&m.render());
        assert_eq!(value(&samples, "xdplb_dataplane_up", &[]), 0.0);
        assert!(!types.contains_key("xdplb_rx_packets_total"));
        assert!(types.contains_key("xdplb_backend_up"));
    }
}
