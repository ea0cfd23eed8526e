//! Gateways polling the same agents build the same Maglev ring.
//!
//! Two simulated controllers (two [`Planner`]s with the same config) poll
//! the same simulated agents, at different moments of each second, so they
//! read different samples of the same steady load. Each agent samples its
//! load once a second (true load plus jitter) and publishes it as the xdplb
//! agent does ([`Utilisation::published`]: 5% steps with hysteresis); each
//! controller turns what it read into weights (the load factor quantised,
//! [`xdplb::planner::quantised_headroom`]) and a ring. Every simulated
//! second after a warm-up, the two rings are compared entry by entry.
//!
//! Measured the same way without the agent's hysteresis (the agent
//! publishing each raw sample), for comparison: the figure printed shows
//! what the hysteresis buys.

use std::collections::HashMap;
use std::path::Path;

use xdplb::config::{self, Config};
use xdplb::load::{load_score, Utilisation};
use xdplb::maglev::{self, MaglevEntry};
use xdplb::planner::{BackendObservation, BackendState, Observations, Planner};

const BACKENDS: usize = 10;
const RING: u32 = 65537;
/// Simulated seconds per run, and seconds of warm-up not counted.
const SECONDS: u64 = 300;
const WARMUP: u64 = 10;
/// Jitter of each per-second sample around the true utilisation (±).
const JITTER: f64 = 0.02;
/// The mean agreement README.md ("Load steps") and docs/FLEET.md state.
const CLAIMED_AGREEMENT: f64 = 0.99999;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn config() -> Config {
    let mut text = String::from(
        "[dataplane]\ninterfaces = [\"eth0\"]\nring_size = 65537\n[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\n\
         [pool.load]\nhigh_watermark = 0.95\nlow_watermark = 0.05\nslow_start_ms = 0\n",
    );
    for i in 0..BACKENDS {
        text.push_str(&format!(
            "[[pool.backend]]\nname = \"web-{i}\"\naddr = \"198.18.1.{}:8080\"\n",
            11 + i
        ));
    }
    config::parse(Path::new("agreement.toml"), &text).unwrap()
}

/// One controller: what it last read from each agent, its planner.
struct Controller {
    planner: Planner,
    read: Vec<Utilisation>,
}

impl Controller {
    /// The active backends' weights this tick (index order).
    fn weights(&mut self, cfg: &Config, now_ms: u64) -> Vec<u32> {
        let factors = cfg.pools[0].load.as_ref().unwrap().factors;
        let obs: Observations = (0..BACKENDS)
            .map(|i| {
                (
                    ("web".to_string(), format!("web-{i}")),
                    BackendObservation {
                        health: Some(true),
                        load: Some(load_score(&factors, &self.read[i])),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let plan = self.planner.plan(cfg, &obs, now_ms);
        plan.pools[0]
            .backends
            .iter()
            .map(|b| {
                if b.state == BackendState::Active {
                    b.weight
                } else {
                    0
                }
            })
            .collect()
    }
}

/// The ring for `weights` (backend `i` is web-`i`), built once per set.
fn ring<'a>(cache: &'a mut HashMap<Vec<u32>, Vec<u32>>, weights: &[u32]) -> &'a [u32] {
    cache.entry(weights.to_vec()).or_insert_with(|| {
        let names: Vec<String> = (0..BACKENDS).map(|i| format!("web-{i}")).collect();
        let entries: Vec<MaglevEntry> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| MaglevEntry {
                id: i as u32,
                key: &names[i],
                weight: w,
            })
            .collect();
        maglev::build(&entries, RING)
    })
}

/// Mean and worst share of ring entries on which the two controllers agree
/// over one run.
fn run(seed: u64, hysteresis: bool) -> (f64, f64) {
    let cfg = config();
    let mut rng = Rng(seed);
    // Steady true utilisation per backend.
    let truth: Vec<[f64; 4]> = (0..BACKENDS)
        .map(|_| std::array::from_fn(|_| 0.1 + 0.7 * rng.next()))
        .collect();
    let mut published = vec![Utilisation::default(); BACKENDS];
    let mut history: Vec<Vec<Utilisation>> = Vec::new();
    let mut a = Controller {
        planner: Planner::new(),
        read: vec![Utilisation::default(); BACKENDS],
    };
    let mut b = Controller {
        planner: Planner::new(),
        read: vec![Utilisation::default(); BACKENDS],
    };
    let mut cache: HashMap<Vec<u32>, Vec<u32>> = HashMap::new();
    let (mut sum, mut worst, mut n) = (0.0, 1.0f64, 0);
    for sec in 0..SECONDS {
        // The agents sample at .35 of each second.
        for (i, t) in truth.iter().enumerate() {
            let mut j = || (2.0 * rng.next() - 1.0) * JITTER;
            let sample = Utilisation::all(t[0] + j(), t[1] + j(), t[2] + j(), t[3] + j());
            published[i] = if hysteresis {
                sample.published(&published[i])
            } else {
                sample
            };
        }
        history.push(published.clone());
        // Controller A polls at .1 (it reads the previous second's sample),
        // B at .6 (this second's).
        if sec > 0 {
            a.read = history[sec as usize - 1].clone();
        }
        b.read = history[sec as usize].clone();
        let now = sec * 1000 + 700;
        let wa = a.weights(&cfg, now);
        let wb = b.weights(&cfg, now);
        if sec >= WARMUP {
            let ra = ring(&mut cache, &wa).to_vec();
            let rb = ring(&mut cache, &wb);
            let same = ra.iter().zip(rb).filter(|(x, y)| x == y).count();
            let share = same as f64 / RING as f64;
            sum += share;
            worst = worst.min(share);
            n += 1;
        }
        if cache.len() > 64 {
            cache.clear();
        }
    }
    (sum / n as f64, worst)
}

#[test]
fn gateways_reading_the_same_agents_agree_on_the_ring() {
    let seeds = [1u64, 7, 42];
    let mut with = Vec::new();
    let mut without = Vec::new();
    for s in seeds {
        with.push(run(0x9e37_79b9_7f4a_7c15 ^ s, true));
        without.push(run(0x9e37_79b9_7f4a_7c15 ^ s, false));
    }
    let mean = |v: &[(f64, f64)]| v.iter().map(|x| x.0).sum::<f64>() / v.len() as f64;
    let worst = |v: &[(f64, f64)]| v.iter().map(|x| x.1).fold(1.0f64, f64::min);
    println!(
        "ring agreement between two gateways, {BACKENDS} backends, ring {RING}, samples ±{JITTER}: \
         agent hysteresis + quantised weights: mean {:.6}%, worst second {:.4}%; \
         quantised weights alone: mean {:.4}%, worst second {:.4}%",
        100.0 * mean(&with),
        100.0 * worst(&with),
        100.0 * mean(&without),
        100.0 * worst(&without),
    );
    // What the agent's hysteresis buys: without it the gateways disagree
    // more, on average and in the worst second.
    assert!(
        mean(&with) > mean(&without) && worst(&with) > worst(&without),
        "hysteresis does not beat publishing raw samples: mean {:.6}% vs {:.6}%, worst second {:.4}% vs {:.4}%",
        100.0 * mean(&with),
        100.0 * mean(&without),
        100.0 * worst(&with),
        100.0 * worst(&without)
    );
    // The figure README.md and docs/FLEET.md give: 99.999% of entries.
    // (The run is deterministic: fixed seeds, no clock.)
    assert!(
        mean(&with) >= CLAIMED_AGREEMENT,
        "gateways agree on {:.6}% of the ring on average; the docs claim {:.3}%",
        100.0 * mean(&with),
        100.0 * CLAIMED_AGREEMENT
    );
}
