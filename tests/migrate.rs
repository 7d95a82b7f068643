//! `migrate()` applies the migrations once, however many processes' stores call it at once, and
//! whatever statement and lock timeouts the database sets for the application.

use dcb_runtime::local::LocalPostgres;
use dcb_runtime::testing::with_database;
use dcb_runtime::{Event, EventStore, PostgresStore, Query};
use serde_json::json;

/// A new empty database: an admin connection to its server, its name, its URL.
async fn empty_database() -> (tokio_postgres::Client, String, String) {
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
    (admin, name, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_apply_each_migration_once() {
    let (admin, name, url) = empty_database().await;

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

/// A 5 ms statement and lock timeout on the database (what `--chaos timeouts` of the load test
/// sets, or an operator's guard): eight stores still migrate at once, though all but one wait
/// far longer than 5 ms for the migration lock, and the database keeps its timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_run_whatever_timeouts_the_database_sets() {
    let (admin, name, url) = empty_database().await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET statement_timeout = '5ms'; \
             ALTER DATABASE {name} SET lock_timeout = '5ms'"
        ))
        .await
        .expect("timeouts");
    let connecting: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::builder(url).pool_size(1).connect().await })
        })
        .collect();
    for c in connecting {
        let store = c
            .await
            .expect("task")
            .expect("migrated despite the timeouts");
        drop(store);
    }
    // Read on the admin connection: any statement on the database itself may take over 5 ms.
    let settings: Vec<String> = admin
        .query_one(
            "SELECT s.setconfig FROM pg_db_role_setting s \
             JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = $1",
            &[&name],
        )
        .await
        .expect("the database's settings")
        .get(0);
    assert_eq!(settings, ["statement_timeout=5ms", "lock_timeout=5ms"]);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .expect("drop the database");
}
