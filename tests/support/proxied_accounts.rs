//! Accounts of `dcb_scenarios::transfer` behind a cut proxy (`tests/support/cut_proxy.rs`; the
//! binary declares `mod cut_proxy` beside this module), and the transfers stored, counted with SQL.
#![allow(dead_code)] // each test binary uses part of it

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{EventStore, PostgresStore};
use dcb_scenarios::transfer::account_opened;

use crate::cut_proxy::{CutProxy, proxied};

/// Accounts a1 (100) and a2 (0) in a fresh database, a proxy in front of its server, and a store
/// whose one connection goes through the proxy (every statement takes it). Opening the accounts
/// prepared `dcb_append` on that connection, so a cut append after it is really sent.
pub async fn accounts_behind_a_proxy() -> (TestDatabase, CutProxy, PostgresStore) {
    let (db, proxy, store) = proxied().await;
    store
        .append(vec![account_opened("a1", 100), account_opened("a2", 0)])
        .await
        .expect("accounts");
    (db, proxy, store)
}

/// Transfers stored, counted with SQL over a direct connection.
pub async fn transfers_stored(db: &TestDatabase) -> i64 {
    let client = db.client().await.expect("direct client");
    client
        .query_one(
            "SELECT count(*) FROM events WHERE type = 'MoneyTransferred'",
            &[],
        )
        .await
        .expect("count")
        .get(0)
}
