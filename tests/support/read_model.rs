//! A fresh database with the ledger read model's table, for the subscription tests.
#![allow(dead_code)] // each test binary uses part of it

use dcb_runtime::PostgresStore;
use dcb_runtime::testing::TestDatabase;
use dcb_scenarios::ledger::SCHEMA_SQL;

pub struct LedgerDb {
    /// Dropped with the test.
    pub db: TestDatabase,
    pub store: PostgresStore,
    /// A plain connection, for checks in SQL.
    pub client: tokio_postgres::Client,
}

/// A new database, its store, a plain connection, and the `projected_events` table.
pub async fn ledger_db() -> LedgerDb {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let client = db.client().await.expect("client");
    client.batch_execute(SCHEMA_SQL).await.expect("schema");
    LedgerDb { db, store, client }
}

/// The one `bigint` a query answers.
pub async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}
