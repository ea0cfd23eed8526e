//! The flow sync task `xdplb run` starts when `[sync]` is set: beside the
//! controller, on the pinned maps (it writes only the flow table).
//!
//! - Every [`HEARTBEAT_MS`], and right after each apply that published a
//!   ring ([`Handle::ring_changed`]), it scans the flow table for the
//!   entries a peer could not recompute ([`unrecomputable`]) and sends
//!   them, at most [`MAX_ENTRIES_PER_SEND`] a time, going round the list
//!   when there are more; with none, the message is an empty heartbeat.
//! - Each accepted message's entries are mapped to this gateway's backends
//!   ([`to_local`]: a backend it lacks or has down is left out) and
//!   recorded where the table holds no entry for the flow
//!   ([`FlowTable::insert_absent`]).
//! - Errors (socket, maps) never end it: each kind is counted and logged
//!   once until it clears, and the next beat tries again.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::{
    to_local,
    transport::{Endpoint, HEARTBEAT_MS},
    unrecomputable, LocalBackends, SyncEntry,
};
use crate::{
    dataplane::{flow_seen_now, DataplaneError, FlowTable, SyncMaps},
    status::{now_unix_ms, SyncCounters, SyncPeerStatus},
};

/// Entries sent per beat at most: 21 IPv4 or 42 IPv6 messages, within a
/// peer's send burst ([`SEND_BURST`](super::transport::SEND_BURST)), so
/// none of a batch is refused by the rate bound and skipped by the
/// cursor. A table with more unrecomputable flows is sent over several
/// beats, round the list (1,000 a second).
pub const MAX_ENTRIES_PER_SEND: usize = 1_000;

/// What the controller sees of the task.
#[derive(Default)]
struct Shared {
    ring_changed: Arc<Notify>,
    report: Mutex<(Vec<SyncPeerStatus>, SyncCounters)>,
}

/// The controller's side: tells the task about ring changes, reads its
/// peers' states and counts.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// A handle no task serves yet (the controller's tests watch what it
    /// is told).
    #[cfg(test)]
    pub(crate) fn unserved() -> Handle {
        Handle {
            shared: Arc::default(),
        }
    }

    /// Whether a ring change was signalled since the last call (tests).
    #[cfg(test)]
    pub(crate) async fn take_ring_change(&self) -> bool {
        tokio::time::timeout(Duration::ZERO, self.shared.ring_changed.notified())
            .await
            .is_ok()
    }

    /// Wakes the task to scan and send now (an apply published a ring).
    pub fn ring_changed(&self) {
        self.shared.ring_changed.notify_one();
    }

    /// Each peer's state (config order) and the counts, as of the task's
    /// last beat or message.
    pub fn report(&self) -> (Vec<SyncPeerStatus>, SyncCounters) {
        self.shared
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The task's state.
pub struct FlowSync {
    endpoint: Endpoint,
    table: FlowTable,
    maps: SyncMaps,
    shared: Arc<Shared>,
    /// This gateway's backends as messages name them, as of the last beat.
    local: LocalBackends,
    /// VIP (protocol, endpoint) → its meta (index, live ring), as of the
    /// last beat.
    vips: HashMap<(u8, SocketAddr), lb_common::VipMeta>,
    /// Where the next send starts in the list of unrecomputable entries.
    cursor: usize,
    /// The maps could not be read (logged once until they can).
    maps_failing: bool,
}

impl FlowSync {
    /// The task on `endpoint` (bound to `[sync] listen` before anything
    /// else was touched) over the flow table and maps pinned at
    /// `pin_path` (rings `ring_size` long).
    pub fn new(
        endpoint: Endpoint,
        pin_path: &std::path::Path,
        ring_size: u32,
    ) -> Result<(FlowSync, Handle), DataplaneError> {
        let table = FlowTable::open(pin_path)?;
        let maps = SyncMaps::open(pin_path, ring_size)?;
        let shared = Arc::new(Shared::default());
        let sync = FlowSync {
            endpoint,
            table,
            maps,
            shared: Arc::clone(&shared),
            local: LocalBackends::default(),
            vips: HashMap::new(),
            cursor: 0,
            maps_failing: false,
        };
        sync.publish();
        if let Ok(listen) = sync.endpoint.local_addr() {
            info!(%listen, "flow sync: listening");
        }
        Ok((sync, Handle { shared }))
    }

    /// Runs until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut beat = tokio::time::interval(Duration::from_millis(HEARTBEAT_MS));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ring_changed = Arc::clone(&self.shared.ring_changed);
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = beat.tick() => self.beat().await,
                _ = ring_changed.notified() => {
                    // From the head of the list, now: the peers must hold
                    // these pins before this gateway may be lost.
                    self.cursor = 0;
                    self.beat().await;
                }
                (_, entries) = self.endpoint.recv(now_unix_ms) => self.receive(&entries),
            }
            self.publish();
        }
    }

    /// Reads the VIPs and backends again; on failure the last good view
    /// stays.
    fn refresh(&mut self) -> Result<(), DataplaneError> {
        let vips = self.maps.vips()?;
        let backends = self.maps.backends(&vips)?;
        let mut local = LocalBackends::default();
        for b in backends {
            local.insert(b.vip.protocol.ipproto(), b.vip.addr, b.addr, b.r, b.usable);
        }
        self.local = local;
        self.vips = vips
            .into_iter()
            .map(|(e, meta)| ((e.protocol.ipproto(), e.addr), meta))
            .collect();
        Ok(())
    }

    /// The entries a peer could not recompute, from the whole table.
    fn scan(&self) -> Result<Vec<SyncEntry>, DataplaneError> {
        // Each ring entry read once per scan (one system call each; the
        // walk itself reads the shared mapping). On a worker thread of its
        // own task: the controller's loop does not wait for it.
        let mut ring: HashMap<(u32, u32), Option<u32>> = HashMap::new();
        let mut failed = None;
        let entries = unrecomputable(
            self.table.occupied().map(|(_, slot)| slot),
            &self.local,
            |proto, vip, hash| {
                let meta = self.vips.get(&(proto, vip))?;
                *ring.entry((meta.index, hash)).or_insert_with(|| {
                    self.maps.ring_choice(meta, hash).unwrap_or_else(|e| {
                        failed = Some(e);
                        None
                    })
                })
            },
        );
        match failed {
            // An unreadable ring would send every flow of it: send none.
            Some(e) => Err(e),
            None => Ok(entries),
        }
    }

    /// One beat: view refreshed, table scanned, entries (or a heartbeat)
    /// sent, silent peers marked down.
    async fn beat(&mut self) {
        let scanned = self.refresh().and_then(|()| self.scan());
        let entries = match scanned {
            Ok(entries) => {
                if self.maps_failing {
                    info!("flow sync: the data plane's maps are readable again");
                    self.maps_failing = false;
                }
                entries
            }
            Err(e) => {
                self.endpoint.counters.errors += 1;
                if !self.maps_failing {
                    warn!(error = %e, "flow sync: reading the data plane failed; sending heartbeats only until it can");
                    self.maps_failing = true;
                }
                Vec::new()
            }
        };
        let batch = next_batch(&entries, &mut self.cursor, MAX_ENTRIES_PER_SEND);
        let now = now_unix_ms();
        self.endpoint.send(&batch, now).await;
        self.endpoint.expire(now);
    }

    /// Records a peer's entries where this table holds none of their flows.
    fn receive(&mut self, entries: &[SyncEntry]) {
        let (inserts, ignored) = to_local(entries, &self.local);
        let c = &mut self.endpoint.counters;
        c.entries_rejected += ignored as u64;
        let seen = flow_seen_now();
        for (word, r) in inserts {
            let tag = word & !lb_common::FLOW_TAG_FLAGS;
            if self.table.find(tag).is_some() {
                c.entries_present += 1;
            } else if self.table.insert_absent(word, r, seen) {
                c.entries_inserted += 1;
            } else {
                c.entries_rejected += 1;
            }
        }
    }

    /// Makes the peers' states and the counts the controller's to show.
    fn publish(&self) {
        *self.shared.report.lock().unwrap_or_else(|e| e.into_inner()) =
            (self.endpoint.status(), self.endpoint.counters);
    }
}

/// Up to `max` of `entries` from `*cursor` on, going round; `*cursor`
/// moves past them.
fn next_batch(entries: &[SyncEntry], cursor: &mut usize, max: usize) -> Vec<SyncEntry> {
    if entries.len() <= max {
        *cursor = 0;
        return entries.to_vec();
    }
    let start = *cursor % entries.len();
    let batch = entries
        .iter()
        .cycle()
        .skip(start)
        .take(max)
        .copied()
        .collect();
    *cursor = (start + max) % entries.len();
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Vec<SyncEntry> {
        (0..n)
            .map(|i| SyncEntry {
                tag: (i as u64) << 32 | 0x100,
                flags: 0,
                proto: lb_common::IPPROTO_TCP,
                vip: "198.18.2.10:80".parse().unwrap(),
                backend: "198.18.1.11:8080".parse().unwrap(),
            })
            .collect()
    }

    #[test]
    fn a_full_batch_fits_a_peers_send_burst_in_either_family() {
        let keys = super::super::SyncKeys::new("0123456789abcdef-pair");
        for (vip, backend) in [
            ("198.18.2.10:80", "198.18.1.11:8080"),
            ("[2001:2:0:2::10]:80", "[2001:2:0:1::11]:8080"),
        ] {
            let batch: Vec<SyncEntry> = entries(MAX_ENTRIES_PER_SEND)
                .into_iter()
                .map(|e| SyncEntry {
                    vip: vip.parse().unwrap(),
                    backend: backend.parse().unwrap(),
                    ..e
                })
                .collect();
            let msgs = keys.encode(1, &mut 0, 1, &batch).len();
            assert!(
                msgs <= super::super::transport::SEND_BURST as usize,
                "{vip}: {msgs} messages"
            );
        }
    }

    #[test]
    fn sends_go_round_a_list_longer_than_the_bound() {
        let all = entries(5);
        let mut cursor = 0;
        assert_eq!(next_batch(&all, &mut cursor, 10), all, "all at once");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let b = next_batch(&all, &mut cursor, 2);
            assert_eq!(b.len(), 2);
            seen.extend(b);
        }
        assert_eq!(&seen[..5], &all[..], "every entry within three sends");
        assert_eq!(seen[5], all[0], "then round again");
    }
}
