//! `PostgresStoreBuilder::shared_appender`: the processes of a store elect one appender and the
//! others, while they write with others, have it write their appends. Shown here with a store
//! whose role may no longer write events: its appends succeed only through the elected appender,
//! and fail (as its own writes) once that one is gone. Several OS processes, with the elected one killed by SIGKILL, are in
//! `load-tests/tests/harness.rs` (`killing_the_elected_appender_loses_nothing_...`).

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::tokio_postgres::config::Host;
use dcb_runtime::{AppendCondition, Event, EventStore, PostgresStore, Query, QueryItem, Tag};

const ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// The test database's connection settings, as `role`.
fn as_role(url: &str, role: &str, password: &str) -> String {
    let config = dcb_runtime::tokio_postgres::Config::from_str(url).expect("a test URL");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config.get_dbname().expect("a database name");
    format!("host={host} port={port} dbname={dbname} user={role} password={password}")
}

/// Whether some session holds the elected appender's lock ('DCBL', 0).
async fn elected(db: &TestDatabase) -> bool {
    db.client()
        .await
        .expect("client")
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' \
               AND classid = 1145258572 AND objid = 0 AND objsubid = 2 AND granted \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            &[],
        )
        .await
        .expect("look")
        .get(0)
}

async fn stored(db: &TestDatabase) -> i64 {
    db.client()
        .await
        .expect("client")
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count")
        .get(0)
}

/// An append's answer, which must come (a hang fails the test instead of stalling it).
async fn bounded<T>(append: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), append)
        .await
        .expect("an append answered within 30 s")
}

fn on(key: &str) -> Query {
    QueryItem::new(["Noted"], [Tag::new("key", key)]).into()
}

fn noted(key: &str) -> Event {
    Event::new("Noted", serde_json::json!({ "key": key })).tagged("key", key)
}

/// `leader` and then `follower` append, `n` times: the follower's positions have gaps, as those
/// of a process writing with others do (which is when it sends its appends to the leader).
async fn alternating(leader: &PostgresStore, follower: &PostgresStore, n: usize, tag: &str) {
    for i in 0..n {
        for (who, store) in [leader, follower].into_iter().enumerate() {
            let key = format!("{tag}-{who}-{i}");
            let condition = AppendCondition::new(on(&key), None);
            bounded(store.append_if(vec![noted(&key)], condition))
                .await
                .unwrap_or_else(|e| panic!("{key}: {e:?}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_of_a_process_writing_with_others_are_written_by_the_elected_appender() {
    written_by_the_elected_appender(ANY_PORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_that_cannot_listen_still_has_the_elected_appender_write_its_appends() {
    // TEST-NET-1 (RFC 5737): no interface of this host has it, so binding it fails.
    let unbindable = SocketAddr::from(([192, 0, 2, 1], 0));
    assert!(
        std::net::TcpListener::bind(unbindable).is_err(),
        "this host has {unbindable}"
    );
    written_by_the_elected_appender(unbindable).await;
}

/// A follower taking appends on `follower_bind` (or unable to) writes through the leader.
async fn written_by_the_elected_appender(follower_bind: SocketAddr) {
    let db = TestDatabase::create().await.expect("test database");
    let leader = PostgresStore::builder(db.url())
        .shared_appender(ANY_PORT)
        .connect()
        .await
        .expect("leader");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !elected(&db).await {
        assert!(Instant::now() < deadline, "no appender was elected");
        tokio::task::yield_now().await;
    }
    // The follower's role, which may write the store for now.
    let role = db.name().replace("test_", "appends_via_");
    let password = "via-leader";
    let admin = db.client().await.expect("client");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}'; \
             GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO {role}; \
             GRANT UPDATE, DELETE ON dcb_forward_tokens TO {role}"
        ))
        .await
        .expect("role");
    let follower = PostgresStore::builder(as_role(db.url(), &role, password))
        .shared_appender(follower_bind)
        .migrate(false)
        .connect()
        .await
        .expect("follower");
    // Writing with the leader, it finds another writer about (its positions have gaps) and
    // sends its batches to the elected appender.
    alternating(&leader, &follower, 8, "warm").await;
    // From now on its role may not write events: what it appends is written by the leader or
    // not at all.
    admin
        .batch_execute(&format!("REVOKE INSERT ON events, event_tags FROM {role}"))
        .await
        .expect("revoke");
    // It learns where the elected appender is within about a quarter of a second (until then
    // it writes its appends itself, which its role no longer may).
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let sent = bounded(follower.append(vec![noted("first")])).await;
        leader.append(vec![noted("between")]).await.expect("leader");
        match sent {
            Ok(appended) => break appended,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "never written by the leader: {e:?}"
                );
            }
        }
    };
    assert!(first.recorded_at.is_some(), "stored now: {first:?}");
    let before = stored(&db).await;

    // Conditional appends, each written.
    alternating(&leader, &follower, 64, "many").await;
    assert_eq!(stored(&db).await, before + 128);
    // A condition the store contradicts fails as it would written here.
    let stale = AppendCondition::new(on("many-1-1"), None);
    let refused = bounded(follower.append_if(vec![noted("many-1-1")], stale))
        .await
        .expect_err("many-1-1 is stored after the beginning");
    assert!(refused.is_condition_failed(), "{refused:?}");

    // The leader gone, its appends are the follower's own again: refused by the server, not
    // lost in a wait.
    drop(leader);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut written_while_closing = 0;
    let error = loop {
        match bounded(follower.append(vec![noted("after")])).await {
            Err(e) => break e,
            Ok(_) => {
                // Taken by the leader as it was closing: try again.
                written_while_closing += 1;
                assert!(Instant::now() < deadline, "the leader never went away");
            }
        }
    };
    assert!(
        format!("{error:?}").contains("permission denied"),
        "written here, as a role that may not: {error:?}"
    );
    assert_eq!(stored(&db).await, before + 128 + written_while_closing);

    drop(follower);
    admin
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .expect("drop role");
}
