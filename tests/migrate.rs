//! `migrate()` applies the migrations once, however many processes' stores call it at once.

use dcb_runtime::local::LocalPostgres;
use dcb_runtime::testing::with_database;
use dcb_runtime::{Event, EventStore, PostgresStore, Query};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_apply_each_migration_once() {
    let server = LocalPostgres::from_env().await.expect("a server");
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let (admin, connection) = tokio_postgres::connect(server.url(), tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create an empty database");
    let url = with_database(server.url(), &name);

    // Sixteen stores connect (and migrate) at once on an empty database.
    let connecting: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::builder(url).pool_size(2).connect().await })
        })
        .collect();
    let mut stores = Vec::new();
    for c in connecting {
        stores.push(
            c.await
                .expect("task")
                .expect("every concurrent migration succeeds"),
        );
    }
    // And again, on the migrated database.
    for store in &stores {
        store.migrate().await.expect("migrating twice is a no-op");
    }

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("client");
    tokio::spawn(connection);
    let applied: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .expect("history")
        .get(0);
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations folder")
        .count();
    assert_eq!(
        applied,
        i64::try_from(migrations).unwrap(),
        "each migration applied once"
    );

    // The schema works: an append through one store is read through another.
    stores[0]
        .append(vec![Event::new("Migrated", json!({})).tagged("k", "v")])
        .await
        .expect("append");
    let read = stores[15]
        .read(&Query::all(), Default::default())
        .await
        .expect("read");
    assert_eq!(read.events.len(), 1);

    drop(stores);
    drop(client);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .expect("drop the database");
}
