//! A PostgreSQL cluster of the test's own, in a temporary directory on a free port, that the
//! test may stop, kill and restart: the shared server on 5432 serves every other test.
//!
//! The binaries are the system's (`/usr/lib/postgresql/15/bin`, or `TEST_PG_BIN`, e.g. a
//! directory of the `@embedded-postgres` packages .ci/postgres-majors unpacks). PostgreSQL
//! refuses to run as root: as root, the commands run as the `postgres` user (`runuser`).

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::support::random_name;

pub struct ThrowawayPg {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

/// How pg_ctl stops the server: `fast` disconnects sessions with admin_shutdown, `immediate`
/// is a crash (no shutdown checkpoint; the next start recovers).
#[derive(Clone, Copy)]
pub enum Stop {
    Fast,
    Immediate,
}

impl ThrowawayPg {
    pub fn start() -> Self {
        let bin = PathBuf::from(
            std::env::var("TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        assert!(
            bin.join("initdb").exists(),
            "no PostgreSQL binaries in {} (set TEST_PG_BIN)",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!("billing-pg-{}", random_name()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let cluster = Self { bin, dir, port };
        cluster.chown();
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        cluster.pg_ctl_start();
        cluster
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    pub fn stop(&self, mode: Stop) {
        let mode = match mode {
            Stop::Fast => "fast",
            Stop::Immediate => "immediate",
        };
        self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"]);
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program);
        let output = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .current_dir(&self.dir)
                .output()
        } else {
            Command::new(&program)
                .args(args)
                .current_dir(&self.dir)
                .output()
        }
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        assert!(
            output.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn chown(&self) {
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&self.dir)
                .status()
                .expect("chown");
            assert!(status.success());
        }
    }
}

impl Drop for ThrowawayPg {
    fn drop(&mut self) {
        let _ = Command::new(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        if is_root() {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-D", &self.data(), "-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    listener.local_addr().expect("port").port()
}
