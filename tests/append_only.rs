//! The store is append-only (migration `V2__append_only.sql` and the README's "Append-only"):
//! UPDATE, DELETE and TRUNCATE of `events` and `event_tags` fail, whoever runs them, and leave
//! every row as it was; appends keep working. The grants the README documents for the
//! application's role are run as written and shown to hold even with the triggers disabled.

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Event, EventStore, PostgresStore, Query, ReadOptions};
use serde_json::json;
use tokio_postgres::error::SqlState;

/// Every column of both tables, as text, in a fixed order.
async fn snapshot(client: &tokio_postgres::Client) -> Vec<String> {
    let events = client
        .query(
            "SELECT format('%s|%s|%s|%s|%s|%s', position, id, type, tags, payload, recorded_at) \
             FROM events ORDER BY position",
            &[],
        )
        .await
        .expect("read events");
    let tags = client
        .query(
            "SELECT format('%s|%s|%s', tag, position, type) FROM event_tags ORDER BY tag, position",
            &[],
        )
        .await
        .expect("read event_tags");
    events
        .iter()
        .chain(&tags)
        .map(|row| row.get::<_, String>(0))
        .collect()
}

async fn append_some(store: &PostgresStore, n: usize) {
    let events = (0..n)
        .map(|i| {
            Event::new("Deposited", json!({"account": "a1", "amount": i}))
                .tagged("account", "a1")
                .tagged("n", i.to_string())
        })
        .collect();
    store.append(events).await.expect("append");
}

/// A statement that changes stored rows, and the table the trigger must name.
const CHANGES: &[(&str, &str)] = &[
    ("UPDATE events SET type = 'Withdrawn'", "events"),
    (
        "UPDATE events SET payload = '{\"amount\": 1000000}' WHERE position = 1",
        "events",
    ),
    ("UPDATE events SET position = position + 100", "events"),
    ("DELETE FROM events", "events"),
    ("DELETE FROM events WHERE position = 2", "events"),
    // Statement-level: refused even when no row matches.
    ("DELETE FROM events WHERE false", "events"),
    ("TRUNCATE events", "events"),
    ("TRUNCATE events CASCADE", "events"),
    ("UPDATE event_tags SET tag = 'account:a2'", "event_tags"),
    (
        "DELETE FROM event_tags WHERE tag = 'account:a1'",
        "event_tags",
    ),
    ("TRUNCATE event_tags", "event_tags"),
    // An upsert fires the statement's UPDATE triggers too.
    (
        "INSERT INTO event_tags VALUES ('account:a1', 1, 'Deposited') \
         ON CONFLICT (tag, position) DO UPDATE SET type = 'Withdrawn'",
        "event_tags",
    ),
];

#[tokio::test]
async fn updates_deletes_and_truncates_are_refused_and_change_nothing() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    append_some(&store, 3).await;
    // The superuser that created the database: the triggers hold even for it.
    let client = db.client().await.expect("client");
    let before = snapshot(&client).await;
    assert_eq!(before.len(), 3 + 3 * 2, "3 events and their 6 tag rows");

    for (sql, table) in CHANGES {
        let error = client
            .batch_execute(sql)
            .await
            .expect_err(&format!("{sql} must be refused"));
        let db_error = error
            .as_db_error()
            .unwrap_or_else(|| panic!("{sql}: not a database error: {error:?}"));
        assert_eq!(
            db_error.code(),
            &SqlState::INSUFFICIENT_PRIVILEGE,
            "{sql}: {db_error:?}"
        );
        let expected = format!("dcb: {table} are append-only: ");
        assert!(
            db_error.message().starts_with(&expected),
            "{sql}: the message {:?} should start with {expected:?}",
            db_error.message()
        );
        assert_eq!(snapshot(&client).await, before, "{sql} changed rows");
    }

    // Inside a transaction, too: the refusal aborts it and the rows stay.
    let error = client
        .batch_execute("BEGIN; DELETE FROM event_tags; DELETE FROM events; COMMIT;")
        .await
        .expect_err("a transaction deleting events must fail");
    assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(snapshot(&client).await, before);

    // Appends still work, and the old events are untouched by them.
    append_some(&store, 2).await;
    let after = snapshot(&client).await;
    assert_eq!(after.len(), 5 + 5 * 2);
    for row in &before {
        assert!(after.contains(row), "{row} changed after an append");
    }
    let read = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .expect("read");
    let positions: Vec<i64> = read.events.iter().map(|e| e.position.get()).collect();
    assert_eq!(positions, [1, 2, 3, 4, 5]);
}

/// The README's grants block, with `app_role` replaced by `role`.
fn documented_grants(role: &str) -> String {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Append-only\n")
        .nth(1)
        .expect("the README has an \"Append-only\" section");
    let block = section
        .split("```sql\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a sql block");
    assert!(block.contains("app_role"), "the block grants to app_role");
    block.replace("app_role", role)
}

/// `url` with every session acting as `role` (the server's superuser may `SET ROLE` to any
/// role, so the test needs no password for it).
fn as_role(url: &str, role: &str) -> String {
    if url.contains("://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-c%20role%3D{role}")
    } else {
        format!("{url} options='-c role={role}'")
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// What the application role can and cannot do; returns the first failed expectation.
async fn check_the_application_role(
    db: &TestDatabase,
    owner: &tokio_postgres::Client,
    role: &str,
) -> Result<(), String> {
    owner
        .batch_execute(&documented_grants(role))
        .await
        .map_err(|e| format!("the README's grants failed: {e:?}"))?;
    let role_url = as_role(db.url(), role);
    let app = connect(&role_url).await;
    let current: String = app
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| format!("{e:?}"))?
        .get(0);
    if current != role {
        return Err(format!("the session runs as {current}, not {role}"));
    }

    // The store works as the role, without migrating.
    let store = PostgresStore::builder(role_url.clone())
        .migrate(false)
        .pool_size(2)
        .connect()
        .await
        .map_err(|e| format!("the store cannot connect as the role: {e:?}"))?;
    append_some(&store, 2).await;
    let read = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .map_err(|e| format!("read as the role: {e:?}"))?;
    if read.events.len() != 2 {
        return Err(format!("read {} events, appended 2", read.events.len()));
    }
    drop(store);

    let before = snapshot(owner).await;
    // The owner switches the triggers off: the grants alone must hold.
    owner
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER USER; ALTER TABLE event_tags DISABLE TRIGGER USER",
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
    for (sql, table) in CHANGES {
        let outcome = app.batch_execute(sql).await;
        let error = match outcome {
            Ok(()) => return Err(format!("{sql} succeeded as {role}")),
            Err(e) => e,
        };
        let message = error.as_db_error().map(|e| e.message().to_owned());
        let expected = format!("permission denied for table {table}");
        if error.code() != Some(&SqlState::INSUFFICIENT_PRIVILEGE)
            || message.as_deref() != Some(expected.as_str())
        {
            return Err(format!("{sql}: expected {expected:?}, got {error:?}"));
        }
    }
    for sql in [
        "ALTER TABLE events ENABLE TRIGGER USER",
        "ALTER TABLE events DISABLE TRIGGER USER",
        "DROP TABLE event_tags",
    ] {
        if app.batch_execute(sql).await.is_ok() {
            return Err(format!("{sql} succeeded as {role}"));
        }
    }
    if snapshot(owner).await != before {
        return Err("the role changed stored rows".into());
    }
    owner
        .batch_execute(
            "ALTER TABLE events ENABLE TRIGGER USER; ALTER TABLE event_tags ENABLE TRIGGER USER",
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(())
}

#[tokio::test]
async fn the_documented_grants_keep_the_application_role_append_only() {
    let db = TestDatabase::create().await.expect("test database");
    let owner = db.client().await.expect("owner client");
    let role = format!("dcb_app_{}", uuid::Uuid::new_v4().simple());

    let checked = check_the_application_role(&db, &owner, &role).await;

    // Roles belong to the whole server: drop this one whatever happened.
    let cleanup = owner
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await;
    checked.unwrap();
    cleanup.expect("drop the role");
}
