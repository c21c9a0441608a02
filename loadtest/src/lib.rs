//! What the benchmark binaries share: CPU time read from /proc.

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
