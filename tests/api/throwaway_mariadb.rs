//! A MariaDB server of the test's own: a fresh data directory (`mariadb-install-db`) and a
//! `mariadbd` on a free port, which the test may kill and restart, or make read-only, without
//! touching the shared server on 3306.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::random_name;

pub struct ThrowawayMariaDb {
    dir: PathBuf,
    pub port: u16,
    server: Option<Child>,
}

impl ThrowawayMariaDb {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("billing-mariadb-{}", random_name()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let output = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .expect("run mariadb-install-db");
        assert!(
            output.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        let port = listener.local_addr().expect("port").port();
        drop(listener);
        let mut server = Self {
            dir,
            port,
            server: None,
        };
        server.run().await;
        server
    }

    /// Starts `mariadbd` on the data directory (after a kill: with crash recovery) and waits
    /// until it answers.
    pub async fn run(&mut self) {
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                // As the shared server (Debian's default). With the compiled-in latin1, the
                // migrations stop at a column change ALGORITHM=INPLACE cannot do (1846).
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
            ])
            .arg(format!(
                "--log-error={}",
                self.dir.join("error.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mariadbd");
        self.server = Some(child);
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "mariadbd did not listen; its log:\n{}",
            std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
        );
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, user: &str, database: &str) -> String {
        format!("mysql://{user}@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for ThrowawayMariaDb {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
