//! Where and how a figure was measured: printed above every report and under every chart,
//! so a reader can tell what produced it and run it again.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

pub struct About {
    pub date: String,
    pub cores: usize,
    pub postgres: String,
    pub command: String,
}

impl About {
    pub async fn read(db: &DatabaseConnection) -> Self {
        let postgres = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SHOW server_version",
            ))
            .await
            .ok()
            .flatten()
            .and_then(|row| row.try_get_by_index::<String>(0).ok())
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| "?".to_owned());
        let args: Vec<String> = std::env::args().skip(1).collect();
        Self {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            postgres,
            command: format!("cargo run --release --bin bench -- {}", args.join(" ")),
        }
    }

    /// Two lines: when and where, then the command.
    pub fn lines(&self) -> Vec<String> {
        vec![
            format!(
                "{} · {} cores (shared with other work) · PostgreSQL {} · release build",
                self.date, self.cores, self.postgres
            ),
            self.command.clone(),
        ]
    }

    pub fn print(&self) {
        for line in self.lines() {
            println!("# {line}");
        }
    }
}
