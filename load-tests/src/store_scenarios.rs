//! Scenarios that drive the event store directly: read -> decide -> append_if.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dcb_runtime::{
    AppendCondition, AppendError, Event, EventStore, P, PostgresStore, Query, ReadOptions,
};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

use crate::cli::{RunArgs, StoreSizeArgs};
use crate::cpu::{self, ServerCpu};
use crate::database::{self, RunDatabase};
use crate::json_report;
use crate::latency::{self, LatencyMs};
use crate::report::Report;
use crate::telemetry::Snapshot;

/// The store's backends carry this name, to be told apart.
const APPLICATION_NAME: &str = "dcb-load-store";

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    conflicts: AtomicU64,
    errors: AtomicU64,
}

/// Every decision on a boundary of its own: `thing:<worker>-<n>`, read (empty), then append one
/// event conditional on the boundary still being empty. On a fresh database, dropped or (with
/// `--keep-database`) kept afterwards, whether the run succeeded or not.
pub(crate) async fn disjoint(
    args: &RunArgs,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<Report> {
    let before = Snapshot::take(metrics);
    let run = database::open(args.database_url.as_deref(), args.keep_database).await?;
    let measured = disjoint_in(&run, args, metrics, before).await;
    let kept = run.close();
    let mut report = measured?;
    report.kept_database = kept;
    Ok(report)
}

async fn disjoint_in(
    run: &RunDatabase,
    args: &RunArgs,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
    before: Snapshot,
) -> anyhow::Result<Report> {
    let store = PostgresStore::builder(cpu::with_application_name(run.db.url(), APPLICATION_NAME))
        .pool_size(args.concurrency + 1)
        .connect()
        .await?;
    eprintln!(
        "disjoint: {} caller(s) for {:?}",
        args.concurrency, args.duration
    );
    let counters = Arc::new(Counters::default());
    let server_cpu = ServerCpu::start(run.db.url(), APPLICATION_NAME).await;
    let client_cpu = cpu::process_s();
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let store = store.clone();
        let counters = counters.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = latency::histogram();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let began = Instant::now();
                let boundary = P("thing", format!("{worker}-{n}"));
                n += 1;
                let query = Query::matching()
                    .any_predicate_of([boundary.clone()])
                    .finalize()?;
                let read = store.read(&query, ReadOptions::default()).await?;
                let decided =
                    Event::new("ThingCreated", json!({"worker": worker})).with_tag(boundary);
                match store
                    .append_if(vec![decided], AppendCondition::new(query, read.head))
                    .await
                {
                    Ok(_) => {
                        counters.committed.fetch_add(1, Ordering::Relaxed);
                        latency::record(&mut latencies, began.elapsed());
                    }
                    Err(AppendError::ConditionFailed { .. }) => {
                        counters.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("append failed: {e:?}");
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = latency::histogram();
    for w in workers {
        latencies.add(w.await??)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_client_s = cpu::process_since(client_cpu);
    let cpu_server_s = server_cpu.finish().await;
    let client = run.db.client().await?;
    let violations = dcb_scenarios::count(&client, dcb_scenarios::disjoint::INVARIANT_SQL).await?;
    let events_in_store = dcb_scenarios::count(&client, "SELECT count(*) FROM events").await?;
    let committed = counters.committed.load(Ordering::Relaxed);
    let conflicts = counters.conflicts.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    drop(store);
    let mut report = Report {
        scenario: "store-disjoint".into(),
        processes: 1,
        concurrency: args.concurrency,
        duration_s: elapsed,
        commands: committed + conflicts + errors,
        committed,
        conflicts,
        errors,
        throughput_per_s: committed as f64 / elapsed,
        latency_ms: LatencyMs::of(&latencies),
        decisions_per_s: committed as f64 / elapsed,
        invariant_violations: violations,
        events_in_store,
        ..Report::default()
    }
    .with_metrics(Snapshot::take(metrics).since(before));
    // The store counts its own conflicts (there are no runtime retries here).
    report.conflicts = conflicts;
    report.with_cpu(cpu_client_s, cpu_server_s);
    if args.baseline {
        eprintln!("baseline: plain inserts for {:?}", args.duration);
        let b =
            crate::baseline::plain_inserts(run.db.url(), args.concurrency, args.duration).await?;
        report.with_baseline(b);
    }
    Ok(report)
}

#[derive(Serialize, Debug)]
struct SizePoint {
    events_stored: i64,
    read_ms: LatencyMs,
    append_if_ms: LatencyMs,
    /// WAL written per decision while timing (the whole server's, from `pg_stat_wal`): a commit
    /// that must also flush full-page images of pages first touched since the last checkpoint
    /// waits longer.
    wal_kb_per_decision: f64,
    /// Full-page images per decision, from the same counters.
    full_page_images_per_decision: f64,
}

/// The server's WAL bytes and full-page images so far.
async fn wal_counters(client: &tokio_postgres::Client) -> anyhow::Result<(f64, f64)> {
    let row = client
        .query_one(
            "SELECT wal_bytes::float8, wal_fpi::float8 FROM pg_stat_wal",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

#[derive(Serialize, Debug)]
struct SizeReport {
    scenario: &'static str,
    commands_per_size: usize,
    /// Each round times the small store, then the large one, back to back: the machine's load
    /// drifts over seconds, so only a ratio taken within one round compares like with like.
    rounds: Vec<SizeRound>,
    /// Median over the rounds of their mean append_if latency, large store over small store.
    append_if_ratio: f64,
    /// The same for reads.
    read_ratio: f64,
}

#[derive(Serialize, Debug)]
struct SizeRound {
    small: SizePoint,
    large: SizePoint,
    append_if_ratio: f64,
    read_ratio: f64,
}

/// Events per fill transaction: large enough that a statement's fixed cost vanishes, small enough
/// that progress shows every few seconds and one transaction's WAL stays well under a checkpoint.
const FILL_CHUNK: i64 = 500_000;

/// Fills the store with filler events spread over 1,000 `filler:<n>` boundaries (and a hot tag
/// far back in history) straight in SQL, set-based, under the writers' lock, then vacuums and
/// re-analyses (the visibility map keeps condition probes index-only). Positions stay contiguous;
/// ids are random (`gen_random_uuid()`) like the ones clients send, so the id index is as big and
/// as scattered as a real store's.
async fn fill_to(client: &tokio_postgres::Client, target: i64) -> anyhow::Result<()> {
    let have: i64 = client
        .query_one("SELECT coalesce(max(position), 0) FROM events", &[])
        .await?
        .get(0);
    let started = Instant::now();
    let mut filled = have;
    while filled < target {
        let chunk = (target - filled).min(FILL_CHUNK);
        // The tag rows come from the same series, not from reading the new events back.
        client
            .batch_execute(&format!(
                "BEGIN;
                 SELECT pg_advisory_xact_lock(7166468893617058148);
                 CREATE TEMP TABLE IF NOT EXISTS fill_from (p bigint);
                 TRUNCATE fill_from;
                 INSERT INTO fill_from SELECT coalesce(max(position), 0) FROM events;
                 INSERT INTO events (position, id, type, tags, payload)
                 SELECT f.p + g, gen_random_uuid(), 'Filler',
                        ARRAY['filler:' || ((f.p + g) % 1000),
                              'era:' || CASE WHEN f.p + g <= 1000 THEN 'old' ELSE 'new' END],
                        jsonb_build_object('n', f.p + g)
                 FROM fill_from f, generate_series(1, {chunk}) g;
                 INSERT INTO event_tags (tag, position, type)
                 SELECT t.tag, f.p + g, 'Filler'
                 FROM fill_from f, generate_series(1, {chunk}) g,
                      LATERAL (VALUES ('filler:' || ((f.p + g) % 1000)),
                                      ('era:' || CASE WHEN f.p + g <= 1000 THEN 'old' ELSE 'new' END))
                      AS t(tag);
                 COMMIT;"
            ))
            .await?;
        filled += chunk;
        let secs = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // event counts far below 2^52
        let rate = (filled - have) as f64 / secs;
        eprintln!("filled {filled} / {target} events ({rate:.0} events/s, {secs:.0} s)");
    }
    // One statement per call: VACUUM cannot run in the implicit transaction of a multi-statement
    // query.
    let vacuum = Instant::now();
    client.batch_execute("VACUUM ANALYZE events").await?;
    client.batch_execute("VACUUM ANALYZE event_tags").await?;
    eprintln!(
        "vacuumed and analysed in {:.0} s",
        vacuum.elapsed().as_secs_f64()
    );
    // A big fill leaves gigabytes of dirty pages: without a checkpoint now, the timed appends'
    // commits would wait on their flushing (a checkpoint the fill's WAL set off). Needs the
    // pg_checkpoint role or a superuser; without it, the figures say so.
    let checkpoint = Instant::now();
    match client.batch_execute("CHECKPOINT").await {
        Ok(()) => eprintln!(
            "checkpointed in {:.0} s",
            checkpoint.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!("no checkpoint after the fill (timings may include its flush): {e:?}"),
    }
    Ok(())
}

/// Times `commands` decisions on boundaries with history: read `filler:<k>` plus its own new
/// tag, append conditional on both.
async fn time_decisions(
    store: &PostgresStore,
    client: &tokio_postgres::Client,
    commands: usize,
    size: i64,
    round: usize,
) -> anyhow::Result<SizePoint> {
    let mut reads: Histogram<u64> = latency::histogram();
    let mut appends: Histogram<u64> = latency::histogram();
    let (wal_before, fpi_before) = wal_counters(client).await?;
    for n in 0..commands {
        let boundary = P("filler", (n % 1000).to_string());
        let own = P("probe", format!("{size}-{round}-{n}"));
        let query = Query::matching()
            .any_event_type_of(["Filler", "Probe"])
            .and_any_predicate_of([boundary.clone()])
            .or_matching()
            .any_predicate_of([own.clone(), P("era", "old")])
            .finalize()?;
        let began = Instant::now();
        let read = store
            .read(&query, ReadOptions::default().backwards().limit(10))
            .await?;
        latency::record(&mut reads, began.elapsed());
        let event = Event::new("Probe", json!({"n": n}))
            .with_tag(boundary)
            .with_tag(own);
        let began = Instant::now();
        store
            .append_if(vec![event], AppendCondition::new(query, read.head))
            .await?;
        latency::record(&mut appends, began.elapsed());
    }
    let (wal_after, fpi_after) = wal_counters(client).await?;
    #[allow(clippy::cast_precision_loss)] // small counts
    let per = commands.max(1) as f64;
    Ok(SizePoint {
        events_stored: size,
        read_ms: LatencyMs::of(&reads),
        append_if_ms: LatencyMs::of(&appends),
        wal_kb_per_decision: (wal_after - wal_before) / 1024.0 / per,
        full_page_images_per_decision: (fpi_after - fpi_before) / per,
    })
}

/// append_if latency with a small and a large store: conditions must be index lookups. Each
/// size has a database of its own, filled first; then the two are timed in alternation, round by
/// round.
pub(crate) async fn store_size(args: StoreSizeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.small > 0 && args.large > args.small,
        "--large ({}) must be larger than --small ({}), and both above 0",
        args.large,
        args.small
    );
    let url = args.database_url.as_deref();
    let (small_db, large_db) = (
        database::open(url, false).await?,
        database::open(url, false).await?,
    );
    let sizes = [(&small_db, args.small), (&large_db, args.large)];
    let mut targets = Vec::new();
    for (db, size) in sizes {
        let client = db.db.client().await?;
        eprintln!("filling a store of {size} events");
        fill_to(&client, size).await?;
        targets.push((PostgresStore::connect(db.db.url()).await?, client, size));
    }
    // Plans and caches warmed up for both before timing either.
    for (store, client, size) in &targets {
        time_decisions(store, client, 200, *size, 0).await?;
    }
    let mut rounds = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        let mut points = Vec::with_capacity(2);
        for (store, client, size) in &targets {
            points.push(time_decisions(store, client, args.commands, *size, round).await?);
        }
        let (Some(large), Some(small)) = (points.pop(), points.pop()) else {
            unreachable!("two sizes were timed");
        };
        let done = SizeRound {
            append_if_ratio: large.append_if_ms.mean / small.append_if_ms.mean,
            read_ratio: large.read_ms.mean / small.read_ms.mean,
            small,
            large,
        };
        eprintln!("round {round}/{}: {}", args.rounds, done.line());
        rounds.push(done);
    }
    let report = SizeReport {
        scenario: "store-size",
        commands_per_size: args.commands,
        append_if_ratio: median(rounds.iter().map(|r| r.append_if_ratio)),
        read_ratio: median(rounds.iter().map(|r| r.read_ratio)),
        rounds,
    };
    json_report::print_figures(args.json.as_ref(), &report);
    json_report::write(args.json.as_ref(), &report)
}

/// The median (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl SizeRound {
    fn line(&self) -> String {
        format!(
            "append_if {:.2}x, read {:.2}x",
            self.append_if_ratio, self.read_ratio
        )
    }
}

/// One line per store size and round, then the median ratios.
impl std::fmt::Display for SizeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, round) in self.rounds.iter().enumerate() {
            for p in [&round.small, &round.large] {
                writeln!(
                    f,
                    "round {} {:>9} events: read mean {:.3} ms p99 {:.3} ms | append_if mean \
                     {:.3} ms p99 {:.3} ms | WAL {:.1} kB, {:.2} full-page images per decision",
                    n + 1,
                    p.events_stored,
                    p.read_ms.mean,
                    p.read_ms.p99,
                    p.append_if_ms.mean,
                    p.append_if_ms.p99,
                    p.wal_kb_per_decision,
                    p.full_page_images_per_decision
                )?;
            }
            writeln!(f, "round {}: large/small {}", n + 1, round.line())?;
        }
        write!(
            f,
            "large/small, median of {} round(s): append_if {:.2}x, read {:.2}x",
            self.rounds.len(),
            self.append_if_ratio,
            self.read_ratio
        )
    }
}
