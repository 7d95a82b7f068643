//! The database a run works in: a fresh one on the chosen server, dropped at the end, or kept
//! with `--keep-database` for looking at what the run stored.

use std::sync::Arc;

use dcb_runtime::local::LocalPostgres;
use dcb_runtime::testing::TestDatabase;
use serde::Serialize;

/// A scratch database plus the server that hosts it (a throwaway server lives as long as this).
pub(crate) struct RunDatabase {
    pub(crate) db: TestDatabase,
    /// The local server, when the run found or started one (not with `--database-url`).
    pub(crate) server: Option<Arc<LocalPostgres>>,
    /// Left on the server by [`RunDatabase::close`] instead of dropped.
    keep: bool,
}

/// A database `--keep-database` left on its server.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeptDatabase {
    pub(crate) name: String,
    /// Without its password.
    pub(crate) url: String,
}

/// On the server `url` names, else `DATABASE_URL`'s, else the local default's; with `keep`, left
/// there at the end.
pub(crate) async fn open(url: Option<&str>, keep: bool) -> anyhow::Result<RunDatabase> {
    open_on(url, false, keep).await
}

/// With `own_server`, on a private throwaway server the run controls (to restart it).
pub(crate) async fn open_on(
    url: Option<&str>,
    own_server: bool,
    keep: bool,
) -> anyhow::Result<RunDatabase> {
    // Checked before a throwaway server is started for nothing.
    anyhow::ensure!(
        !(own_server && keep),
        "--keep-database cannot keep a database on the throwaway server --chaos restart starts: \
         it is removed when the run ends"
    );
    let server = match (url, own_server) {
        (Some(_), true) => anyhow::bail!(
            "--chaos restart restarts a server the harness starts itself: drop --database-url"
        ),
        (Some(_), false) => None,
        (None, true) => Some(Arc::new(LocalPostgres::throwaway().await?)),
        (None, false) => Some(Arc::new(LocalPostgres::from_env().await?)),
    };
    if keep && server.as_ref().is_some_and(|s| s.is_throwaway()) {
        anyhow::bail!(
            "--keep-database: no server answers at DATABASE_URL or the local default, and the \
             throwaway server started instead is removed when the run ends; name a server with \
             --database-url"
        );
    }
    let server_url = url.map(str::to_owned).unwrap_or_else(|| {
        server
            .as_ref()
            .map(|s| s.url().to_owned())
            .unwrap_or_default()
    });
    let db = TestDatabase::create_on(&server_url).await?;
    eprintln!("database: {} at {}", db.name(), db.redacted_url());
    Ok(RunDatabase { db, server, keep })
}

impl RunDatabase {
    /// Ends the run's use of the database: drops it, or with `--keep-database` leaves it on the
    /// server, says so on stderr and returns where it is.
    pub(crate) fn close(self) -> Option<KeptDatabase> {
        if !self.keep {
            return None;
        }
        let url = self.db.redacted_url();
        let name = self.db.keep();
        eprintln!(
            "database kept: {name} at {url} (remove it with DROP DATABASE {name} WITH (FORCE))"
        );
        Some(KeptDatabase { name, url })
    }
}
