//! The processes the driver measures, and the machine: RSS, CPU time and load from /proc.

use crate::report::NodeMemory;
use anyhow::{Context, Result, anyhow};
use std::time::{Duration, Instant};

/// utime + stime of a `/proc/…/stat` file (a process's, or `/proc/thread-self/stat`), in
/// clock ticks.
pub fn cpu_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces: after it, field 3 (state) is
    // index 0, so utime (14) and stime (15) are indices 11 and 12.
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second, from `getconf CLK_TCK` (100 on Linux).
pub fn clock_ticks_per_s() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(100)
}

/// A node process on this host.
#[derive(Debug, Clone, Copy)]
pub struct Proc {
    pub pid: u32,
}

impl Proc {
    pub fn rss_kib(self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("read /proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS for pid {}", self.pid))
    }

    /// utime + stime, in clock ticks.
    pub fn cpu_ticks(self) -> Result<u64> {
        cpu_ticks_of(&format!("/proc/{}/stat", self.pid))
    }
}

pub fn cpu_ticks_of(path: &str) -> Result<u64> {
    cpu_ticks(path).ok_or_else(|| anyhow!("cannot read CPU time from {path}"))
}

/// The machine's CPU time from the `cpu` line of /proc/stat, in clock ticks: (busy, softirq,
/// total), all CPUs. Busy counts everything but idle and iowait, kernel threads included
/// (ksoftirqd takes over network receive work under load).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    pub busy: u64,
    pub softirq: u64,
    pub total: u64,
}

pub fn machine_cpu() -> MachineCpu {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return MachineCpu::default();
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return MachineCpu::default();
    };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().take(8).sum();
    MachineCpu {
        busy: total - get(3) - get(4),
        softirq: get(6),
        total,
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Waits until the nodes use less than 5% of a core over half a second (join storms, presence
/// writes, first pings) or `timeout` passes.
pub async fn wait_quiet(procs: &[Proc], ticks_per_s: u64, timeout: Duration) {
    let began = Instant::now();
    let sample = Duration::from_millis(500);
    let threshold = (ticks_per_s / 40).max(1);
    let total = || procs.iter().filter_map(|p| p.cpu_ticks().ok()).sum::<u64>();
    let mut last = total();
    while began.elapsed() < timeout {
        tokio::time::sleep(sample).await;
        let now = total();
        if now.saturating_sub(last) <= threshold {
            return;
        }
        last = now;
    }
}

pub fn rss_all(procs: &[Proc]) -> Vec<u64> {
    procs.iter().map(|p| p.rss_kib().unwrap_or(0)).collect()
}

pub fn memory(procs: &[Proc], before: &[u64], per_node: &[usize]) -> Vec<NodeMemory> {
    procs
        .iter()
        .zip(before)
        .zip(per_node)
        .map(|((p, &before), &connections)| {
            let after = p.rss_kib().unwrap_or(0);
            NodeMemory {
                pid: p.pid,
                connections,
                rss_kib_before: before,
                rss_kib_after: after,
                rss_bytes_per_connection: if connections == 0 {
                    0.0
                } else {
                    ((after as f64 - before as f64) * 1024.0 / connections as f64).round()
                },
            }
        })
        .collect()
}
