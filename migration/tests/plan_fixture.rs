//! The SQL every migration emits, pinned byte for byte.
//!
//! `migration sql --backend B up|down` for every backend is compared with the committed
//! `tests/fixtures/plan/<backend>.txt`, so a refactor of how migrations are written cannot
//! change what they send to a database without the diff showing in review. A deliberate change
//! regenerates the files with `UPDATE_PLAN_FIXTURES=1 cargo test -p migration --test
//! plan_fixture` and says why in its commit.

use std::path::PathBuf;
use std::process::Command;

/// Fixture name, backend, PostgreSQL schema: a non-default schema too, since every table name
/// must carry it.
const RENDERINGS: [(&str, &str, &str); 4] = [
    ("postgres", "postgres", "public"),
    ("postgres-schema-billing", "postgres", "billing"),
    ("mysql", "mysql", "public"),
    ("sqlite", "sqlite", "public"),
];

/// Both directions of every migration for `backend`, as the CLI prints them.
fn rendered(backend: &str, schema: &str) -> String {
    let mut out = String::new();
    for direction in ["up", "down"] {
        let run = Command::new(env!("CARGO_BIN_EXE_migration"))
            .args(["sql", direction, "--backend", backend, "-s", schema])
            // The dry run prints the lock timeout in force: pin the default.
            .env_remove("MIGRATION_LOCK_TIMEOUT_MS")
            .env_remove("MIGRATION_LOCK_ATTEMPTS")
            .env_remove("DATABASE_URL")
            .env_remove("DATABASE_SCHEMA")
            .output()
            .expect("run the migration binary");
        assert!(
            run.status.success(),
            "migration sql {direction} --backend {backend} failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        out.push_str(&format!("==== {direction} ====\n"));
        out.push_str(&String::from_utf8(run.stdout).expect("the dry run prints UTF-8"));
    }
    out
}

fn fixture(backend: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/plan")
        .join(format!("{backend}.txt"))
}

#[test]
fn every_migration_emits_the_committed_sql() {
    let update = std::env::var_os("UPDATE_PLAN_FIXTURES").is_some();
    let mut differing = Vec::new();
    for (name, backend, schema) in RENDERINGS {
        let now = rendered(backend, schema);
        let path = fixture(name);
        if update {
            std::fs::write(&path, &now).expect("write the fixture");
            continue;
        }
        let pinned = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
        if now != pinned {
            let line = now
                .lines()
                .zip(pinned.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| now.lines().count().min(pinned.lines().count()));
            differing.push(format!(
                "{name}: first difference at line {}:\n  now:    {:?}\n  pinned: {:?}",
                line + 1,
                now.lines().nth(line).unwrap_or("<end>"),
                pinned.lines().nth(line).unwrap_or("<end>"),
            ));
        }
    }
    assert!(
        differing.is_empty(),
        "the emitted SQL changed (regenerate with UPDATE_PLAN_FIXTURES=1 if deliberate):\n{}",
        differing.join("\n")
    );
}
