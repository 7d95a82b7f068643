//! The database a run works in: a fresh one on the chosen server, dropped at the end.

use std::sync::Arc;

use dcb_runtime::local::LocalPostgres;
use dcb_runtime::testing::TestDatabase;

/// A scratch database plus the server that hosts it (a throwaway server lives as long as this).
pub(crate) struct RunDatabase {
    pub(crate) db: TestDatabase,
    /// The local server, when the run found or started one (not with `--database-url`).
    pub(crate) server: Option<Arc<LocalPostgres>>,
}

pub(crate) async fn open(url: Option<&str>) -> anyhow::Result<RunDatabase> {
    open_on(url, false).await
}

/// With `own_server`, on a private throwaway server the run controls (to restart it).
pub(crate) async fn open_on(url: Option<&str>, own_server: bool) -> anyhow::Result<RunDatabase> {
    let server = match (url, own_server) {
        (Some(_), true) => anyhow::bail!(
            "--chaos restart restarts a server the harness starts itself: drop --database-url"
        ),
        (Some(_), false) => None,
        (None, true) => Some(Arc::new(LocalPostgres::throwaway().await?)),
        (None, false) => Some(Arc::new(LocalPostgres::from_env().await?)),
    };
    let server_url = url.map(str::to_owned).unwrap_or_else(|| {
        server
            .as_ref()
            .map(|s| s.url().to_owned())
            .unwrap_or_default()
    });
    let db = TestDatabase::create_on(&server_url).await?;
    eprintln!("database: {} on {}", db.name(), redact(&server_url));
    Ok(RunDatabase { db, server })
}

/// The URL without its password, for printing.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
