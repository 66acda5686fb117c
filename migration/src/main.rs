//! The migration CLI. async-std is the runtime here, and only here: switching runtimes is a
//! change to this attribute and one dependency line.

#[async_std::main]
async fn main() -> std::process::ExitCode {
    migration::cli::main().await
}
