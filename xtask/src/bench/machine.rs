//! What the report's header says about where the numbers came from.

use crate::cmd::Cmd;

#[derive(Clone, Debug)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_gib: f64,
    pub kernel: String,
    pub date: String,
    pub commit: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let nproc = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(std::thread::available_parallelism().map_or(1, |n| n.get()));
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".into(), |(_, m)| m.trim().to_owned());
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let kernel = Cmd::new("uname")
            .args(["-r"])
            .read()
            .map_or("unknown".into(), |s| s.trim().to_owned());
        let date = Cmd::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .read()
            .map_or("unknown".into(), |s| s.trim().to_owned());
        let mut commit = Cmd::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .read()
            .map_or("unknown".into(), |s| s.trim().to_owned());
        let dirty = Cmd::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .read()
            .is_ok_and(|s| !s.trim().is_empty());
        if dirty {
            commit.push_str(" (with uncommitted changes)");
        }
        Machine {
            nproc,
            cpu_model,
            mem_gib,
            kernel,
            date,
            commit,
        }
    }
}
