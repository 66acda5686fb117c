//! The migrator's own log lines, captured with the time each was written, so a benchmark can
//! break a migration's wall time into its steps, lock attempts and backoff without hooks in
//! the migration code.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;

use crate::load;

static LINES: OnceLock<Mutex<Vec<(f64, String)>>> = OnceLock::new();

fn lines() -> &'static Mutex<Vec<(f64, String)>> {
    LINES.get_or_init(Default::default)
}

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let at = load::now();
        let mut guard = lines()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            guard.push((at, line.trim().to_owned()));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Records the migration crate's info and warnings (not the API's).
pub fn install() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("migration=info"))
        .with_writer(|| Capture)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

/// The lines written between `from` and `to` ([`load::now`]).
pub fn between(from: f64, to: f64) -> Vec<(f64, String)> {
    let guard = lines()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    guard
        .iter()
        .filter(|(at, _)| *at >= from && *at <= to)
        .cloned()
        .collect()
}

/// One step of a migration as its log lines tell it.
pub struct Step {
    /// "step 4/8: build unique index … concurrently"
    pub name: String,
    pub started: f64,
    pub seconds: f64,
    pub attempts: u32,
    pub backoff_ms: u64,
}

/// Steps from the lines `<migration> up step i/n: summary`; each lasts until the next starts
/// (or `ended`), so the next step's "already done?" probe counts in the step before it.
/// Lock retries (`lock not granted … retrying in N ms`) count against the step they name.
pub fn steps(lines: &[(f64, String)], ended: f64) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for (at, line) in lines {
        let Some(rest) = line.split_once(" step ").map(|(_, r)| r) else {
            continue;
        };
        if let Some(ms) = line
            .split_once("retrying in ")
            .and_then(|(_, r)| r.trim_end_matches(" ms").trim().parse::<u64>().ok())
        {
            if let Some(step) = steps.last_mut() {
                step.attempts += 1;
                step.backoff_ms += ms;
            }
            continue;
        }
        if let Some(previous) = steps.last_mut() {
            previous.seconds = at - previous.started;
        }
        steps.push(Step {
            name: format!("step {rest}"),
            started: *at,
            seconds: 0.0,
            attempts: 1,
            backoff_ms: 0,
        });
    }
    if let Some(last) = steps.last_mut() {
        last.seconds = ended - last.started;
    }
    steps
}
