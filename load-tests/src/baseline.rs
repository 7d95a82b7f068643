//! The plain-insert rate of the same database: what PostgreSQL does with no DCB logic at all.
//!
//! Each transaction inserts one event row and its two tag rows in one prepared statement (one
//! round trip, autocommit), into copies of the store's tables, from `concurrency` connections.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

const SETUP: &str = "
    CREATE TABLE baseline_events (LIKE events INCLUDING ALL);
    CREATE SEQUENCE baseline_position OWNED BY baseline_events.position;
    ALTER TABLE baseline_events ALTER COLUMN position SET DEFAULT nextval('baseline_position');
    CREATE TABLE baseline_event_tags (LIKE event_tags INCLUDING ALL);";

const INSERT: &str = "
    WITH e AS (
        INSERT INTO baseline_events (id, type, tags, payload)
        VALUES (gen_random_uuid(), 'Inserted', $1, '{\"n\": 1}')
        RETURNING position, type, tags)
    INSERT INTO baseline_event_tags (tag, position, type)
    SELECT unnest(e.tags), e.position, e.type FROM e";

const TEARDOWN: &str = "DROP TABLE baseline_events, baseline_event_tags;";

/// Transactions per second over `duration` with `concurrency` connections.
pub(crate) async fn plain_insert_tps(
    url: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let (admin, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    admin.batch_execute(SETUP).await?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(conn);
        workers.push(tokio::spawn(async move {
            let statement = client.prepare(INSERT).await?;
            let mut done = 0u64;
            while Instant::now() < deadline {
                let tags = vec![format!("worker:{worker}"), format!("n:{done}")];
                client.execute(&statement, &[&tags]).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    admin.batch_execute(TEARDOWN).await?;
    Ok(total as f64 / elapsed)
}
