//! The load tests' read models are created by every projector process that starts, often
//! several at once (`--projection --chaos`, the failover test): creating them concurrently must
//! never fail (`CREATE TABLE IF NOT EXISTS` alone does, on the catalog's unique index).

use dcb_runtime::testing::TestDatabase;
use dcb_scenarios::ledger::{SCHEMA_SQL, TALLY_SCHEMA_SQL};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_sessions_create_the_read_models_at_once() {
    for round in 0..10 {
        let db = TestDatabase::create().await.expect("database");
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(db.client().await.expect("client"));
        }
        let creations = clients.iter().map(|client| async move {
            client.batch_execute(SCHEMA_SQL).await?;
            client.batch_execute(TALLY_SCHEMA_SQL).await
        });
        for outcome in futures::future::join_all(creations).await {
            outcome.unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}
