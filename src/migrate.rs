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
    applied?;
    unlocked?;
    Ok(())
}
