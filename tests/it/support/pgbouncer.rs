//! A private PgBouncer in transaction pooling mode (Debian's `pgbouncer`) in front of the test
//! PostgreSQL, on a free loopback port, with fewer server connections than its clients will
//! open — so transactions of different workers share server connections, as in a fleet. Killed
//! on drop. Missing the program is a visible skip (a failure with `BIDORCH_REQUIRE_SERVICES`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running PgBouncer.
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

fn program() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

impl PgBouncer {
    /// Starts one in front of `database_url`'s server, `server_connections` at most per database.
    pub async fn start(database_url: &str, server_connections: u32) -> Option<Self> {
        let Some(program) = program() else {
            super::skip("pgbouncer is not installed (apt-get install pgbouncer)");
            return None;
        };
        let url = url::Url::parse(database_url).expect("a database URL");
        let host = url.host_str().unwrap_or("127.0.0.1");
        let port = url.port().unwrap_or(5432);
        let database = url.path().trim_start_matches('/');
        let user = if url.username().is_empty() {
            "postgres"
        } else {
            url.username()
        };
        let dir = std::env::temp_dir().join(super::unique("pgbouncer"));
        std::fs::create_dir_all(&dir).expect("a directory");
        let listen = super::free_port();
        let ini = format!(
            "[databases]\n\
             {database} = host={host} port={port} dbname={database}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = transaction\n\
             default_pool_size = {server_connections}\n\
             max_client_conn = 1000\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).expect("the config");
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n")).expect("users");
        let mut command = Command::new(program);
        if is_root() {
            // PgBouncer refuses to run as root; its files must be the user's.
            let _ = Command::new("chown")
                .args(["-R", "nobody"])
                .arg(&dir)
                .status();
            command.args(["-u", "nobody"]);
        }
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer starts");
        let bouncer = Self {
            child,
            dir,
            port: listen,
        };
        super::eventually(Duration::from_secs(20), "pgbouncer listens", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", listen))
                .await
                .is_ok()
        })
        .await;
        Some(bouncer)
    }

    /// `database_url` with the host and port of this PgBouncer.
    pub fn url_for(&self, database_url: &str) -> String {
        let mut url = url::Url::parse(database_url).expect("a database URL");
        let _ = url.set_host(Some("127.0.0.1"));
        let _ = url.set_port(Some(self.port));
        url.to_string()
    }

    /// What PgBouncer logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
