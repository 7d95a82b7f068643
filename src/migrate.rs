//! Applies `migrations/` (embedded at compile time) with refinery.

use std::sync::Arc;

use tokio_postgres::NoTls;

use crate::error::StoreError;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Session advisory lock taken while migrating, so concurrent processes apply each migration once.
const MIGRATION_LOCK: i64 = 7_166_468_893_617_058_149;

/// Startup options of the migration's connection. Timeouts set for the application's statements
/// (on the database or the role) must not fail a migration, nor its wait for another process's.
/// Set at startup they apply before the first statement: a `SET` sent first ran under the
/// database's own timeout, and a 5 ms one cancelled it once on a loaded machine.
const NO_TIMEOUTS: &str = "-c statement_timeout=0 -c lock_timeout=0";

pub(crate) async fn run(config: &tokio_postgres::Config) -> Result<(), StoreError> {
    let mut config = config.clone();
    let options = match config.get_options() {
        Some(o) => format!("{o} {NO_TIMEOUTS}"),
        None => NO_TIMEOUTS.to_owned(),
    };
    config.options(options);
    // A connection of its own, closed after: its settings never reach the pool.
    let (mut client, connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "migration connection ended");
        }
    });
    let migrated = migrate_on(&mut client).await;
    drop(client);
    let _ = driver.await;
    migrated
}

async fn migrate_on(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let applied = embedded::migrations::runner()
        .run_async(client)
        .await
        .map_err(|e| StoreError::Migration(Arc::new(e)));
    // The lock ends with the session anyway; released first so the next process goes on at once.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    applied?;
    unlocked?;
    Ok(())
}
