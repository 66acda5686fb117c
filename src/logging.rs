//! Where and how the binary logs: to stderr, filtered by `RUST_LOG` (default `info,sqlx=warn`),
//! as text or as one JSON object per line (`LOG_FORMAT`, `--log-format`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people; coloured only when stderr is a terminal and NO_COLOR is unset.
    Text,
    /// One JSON object per line for log pipelines: the event's fields at the top level, the
    /// spans it happened in (the request's, with its `request_id`, first) under `spans`.
    Json,
}

/// Installs the global subscriber. Called once, before anything logs.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Without `log_internal_errors(false)`, a write to a closed stderr is reported with
    // `eprintln!`, which panics on that same closed stderr.
    let filter = quiet_secret_spans(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    log_panics();
    // Fails only if a subscriber is already installed, which leaves that one in place.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colour()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
}

/// A panic becomes one ERROR line in the configured format (with the request's span), where
/// the default hook printed several plain lines that broke one-JSON-object-per-line logs. The
/// server answers the request with a JSON 500 (api::startup's panic layer).
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        tracing::error!(panic = message, %location, "panicked");
    }));
}

/// sea-orm's drivers open a TRACE span around `connect` whose fields print the connection
/// options, the database URL and its password included. Whatever `RUST_LOG` says, those spans
/// are not recorded: the drivers' modules log at most DEBUG (their other TRACE spans only
/// repeat the statement spans sqlx records).
fn quiet_secret_spans(filter: EnvFilter) -> EnvFilter {
    match "sea_orm::driver=debug".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// Colour codes are noise in a file or a pipe, where logs are read by tools: only on a
/// terminal, and never when NO_COLOR is set (no-color.org).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
