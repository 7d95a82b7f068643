//! The database a run works in: a fresh one on the chosen server, dropped at the end.

use dcb_runtime::local::LocalPostgres;
use dcb_runtime::testing::TestDatabase;

/// A scratch database plus the server that hosts it (a throwaway server lives as long as this).
pub(crate) struct RunDatabase {
    pub(crate) db: TestDatabase,
    _server: Option<LocalPostgres>,
}

pub(crate) async fn open(url: Option<&str>) -> anyhow::Result<RunDatabase> {
    let server = match url {
        Some(_) => None,
        None => Some(LocalPostgres::from_env().await?),
    };
    let server_url = url.map(str::to_owned).unwrap_or_else(|| {
        server
            .as_ref()
            .map(|s| s.url().to_owned())
            .unwrap_or_default()
    });
    let db = TestDatabase::create_on(&server_url).await?;
    eprintln!("database: {} on {}", db.name(), redact(&server_url));
    Ok(RunDatabase {
        db,
        _server: server,
    })
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
