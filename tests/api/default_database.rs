//! With `DATABASE_URL` unset, the binaries use `data/billing.sqlite` under the working
//! directory, resolved when they run and said on stderr. It used to be a path compiled in from
//! the build machine's checkout, which a shipped binary would quietly use anywhere.

use std::process::Command;

use crate::support::random_name;

#[test]
fn the_default_database_is_under_the_working_directory() {
    let dir = std::env::temp_dir().join(format!("billing-default-db-{}", random_name()));
    std::fs::create_dir_all(&dir).expect("create the working directory");
    // Canonical, as `current_dir()` reports it (the temp folder may be behind a symlink).
    let dir = dir.canonicalize().expect("canonical working directory");
    let mut command = Command::new(env!("CARGO_BIN_EXE_billing"));
    command.env_clear().current_dir(&dir);
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    let output = command
        .args(["create-user", "--email", "first@example.com"])
        .output()
        .expect("run billing");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = dir.join("data").join("billing.sqlite");
    let outcome = (output.status.success(), expected.is_file());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(outcome, (true, true), "{stderr}");
    assert!(
        stderr.contains(&expected.display().to_string()),
        "stderr names the file it chose: {stderr}"
    );
}
