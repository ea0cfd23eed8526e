//! Pure parsers of the `/proc` files the agent samples, and the utilisation
//! arithmetic over two samples. No I/O: the sampler reads, these compute.

/// Aggregate CPU jiffies from the `cpu ` line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub total: u64,
    /// idle + iowait: time the CPU could have run something.
    pub idle: u64,
}

/// Parses `/proc/stat`. `guest` and `guest_nice` are left out of the total
/// because the kernel already counts them inside `user` and `nice`.
pub fn parse_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 4 {
        return None;
    }
    let iowait = v.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        total: v.iter().sum(),
        idle: v[3] + iowait,
    })
}

/// Busy share between two samples: `Δ(total − idle − iowait) / Δtotal`.
pub fn cpu_utilisation(prev: CpuTimes, cur: CpuTimes) -> f64 {
    let total = cur.total.saturating_sub(prev.total);
    if total == 0 {
        return 0.0;
    }
    let idle = cur.idle.saturating_sub(prev.idle).min(total);
    ((total - idle) as f64 / total as f64).clamp(0.0, 1.0)
}

/// `1 − MemAvailable / MemTotal` from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<f64> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim_start_matches(':')
            .split_ascii_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    if total == 0 {
        return None;
    }
    Some((1.0 - available as f64 / total as f64).clamp(0.0, 1.0))
}

/// Whether a `/proc/diskstats` name is a whole physical (or virtual-machine)
/// disk. Loop, ram, zram, device-mapper and md devices sit on top of real
/// disks or memory, and partitions are part of their disk: counting them would
/// only repeat (or fake) a real disk's busy time.
pub fn is_real_disk(name: &str) -> bool {
    const VIRTUAL: [&str; 7] = ["loop", "ram", "zram", "dm-", "md", "sr", "fd"];
    if VIRTUAL.iter().any(|p| name.starts_with(p)) {
        return false;
    }
    let ends_digit = name.ends_with(|c: char| c.is_ascii_digit());
    if name.starts_with("nvme") || name.starts_with("mmcblk") {
        // nvme0n1 is a disk, nvme0n1p2 a partition; mmcblk0 / mmcblk0p1.
        let tail = name.trim_end_matches(|c: char| c.is_ascii_digit());
        return !(tail.ends_with('p') && ends_digit);
    }
    // sda, vda, xvda, hda are disks; a trailing digit makes a partition.
    !ends_digit
}

/// `(name, io_ticks ms)` of each real disk in `/proc/diskstats`. `io_ticks`
/// (field 13) is the time the device had I/O in flight.
pub fn parse_diskstats(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_ascii_whitespace().collect();
            let name = *f.get(2)?;
            let ticks = f.get(12)?.parse().ok()?;
            is_real_disk(name).then(|| (name.to_string(), ticks))
        })
        .collect()
}

/// Busiest disk's share of wall time between two samples.
pub fn disk_utilisation(prev: &[(String, u64)], cur: &[(String, u64)], wall_ms: u64) -> f64 {
    if wall_ms == 0 {
        return 0.0;
    }
    cur.iter()
        .filter_map(|(name, ticks)| {
            let (_, before) = prev.iter().find(|(n, _)| n == name)?;
            Some(ticks.saturating_sub(*before) as f64 / wall_ms as f64)
        })
        .fold(0.0, f64::max)
        .clamp(0.0, 1.0)
}

/// `(interface, rx bytes + tx bytes)` from `/proc/net/dev`, without `lo`.
pub fn parse_net_dev(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" || name.is_empty() {
                return None;
            }
            let f: Vec<u64> = rest
                .split_ascii_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            // Receive: bytes packets errs drop fifo frame compressed
            // multicast; transmit bytes is the ninth column.
            Some((name.to_string(), f.first()? + f.get(8)?))
        })
        .collect()
}

/// Busiest interface's share of its capacity between two samples.
/// `capacity_bps` gives each interface's capacity in bits per second.
pub fn net_utilisation(
    prev: &[(String, u64)],
    cur: &[(String, u64)],
    wall_ms: u64,
    capacity_bps: impl Fn(&str) -> u64,
) -> f64 {
    if wall_ms == 0 {
        return 0.0;
    }
    cur.iter()
        .filter_map(|(name, bytes)| {
            let (_, before) = prev.iter().find(|(n, _)| n == name)?;
            let cap = capacity_bps(name);
            if cap == 0 {
                return None;
            }
            let bits = bytes.saturating_sub(*before) as f64 * 8.0;
            Some(bits / (wall_ms as f64 / 1000.0) / cap as f64)
        })
        .fold(0.0, f64::max)
        .clamp(0.0, 1.0)
}

/// Parses `/sys/class/net/IF/speed` (Mb/s) into bits per second. Virtual
/// interfaces report -1 or fail to read: `None`, so the caller's default
/// applies.
pub fn parse_link_speed(text: &str) -> Option<u64> {
    let mbps: i64 = text.trim().parse().ok()?;
    (mbps > 0).then(|| mbps as u64 * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_1: &str = "cpu  4705 356 584 3699 23 23 0 0 0 0
cpu0 1393 280 286 1755 13 10 0 0 0 0
intr 114930548 113199788 3 0 5 263 0 4 [... lots more numbers ...]
ctxt 1990473
";
    const STAT_2: &str = "cpu  4805 356 684 3799 123 23 0 0 0 0
cpu0 1393 280 286 1755 13 10 0 0 0 0
";

    #[test]
    fn cpu_from_stat_deltas() {
        let a = parse_stat(STAT_1).unwrap();
        assert_eq!(
            a,
            CpuTimes {
                total: 9390,
                idle: 3722
            }
        );
        let b = parse_stat(STAT_2).unwrap();
        // Δuser 100 + Δsystem 100 busy; Δidle 100 + Δiowait 100 idle.
        assert!((cpu_utilisation(a, b) - 0.5).abs() < 1e-12);
        assert_eq!(cpu_utilisation(a, a), 0.0);
        assert_eq!(parse_stat("intr 1 2 3\n"), None);
        assert_eq!(parse_stat("cpu  x y\n"), None);
    }

    const MEMINFO: &str = "MemTotal:        8000000 kB
MemFree:          500000 kB
MemAvailable:    2000000 kB
Buffers:          100000 kB
";

    #[test]
    fn memory_from_meminfo() {
        assert!((parse_meminfo(MEMINFO).unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(parse_meminfo("MemTotal: 0 kB\nMemAvailable: 0 kB\n"), None);
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    }

    const DISKSTATS_1: &str = "   7       0 loop0 10 0 20 5 0 0 0 0 0 900 5 0 0 0 0
   8       0 sda 1000 10 20000 500 2000 30 40000 700 0 1000 1200 0 0 0 0
   8       1 sda1 900 10 18000 450 1900 30 38000 650 0 950 1100 0 0 0 0
 259       0 nvme0n1 10 0 80 1 0 0 0 0 0 2000 1 0 0 0 0
 259       1 nvme0n1p1 10 0 80 1 0 0 0 0 0 1999 1 0 0 0 0
 253       0 dm-0 10 0 80 1 0 0 0 0 0 5000 1 0 0 0 0
";
    const DISKSTATS_2: &str = "   7       0 loop0 10 0 20 5 0 0 0 0 0 1900 5 0 0 0 0
   8       0 sda 1000 10 20000 500 2000 30 40000 700 0 1250 1200 0 0 0 0
 259       0 nvme0n1 10 0 80 1 0 0 0 0 0 2600 1 0 0 0 0
 253       0 dm-0 10 0 80 1 0 0 0 0 0 6000 1 0 0 0 0
";

    #[test]
    fn disk_from_diskstats() {
        let a = parse_diskstats(DISKSTATS_1);
        assert_eq!(
            a,
            vec![("sda".to_string(), 1000), ("nvme0n1".to_string(), 2000)]
        );
        let b = parse_diskstats(DISKSTATS_2);
        // nvme0n1 busy 600 ms of 1000: the max; loop0 and dm-0 ignored.
        assert!((disk_utilisation(&a, &b, 1000) - 0.6).abs() < 1e-12);
        assert_eq!(disk_utilisation(&a, &b, 0), 0.0);
        assert_eq!(disk_utilisation(&a, &b, 100), 1.0);
    }

    #[test]
    fn disk_names() {
        for d in ["sda", "vdb", "xvda", "nvme0n1", "mmcblk0", "hda"] {
            assert!(is_real_disk(d), "{d}");
        }
        for p in [
            "sda1",
            "vdb2",
            "nvme0n1p1",
            "mmcblk0p2",
            "loop3",
            "ram0",
            "zram0",
            "dm-1",
            "md0",
            "sr0",
        ] {
            assert!(!is_real_disk(p), "{p}");
        }
    }

    const NET_DEV_1: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 9999999     100    0    0    0     0          0         0  9999999     100    0    0    0     0       0          0
  eth0: 1000000    1000    0    0    0     0          0         0   500000     500    0    0    0     0       0          0
  eth1:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
";
    const NET_DEV_2: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 99999999     100    0    0    0     0          0         0  99999999     100    0    0    0     0       0          0
  eth0: 63500000    1000    0    0    0     0          0         0   500000     500    0    0    0     0       0          0
  eth1:   100000       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
";

    #[test]
    fn net_from_net_dev() {
        let a = parse_net_dev(NET_DEV_1);
        assert_eq!(
            a,
            vec![("eth0".to_string(), 1_500_000), ("eth1".to_string(), 0)]
        );
        let b = parse_net_dev(NET_DEV_2);
        // eth0: 62.5 MB in 1 s = 500 Mbit/s of a 1 Gbit/s link.
        let u = net_utilisation(&a, &b, 1000, |_| 1_000_000_000);
        assert!((u - 0.5).abs() < 1e-12, "{u}");
        assert_eq!(net_utilisation(&a, &b, 1000, |_| 1), 1.0);
        assert_eq!(net_utilisation(&a, &b, 1000, |_| 0), 0.0);
    }

    #[test]
    fn link_speed() {
        assert_eq!(parse_link_speed("1000\n"), Some(1_000_000_000));
        assert_eq!(parse_link_speed("-1\n"), None);
        assert_eq!(parse_link_speed(""), None);
    }
}
