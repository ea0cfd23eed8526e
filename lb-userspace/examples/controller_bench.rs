//! `cargo xtask bench controller`: how long the controller takes to build a
//! weighted Maglev table, and how many flows a table change moves.
//!
//! For each backend count (10, 100, 1000 by default) it builds the table
//! `--runs` times at `--ring` entries (every backend weight 100, named
//! `backend-<i>` as an operator would name them) and reports min / median /
//! max wall time; then removes one backend and reports the share of the
//! *other* backends' entries that changed owner (`maglev::moved_share`:
//! 0 would be a perfectly consistent hash) next to the share the removed
//! backend owned (≈ 1/N, which must move).
//!
//! Output: one human line per backend count, then one machine-readable line
//! per count that `xtask bench` parses:
//!
//! ```text
//! controller: backends=1000 ring=65537 build_ms_min=… build_ms_median=… build_ms_max=… moved_share=… removed_share=…
//! ```
//!
//! Usage: controller_bench [--runs N] [--ring PRIME] [--backends 10,100,1000]

use std::time::Instant;

use xdplb::maglev::{self, MaglevEntry};

/// Maglev's ring in Katran and the xdplb default (a prime).
const DEFAULT_RING: u32 = 65_537;
/// Timed builds per backend count; the median of these is reported.
const DEFAULT_RUNS: usize = 7;
/// Weight given to every backend (the config default).
const WEIGHT: u32 = 100;

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn entries(names: &[String]) -> Vec<MaglevEntry<'_>> {
    names
        .iter()
        .enumerate()
        .map(|(i, key)| MaglevEntry {
            id: i as u32,
            key,
            weight: WEIGHT,
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = arg(&args, "--runs").map_or(Ok(DEFAULT_RUNS), str::parse)?;
    let ring: u32 = arg(&args, "--ring").map_or(Ok(DEFAULT_RING), str::parse)?;
    let counts: Vec<usize> = arg(&args, "--backends")
        .unwrap_or("10,100,1000")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(runs >= 1, "--runs must be at least 1");
    println!("controller bench: maglev ring={ring} runs={runs} weight={WEIGHT}");
    for &n in &counts {
        anyhow::ensure!(n >= 2, "need at least 2 backends to remove one, not {n}");
        let names: Vec<String> = (0..n).map(|i| format!("backend-{i}")).collect();
        let all = entries(&names);
        // One untimed build warms caches and the allocator.
        let before = maglev::build(&all, ring);
        let mut ms: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let table = maglev::build(&all, ring);
                let elapsed = t.elapsed().as_secs_f64() * 1e3;
                std::hint::black_box(table);
                elapsed
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        let (min, med, max) = (ms[0], ms[ms.len() / 2], ms[ms.len() - 1]);

        // Remove the middle backend: what moves besides its own entries?
        let removed = (n / 2) as u32;
        let rest: Vec<MaglevEntry> = all.iter().copied().filter(|e| e.id != removed).collect();
        let after = maglev::build(&rest, ring);
        let moved = maglev::moved_share(&before, &after, removed);
        let owned = before.iter().filter(|&&e| e == removed).count() as f64 / ring as f64;
        println!(
            "  {n:>5} backends: build min {min:>8.3} ms  median {med:>8.3} ms  max {max:>8.3} ms; \
             one leaves: {:.3}% of the others' entries move (it owned {:.3}%)",
            moved * 100.0,
            owned * 100.0
        );
        println!(
            "controller: backends={n} ring={ring} build_ms_min={min:.4} build_ms_median={med:.4} \
             build_ms_max={max:.4} moved_share={moved:.6} removed_share={owned:.6}"
        );
    }
    Ok(())
}
