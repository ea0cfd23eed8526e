//! The controller against a fake data plane and fake probes, with
//! tokio's clock paused: every transition is driven by advancing time.
use std::sync::Mutex;

use lb_common::{BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_STANDBY, NO_BACKEND};

use super::*;
use crate::health::ProbeFuture;

/// A map write, in order.
#[derive(Clone, Debug, PartialEq)]
enum Op {
    Publish {
        vip_index: u32,
        slots: Vec<u32>,
        flags: u32,
    },
    Backend(BackendSlot),
    Free(u32),
    RemoveReply(Endpoint),
    RemoveVip(Endpoint),
}

/// `"198.18.2.10:80"` is TCP; `"198.18.2.10:53/udp"` UDP.
fn ep(s: &str) -> Endpoint {
    match s.strip_suffix("/udp") {
        Some(a) => Endpoint::udp(a.parse::<SocketAddr>().unwrap()),
        None => Endpoint::tcp(s.parse::<SocketAddr>().unwrap()),
    }
}

#[derive(Default)]
struct Fake {
    ops: Vec<Op>,
    /// The interfaces of every `sync_host` call (shared: the test
    /// reads it while `run` owns the fake).
    host_syncs: Arc<Mutex<Vec<Vec<String>>>>,
    vips: HashMap<Endpoint, (u32, Vec<u32>)>,
    /// Each VIP's `flow_idle_ms` as last published.
    idle: HashMap<Endpoint, u32>,
    /// Reply entries by backend endpoint.
    replies: HashMap<Endpoint, ReplyImage>,
    backends: HashMap<u32, BackendSlot>,
    names: HashMap<u32, String>,
    /// Set by a test to play `xdplb down --force` under the controller.
    detached: Arc<std::sync::atomic::AtomicBool>,
    /// Interfaces whose link is defunct (deleted), and whether each exists
    /// again (shared: the test flips them while `run` owns the fake).
    defunct: Arc<Mutex<HashMap<String, bool>>>,
    /// Interfaces attached again, in order.
    reattached: Vec<String>,
    /// Set by a test: this many more map writes succeed, the next one
    /// fails (once).
    fail_after: Option<usize>,
}

/// The error [`Fake::fail_after`] injects.
const INJECTED: &str = "injected write failure";

impl Fake {
    /// Counts a map write down towards [`Fake::fail_after`].
    fn write(&mut self) -> Result<(), DataplaneError> {
        match self.fail_after {
            Some(0) => {
                self.fail_after = None;
                Err(DataplaneError::Link {
                    path: PathBuf::from("/fake"),
                    reason: INJECTED.to_string(),
                })
            }
            Some(n) => {
                self.fail_after = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// State of the one live slot named `name` (a retiring slot may
    /// share the name: that is ambiguous, and refused).
    fn state(&self, name: &str) -> u8 {
        let slots: Vec<u32> = self
            .names
            .iter()
            .filter(|(i, n)| **i >= MAX_VIPS && n.as_str() == name)
            .map(|(i, _)| i - MAX_VIPS)
            .filter(|s| self.backends.contains_key(s))
            .collect();
        assert_eq!(slots.len(), 1, "slots named {name}: {slots:?}");
        self.backends[&slots[0]].state
    }

    /// Names of the backends the VIP's ring holds.
    fn ring_members(&self, vip: &str) -> Vec<String> {
        let (_, ring) = &self.vips[&ep(vip)];
        let mut m: Vec<String> = ring
            .iter()
            .filter(|s| **s != NO_BACKEND)
            .map(|s| self.names[&(MAX_VIPS + s)].clone())
            .collect();
        m.sort();
        m.dedup();
        m
    }
}

impl DataplaneOps for Fake {
    fn publish_vip(
        &mut self,
        vip: Endpoint,
        idx: u32,
        ring: &[u32],
        flags: u32,
        flow_idle_ms: u32,
    ) -> Result<(), DataplaneError> {
        self.write()?;
        self.idle.insert(vip, flow_idle_ms);
        let mut slots: Vec<u32> = ring.iter().copied().filter(|s| *s != NO_BACKEND).collect();
        slots.sort();
        slots.dedup();
        self.ops.push(Op::Publish {
            vip_index: idx,
            slots,
            flags,
        });
        self.vips.insert(vip, (idx, ring.to_vec()));
        Ok(())
    }
    fn sync_host(&mut self, interfaces: &[String]) -> Result<(), DataplaneError> {
        self.host_syncs.lock().unwrap().push(interfaces.to_vec());
        Ok(())
    }
    fn sync_extra_macs(&mut self, _macs: &[[u8; 6]]) -> Result<(), DataplaneError> {
        Ok(())
    }
    fn remove_vip(&mut self, vip: Endpoint) -> Result<(), DataplaneError> {
        self.write()?;
        self.ops.push(Op::RemoveVip(vip));
        self.vips.remove(&vip);
        Ok(())
    }
    fn write_backend(&mut self, slot: &BackendSlot) -> Result<(), DataplaneError> {
        self.write()?;
        self.ops.push(Op::Backend(slot.clone()));
        self.backends.insert(slot.slot, slot.clone());
        Ok(())
    }
    fn free_backend(&mut self, slot: u32) -> Result<(), DataplaneError> {
        self.write()?;
        self.ops.push(Op::Free(slot));
        self.backends.remove(&slot);
        Ok(())
    }
    fn write_reply(
        &mut self,
        backend: Endpoint,
        vip: SocketAddr,
        slot: u32,
        vip_index: u32,
    ) -> Result<(), DataplaneError> {
        self.write()?;
        self.replies.insert(
            backend,
            ReplyImage {
                vip,
                slot,
                vip_index,
            },
        );
        Ok(())
    }
    fn remove_reply(&mut self, backend: Endpoint) -> Result<(), DataplaneError> {
        self.write()?;
        self.ops.push(Op::RemoveReply(backend));
        self.replies.remove(&backend);
        Ok(())
    }
    fn write_name(&mut self, index: u32, name: &str) -> Result<(), DataplaneError> {
        self.write()?;
        self.names.insert(index, name.to_string());
        Ok(())
    }
    fn links(&self, interfaces: &[String]) -> Vec<(String, LinkState)> {
        let down = self.detached.load(std::sync::atomic::Ordering::Relaxed);
        let defunct = self.defunct.lock().unwrap();
        interfaces
            .iter()
            .map(|i| {
                let state = match (down, defunct.contains_key(i)) {
                    (true, _) => LinkState::Unpinned,
                    (false, true) => LinkState::Defunct,
                    (false, false) => LinkState::Attached,
                };
                (i.clone(), state)
            })
            .collect()
    }
    fn reattach(&mut self, iface: &str, _: AttachMode) -> Result<bool, DataplaneError> {
        let mut defunct = self.defunct.lock().unwrap();
        if defunct.get(iface) != Some(&true) {
            return Ok(false);
        }
        defunct.remove(iface);
        self.reattached.push(iface.to_string());
        Ok(true)
    }
    fn adopt_vips(&self) -> Result<Vec<(String, Endpoint, u32)>, DataplaneError> {
        Ok(self
            .vips
            .iter()
            .map(|(vip, (i, _))| (self.names[i].clone(), *vip, *i))
            .collect())
    }
    fn adopt_replies(&self) -> Result<Vec<(Endpoint, ReplyImage)>, DataplaneError> {
        Ok(self.replies.iter().map(|(e, r)| (*e, *r)).collect())
    }
    fn adopt_backends(&self) -> Result<Vec<(String, BackendSlot)>, DataplaneError> {
        Ok(self
            .backends
            .values()
            .map(|b| (self.names[&(MAX_VIPS + b.slot)].clone(), b.clone()))
            .collect())
    }
}

/// Probes answer from a table the test flips, after a delay it sets.
#[derive(Default)]
struct FakeProbes {
    up: Mutex<HashMap<SocketAddr, bool>>,
    delay: Mutex<HashMap<SocketAddr, Duration>>,
    /// Probes made, per address.
    calls: Mutex<HashMap<SocketAddr, u32>>,
}

impl FakeProbes {
    fn set(&self, addr: &str, up: bool) {
        self.up.lock().unwrap().insert(addr.parse().unwrap(), up);
    }

    fn set_delay(&self, addr: &str, d: Duration) {
        self.delay.lock().unwrap().insert(addr.parse().unwrap(), d);
    }

    /// Probes made of `addr` so far.
    fn calls(&self, addr: &str) -> u32 {
        let addr: SocketAddr = addr.parse().unwrap();
        self.calls.lock().unwrap().get(&addr).copied().unwrap_or(0)
    }
}

impl Probe for FakeProbes {
    fn check(&self, addr: SocketAddr, _timeout: Duration) -> ProbeFuture<'_> {
        *self.calls.lock().unwrap().entry(addr).or_default() += 1;
        let up = self.up.lock().unwrap().get(&addr).copied().unwrap_or(true);
        let delay = self.delay.lock().unwrap().get(&addr).copied();
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if up {
                Ok(())
            } else {
                Err(health::HealthError::Connect {
                    addr,
                    source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                })
            }
        })
    }
}

const CONFIG: &str = r#"
[dataplane]
interfaces = ["lo"]
ring_size = 1009

[[pool]]
name = "web"
vip = "198.18.2.10:80"
min_active = 2
  [pool.health]
  interval_ms = 100
  timeout_ms = 50
  rise = 2
  fall = 2
  [[pool.backend]]
  name = "web-1"
  addr = "198.18.1.11:8080"
  [[pool.backend]]
  name = "web-2"
  addr = "198.18.1.12:8080"
  [[pool.backend]]
  name = "spare-1"
  addr = "198.18.1.21:8080"
  role = "spare"
"#;

struct Rig {
    c: Controller<Fake>,
    inputs: Inputs,
    probes: Arc<FakeProbes>,
    dir: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rig_with(fake: Fake, probes: Arc<FakeProbes>, text: &str) -> Rig {
    rig_in(rig_dir(), fake, probes, text)
}

/// A fresh directory for a rig (removed with it).
fn rig_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "xdplb-ctl-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A rig whose config and state file live in `dir`.
fn rig_in(dir: PathBuf, fake: Fake, probes: Arc<FakeProbes>, text: &str) -> Rig {
    let path = dir.join("xdplb.toml");
    std::fs::write(&path, with_state_file(&dir, text)).unwrap();
    let cfg = config::load(&path).unwrap();
    let p = probes.clone();
    let factory: ProbeFactory = Arc::new(move |_| p.clone() as Arc<dyn Probe>);
    let (c, inputs) = Controller::new(path, cfg, fake, factory, None).unwrap();
    Rig {
        c,
        inputs,
        probes,
        dir,
    }
}

/// `text` with a `[control]` section keeping the state file in `dir`
/// (never the default one under /var/lib), unless it has its own.
fn with_state_file(dir: &Path, text: &str) -> String {
    if text.contains("[control]") {
        return text.to_string();
    }
    format!(
        "{text}\n[control]\nstate_file = \"{}\"\n",
        dir.join("state.json").display()
    )
}

fn rig() -> Rig {
    rig_with(Fake::default(), Arc::new(FakeProbes::default()), CONFIG)
}

impl Rig {
    /// Advances the paused clock by `d` in 10 ms steps, feeding every
    /// probe report to the controller and beating, as `run` does (so every
    /// test also checks that the beats it skips change nothing).
    async fn pump(&mut self, d: Duration) {
        self.pump_by(d, Duration::from_millis(10)).await
    }

    /// [`pump`](Rig::pump) in steps of `step` (coarser: cheaper with
    /// thousands of backends).
    async fn pump_by(&mut self, d: Duration, step: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            tokio::time::advance(step).await;
            // Until no report is left (checkers blocked on a full
            // channel get to send once it drains), as `run` would.
            loop {
                tokio::task::yield_now().await;
                let mut any = false;
                while let Ok(r) = self.inputs.health_rx.try_recv() {
                    self.c.on_health(r);
                    any = true;
                }
                if !any {
                    break;
                }
            }
            self.c.beat().unwrap();
        }
    }

    /// Rewrites the config file (for a reload).
    fn write_config(&self, text: impl AsRef<str>) {
        let text = with_state_file(&self.dir, text.as_ref());
        std::fs::write(&self.c.config_path, text).unwrap();
    }

    fn fake(&self) -> &Fake {
        &self.c.out.dp
    }
}

#[tokio::test(start_paused = true)]
async fn primaries_serve_and_the_spare_stands_by() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let f = r.fake();
    assert_eq!(f.state("web-1"), BACKEND_ACTIVE);
    assert_eq!(f.state("web-2"), BACKEND_ACTIVE);
    assert_eq!(f.state("spare-1"), BACKEND_STANDBY);
    assert_eq!(f.ring_members("198.18.2.10:80"), ["web-1", "web-2"]);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_written_before_every_backend_is_probed() {
    let mut r = rig();
    // No time has passed: no probe has reported yet.
    r.c.sync().unwrap();
    assert!(r.fake().ops.is_empty(), "{:?}", r.fake().ops);
    r.pump(Duration::from_millis(30)).await;
    assert!(!r.fake().ops.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_primary_leaves_the_ring_before_it_is_marked_down() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let before = r.fake().ops.len();
    r.probes.set("198.18.1.11:8080", false);
    // fall = 2 at interval 100 ms: down within 2 intervals.
    r.pump(Duration::from_millis(250)).await;
    let f = r.fake();
    assert_eq!(f.state("web-1"), BACKEND_DOWN);
    assert_eq!(f.state("spare-1"), BACKEND_ACTIVE, "spare fills min_active");
    assert_eq!(f.ring_members("198.18.2.10:80"), ["spare-1", "web-2"]);
    let ops = &f.ops[before..];
    let publish = ops
        .iter()
        .position(|o| matches!(o, Op::Publish { .. }))
        .expect("ring republished");
    let down = ops
        .iter()
        .position(|o| matches!(o, Op::Backend(b) if b.state == BACKEND_DOWN))
        .expect("marked down");
    let spare_up = ops
        .iter()
        .position(|o| matches!(o, Op::Backend(b) if b.state == BACKEND_ACTIVE))
        .expect("spare marked active");
    assert!(
        spare_up < publish,
        "spare marked before a ring names it: {ops:?}"
    );
    assert!(publish < down, "ring published before re-steering: {ops:?}");
}

/// `[announce]`: nothing is written before the first probes; the VIP
/// is announced while its ring has a backend and withdrawn when the
/// pool empties; BIRD missing is no error, and status says BIRD has
/// nothing (`announced`) while the intent follows the ring.
#[tokio::test(start_paused = true)]
async fn announce_follows_the_ring_and_survives_a_missing_bird() {
    let dir = std::env::temp_dir().join(format!("xdplb-ctl-announce-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let routes = dir.join("vips.conf");
    let text = format!(
        "{CONFIG}\n[announce]\ncontrol_socket = \"{}\"\nroutes_file = \"{}\"\n",
        dir.join("no-bird.ctl").display(),
        routes.display()
    );
    let fake = Fake::default();
    let detached = Arc::clone(&fake.detached);
    let mut r = rig_with(fake, Arc::new(FakeProbes::default()), &text);
    assert_eq!(
        r.c.status().pools[0].announce_intent,
        None,
        "undecided before a sync"
    );
    assert!(!routes.exists(), "nothing written before the first probes");
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(r.c.status().pools[0].announce_intent, Some(true));
    assert_eq!(
        r.c.status().pools[0].announced,
        Some(false),
        "no BIRD, so BIRD has nothing"
    );
    let read = || std::fs::read_to_string(&routes).unwrap_or_default();
    assert!(
        read().contains("route 198.18.2.10/32 blackhole;"),
        "{}",
        read()
    );
    for b in ["198.18.1.11:8080", "198.18.1.12:8080", "198.18.1.21:8080"] {
        r.probes.set(b, false);
    }
    r.pump(Duration::from_millis(300)).await;
    assert!(r.c.status().pools[0].empty);
    assert_eq!(r.c.status().pools[0].announce_intent, Some(false));
    assert!(!read().contains("198.18.2.10"), "{}", read());
    assert!(read().contains("protocol static xdplb_vips {"));
    r.probes.set("198.18.1.12:8080", true);
    r.pump(Duration::from_millis(300)).await;
    assert!(read().contains("198.18.2.10/32"), "{}", read());
    // `xdplb down --force` under the running controller: the next change
    // must not announce again what nothing forwards.
    detached.store(true, std::sync::atomic::Ordering::Relaxed);
    r.probes.set("198.18.1.11:8080", true);
    r.pump(Duration::from_millis(300)).await;
    assert!(!read().contains("198.18.2.10"), "{}", read());
    assert_eq!(r.c.status().pools[0].announce_intent, Some(false));
    assert_eq!(r.c.status().pools[0].announced, Some(false));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether the controller wants pool "web" announced (`None` without
/// `[announce]`): what it hands BIRD, whatever BIRD then has.
fn announce_intent(r: &Rig) -> Option<bool> {
    r.c.out.announcer.as_ref().map(|a| a.announces("web"))
}

/// A fresh directory for an announcing test's routes file.
fn announce_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xdplb-ctl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// CONFIG with `[announce]` into `dir` (no BIRD there: the routes file
/// is what tells).
fn announcing(dir: &Path) -> String {
    format!(
        "{CONFIG}\n[announce]\ncontrol_socket = \"{}\"\nroutes_file = \"{}\"\n",
        dir.join("no-bird.ctl").display(),
        dir.join("vips.conf").display()
    )
}

/// Draining every backend of a pool keeps its VIP announced while the
/// drained backends hold flows, at most DRAIN_ANNOUNCE_HOLD; then it is
/// withdrawn.
#[tokio::test(start_paused = true)]
async fn draining_every_backend_keeps_the_vip_announced_while_flows_remain() {
    let dir = announce_dir("drain-all");
    let text = announcing(&dir);
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &text);
    let read = |_: &Rig| std::fs::read_to_string(dir.join("vips.conf")).unwrap_or_default();
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(announce_intent(&r), Some(true));
    let slots: Vec<u32> = r.c.slots.backends.values().copied().collect();
    let busy: HashMap<u32, u64> = slots.iter().map(|s| (*s, 5)).collect();
    r.c.set_flows(busy.clone());
    for b in ["web-1", "web-2", "spare-1"] {
        r.c.drain("web", b, true).unwrap();
    }
    r.pump(Duration::from_millis(300)).await;
    assert!(r.c.status().pools[0].empty);
    assert_eq!(
        announce_intent(&r),
        Some(true),
        "withdrawn while the drained backends hold flows"
    );
    assert!(read(&r).contains("198.18.2.10/32"), "{}", read(&r));
    // Their flows end: withdrawn.
    r.c.set_flows(HashMap::new());
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(announce_intent(&r), Some(false));
    assert!(!read(&r).contains("198.18.2.10"), "{}", read(&r));
    // Flows that never end hold it only so long.
    r.c.drain("web", "web-1", false).unwrap();
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(announce_intent(&r), Some(true));
    r.c.set_flows(busy);
    r.c.drain("web", "web-1", true).unwrap();
    r.pump_by(
        DRAIN_ANNOUNCE_HOLD - Duration::from_secs(1),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(announce_intent(&r), Some(true));
    r.pump_by(Duration::from_secs(2), Duration::from_millis(100))
        .await;
    assert_eq!(announce_intent(&r), Some(false));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An interface deleted under the controller: status says the data plane
/// is detached from it and nothing is announced; created again, it gets
/// the program back (on a link event or the host beat) and the VIP is
/// announced again.
#[tokio::test(start_paused = true)]
async fn an_interface_deleted_and_created_again_gets_the_program_back() {
    let dir = announce_dir("relink");
    let text = announcing(&dir);
    let fake = Fake::default();
    let defunct = Arc::clone(&fake.defunct);
    let mut r = rig_with(fake, Arc::new(FakeProbes::default()), &text);
    let read = || std::fs::read_to_string(dir.join("vips.conf")).unwrap_or_default();
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(announce_intent(&r), Some(true));
    assert!(r.c.status().detached.is_empty());
    defunct.lock().unwrap().insert("lo".into(), false);
    r.c.check_links();
    r.pump(Duration::from_millis(100)).await;
    assert_eq!(r.c.status().detached, ["lo"]);
    assert_eq!(announce_intent(&r), Some(false));
    assert!(!read().contains("198.18.2.10"), "{}", read());
    // Still gone: nothing to attach to.
    r.c.check_links();
    assert!(r.fake().reattached.is_empty());
    defunct.lock().unwrap().insert("lo".into(), true);
    r.c.check_links();
    r.pump(Duration::from_millis(100)).await;
    assert_eq!(r.fake().reattached, ["lo"]);
    assert!(r.c.status().detached.is_empty());
    assert_eq!(announce_intent(&r), Some(true));
    assert!(read().contains("198.18.2.10/32"), "{}", read());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A reload that removes `[announce]` withdraws what it announced.
#[tokio::test(start_paused = true)]
async fn removing_announce_by_reload_withdraws_the_vips() {
    let dir = announce_dir("removed");
    let text = announcing(&dir);
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &text);
    let read = |_: &Rig| std::fs::read_to_string(dir.join("vips.conf")).unwrap_or_default();
    r.pump(Duration::from_millis(300)).await;
    assert!(read(&r).contains("198.18.2.10/32"), "{}", read(&r));
    r.write_config(CONFIG);
    r.c.reload().unwrap();
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(announce_intent(&r), None);
    assert!(
        !read(&r).contains("198.18.2.10"),
        "still announced after [announce] was removed: {}",
        read(&r)
    );
    assert!(read(&r).contains("protocol static xdplb_vips {"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_pool_with_every_backend_down_shows_empty_until_one_returns() {
    let mut r = rig();
    assert!(!r.c.status().pools[0].empty, "not empty before any ring");
    r.pump(Duration::from_millis(300)).await;
    let st = r.c.status();
    assert!(!st.pools[0].empty);
    assert_eq!(st.pools[0].on_empty, OnEmpty::Reject);
    for b in ["198.18.1.11:8080", "198.18.1.12:8080", "198.18.1.21:8080"] {
        r.probes.set(b, false);
    }
    r.pump(Duration::from_millis(300)).await;
    assert!(r.fake().ring_members("198.18.2.10:80").is_empty());
    let st = r.c.status();
    assert!(st.pools[0].empty, "{st:?}");
    assert!(st.pools[0]
        .backends
        .iter()
        .all(|b| b.state == BackendState::Down));
    r.probes.set("198.18.1.12:8080", true);
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(r.fake().ring_members("198.18.2.10:80"), ["web-2"]);
    assert!(!r.c.status().pools[0].empty);
}

#[tokio::test(start_paused = true)]
async fn a_recovered_primary_sends_the_spare_back_after_its_flows_end() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    r.probes.set("198.18.1.11:8080", false);
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(r.fake().state("spare-1"), BACKEND_ACTIVE);
    let spare_slot = r.c.slots.backends[&key("web", "spare-1")];
    r.c.set_flows(HashMap::from([(spare_slot, 3)]));
    r.probes.set("198.18.1.11:8080", true);
    // rise = 2.
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(r.fake().state("web-1"), BACKEND_ACTIVE);
    assert_eq!(r.fake().state("spare-1"), lb_common::BACKEND_DRAINING);
    assert_eq!(r.fake().ring_members("198.18.2.10:80"), ["web-1", "web-2"]);
    r.c.set_flows(HashMap::new());
    r.pump(Duration::from_millis(50)).await;
    assert_eq!(r.fake().state("spare-1"), BACKEND_STANDBY);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_controller_adopts_slots_and_drains_and_rewrites_nothing() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    r.c.drain("web", "web-2", true).unwrap();
    assert_eq!(r.fake().state("web-2"), lb_common::BACKEND_DRAINING);
    let slots = r.c.slots.backends.clone();
    let ring = r.fake().vips[&ep("198.18.2.10:80")].1.clone();
    let probes = r.probes.clone();
    // "Restart": a new controller over the same data plane.
    let mut fake = std::mem::take(&mut r.c.out.dp);
    fake.ops.clear();
    drop(r);
    let mut r = rig_with(fake, probes, CONFIG);
    assert_eq!(r.c.slots.backends, slots, "slots recovered from the maps");
    assert!(
        r.c.admin.get(&key("web", "web-2")).is_some_and(|a| a.drain),
        "drain recovered"
    );
    r.pump(Duration::from_millis(300)).await;
    // Same states, same rings: nothing needed rewriting but the ring
    // publish of the new process (which the data plane skips when equal).
    let f = r.fake();
    // Not vacuous: the new controller did take over (it published),
    // and what it published is the ring it found.
    assert!(
        f.ops.iter().any(|o| matches!(o, Op::Publish { .. })),
        "the restarted controller never took over: {:?}",
        f.ops
    );
    assert!(
        f.ops.iter().all(|o| matches!(o, Op::Publish { .. })),
        "unexpected writes after restart: {:?}",
        f.ops
    );
    assert_eq!(f.vips[&ep("198.18.2.10:80")].1, ring);
    assert_eq!(f.state("web-2"), lb_common::BACKEND_DRAINING);
}

/// CONFIG with load agents: a spare joins after 1 s above 0.8.
fn loaded() -> String {
    CONFIG.replace(
        "  [[pool.backend]]\n  name = \"web-1\"",
        "  [pool.load]\n  interval_ms = 1000\n  high_watermark = 0.8\n  low_watermark = 0.3\n  \
         scale_up_after_ms = 1000\n  scale_down_after_ms = 30000\n  \
         [[pool.backend]]\n  name = \"web-1\"",
    )
}

impl Rig {
    /// Every agent of pool "web" answers with load `load`.
    fn agents_say(&mut self, load: f64) {
        use crate::load::{client::LoadReport, parse_agent_reply};
        let line = format!("up 100% cpu={load} mem={load} disk={load} net={load}");
        let ids: Vec<u64> = self.c.pollers.values().map(|t| t.id).collect();
        assert!(!ids.is_empty(), "no agent poller");
        for id in ids {
            self.c.on_load(LoadReport {
                id,
                result: Ok(parse_agent_reply(&line).unwrap()),
            });
        }
    }
}

/// A restarted controller waits for the agents' first answers (within a
/// bound) as for the probes': weights and spares are then what they were.
#[tokio::test(start_paused = true)]
async fn the_first_sync_waits_for_the_agents_first_answers() {
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &loaded());
    r.pump(Duration::from_millis(200)).await;
    assert!(
        r.c.runtime.values().all(|rt| rt.probed),
        "probes not in yet"
    );
    assert!(
        r.fake().ops.is_empty(),
        "wrote before the agents answered: {:?}",
        r.fake().ops
    );
    r.agents_say(0.5);
    r.pump(Duration::from_millis(20)).await;
    assert!(!r.fake().ops.is_empty());
    // Agents that never answer hold it back only so long.
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &loaded());
    r.pump(Duration::from_millis(1100)).await;
    assert!(!r.fake().ops.is_empty(), "no bound on the agents' silence");
}

/// A restart keeps what the planner knew: a spare serving for load keeps
/// serving while the load holds, and status shows no state change that
/// did not happen.
#[tokio::test(start_paused = true)]
async fn a_restart_keeps_a_spare_serving_for_load() {
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &loaded());
    for _ in 0..6 {
        r.agents_say(0.95);
        r.pump(Duration::from_millis(500)).await;
    }
    assert_eq!(r.fake().state("spare-1"), BACKEND_ACTIVE);
    assert_eq!(r.fake().ring_members("198.18.2.10:80").len(), 3);
    let spare = r.c.slots.backends[&key("web", "spare-1")];
    let mut r = restart(r, &loaded());
    r.agents_say(0.95);
    for _ in 0..4 {
        r.pump(Duration::from_millis(500)).await;
        r.agents_say(0.95);
    }
    assert!(
        !r.fake()
            .ops
            .iter()
            .any(|o| matches!(o, Op::Backend(b) if b.slot == spare && b.state != BACKEND_ACTIVE)),
        "the spare left the ring across the restart: {:?}",
        r.fake().ops
    );
    assert_eq!(
        r.fake().state("spare-1"),
        BACKEND_ACTIVE,
        "{:?}",
        r.fake().ops
    );
    assert_eq!(r.fake().ring_members("198.18.2.10:80").len(), 3);
    for b in ["web-1", "web-2", "spare-1"] {
        assert_eq!(transitions_of(&r.c, b), [], "{b}");
    }
}

/// CONFIG plus a second pool, "api", with one backend.
fn two_pools() -> String {
    format!(
        "{CONFIG}
[[pool]]
name = \"api\"
vip = \"198.18.2.11:80\"
  [pool.health]
  interval_ms = 100
  timeout_ms = 50
  [[pool.backend]]
  name = \"api-1\"
  addr = \"198.18.1.41:8080\"
"
    )
}

/// A reload whose writes fail half-way is refused, and leaves the running
/// config, the controller's state and the maps as they were.
#[tokio::test(start_paused = true)]
async fn a_reload_that_fails_half_way_changes_nothing() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    // Names of indices no entry uses are never cleared (and never read).
    let in_use = r.fake().names.clone();
    let maps = |f: &Fake| {
        let names: HashMap<u32, String> = f
            .names
            .iter()
            .filter(|(i, _)| in_use.contains_key(i))
            .map(|(i, n)| (*i, n.clone()))
            .collect();
        (f.vips.clone(), f.backends.clone(), f.replies.clone(), names)
    };
    let before = maps(r.fake());
    let config = r.c.config.clone();
    let status = r.c.status();
    // A new pool, and web-2 removed: names, replies, slots and rings to
    // write; the third write fails.
    r.write_config(two_pools().replace(
        "  [[pool.backend]]\n  name = \"web-2\"\n  addr = \"198.18.1.12:8080\"\n",
        "",
    ));
    r.c.out.dp.fail_after = Some(2);
    let err = r.c.reload().unwrap_err();
    assert!(err.contains(INJECTED), "{err}");
    assert!(r.fake().fail_after.is_none(), "the failure was not reached");
    assert!(r.c.config == config, "the running config changed");
    assert_eq!(r.c.status(), status, "the running state changed");
    assert_eq!(maps(r.fake()), before, "the maps were left half-written");
    // And the next beats keep it so.
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(maps(r.fake()), before);
    assert!(r.c.config == config);
}

/// A state file that cannot be read is moved aside and reported, never
/// overwritten with fewer drains than it holds.
#[tokio::test(start_paused = true)]
async fn an_unreadable_state_file_is_moved_aside_not_overwritten() {
    let dir = rig_dir();
    let state = dir.join("state.json");
    // A save cut short by a full disk, say.
    let kept = "{\"version\":1,\"drains\":[{\"pool\":\"web\",\"backend\":\"web-2\"}";
    std::fs::write(&state, kept).unwrap();
    let mut r = rig_in(
        dir.clone(),
        Fake::default(),
        Arc::new(FakeProbes::default()),
        CONFIG,
    );
    r.pump(Duration::from_millis(300)).await;
    r.c.drain("web", "web-1", true).unwrap();
    let aside: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("state.json.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "not moved aside: {aside:?}");
    assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), kept);
    // The new file holds the drain made since.
    let saved = crate::state::load(&state).unwrap();
    assert_eq!(
        saved.keys().cloned().collect::<Vec<_>>(),
        [key("web", "web-1")]
    );
    assert!(saved[&key("web", "web-1")].drain);
}

/// A "restart": a new controller over the same data plane (and probes)
/// with the config `text`.
fn restart(mut r: Rig, text: &str) -> Rig {
    let probes = r.probes.clone();
    let mut fake = std::mem::take(&mut r.c.out.dp);
    fake.ops.clear();
    drop(r);
    rig_with(fake, probes, text)
}

#[tokio::test(start_paused = true)]
async fn a_restart_removes_what_the_file_no_longer_has() {
    let mut r = rig_with(
        Fake::default(),
        Arc::new(FakeProbes::default()),
        &two_pools(),
    );
    r.pump(Duration::from_millis(300)).await;
    let api_vip = ep("198.18.2.11:80");
    assert!(r.fake().vips.contains_key(&api_vip));
    let web2 = r.c.slots.backends[&key("web", "web-2")];
    let api1 = r.c.slots.backends[&key("api", "api-1")];
    let api_index = r.c.slots.vips["api"];
    // Pool "api" and backend web-2 leave the file while we are down.
    let edited = CONFIG.replace(
        "  [[pool.backend]]\n  name = \"web-2\"\n  addr = \"198.18.1.12:8080\"\n",
        "",
    );
    assert_ne!(edited, CONFIG);
    let mut r = restart(r, &edited);
    // The removed VIP stops taking new flows at once.
    assert!(
        r.fake().ops.contains(&Op::RemoveVip(api_vip)),
        "{:?}",
        r.fake().ops
    );
    assert!(!r.fake().vips.contains_key(&api_vip));
    // The removed backends drain (established flows continue) ...
    for slot in [web2, api1] {
        assert_eq!(r.fake().backends[&slot].state, lb_common::BACKEND_DRAINING);
    }
    r.pump(Duration::from_millis(300)).await;
    // min_active = 2 with one primary left: the spare fills in.
    assert_eq!(
        r.fake().ring_members("198.18.2.10:80"),
        ["spare-1", "web-1"]
    );
    // ... and, flows not counted yet, nothing is freed: not counted is
    // not zero.
    assert!(
        !r.fake().ops.iter().any(|o| matches!(o, Op::Free(_))),
        "{:?}",
        r.fake().ops
    );
    r.c.set_flows(HashMap::from([(web2, 1)]));
    r.pump(Duration::from_millis(50)).await;
    assert!(r.fake().ops.contains(&Op::Free(api1)));
    assert!(!r.fake().ops.contains(&Op::Free(web2)), "freed with a flow");
    r.c.set_flows(HashMap::new());
    r.pump(Duration::from_millis(50)).await;
    assert!(r.fake().ops.contains(&Op::Free(web2)));
    // The VIP index is free for a new pool.
    assert!(!r.c.slots.vips.contains_key("api"));
    assert!(r.c.slots.free_vips.contains(&api_index));
}

#[tokio::test(start_paused = true)]
async fn one_probe_lost_across_a_restart_resets_nothing() {
    let mut r = rig();
    r.probes.set("198.18.1.21:8080", false);
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(r.fake().state("spare-1"), BACKEND_DOWN);
    let mut r = restart(r, CONFIG);
    // The first probe after the restart is lost for web-1 (fall = 2),
    // and the first one of the dead spare succeeds (rise = 2).
    r.probes.set("198.18.1.11:8080", false);
    r.probes.set("198.18.1.21:8080", true);
    r.pump(Duration::from_millis(50)).await;
    r.probes.set("198.18.1.11:8080", true);
    r.probes.set("198.18.1.21:8080", false);
    r.pump(Duration::from_millis(300)).await;
    let f = r.fake();
    assert!(
        f.ops.iter().all(|o| !matches!(o, Op::Backend(_))),
        "a restart with one probe lost rewrote a backend: {:?}",
        f.ops
    );
    assert_eq!(f.state("web-1"), BACKEND_ACTIVE);
    assert_eq!(f.state("spare-1"), BACKEND_DOWN);
    assert_eq!(f.ring_members("198.18.2.10:80"), ["web-1", "web-2"]);
    // A backend that really died still goes down after `fall` failures.
    r.probes.set("198.18.1.11:8080", false);
    r.pump(Duration::from_millis(250)).await;
    assert_eq!(r.fake().state("web-1"), BACKEND_DOWN);
}

#[tokio::test(start_paused = true)]
async fn a_count_begun_before_a_slot_retired_does_not_free_it() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let slot = r.c.slots.backends[&key("web", "web-2")];
    let before = Instant::now();
    r.pump(Duration::from_millis(20)).await;
    let removed = CONFIG.replace(
        "  [[pool.backend]]\n  name = \"web-2\"\n  addr = \"198.18.1.12:8080\"\n",
        "",
    );
    r.write_config(removed);
    r.c.reload().unwrap();
    // A walk that started before the reload finishes now, empty.
    r.c.set_flows_since(before, HashMap::new());
    r.pump(Duration::from_millis(50)).await;
    assert!(
        !r.fake().ops.contains(&Op::Free(slot)),
        "freed on a stale count"
    );
    r.c.set_flows(HashMap::new());
    r.pump(Duration::from_millis(20)).await;
    assert!(r.fake().ops.contains(&Op::Free(slot)));
}

#[tokio::test(start_paused = true)]
async fn a_pool_whose_vip_changes_moves_to_the_new_address() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let old = ep("198.18.2.10:80");
    let moved = CONFIG.replace("198.18.2.10:80", "198.18.2.20:80");
    let mut r = restart(r, &moved);
    assert!(r.fake().ops.contains(&Op::RemoveVip(old)));
    r.pump(Duration::from_millis(300)).await;
    assert!(!r.fake().vips.contains_key(&old));
    assert_eq!(r.fake().ring_members("198.18.2.20:80"), ["web-1", "web-2"]);
    // By reload, too.
    r.write_config(CONFIG);
    r.c.reload().unwrap();
    assert!(!r.fake().vips.contains_key(&ep("198.18.2.20:80")));
    assert_eq!(r.fake().ring_members("198.18.2.10:80"), ["web-1", "web-2"]);
}

#[tokio::test(start_paused = true)]
async fn on_empty_reaches_the_vip_flags_and_a_reload_republishes_them() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let flags = |ops: &[Op]| -> Vec<u32> {
        ops.iter()
            .filter_map(|o| match o {
                Op::Publish { flags, .. } => Some(*flags),
                _ => None,
            })
            .collect()
    };
    let published = flags(&r.fake().ops);
    assert!(!published.is_empty());
    assert!(
        published
            .iter()
            .all(|f| *f == lb_common::VIP_F_REJECT_EMPTY),
        "default on_empty is reject: {published:?}"
    );
    // Same backends, same ring: only the policy changes, and that alone
    // must reach the data plane.
    let before = r.fake().ops.len();
    r.write_config(CONFIG.replace("min_active = 2\n", "min_active = 2\non_empty = \"drop\"\n"));
    let summary = r.c.reload().unwrap();
    assert!(summary.contains("changed pool web"), "{summary}");
    assert_eq!(flags(&r.fake().ops[before..]), [0]);
    assert_eq!(r.c.status().pools[0].on_empty, OnEmpty::Drop);
    // And nothing more while it stays so.
    let before = r.fake().ops.len();
    r.pump(Duration::from_millis(300)).await;
    assert!(flags(&r.fake().ops[before..]).is_empty());
}

#[tokio::test(start_paused = true)]
async fn run_rewrites_the_host_addresses_on_a_beat() {
    let fake = Fake::default();
    let syncs = Arc::clone(&fake.host_syncs);
    let mut r = rig_with(fake, Arc::new(FakeProbes::default()), CONFIG);
    // `run` consumes the controller: swap a twin into the rig (same
    // config, its own fake) and run the original.
    let twin_cfg = config::load(&r.c.config_path).unwrap();
    let factory: ProbeFactory = Arc::new(|_| Arc::new(FakeProbes::default()) as Arc<dyn Probe>);
    let (twin, twin_inputs) = Controller::new(
        r.c.config_path.clone(),
        twin_cfg,
        Fake::default(),
        factory,
        None,
    )
    .unwrap();
    let c = std::mem::replace(&mut r.c, twin);
    let inputs = std::mem::replace(&mut r.inputs, twin_inputs);
    let (_cmd_tx, cmd_rx) = mpsc::channel(1);
    let (_reload_tx, reload_rx) = mpsc::channel(1);
    let runs = HOST_SYNC_EVERY * 3 + HOST_SYNC_EVERY / 2;
    c.run(inputs, cmd_rx, reload_rx, None, tokio::time::sleep(runs))
        .await
        .unwrap();
    let syncs = syncs.lock().unwrap().clone();
    assert_eq!(syncs.len(), 3, "one every {HOST_SYNC_EVERY:?}: {syncs:?}");
    assert!(syncs.iter().all(|i| i == &["lo".to_string()]), "{syncs:?}");
}

#[tokio::test(start_paused = true)]
async fn reload_refuses_a_bad_config_and_applies_a_good_one() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let ops = r.fake().ops.len();
    r.write_config(CONFIG.replace("rise = 2", "rise = 0"));
    let err = r.c.reload().unwrap_err();
    assert!(err.contains("xdplb.toml:") && err.contains("rise"), "{err}");
    assert_eq!(r.fake().ops.len(), ops, "a refused reload wrote something");
    r.write_config(CONFIG.replace("ring_size = 1009", "ring_size = 1013"));
    let err = r.c.reload().unwrap_err();
    assert!(err.contains("[dataplane]"), "{err}");
    // Remove web-2: it drains, then its slot is freed once idle.
    let removed = CONFIG.replace(
        "  [[pool.backend]]\n  name = \"web-2\"\n  addr = \"198.18.1.12:8080\"\n",
        "",
    );
    r.write_config(removed);
    let slot = r.c.slots.backends[&key("web", "web-2")];
    r.c.set_flows(HashMap::from([(slot, 1)]));
    let summary = r.c.reload().unwrap();
    assert!(summary.contains("removed backend web/web-2"), "{summary}");
    assert_eq!(r.fake().backends[&slot].state, lb_common::BACKEND_DRAINING);
    assert_eq!(
        r.fake().ring_members("198.18.2.10:80"),
        ["spare-1", "web-1"]
    );
    r.c.set_flows(HashMap::new());
    r.pump(Duration::from_millis(50)).await;
    assert!(r.fake().ops.contains(&Op::Free(slot)));
    assert!(r
        .fake()
        .ops
        .contains(&Op::RemoveReply(ep("198.18.1.12:8080"))));
}

#[tokio::test(start_paused = true)]
async fn new_probe_rules_keep_every_verdict() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let ops = r.fake().ops.len();
    r.write_config(CONFIG.replace("interval_ms = 100", "interval_ms = 150"));
    let summary = r.c.reload().unwrap();
    assert!(summary.contains("changed pool web"), "{summary}");
    r.pump(Duration::from_millis(400)).await;
    let f = r.fake();
    assert!(
        f.ops[ops..]
            .iter()
            .all(|o| !matches!(o, Op::Backend(b) if b.state == BACKEND_DOWN)),
        "a backend went down on a probe-rule change: {:?}",
        &f.ops[ops..]
    );
    assert_eq!(f.state("web-1"), BACKEND_ACTIVE);
}

#[tokio::test(start_paused = true)]
async fn a_readdressed_backend_gets_a_new_slot_and_the_old_one_retires() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let old_slot = r.c.slots.backends[&key("web", "web-1")];
    r.write_config(CONFIG.replace("198.18.1.11:8080", "198.18.1.31:8080"));
    r.c.set_flows(HashMap::from([(old_slot, 2)]));
    let summary = r.c.reload().unwrap();
    assert!(
        summary.contains("re-addressed backend web/web-1"),
        "{summary}"
    );
    let new_slot = r.c.slots.backends[&key("web", "web-1")];
    assert_ne!(new_slot, old_slot);
    assert_eq!(
        r.fake().backends[&old_slot].state,
        lb_common::BACKEND_DRAINING
    );
    r.pump(Duration::from_millis(300)).await;
    let new_meta = &r.fake().backends[&new_slot];
    assert_eq!(new_meta.addr, "198.18.1.31:8080".parse().unwrap());
    assert_eq!(new_meta.state, BACKEND_ACTIVE);
    r.c.set_flows(HashMap::new());
    r.pump(Duration::from_millis(20)).await;
    assert!(r.fake().ops.contains(&Op::Free(old_slot)));
}

#[tokio::test(start_paused = true)]
async fn drains_survive_down_through_the_state_file() {
    let state =
        std::env::temp_dir().join(format!("xdplb-ctl-state-{}/state.json", std::process::id()));
    let text = format!(
        "{CONFIG}\n[control]\nstate_file = \"{}\"\n",
        state.display()
    );
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &text);
    r.pump(Duration::from_millis(300)).await;
    r.c.drain("web", "web-2", true).unwrap();
    let probes = r.probes.clone();
    drop(r);
    // `xdplb down`: the maps, flags and all, are gone.
    let mut r = rig_with(Fake::default(), probes.clone(), &text);
    assert!(r.c.admin.get(&key("web", "web-2")).is_some_and(|a| a.drain));
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(r.fake().state("web-2"), lb_common::BACKEND_DRAINING);
    assert_eq!(
        r.fake().ring_members("198.18.2.10:80"),
        ["spare-1", "web-1"]
    );
    // Undrained: saved too.
    r.c.drain("web", "web-2", false).unwrap();
    drop(r);
    let r = rig_with(Fake::default(), probes, &text);
    assert!(r.c.admin.is_empty());
    std::fs::remove_dir_all(state.parent().unwrap()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn on_down_keep_lets_a_down_backends_flows_run_out() {
    let keep = CONFIG.replace("min_active = 2\n", "min_active = 2\non_down = \"keep\"\n");
    assert_ne!(keep, CONFIG);
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &keep);
    r.pump(Duration::from_millis(300)).await;
    r.probes.set("198.18.1.11:8080", false);
    r.pump(Duration::from_millis(250)).await;
    let slot = r.c.slots.backends[&key("web", "web-1")];
    // Out of the ring, but DRAINING (flows continue), not DOWN.
    assert_eq!(r.fake().backends[&slot].state, lb_common::BACKEND_DRAINING);
    assert_eq!(
        r.fake().ring_members("198.18.2.10:80"),
        ["spare-1", "web-2"]
    );
    let st = r.c.status();
    let b = &st.pools[0].backends[0];
    assert_eq!((b.health.as_str(), b.state.as_str()), ("down", "down"));
    // A restart remembers it is down, not drained: it needs `rise`
    // successes, and no operator drain appears.
    let mut r = restart(r, &keep);
    assert!(r.c.admin.is_empty());
    r.probes.set("198.18.1.11:8080", true);
    r.pump(Duration::from_millis(50)).await;
    assert_eq!(r.fake().backends[&slot].state, lb_common::BACKEND_DRAINING);
    r.pump(Duration::from_millis(200)).await;
    assert_eq!(r.fake().backends[&slot].state, BACKEND_ACTIVE);
    // The default, reset: DOWN.
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    r.probes.set("198.18.1.11:8080", false);
    r.pump(Duration::from_millis(250)).await;
    assert_eq!(r.fake().state("web-1"), BACKEND_DOWN);
}

#[tokio::test(start_paused = true)]
async fn status_shows_the_smoothed_probe_round_trip() {
    let mut r = rig();
    r.probes
        .set_delay("198.18.1.11:8080", Duration::from_millis(20));
    r.pump(Duration::from_millis(300)).await;
    let rtt = |r: &Rig| r.c.status().pools[0].backends[0].rtt_ms;
    assert_eq!(rtt(&r), Some(20.0));
    assert_eq!(r.c.status().pools[0].backends[1].rtt_ms, Some(0.0));
    // Slower now: it moves a quarter of the way per probe.
    r.probes
        .set_delay("198.18.1.11:8080", Duration::from_millis(40));
    for _ in 0..30 {
        if rtt(&r) != Some(20.0) {
            break;
        }
        r.pump(Duration::from_millis(10)).await;
    }
    assert_eq!(rtt(&r), Some(25.0));
    // A failed probe's time is not a round trip.
    r.probes.set("198.18.1.11:8080", false);
    r.pump(Duration::from_millis(100)).await;
    assert_eq!(rtt(&r), Some(25.0));
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_stops_answering_shows_in_status() {
    use crate::load::{client::LoadReport, parse_agent_reply, LoadError};
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    // A poller for web-1 (the test config polls no agents: none dials).
    let k = key("web", "web-1");
    let id = r.c.task_id(&k);
    let (stop, _stop_rx) = watch::channel(false);
    r.c.pollers.insert(
        k.clone(),
        Task {
            id,
            fingerprint: String::new(),
            stop,
        },
    );
    r.c.runtime.get_mut(&k).unwrap().load = Some(LoadTracker::new(config::Factors::default()));
    let b = |r: &Rig| r.c.status().pools[0].backends[0].clone();
    assert_eq!((b(&r).agent_up, b(&r).agent_error), (None, None));
    r.c.on_load(LoadReport {
        id,
        result: Ok(parse_agent_reply("up 100% cpu=0.5").unwrap()),
    });
    assert_eq!(b(&r).agent_up, Some(true));
    r.c.on_load(LoadReport {
        id,
        result: Err(LoadError::Timeout {
            addr: "198.18.1.11:9777".parse().unwrap(),
            timeout_ms: 500,
        }),
    });
    let st = b(&r);
    assert_eq!(st.agent_up, Some(false));
    assert!(st.agent_error.unwrap().contains("no reply within 500 ms"));
    assert_eq!(st.agent, None);
}

/// 64 pools (every VIP index) of 64 backends (every slot).
/// Pump step for the tests at the limits.
const COARSE: Duration = Duration::from_millis(50);

fn full_config() -> String {
    let mut t = String::from("[dataplane]\ninterfaces = [\"lo\"]\nring_size = 6421\n");
    for i in 0..MAX_VIPS {
        t.push_str(&format!(
            "[[pool]]\nname = \"p{i}\"\nvip = \"198.18.2.{}:80\"\n  [pool.health]\n  \
             interval_ms = 1000\n  timeout_ms = 500\n",
            10 + i
        ));
        for j in 0..MAX_BACKENDS / MAX_VIPS {
            t.push_str(&format!(
                "  [[pool.backend]]\n  name = \"b{j}\"\n  addr = \"198.19.{i}.{}:8080\"\n",
                j + 1
            ));
        }
    }
    t
}

#[tokio::test(start_paused = true)]
async fn at_the_limits_a_reload_that_does_not_fit_changes_nothing() {
    let text = full_config();
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &text);
    r.pump_by(Duration::from_millis(100), COARSE).await;
    assert_eq!(r.fake().backends.len(), MAX_BACKENDS as usize);
    assert_eq!(r.fake().vips.len(), MAX_VIPS as usize);
    let ops = r.fake().ops.len();
    let before = r.c.status();
    // Re-addressing needs a new slot while the old one drains: none.
    r.write_config(text.replace("198.19.5.7:8080", "198.19.200.7:8080"));
    let err = r.c.reload().unwrap_err();
    assert!(
        err.contains("1 new backend slots but 0 are free") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(r.fake().ops.len(), ops, "a refused reload wrote");
    assert_eq!(r.c.status(), before);
    // Replacing a pool by one on other servers: its slots are still
    // retiring. Refused whole; done in two steps it works.
    let other = text
        .replace("198.19.63.", "198.19.163.")
        .replace("\"p63\"", "\"q63\"");
    r.write_config(&other);
    let err = r.c.reload().unwrap_err();
    assert!(err.contains("64 still retiring"), "{err}");
    assert_eq!(r.fake().ops.len(), ops);
    let without: String = text
        .split("[[pool]]\nname = \"p63\"")
        .next()
        .unwrap()
        .into();
    r.write_config(&without);
    assert!(r.c.reload().unwrap().contains("removed pool p63"));
    r.c.set_flows(HashMap::new());
    r.pump_by(Duration::from_millis(50), COARSE).await;
    r.write_config(&other);
    r.c.reload().unwrap();
    r.pump_by(Duration::from_millis(100), COARSE).await;
    assert_eq!(r.fake().ring_members("198.18.2.73:80").len(), 64);
    assert_eq!(r.fake().backends.len(), MAX_BACKENDS as usize);
}

#[tokio::test(start_paused = true)]
async fn at_the_limits_a_renamed_pool_takes_its_servers_slots_back() {
    let text = full_config();
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &text);
    r.pump_by(Duration::from_millis(100), COARSE).await;
    // Same servers, new pool name: every key is new, every address is
    // taken back from a slot that would otherwise retire.
    r.write_config(text.replace("\"p0\"", "\"renamed\""));
    let summary = r.c.reload().unwrap();
    assert!(summary.contains("removed pool p0"), "{summary}");
    r.pump_by(Duration::from_millis(100), COARSE).await;
    assert_eq!(r.fake().ring_members("198.18.2.10:80").len(), 64);
    assert_eq!(r.fake().backends.len(), MAX_BACKENDS as usize);
    assert_eq!(r.c.status().pools.len(), MAX_VIPS as usize);
}

#[tokio::test(start_paused = true)]
async fn unknown_drain_targets_are_refused() {
    let mut r = rig();
    r.pump(Duration::from_millis(100)).await;
    assert!(r.c.drain("web", "nope", true).unwrap_err().contains("nope"));
    assert!(r.c.drain("api", "web-1", true).unwrap_err().contains("api"));
}

/// An IPv6 UDP pool, probed over TCP on a side port.
const CONFIG6: &str = r#"
[dataplane]
interfaces = ["lo"]
ring_size = 1009

[[pool]]
name = "dns6"
vip = "[2001:2:0:2::10]:53"
protocol = "udp"
flow_idle_ms = 5000
  [pool.health]
  interval_ms = 100
  timeout_ms = 50
  rise = 1
  fall = 1
  port = 8053
  [[pool.backend]]
  name = "dns6-1"
  addr = "[2001:2:0:1::11]:53"
  [[pool.backend]]
  name = "dns6-2"
  addr = "[2001:2:0:1::12]:53"
"#;

#[tokio::test(start_paused = true)]
async fn an_ipv6_udp_pool_is_published_with_its_protocol_idle_time_and_probe_port() {
    let probes = Arc::new(FakeProbes::default());
    // Probes go to the health port: the service port's verdict is ignored.
    probes.set("[2001:2:0:1::12]:53", true);
    probes.set("[2001:2:0:1::12]:8053", false);
    let mut r = rig_with(Fake::default(), probes, CONFIG6);
    r.pump(Duration::from_millis(300)).await;
    let vip = ep("[2001:2:0:2::10]:53/udp");
    assert_eq!(r.fake().ring_members("[2001:2:0:2::10]:53/udp"), ["dns6-1"]);
    assert_eq!(r.fake().idle[&vip], 5000);
    assert_eq!(
        r.fake().replies[&ep("[2001:2:0:1::11]:53/udp")].vip,
        vip.addr,
        "replies keyed by the backend's UDP endpoint"
    );
    assert!(!r.fake().replies.contains_key(&ep("[2001:2:0:1::11]:53")));
    let s = r.c.status();
    assert_eq!(
        (s.pools[0].vip.as_str(), s.pools[0].protocol.as_str()),
        ("[2001:2:0:2::10]:53", "udp")
    );
    assert_eq!(s.pools[0].backends[0].addr, "[2001:2:0:1::11]:53");
    assert_eq!(s.pools[0].backends[1].health, Health::Down);

    r.probes.set("[2001:2:0:1::12]:8053", true);
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(
        r.fake().ring_members("[2001:2:0:2::10]:53/udp"),
        ["dns6-1", "dns6-2"]
    );

    // A new idle time alone is republished.
    r.write_config(CONFIG6.replace("flow_idle_ms = 5000", "flow_idle_ms = 9000"));
    r.c.reload().unwrap();
    r.pump(Duration::from_millis(50)).await;
    assert_eq!(r.fake().idle[&vip], 9000);
}

#[tokio::test(start_paused = true)]
async fn a_pool_that_changes_protocol_moves_its_vip_and_replies() {
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), CONFIG6);
    r.pump(Duration::from_millis(300)).await;
    let udp = ep("[2001:2:0:2::10]:53/udp");
    let tcp = ep("[2001:2:0:2::10]:53");
    r.write_config(CONFIG6.replace("protocol = \"udp\"", "protocol = \"tcp\""));
    r.c.reload().unwrap();
    r.pump(Duration::from_millis(300)).await;
    let f = r.fake();
    assert!(f.ops.contains(&Op::RemoveVip(udp)));
    assert!(!f.vips.contains_key(&udp));
    assert_eq!(f.ring_members("[2001:2:0:2::10]:53"), ["dns6-1", "dns6-2"]);
    assert_eq!(
        f.idle[&tcp], 5000,
        "an explicit idle time applies to tcp too"
    );
    // Each backend's replies are now keyed as TCP only.
    for b in ["[2001:2:0:1::11]:53", "[2001:2:0:1::12]:53"] {
        assert!(f.replies.contains_key(&ep(b)), "{b}");
        assert!(!f.replies.contains_key(&ep(&format!("{b}/udp"))), "{b}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_tcp_and_a_udp_pool_share_a_vip_and_a_backend_address() {
    let both = format!(
        "{CONFIG}\n{}",
        r#"
[[pool]]
name = "web-udp"
vip = "198.18.2.10:80"
protocol = "udp"
  [pool.health]
  interval_ms = 100
  timeout_ms = 50
  [[pool.backend]]
  name = "web-udp-1"
  addr = "198.18.1.11:8080"
"#
    );
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &both);
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(r.fake().ring_members("198.18.2.10:80"), ["web-1", "web-2"]);
    assert_eq!(r.fake().ring_members("198.18.2.10:80/udp"), ["web-udp-1"]);
    for e in ["198.18.1.11:8080", "198.18.1.11:8080/udp"] {
        assert!(r.fake().replies.contains_key(&ep(e)), "{e}");
    }
    // The UDP pool goes: its VIP and its replies, not the TCP ones.
    r.write_config(CONFIG);
    r.c.reload().unwrap();
    r.c.set_flows(HashMap::new());
    r.pump(Duration::from_millis(300)).await;
    let f = r.fake();
    assert!(f.ops.contains(&Op::RemoveVip(ep("198.18.2.10:80/udp"))));
    assert_eq!(f.ring_members("198.18.2.10:80"), ["web-1", "web-2"]);
    assert!(f.replies.contains_key(&ep("198.18.1.11:8080")));
    assert!(!f.replies.contains_key(&ep("198.18.1.11:8080/udp")));
}

#[tokio::test(start_paused = true)]
async fn a_restart_adopts_an_ipv6_udp_vip_without_touching_it() {
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), CONFIG6);
    r.pump(Duration::from_millis(300)).await;
    let ring = r.fake().vips[&ep("[2001:2:0:2::10]:53/udp")].clone();
    let mut r = restart(r, CONFIG6);
    r.pump(Duration::from_millis(300)).await;
    let f = r.fake();
    assert!(
        !f.ops
            .iter()
            .any(|o| matches!(o, Op::RemoveVip(_) | Op::RemoveReply(_))),
        "{:?}",
        f.ops
    );
    assert_eq!(f.vips[&ep("[2001:2:0:2::10]:53/udp")], ring);
}

/// CONFIG with one required backend (the spare stays out) and a slow start.
fn ramping() -> String {
    CONFIG.replace("min_active = 2", "min_active = 1\nslow_start_ms = 1000")
}

/// web-1's entries in the ring.
fn share_of_web_1(f: &Fake) -> usize {
    let slot = f
        .names
        .iter()
        .find(|(i, n)| **i >= MAX_VIPS && n.as_str() == "web-1")
        .map(|(i, _)| i - MAX_VIPS)
        .unwrap();
    let (_, ring) = &f.vips[&ep("198.18.2.10:80")];
    ring.iter().filter(|s| **s == slot).count()
}

#[tokio::test(start_paused = true)]
async fn beats_skip_when_idle_and_wake_on_a_flip_or_a_pending_ramp() {
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &ramping());
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(r.fake().ring_members("198.18.2.10:80"), ["web-1", "web-2"]);
    // Probes keep reporting, nothing flips: nothing to plan.
    assert!(!r.c.needs_sync());
    r.pump(Duration::from_millis(500)).await;
    assert!(!r.c.needs_sync());
    // The same flow count again changes nothing; a new one does.
    r.c.set_flows(HashMap::new());
    assert!(r.c.needs_sync(), "the first count");
    r.c.beat().unwrap();
    r.c.set_flows(HashMap::new());
    assert!(!r.c.needs_sync());

    // A flip wakes the very next beat.
    r.probes.set("198.18.1.11:8080", false);
    let mut flipped = false;
    for _ in 0..50 {
        tokio::time::advance(Duration::from_millis(10)).await;
        tokio::task::yield_now().await;
        while let Ok(rep) = r.inputs.health_rx.try_recv() {
            if r.c.on_health(rep) {
                flipped = true;
                assert!(r.c.needs_sync(), "a flip must be planned");
            }
        }
        if flipped {
            break;
        }
        r.c.beat().unwrap();
    }
    assert!(flipped);
    r.c.beat().unwrap();
    assert_eq!(r.fake().state("web-1"), BACKEND_DOWN);
    assert_eq!(r.fake().ring_members("198.18.2.10:80"), ["web-2"]);
    assert!(!r.c.needs_sync(), "down is not a ramp");

    // Back up (rise 2): web-1 ramps over 1 s with no event but the beat.
    r.probes.set("198.18.1.11:8080", true);
    r.pump(Duration::from_millis(250)).await;
    assert_eq!(r.fake().state("web-1"), BACKEND_ACTIVE);
    assert!(r.c.needs_sync(), "a ramp is pending");
    let early = share_of_web_1(r.fake());
    r.pump(Duration::from_millis(400)).await;
    let later = share_of_web_1(r.fake());
    assert!(
        early < later,
        "the ramp advanced on beats: {early} then {later}"
    );
    r.pump(Duration::from_millis(1000)).await;
    let full = share_of_web_1(r.fake());
    assert!(
        later < full && full > 1009 / 3,
        "{later} then {full} of 1009"
    );
    assert!(!r.c.needs_sync(), "the ramp is over");
}

#[tokio::test(start_paused = true)]
async fn skipped_beats_still_refresh_the_metrics_status() {
    let dir = std::env::temp_dir().join(format!("xdplb-ctl-metrics-{}", std::process::id()));
    let metrics = Metrics::new(dir);
    let mut r = rig();
    r.c.metrics = Some(metrics.clone());
    r.probes
        .set_delay("198.18.1.11:8080", Duration::from_millis(20));
    r.pump(Duration::from_millis(300)).await;
    assert!(!r.c.needs_sync());
    let rtt = |m: &Metrics| m.status().unwrap().pools[0].backends[0].rtt_ms;
    r.pump(STATUS_EVERY).await;
    assert_eq!(rtt(&metrics), Some(20.0));
    // Only the round trip moves: no plan changes, and the beats that skip
    // the plan still hand the metrics a status at most STATUS_EVERY old.
    r.probes
        .set_delay("198.18.1.11:8080", Duration::from_millis(40));
    r.pump(STATUS_EVERY + TICK).await;
    assert!(!r.c.needs_sync());
    assert!(rtt(&metrics).unwrap() > 20.0, "{:?}", rtt(&metrics));
}

/// (from, to, reason) of a backend's transitions as status shows them.
fn transitions_of(c: &Controller<Fake>, name: &str) -> Vec<(String, String, String)> {
    c.status().pools[0]
        .backends
        .iter()
        .find(|b| b.name == name)
        .unwrap()
        .transitions
        .iter()
        .map(|t| (t.from.to_string(), t.to.to_string(), t.reason.clone()))
        .collect()
}

fn tr(from: &str, to: &str, reason: &str) -> (String, String, String) {
    (from.into(), to.into(), reason.into())
}

/// Each change of a backend's state is recorded once, with the reason
/// status gave and the probe error; beats that change only weights (a
/// slow-start ramp), failing probes of a backend already down, status
/// reads and a reload that keeps the backend record nothing.
#[tokio::test(start_paused = true)]
async fn each_state_change_is_recorded_once_with_its_reason() {
    let text = CONFIG.replace("min_active = 2", "min_active = 2\nslow_start_ms = 1000");
    let mut r = rig_with(Fake::default(), Arc::new(FakeProbes::default()), &text);
    let before = crate::status::now_unix_ms();
    assert!(
        transitions_of(&r.c, "web-1").is_empty(),
        "none before a plan"
    );
    r.pump(Duration::from_millis(300)).await;
    // The first plan: a pool seen for the first time starts at full weight.
    assert_eq!(
        transitions_of(&r.c, "web-1"),
        [tr("down", "active", "healthy")]
    );
    assert_eq!(
        transitions_of(&r.c, "spare-1"),
        [tr("down", "standby", "spare_idle")]
    );

    r.probes.set("198.18.1.11:8080", false);
    // fall = 2 at 100 ms; then a second of beats while the spare ramps
    // (its weight changes the plan on every beat) and web-1 keeps failing.
    r.pump(Duration::from_millis(1500)).await;
    assert_eq!(r.fake().state("web-1"), BACKEND_DOWN);
    let refused = "health_down: connect to 198.18.1.11:8080: connection refused";
    assert_eq!(
        transitions_of(&r.c, "web-1"),
        [
            tr("down", "active", "healthy"),
            tr("active", "down", refused)
        ]
    );
    assert_eq!(
        transitions_of(&r.c, "spare-1"),
        [
            tr("down", "standby", "spare_idle"),
            tr("standby", "active", "min_active; slow start over 1000 ms")
        ]
    );
    assert_eq!(
        transitions_of(&r.c, "web-2").len(),
        1,
        "web-2 never changed"
    );
    let st = r.c.status();
    let ts: Vec<u64> = st.pools[0].backends[0]
        .transitions
        .iter()
        .map(|t| t.at_unix_ms)
        .collect();
    let after = crate::status::now_unix_ms();
    assert!(
        ts.windows(2).all(|w| w[0] <= w[1]) && ts.iter().all(|t| (before..=after).contains(t)),
        "wall-clock times, oldest first: {before} {ts:?} {after}"
    );

    // A reload that keeps web-1 keeps its record, as it keeps its verdict.
    r.write_config(text.replace("interval_ms = 100", "interval_ms = 150"));
    r.c.reload().unwrap();
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(transitions_of(&r.c, "web-1").len(), 2);

    // An operator drain and its end are transitions too; a drain of a
    // backend already down changes no state and records nothing.
    r.c.drain("web", "web-1", true).unwrap();
    assert_eq!(transitions_of(&r.c, "web-1").len(), 2);
    r.c.drain("web", "web-2", true).unwrap();
    assert_eq!(
        transitions_of(&r.c, "web-2").last().unwrap(),
        &tr("active", "draining", "operator_drain")
    );
    r.c.drain("web", "web-2", false).unwrap();
    assert_eq!(
        transitions_of(&r.c, "web-2").last().unwrap(),
        &tr("draining", "active", "healthy; slow start over 1000 ms")
    );
    assert_eq!(transitions_of(&r.c, "web-2").len(), 3);
}

/// A flapping backend keeps only its last few transitions.
#[tokio::test(start_paused = true)]
async fn a_flapping_backend_keeps_its_last_transitions() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    for _ in 0..6 {
        r.probes.set("198.18.1.11:8080", false);
        r.pump(Duration::from_millis(300)).await;
        r.probes.set("198.18.1.11:8080", true);
        r.pump(Duration::from_millis(300)).await;
    }
    let t = transitions_of(&r.c, "web-1");
    assert_eq!(t.len(), crate::status::KEEP_TRANSITIONS, "{t:?}");
    assert_eq!(t.last().unwrap(), &tr("down", "active", "healthy"));
    // 13 changes happened (1 + 6 × 2): the oldest five are gone, so the
    // record starts with a failure, not with the first activation, and
    // each change follows from the one before it.
    assert_eq!(t[0].1, "down", "{t:?}");
    assert!(t.windows(2).all(|w| w[0].1 == w[1].0), "{t:?}");
}

// ---- Runtime states (issue 25): maint, ready, set weight, agent states.

/// Ring entries of the VIP that name backend `name`.
fn ring_share(r: &Rig, vip: &str, name: &str) -> usize {
    let slot = r.c.slots.backends[&key("web", name)];
    r.fake().vips[&ep(vip)]
        .1
        .iter()
        .filter(|s| **s == slot)
        .count()
}

fn backend_status(r: &Rig, name: &str) -> BackendStatus {
    r.c.status().pools[0]
        .backends
        .iter()
        .find(|b| b.name == name)
        .unwrap()
        .clone()
}

/// A restart over the same state file: the same data plane (`None`), or
/// a fresh one (`Some(Fake::default())`: `xdplb down` happened).
fn restart_keeping_state(mut r: Rig, fake: Option<Fake>) -> Rig {
    let probes = r.probes.clone();
    let dir = std::mem::replace(&mut r.dir, rig_dir());
    let text = std::fs::read_to_string(dir.join("xdplb.toml")).unwrap();
    let fake = fake.unwrap_or_else(|| {
        let mut f = std::mem::take(&mut r.c.out.dp);
        f.ops.clear();
        f
    });
    drop(r);
    rig_in(dir, fake, probes, &text)
}

const WEB1: &str = "198.18.1.11:8080";
const VIP: &str = "198.18.2.10:80";

#[tokio::test(start_paused = true)]
async fn maint_stops_new_flows_and_the_health_checks_until_ready() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(r.fake().ring_members(VIP), ["web-1", "web-2"]);
    r.c.set_admin("web", "web-1", AdminAction::Maint).unwrap();
    // Out of the ring at once, its slot DRAINING: established flows go on.
    assert_eq!(r.fake().ring_members(VIP), ["spare-1", "web-2"]);
    assert_eq!(r.fake().state("web-1"), lb_common::BACKEND_DRAINING);
    let b = backend_status(&r, "web-1");
    assert_eq!(
        (b.admin_state, b.admin_set_by, b.reason),
        (
            AdminState::Maint,
            Some(crate::state::SetBy::Operator),
            Reason::Maint
        )
    );
    assert_eq!(b.state, BackendState::Draining);
    // No probe while in maintenance (one in flight may finish), and a
    // server that fails meanwhile is not found down: nobody asks it.
    r.pump(Duration::from_millis(20)).await;
    let probes = r.probes.calls(WEB1);
    r.probes.set(WEB1, false);
    r.pump(Duration::from_secs(2)).await;
    assert_eq!(r.probes.calls(WEB1), probes, "probed in maintenance");
    assert_eq!(backend_status(&r, "web-1").state, BackendState::Draining);
    // Undrain does not end a maintenance.
    r.c.set_admin("web", "web-1", AdminAction::Undrain).unwrap();
    assert_eq!(backend_status(&r, "web-1").admin_state, AdminState::Maint);
    // Ready: checks resume; a failing server is found down, a healthy one
    // takes new flows again.
    r.c.set_admin("web", "web-1", AdminAction::Ready).unwrap();
    r.pump(Duration::from_millis(300)).await;
    assert!(r.probes.calls(WEB1) > probes, "checks did not resume");
    let b = backend_status(&r, "web-1");
    assert_eq!((b.admin_state, b.admin_set_by), (AdminState::Ready, None));
    assert_eq!(
        (b.state, b.reason),
        (BackendState::Down, Reason::HealthDown)
    );
    r.probes.set(WEB1, true);
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(r.fake().ring_members(VIP), ["web-1", "web-2"]);
    assert!(r.c.admin.is_empty(), "{:?}", r.c.admin);
}

#[tokio::test(start_paused = true)]
async fn a_weight_override_reweights_and_zero_takes_no_new_flows() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let even = ring_share(&r, VIP, "web-1");
    assert!((480..=530).contains(&even), "{even}");
    r.c.set_admin("web", "web-1", AdminAction::Weight(Some(300)))
        .unwrap();
    // 300 against web-2's 100: about three quarters of the ring.
    let share = ring_share(&r, VIP, "web-1");
    assert!((730..=790).contains(&share), "{share}");
    let b = backend_status(&r, "web-1");
    assert_eq!(
        (b.weight_override, b.config_weight, b.weight),
        (Some(300), 100, 300 * crate::planner::WEIGHT_SCALE)
    );
    assert_eq!(b.admin_state, AdminState::Ready);
    // 0: no new flows, established ones continue (as a drain).
    r.c.set_admin("web", "web-1", AdminAction::Weight(Some(0)))
        .unwrap();
    assert_eq!(r.fake().ring_members(VIP), ["spare-1", "web-2"]);
    assert_eq!(r.fake().state("web-1"), lb_common::BACKEND_DRAINING);
    assert_eq!(backend_status(&r, "web-1").reason, Reason::WeightZero);
    // Ready leaves a weight as it is.
    r.c.set_admin("web", "web-1", AdminAction::Ready).unwrap();
    assert_eq!(backend_status(&r, "web-1").weight_override, Some(0));
    // Out of range: refused, nothing changed.
    let e =
        r.c.set_admin("web", "web-1", AdminAction::Weight(Some(1001)))
            .unwrap_err();
    assert!(e.contains("weight 1001 is out of range 0..=1000"), "{e}");
    assert_eq!(backend_status(&r, "web-1").weight_override, Some(0));
    // Back to the config's weight.
    r.c.set_admin("web", "web-1", AdminAction::Weight(None))
        .unwrap();
    assert_eq!(ring_share(&r, VIP, "web-1"), even);
    assert_eq!(backend_status(&r, "web-1").weight_override, None);
    assert!(r.c.admin.is_empty());
    let e =
        r.c.set_admin("web", "nope", AdminAction::Maint)
            .unwrap_err();
    assert!(e.contains("unknown backend \"nope\""), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_runtime_state_that_cannot_be_applied_is_not_kept() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    r.c.out.dp.fail_after = Some(0);
    let e =
        r.c.set_admin("web", "web-1", AdminAction::Maint)
            .unwrap_err();
    assert!(e.contains("not applied") && e.contains(INJECTED), "{e}");
    assert!(r.c.admin.is_empty());
    assert!(r.c.checkers.contains_key(&key("web", "web-1")));
    assert!(!r.dir.join("state.json").exists());
    r.pump(Duration::from_millis(50)).await;
    assert_eq!(r.fake().ring_members(VIP), ["web-1", "web-2"]);
}

impl Rig {
    /// A poller for `web/NAME` that dials nothing: the test answers for
    /// its agent with [`Rig::agent_says`].
    fn fake_poller(&mut self, name: &str) -> u64 {
        let k = key("web", name);
        let id = self.c.task_id(&k);
        let (stop, _) = watch::channel(false);
        self.c.pollers.insert(
            k.clone(),
            Task {
                id,
                fingerprint: String::new(),
                stop,
            },
        );
        self.c.runtime.get_mut(&k).unwrap().load =
            Some(LoadTracker::new(config::Factors::default()));
        id
    }

    /// The agent behind poller `id` answers `line` (`None`: it does not
    /// answer).
    fn agent_says(&mut self, id: u64, line: Option<&str>) {
        use crate::load::{client::LoadReport, parse_agent_reply, LoadError};
        let result = match line {
            Some(l) => Ok(parse_agent_reply(l).unwrap()),
            None => Err(LoadError::Timeout {
                addr: "198.18.1.11:9777".parse().unwrap(),
                timeout_ms: 500,
            }),
        };
        self.c.on_load(LoadReport { id, result });
    }
}

#[tokio::test(start_paused = true)]
async fn an_agents_maint_holds_until_it_says_up_even_when_it_stops_answering() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let id = r.fake_poller("web-1");
    r.agent_says(id, Some("maint 100%"));
    r.pump(Duration::from_millis(20)).await;
    assert_eq!(r.fake().ring_members(VIP), ["spare-1", "web-2"]);
    let b = backend_status(&r, "web-1");
    assert_eq!(
        (b.admin_state, b.admin_set_by, b.reason),
        (
            AdminState::Maint,
            Some(crate::state::SetBy::Agent),
            Reason::AgentMaint
        )
    );
    assert!(!r.c.checkers.contains_key(&key("web", "web-1")));
    // Kept in the state file, as set by the agent.
    let saved = crate::state::load(&r.dir.join("state.json")).unwrap();
    assert_eq!(
        saved[&key("web", "web-1")].agent_state,
        Some(AdminState::Maint)
    );
    // The agent stops answering, long past its 3 intervals: still in
    // maintenance (HAProxy: only the agent's `ready`/`up` ends it).
    for _ in 0..10 {
        r.agent_says(id, None);
        r.pump(Duration::from_secs(1)).await;
    }
    assert_eq!(backend_status(&r, "web-1").admin_state, AdminState::Maint);
    assert_eq!(r.fake().ring_members(VIP), ["spare-1", "web-2"]);
    // A reply with neither a state word nor up changes nothing.
    r.agent_says(id, Some("75%"));
    r.pump(Duration::from_millis(20)).await;
    assert_eq!(backend_status(&r, "web-1").admin_state, AdminState::Maint);
    // `up`: back to service (its checks resume, it was healthy).
    r.agent_says(id, Some("up 100%"));
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(backend_status(&r, "web-1").admin_state, AdminState::Ready);
    assert!(r.c.checkers.contains_key(&key("web", "web-1")));
    assert_eq!(r.fake().ring_members(VIP), ["web-1", "web-2"]);
    assert!(crate::state::load(&r.dir.join("state.json"))
        .unwrap()
        .is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_agent_cannot_undo_an_operators_drain_but_ready_undoes_an_agents() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let id = r.fake_poller("web-1");
    r.c.drain("web", "web-1", true).unwrap();
    r.agent_says(id, Some("ready up 100%"));
    r.pump(Duration::from_millis(20)).await;
    let b = backend_status(&r, "web-1");
    assert_eq!(
        (b.admin_state, b.admin_set_by),
        (AdminState::Drain, Some(crate::state::SetBy::Operator))
    );
    // The agent's drain under the operator's: the operator's shows;
    // undrained, the agent's stays.
    r.agent_says(id, Some("drain"));
    r.c.drain("web", "web-1", false).unwrap();
    let b = backend_status(&r, "web-1");
    assert_eq!(
        (b.admin_state, b.admin_set_by, b.reason),
        (
            AdminState::Drain,
            Some(crate::state::SetBy::Agent),
            Reason::AgentDrain
        )
    );
    // `xdplb ready` clears the agent's too (HAProxy's `state ready`).
    r.c.set_admin("web", "web-1", AdminAction::Ready).unwrap();
    assert_eq!(backend_status(&r, "web-1").admin_state, AdminState::Ready);
    assert_eq!(r.fake().ring_members(VIP), ["web-1", "web-2"]);
}

#[tokio::test(start_paused = true)]
async fn runtime_states_survive_reloads_restarts_and_down() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    r.c.set_admin("web", "web-1", AdminAction::Maint).unwrap();
    r.c.set_admin("web", "web-2", AdminAction::Weight(Some(300)))
        .unwrap();
    let id = r.fake_poller("spare-1");
    r.agent_says(id, Some("drain"));
    let want = r.c.admin.clone();
    assert_eq!(want.len(), 3);
    // A reload that changes web-2's config weight keeps the override.
    r.write_config(CONFIG.replace(
        "  name = \"web-2\"\n  addr = \"198.18.1.12:8080\"\n",
        "  name = \"web-2\"\n  addr = \"198.18.1.12:8080\"\n  weight = 50\n",
    ));
    r.c.reload().unwrap();
    assert_eq!(r.c.admin, want);
    assert_eq!(backend_status(&r, "web-2").config_weight, 50);
    assert_eq!(backend_status(&r, "web-2").weight_override, Some(300));
    for fresh in [false, true] {
        // A restart over the same maps, then `xdplb down` (maps gone).
        r = restart_keeping_state(r, fresh.then(Fake::default));
        assert_eq!(r.c.admin, want, "fresh maps: {fresh}");
        let before = r.probes.calls(WEB1);
        r.pump(Duration::from_millis(600)).await;
        assert_eq!(r.probes.calls(WEB1), before, "probed in maintenance");
        assert!(!r.c.checkers.contains_key(&key("web", "web-1")));
        // web-1 in maintenance, spare-1 drained by its agent: web-2
        // serves alone (below min_active, no spare to fill in).
        assert_eq!(r.fake().ring_members(VIP), ["web-2"], "fresh maps: {fresh}");
        assert_eq!(r.fake().state("web-1"), lb_common::BACKEND_DRAINING);
        let b = backend_status(&r, "spare-1");
        assert_eq!(
            (b.admin_state, b.admin_set_by),
            (AdminState::Drain, Some(crate::state::SetBy::Agent))
        );
    }
}

// ---- Plans (issue 25): `xdplb plan`, `xdplb drain --dry-run`.

impl Rig {
    /// `text` (with this rig's state file) written beside the running
    /// config, as `xdplb plan --config` would name it.
    fn new_config(&self, text: &str) -> PathBuf {
        let path = self.dir.join("new.toml");
        std::fs::write(&path, with_state_file(&self.dir, text)).unwrap();
        path
    }
}

fn plan_config(r: &Rig, text: &str) -> crate::status::ChangePlan {
    let path = r.new_config(text);
    r.c.plan_change(&crate::command::Proposal::Config { path })
}

/// CONFIG with a third primary, web-3.
fn with_web3() -> String {
    CONFIG.replace(
        "  [[pool.backend]]\n  name = \"spare-1\"",
        "  [[pool.backend]]\n  name = \"web-3\"\n  addr = \"198.18.1.13:8080\"\n  \
         [[pool.backend]]\n  name = \"spare-1\"",
    )
}

#[tokio::test(start_paused = true)]
async fn a_plan_predicts_the_ring_entries_a_reload_moves_and_writes_nothing() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let slot1 = r.c.slots.backends[&key("web", "web-1")];
    r.c.set_flows([(slot1, 7)].into_iter().collect());
    let before = r.fake().vips[&ep(VIP)].1.clone();
    let ops = r.fake().ops.len();
    let status = r.c.status();
    let plan = plan_config(&r, &with_web3());
    assert_eq!(r.fake().ops.len(), ops, "the plan wrote");
    assert_eq!(r.c.status(), status, "the plan changed the status");
    assert!(plan.accepted, "{plan:?}");
    assert_eq!(
        plan.summary,
        ["changed pool web", "added backend web/web-3"]
    );
    let pool = &plan.pools[0];
    assert_eq!(
        (pool.name.as_str(), pool.change.as_str()),
        ("web", "changed")
    );
    assert_eq!(pool.backends_added, ["web-3"]);
    // Established flows stay where they are pinned.
    assert_eq!(
        (pool.flows_drained, pool.flows_reset, pool.flows_stranded),
        (0, 0, 0)
    );
    let web3 = pool.backends.iter().find(|b| b.name == "web-3").unwrap();
    assert_eq!((web3.from.as_str(), web3.to.as_str()), ("new", "active"));
    assert!(
        plan.assumptions[0].contains("web/web-3"),
        "{:?}",
        plan.assumptions
    );
    let moved = pool.ring_moved.unwrap();
    // About a third of the ring goes to web-3.
    assert!((300..=372).contains(&moved), "{moved}");
    // Most of them to web-3 (Maglev also moves a few between the others).
    assert!(
        web3.ring_delta <= i64::from(moved) && web3.ring_delta >= i64::from(moved) * 9 / 10,
        "{} of {moved}",
        web3.ring_delta
    );
    // The reload, once web-3 is probed, moves exactly those entries.
    r.write_config(with_web3());
    r.c.reload().unwrap();
    r.pump(Duration::from_millis(300)).await;
    assert_eq!(r.fake().ring_members(VIP), ["web-1", "web-2", "web-3"]);
    let after = &r.fake().vips[&ep(VIP)].1;
    let really = before.iter().zip(after).filter(|(a, b)| a != b).count();
    assert_eq!(really as u32, moved);
}

#[tokio::test(start_paused = true)]
async fn a_refused_plan_says_what_reload_says_and_changes_nothing() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let state = r.dir.join("state.json");
    r.c.drain("web", "web-2", true).unwrap();
    let saved = std::fs::read(&state).unwrap();
    let status = r.c.status();
    let ops = r.fake().ops.len();
    let bigger = CONFIG.replace("ring_size = 1009", "ring_size = 2003");
    let plan = plan_config(&r, &bigger);
    assert!(!plan.accepted);
    let why = plan.refused.unwrap();
    assert!(why.contains("[dataplane] changed"), "{why}");
    assert_eq!(r.fake().ops.len(), ops);
    assert_eq!(r.c.status(), status);
    assert_eq!(std::fs::read(&state).unwrap(), saved);
    // The same words as the reload's refusal (which names its own file).
    r.write_config(&bigger);
    let reload = r.c.reload().unwrap_err();
    assert_eq!(
        why.replace(&r.dir.join("new.toml").display().to_string(), "FILE"),
        reload.replace(&r.c.config_path.display().to_string(), "FILE")
    );
    // An invalid file: its own file:line:col.
    let plan = plan_config(&r, "[[pool]]\nname = 1\n");
    assert!(plan.refused.unwrap().contains("new.toml:"));
}

#[tokio::test(start_paused = true)]
async fn a_drain_dry_run_counts_the_flows_it_drains_and_the_spare_it_brings() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let slot1 = r.c.slots.backends[&key("web", "web-1")];
    r.c.set_flows([(slot1, 7)].into_iter().collect());
    r.pump(Duration::from_millis(20)).await;
    let ops = r.fake().ops.len();
    let drain = crate::command::Proposal::Drain {
        pool: "web".into(),
        backend: "web-1".into(),
    };
    let plan = r.c.plan_change(&drain);
    assert_eq!(r.fake().ops.len(), ops, "the dry run wrote");
    assert!(r.c.admin.is_empty(), "the dry run drained");
    assert!(plan.accepted);
    assert_eq!(plan.summary, ["drain web/web-1"]);
    let pool = &plan.pools[0];
    assert_eq!(pool.flows_drained, 7);
    assert_eq!(pool.spares_activated, ["spare-1"]);
    let b = pool.backends.iter().find(|b| b.name == "web-1").unwrap();
    assert_eq!(
        (b.from.as_str(), b.to.as_str(), b.flows, b.fate.as_str()),
        ("active", "draining", 7, "drained")
    );
    // web-1's half of the ring moves (to spare-1 and web-2), and some
    // entries between those two (the member set changed).
    let moved = pool.ring_moved.unwrap();
    assert!(
        i64::from(moved) >= -b.ring_delta && -b.ring_delta >= 480,
        "{moved} {}",
        b.ring_delta
    );
    // What the drain then does.
    let before = r.fake().vips[&ep(VIP)].1.clone();
    r.c.drain("web", "web-1", true).unwrap();
    let after = &r.fake().vips[&ep(VIP)].1;
    assert_eq!(
        before.iter().zip(after).filter(|(a, b)| a != b).count() as u32,
        moved
    );
    let e = r.c.plan_change(&crate::command::Proposal::Drain {
        pool: "web".into(),
        backend: "nope".into(),
    });
    assert_eq!(
        e.refused.as_deref(),
        Some("unknown backend \"nope\" in pool \"web\"")
    );
}

#[tokio::test(start_paused = true)]
async fn a_plan_that_moves_a_vip_strands_its_flows() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let slot1 = r.c.slots.backends[&key("web", "web-1")];
    let slot2 = r.c.slots.backends[&key("web", "web-2")];
    r.c.set_flows([(slot1, 3), (slot2, 4)].into_iter().collect());
    let moved = CONFIG.replace("vip = \"198.18.2.10:80\"", "vip = \"198.18.2.10:81\"");
    let plan = plan_config(&r, &moved);
    let pool = &plan.pools[0];
    assert!(
        pool.vip_change
            .as_deref()
            .unwrap()
            .contains("198.18.2.10:81"),
        "{pool:?}"
    );
    assert_eq!(
        (pool.flows_stranded, pool.flows_drained),
        (7, 0),
        "{pool:?}"
    );
    // A pool removed strands its flows too.
    let plan = plan_config(&r, &two_pools());
    assert_eq!(plan.pools.len(), 2);
    assert_eq!(plan.pools[1].change, "added");
    let gone = plan_config(&r, &CONFIG.replace("name = \"web\"", "name = \"www\""));
    let web = gone.pools.iter().find(|p| p.name == "web").unwrap();
    assert_eq!((web.change.as_str(), web.flows_stranded), ("removed", 7));
}

#[tokio::test(start_paused = true)]
async fn a_reload_adding_sync_or_changing_its_secret_is_refused() {
    let mut r = rig();
    r.pump(Duration::from_millis(300)).await;
    let ops = r.fake().ops.len();
    let with_sync = |secret: &str| {
        CONFIG.replacen(
            "[[pool]]",
            &format!(
                "[sync]\nlisten = \"198.18.1.2:7946\"\npeers = [\"198.18.1.3:7946\"]\nsecret = \"{secret}\"\n\n[[pool]]"
            ),
            1,
        )
    };
    r.write_config(with_sync("0123456789abcdef-one"));
    let why = r.c.reload().unwrap_err();
    assert!(why.contains("[sync] added or its secret changed"), "{why}");
    assert!(why.contains("xdplb down"), "{why}");
    assert_eq!(r.fake().ops.len(), ops, "nothing applied");
    // Removing nothing, adding nothing: the running config reloads.
    r.write_config(CONFIG);
    r.c.reload().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_sync_change_needs_a_restart_and_rings_published_wake_flow_sync() {
    let sync = |peer: &str| {
        CONFIG.replacen(
            "[[pool]]",
            &format!(
                "[sync]\nlisten = \"198.18.1.2:7946\"\npeers = [\"{peer}\"]\nsecret = \"0123456789abcdef-one\"\n\n[[pool]]"
            ),
            1,
        )
    };
    let mut r = rig_with(
        Fake::default(),
        Arc::new(FakeProbes::default()),
        &sync("198.18.1.3:7946"),
    );
    let handle = crate::flowsync::task::Handle::unserved();
    r.c.with_flow_sync(handle.clone());
    assert_eq!(r.c.status().sync, Some(vec![]), "the task's report");
    r.pump(Duration::from_millis(300)).await;
    assert!(handle.take_ring_change().await, "the first rings published");
    assert!(!handle.take_ring_change().await, "once");
    // A spare activated: a ring change.
    r.c.drain("web", "web-1", true).unwrap();
    assert!(handle.take_ring_change().await, "the drain's ring");
    // A beat that changes nothing publishes no ring.
    r.pump(Duration::from_millis(300)).await;
    assert!(!handle.take_ring_change().await, "no ring, no wake");
    // Other peers: a restart, not a reload.
    let ops = r.fake().ops.len();
    r.write_config(sync("198.18.1.4:7946"));
    let why = r.c.reload().unwrap_err();
    assert!(why.contains("[sync] changed"), "{why}");
    assert!(why.contains("restart `xdplb run`"), "{why}");
    assert_eq!(r.fake().ops.len(), ops, "nothing applied");
    r.write_config(CONFIG);
    let why = r.c.reload().unwrap_err();
    assert!(why.contains("[sync] changed (removed"), "{why}");
}
