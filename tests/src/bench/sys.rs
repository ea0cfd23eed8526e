//! What the lab benchmark reads from the host and from its load tools:
//! CPU time from `/proc`, and the output of `wrk` and `iperf3`.

use anyhow::{bail, Context, Result};

/// Kernel clock ticks per second (`USER_HZ`), the unit of `/proc/stat` and
/// `/proc/<pid>/stat` times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// The whole machine's CPU time so far, from `/proc/stat`'s `cpu` line, in
/// seconds (summed over CPUs). The lab shares the host's CPUs with the load
/// generator and the backends, so this is everyone's time, not the
/// gateway's alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineCpu {
    /// user + nice + system + irq + softirq + steal.
    pub busy: f64,
    /// softirq alone (where XDP, forwarding and nftables NAT run).
    pub softirq: f64,
    /// idle + iowait.
    pub idle: f64,
}

impl MachineCpu {
    pub fn now() -> Result<MachineCpu> {
        let text = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("/proc/stat has no cpu line")?;
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        let f = |i: usize| v.get(i).copied().unwrap_or(0.0);
        let hz = clock_ticks();
        // user nice system idle iowait irq softirq steal
        Ok(MachineCpu {
            busy: (f(0) + f(1) + f(2) + f(5) + f(6) + f(7)) / hz,
            softirq: f(6) / hz,
            idle: (f(3) + f(4)) / hz,
        })
    }

    pub fn since(self, before: MachineCpu) -> MachineCpu {
        MachineCpu {
            busy: self.busy - before.busy,
            softirq: self.softirq - before.softirq,
            idle: self.idle - before.idle,
        }
    }
}

/// utime + stime of a process, in seconds (threads included).
pub fn process_cpu(pid: u32) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'. Field 3 (state) is the first after it; utime and
    // stime are fields 14 and 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// CPU-s the kernel's ksoftirqd threads have used so far: softirq work
/// (NAPI polls, forwarding, XDP) the kernel deferred from interrupt exit to
/// those ordinary threads, which then wait their turn like any process.
pub fn ksoftirqd_cpu() -> Result<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").context("read /proc")? {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if comm.starts_with("ksoftirqd/") {
            // Gone meanwhile (CPU hot-unplug): not counted.
            total += process_cpu(pid).unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// A `VmXxx:` field of `/proc/<pid>/status`, in KiB (e.g. `"VmHWM"`, the
/// peak resident set).
pub fn process_mem_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .with_context(|| format!("/proc/{pid}/status has no {field}"))?;
    let kib = line[field.len() + 1..]
        .split_whitespace()
        .next()
        .context("empty field")?;
    Ok(kib.parse()?)
}

/// What `wrk --latency` reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors (connect + read + write + timeout) plus non-2xx/3xx.
    pub errors: u64,
}

/// A wrk duration (`812.00us`, `3.99ms`, `1.20s`, `2.00m`) in ms.
fn wrk_ms(s: &str) -> Option<f64> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        "h" => n * 3600e3,
        _ => return None,
    })
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut seen_rps = false;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => {
                r.rps = v.parse()?;
                seen_rps = true;
            }
            ["50%", v] => r.p50_ms = wrk_ms(v).context("p50")?,
            ["99%", v] => r.p99_ms = wrk_ms(v).context("p99")?,
            [n, "requests", "in", secs, ..] => {
                r.requests = n.parse()?;
                r.seconds = wrk_ms(secs.trim_end_matches(',')).context("duration")? / 1e3;
            }
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                r.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse::<u64>()?,
            _ => {}
        }
    }
    if !seen_rps {
        bail!("no Requests/sec in wrk output:\n{out}");
    }
    Ok(r)
}

/// Received bits per second of an `iperf3 -J` run.
pub fn parse_iperf3(json: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 output has no end.sum_received.bits_per_second")
}

/// Median of a non-empty slice (the upper one of two middles).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://198.18.2.10/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.12ms    1.34ms  20.45ms   75.00%
    Req/Sec     6.12k   345.12     7.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    4.70ms
     90%    5.50ms
     99%    1.20s
  121878 requests in 10.00s, 19.29MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 12
Requests/sec:  12182.17
Transfer/sec:      1.93MB
";

    #[test]
    fn wrk_output() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests, 121_878);
        assert!((r.seconds - 10.0).abs() < 1e-9);
        assert!((r.rps - 12182.17).abs() < 1e-9);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert!((r.p99_ms - 1200.0).abs() < 1e-9);
        assert_eq!(r.errors, 18);
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn iperf3_output() {
        let j = r#"{"end":{"sum_received":{"bits_per_second":9.5e9}}}"#;
        assert_eq!(parse_iperf3(j).unwrap(), 9.5e9);
        assert!(parse_iperf3(r#"{"error":"unable to connect"}"#).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 3.0);
    }
}
