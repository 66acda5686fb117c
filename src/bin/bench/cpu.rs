//! CPU use over a phase, from Linux's /proc: how busy the whole machine was (the benchmark,
//! PostgreSQL and anything else sharing the cores) and what this process itself used.
//! Elsewhere both read as zero.

pub struct Cpu {
    machine: Option<(u64, u64)>,
    process: Option<u64>,
}

pub struct Used {
    /// Fraction of all cores' time not idle.
    pub machine_busy: f64,
    /// User + system CPU seconds of this process.
    pub process_seconds: f64,
}

/// (busy, total) jiffies of all cores.
fn machine() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// utime + stime of this process, in jiffies.
fn process() -> Option<u64> {
    stat_jiffies("/proc/self/stat")
}

/// utime + stime of process `pid` (its threads included), in jiffies.
pub fn process_jiffies(pid: u32) -> Option<u64> {
    stat_jiffies(&format!("/proc/{pid}/stat"))
}

fn stat_jiffies(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Linux's USER_HZ, fixed at 100 on every architecture it exports /proc/stat for.
pub const TICKS_PER_SECOND: f64 = 100.0;

impl Cpu {
    pub fn read() -> Self {
        Self {
            machine: machine(),
            process: process(),
        }
    }

    pub fn since(&self) -> Used {
        let machine_busy = match (self.machine, machine()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
            _ => 0.0,
        };
        let process_seconds = match (self.process, process()) {
            (Some(p0), Some(p1)) => (p1.saturating_sub(p0)) as f64 / TICKS_PER_SECOND,
            _ => 0.0,
        };
        Used {
            machine_busy,
            process_seconds,
        }
    }
}
