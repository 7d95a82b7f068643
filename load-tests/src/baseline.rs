//! The plain-insert rate of the same database: what PostgreSQL does with no DCB logic at all.
//!
//! Each transaction inserts one event row and its two tag rows in one prepared statement (one
//! round trip, autocommit), into copies of the store's tables, from `concurrency` connections.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::cpu::{self, ServerCpu};

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

/// What the plain inserts did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Baseline {
    /// Transactions per second.
    pub(crate) tps: f64,
    /// CPU ms of this process per insert, while the inserts ran.
    pub(crate) cpu_client_ms_per_insert: Option<f64>,
    /// CPU ms of the inserting connections' backends per insert; `None` when the server is not
    /// on this machine.
    pub(crate) cpu_server_ms_per_insert: Option<f64>,
}

/// The backends of the inserting connections carry this name, to be told apart.
const APPLICATION_NAME: &str = "dcb-load-baseline";

/// Plain inserts over `duration` with `concurrency` connections: their rate and CPU. The
/// connections are opened and their statement prepared before the clock (and the CPU readings)
/// start, and closed after they stop.
pub(crate) async fn plain_inserts(
    url: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Baseline> {
    let (admin, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    admin.batch_execute(SETUP).await?;
    let worker_url = cpu::with_application_name(url, APPLICATION_NAME);
    let mut connections = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, conn) = tokio_postgres::connect(&worker_url, NoTls).await?;
        tokio::spawn(conn);
        let statement = client.prepare(INSERT).await?;
        connections.push((client, statement));
    }
    let server_cpu = ServerCpu::start(url, APPLICATION_NAME).await;
    let client_cpu = cpu::process_s();
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for (worker, (client, statement)) in connections.into_iter().enumerate() {
        workers.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let tags = vec![format!("worker:{worker}"), format!("n:{done}")];
                client.execute(&statement, &[&tags]).await?;
                done += 1;
            }
            // The client goes back still connected: its backend must outlive the CPU reading.
            anyhow::Ok((done, client))
        }));
    }
    let mut total = 0;
    let mut clients = Vec::with_capacity(workers.len());
    for w in workers {
        let (done, client) = w.await??;
        total += done;
        clients.push(client);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_client_s = cpu::process_since(client_cpu);
    let cpu_server_s = server_cpu.finish().await;
    drop(clients);
    admin.batch_execute(TEARDOWN).await?;
    Ok(Baseline {
        tps: total as f64 / elapsed,
        cpu_client_ms_per_insert: cpu::ms_per(cpu_client_s, total),
        cpu_server_ms_per_insert: cpu::ms_per(cpu_server_s, total),
    })
}
