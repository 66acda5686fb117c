//! The billing API's entry point. The HTTP API (issue "api: authenticated synced-sessions API")
//! has not landed yet; until it does, this says so and points at what works today.

fn main() -> std::process::ExitCode {
    eprintln!(
        "The HTTP API is not built yet. What works today is the migrator:\n  \
         cargo run -p migration -- up      (embedded SQLite by default; see README)"
    );
    std::process::ExitCode::FAILURE
}
