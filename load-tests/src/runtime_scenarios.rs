//! Scenarios that drive the decision runtime: many callers executing commands concurrently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dcb_runtime::{ExecuteError, PostgresStore, Runtime};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::report::{self, LatencyMs, Report};
use crate::scenarios::{self, Scenario};
use crate::{RunArgs, database, telemetry};

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
}

/// Runs `scenario` for the configured duration with `concurrency` callers.
pub(crate) async fn run(
    scenario: Scenario,
    args: RunArgs,
    metrics: &PrometheusHandle,
) -> anyhow::Result<()> {
    let run = database::open(args.database_url.as_deref()).await?;
    let store = PostgresStore::builder(run.db.url())
        .pool_size(args.actors + 4)
        .connect()
        .await?;
    scenarios::prepare(scenario, &store, args.keys).await?;
    let runtime = Runtime::builder(store)
        .actors(args.actors)
        .queue_capacity(args.concurrency.max(1024))
        .start()
        .await?;
    eprintln!(
        "{}: {} caller(s), {} actor(s), {} key(s) for {:?}",
        scenario.name(),
        args.concurrency,
        args.actors,
        args.keys,
        args.duration
    );
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let runtime = runtime.clone();
        let counters = counters.clone();
        let keys = args.keys;
        workers.push(tokio::spawn(async move {
            let mut latencies = report::histogram();
            let mut rng = fastrand::Rng::with_seed(worker as u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let began = Instant::now();
                let outcome = match scenario {
                    Scenario::Disjoint => {
                        classify(runtime.execute(scenarios::Create::new(worker, n)).await)
                    }
                    Scenario::Invoice => classify(runtime.execute(scenarios::NextInvoice).await),
                    Scenario::Enrollment => {
                        let course = rng.usize(..keys);
                        let student = format!("{worker}-{n}");
                        classify(
                            runtime
                                .execute(scenarios::Subscribe::new(course, student))
                                .await,
                        )
                    }
                };
                n += 1;
                report::record(&mut latencies, began.elapsed());
                match outcome {
                    Outcome::Committed => counters.committed.fetch_add(1, Ordering::Relaxed),
                    Outcome::Rejected => counters.rejected.fetch_add(1, Ordering::Relaxed),
                    Outcome::Error => counters.errors.fetch_add(1, Ordering::Relaxed),
                };
            }
            latencies
        }));
    }
    let mut latencies = report::histogram();
    for w in workers {
        latencies.add(w.await?)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    runtime.shutdown().await;
    let client = run.db.client().await?;
    let violations = scenarios::violations(scenario, &client).await?;
    let committed = counters.committed.load(Ordering::Relaxed);
    let rejected = counters.rejected.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let counter =
        |name: &str, label: Option<(&str, &str)>| telemetry::counter_sum(metrics, name, label);
    Report {
        scenario: scenario.name().into(),
        processes: 1,
        concurrency: args.concurrency,
        duration_s: elapsed,
        commands: committed + rejected + errors,
        committed,
        rejected,
        conflicts: counter(
            dcb_runtime::metrics::APPEND_ATTEMPTS_TOTAL,
            Some(("result", "conflict")),
        ),
        retries: counter(dcb_runtime::metrics::COMMAND_RETRIES_TOTAL, None),
        errors,
        throughput_per_s: committed as f64 / elapsed,
        latency_ms: LatencyMs::of(&latencies),
        invariant_violations: violations,
        ..Report::default()
    }
    .with_store_metrics(metrics)
    .conclude(&args, &run.db)
    .await
}

enum Outcome {
    Committed,
    Rejected,
    Error,
}

fn classify<R: std::fmt::Debug>(
    result: Result<dcb_runtime::Committed, ExecuteError<R>>,
) -> Outcome {
    match result {
        Ok(_) => Outcome::Committed,
        Err(ExecuteError::Rejected(_)) => Outcome::Rejected,
        Err(e) => {
            eprintln!("command failed: {e:?}");
            Outcome::Error
        }
    }
}
