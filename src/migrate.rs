//! Applies `migrations/` (embedded at compile time) with refinery.

use std::sync::Arc;

use deadpool_postgres::Pool;

use crate::error::StoreError;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Session advisory lock taken while migrating, so concurrent processes apply each migration once.
const MIGRATION_LOCK: i64 = 7_166_468_893_617_058_149;

pub(crate) async fn run(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    // Timeouts set for the application's statements (on the database or the role) must not fail
    // a migration, nor its wait for another process's: this session runs without them, and
    // gives them back before it returns to the pool.
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let applied = embedded::migrations::runner()
        .run_async(&mut **client)
        .await
        .map_err(|e| StoreError::Migration(Arc::new(e)));
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let reset = client
        .batch_execute("RESET statement_timeout; RESET lock_timeout")
        .await;
    applied?;
    unlocked?;
    reset?;
    Ok(())
}
