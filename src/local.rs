//! Finding a database to run on: `DATABASE_URL`, else the server at 127.0.0.1:5432, else a
//! private throwaway PostgreSQL started from the local server binaries.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::StoreError;

/// The conventional local server, used when `DATABASE_URL` is unset and it answers.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database server to run on; a throwaway one is stopped and deleted when this is dropped
/// (and, should the process die first, by a watchdog that outlives it).
pub struct LocalPostgres {
    url: String,
    throwaway: Option<Throwaway>,
}

/// Shows the URL without its password (`DATABASE_URL` may hold one).
impl std::fmt::Debug for LocalPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPostgres")
            .field("url", &crate::redact::redact(&self.url))
            .field("throwaway", &self.throwaway)
            .finish()
    }
}

#[derive(Debug)]
struct Throwaway {
    pg_ctl: PathBuf,
    dir: PathBuf,
    as_postgres_user: bool,
}

impl LocalPostgres {
    /// `DATABASE_URL` if set; else [`DEFAULT_URL`] if a server answers there; else a throwaway
    /// server in a temporary directory (said on stderr).
    ///
    /// # Errors
    ///
    /// [`StoreError::NoDatabase`] when no server answers and none can be started, naming the
    /// package to install.
    pub async fn from_env() -> Result<Self, StoreError> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return Ok(Self {
                url,
                throwaway: None,
            });
        }
        if answers(DEFAULT_URL).await {
            return Ok(Self {
                url: DEFAULT_URL.to_owned(),
                throwaway: None,
            });
        }
        let started = tokio::task::spawn_blocking(start_throwaway)
            .await
            .map_err(|e| StoreError::NoDatabase(e.to_string()))??;
        Ok(started)
    }

    /// A private throwaway server, whatever `DATABASE_URL` says and whether or not a server
    /// answers at 127.0.0.1:5432: for runs that must control their server (restart it).
    ///
    /// # Errors
    ///
    /// [`StoreError::NoDatabase`] when none can be started, naming the package to install.
    pub async fn throwaway() -> Result<Self, StoreError> {
        tokio::task::spawn_blocking(start_throwaway)
            .await
            .map_err(|e| StoreError::NoDatabase(e.to_string()))?
    }

    /// Restarts a throwaway server abruptly (`pg_ctl restart -m immediate`: connections drop
    /// at once, as in a crash; committed transactions survive), waiting until it accepts
    /// connections again. Blocks the calling thread.
    ///
    /// # Errors
    ///
    /// [`StoreError::NoDatabase`] if this is not a throwaway server or the restart failed.
    pub fn restart(&self) -> Result<(), StoreError> {
        let t = self.throwaway.as_ref().ok_or_else(|| {
            StoreError::NoDatabase("only a throwaway server can be restarted".to_owned())
        })?;
        let mut restart = t.command(&t.pg_ctl);
        restart
            .args(["restart", "-w", "-m", "immediate", "-l"])
            .arg(t.dir.join("log"))
            .arg("-D")
            .arg(t.dir.join("data"));
        run(restart, "pg_ctl restart")
    }

    /// The server's URL (the `postgres` database on it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this is a private server that goes away with this value.
    pub fn is_throwaway(&self) -> bool {
        self.throwaway.is_some()
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Some(t) = &self.throwaway {
            let _ = t
                .command(&t.pg_ctl)
                .args(["stop", "-m", "immediate", "-D"])
                .arg(t.dir.join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&t.dir);
        }
    }
}

async fn answers(url: &str) -> bool {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok((client, connection))) => {
            drop(client);
            let _ = connection.await;
            true
        }
        _ => false,
    }
}

impl Throwaway {
    /// PostgreSQL's server refuses to run as root: run its tools as the `postgres` user then.
    fn command(&self, program: &Path) -> Command {
        if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
}

fn no_server(why: &str) -> StoreError {
    StoreError::NoDatabase(format!(
        "{why}; set DATABASE_URL, start a server at 127.0.0.1:5432, or install PostgreSQL's \
         server binaries (Debian/Ubuntu: apt-get install postgresql)"
    ))
}

/// The directory holding `initdb` and `pg_ctl`: `pg_config --bindir`, the newest
/// `/usr/lib/postgresql/*/bin`, or `PATH`.
fn server_bindir() -> Option<PathBuf> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|d| has_tools(d)))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(mut command: Command, what: &str) -> Result<(), StoreError> {
    let out = command
        .output()
        .map_err(|e| no_server(&format!("{what} could not run: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(no_server(&format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn start_throwaway() -> Result<LocalPostgres, StoreError> {
    let bindir = server_bindir().ok_or_else(|| {
        no_server(
            "no server answers at 127.0.0.1:5432 and no PostgreSQL server binaries were found",
        )
    })?;
    let as_postgres_user = is_root();
    let dir = std::env::temp_dir().join(format!("dcb-pg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).map_err(|e| no_server(&format!("cannot create {dir:?}: {e}")))?;
    let t = Throwaway {
        pg_ctl: bindir.join("pg_ctl"),
        dir,
        as_postgres_user,
    };
    if as_postgres_user {
        run(
            {
                let mut c = Command::new("chown");
                c.arg("postgres").arg(&t.dir);
                c
            },
            "chown",
        )?;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| no_server(&format!("no free port: {e}")))?
        .port();
    eprintln!(
        "dcb-runtime: no DATABASE_URL and no server at 127.0.0.1:5432; starting a throwaway \
         PostgreSQL on port {port} in {}",
        t.dir.display()
    );
    let data = t.dir.join("data");
    let mut initdb = t.command(&bindir.join("initdb"));
    initdb
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data);
    run(initdb, "initdb")?;
    let mut start = t.command(&t.pg_ctl);
    start
        .args(["start", "-w", "-l"])
        .arg(t.dir.join("log"))
        .arg("-D")
        .arg(&data)
        .arg("-o")
        .arg(format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200",
            t.dir.display()
        ));
    run(start, "pg_ctl start")?;
    spawn_watchdog(&t, &data);
    Ok(LocalPostgres {
        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        throwaway: Some(t),
    })
}

/// Stops the server and removes its directory once this process is gone, however it ends.
fn spawn_watchdog(t: &Throwaway, data: &Path) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         {as_user}{pg_ctl} stop -m immediate -D '{data}' >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        as_user = if t.as_postgres_user {
            "runuser -u postgres -- "
        } else {
            ""
        },
        pg_ctl = t.pg_ctl.display(),
        data = data.display(),
        dir = t.dir.display(),
    );
    // Runs as this process's user, so that it may watch this process.
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = c.spawn();
}
