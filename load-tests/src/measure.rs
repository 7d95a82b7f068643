//! Measuring a scenario: a fresh database set up for it, the run in one or several processes,
//! and the result counted in the database afterwards.

use dcb_runtime::PostgresStore;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::baseline;
use crate::chaos::{self, Chaos};
use crate::cli::RunArgs;
use crate::database::{self, RunDatabase};
use crate::processes;
use crate::progress::Display;
use crate::report::Report;
use crate::run::run_share;
use crate::share::Share;
use crate::workload::Kind;

/// Runs `kind` on a fresh, prepared database, in one or several processes, and counts the
/// result in the database; then drops the database, or keeps it (even when the run failed, as
/// a failed run's database is the one most worth looking at).
pub(crate) async fn measure(
    kind: Kind,
    args: &RunArgs,
    metrics: &PrometheusHandle,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.concurrency >= args.processes,
        "--concurrency {} is below --processes {}: every process needs a caller",
        args.concurrency,
        args.processes
    );
    anyhow::ensure!(
        !matches!(args.chaos, Some(Chaos::KillOwner | Chaos::KillAppender)) || args.processes >= 2,
        "--chaos kill-owner and kill-appender kill one of --processes: give --processes 2 or more"
    );
    anyhow::ensure!(
        args.chaos != Some(Chaos::KillAppender) || !(args.own_appends || args.uncoordinated),
        "--chaos kill-appender kills the appender the processes elect: not with --own-appends \
         or --uncoordinated"
    );
    anyhow::ensure!(
        args.chaos != Some(Chaos::KillOwner) || !args.uncoordinated,
        "--chaos kill-owner kills the process owning a key: not with --uncoordinated"
    );
    let own_server = args.chaos == Some(Chaos::Restart);
    let run =
        database::open_on(args.database_url.as_deref(), own_server, args.keep_database).await?;
    let measured = measure_in(&run, kind, args, metrics).await;
    let kept = run.close();
    let mut report = measured?;
    report.kept_database = kept;
    Ok(report)
}

async fn measure_in(
    run: &RunDatabase,
    kind: Kind,
    args: &RunArgs,
    metrics: &PrometheusHandle,
) -> anyhow::Result<Report> {
    let url = run.db.url();
    {
        let store = PostgresStore::builder(url).pool_size(2).connect().await?;
        kind.prepare(&store, args.keys).await?;
    }
    let client = run.db.client().await?;
    let setup_events = dcb_scenarios::count(&client, "SELECT count(*) FROM events").await?;
    if args.chaos == Some(Chaos::Timeouts) {
        for (setting, value) in chaos::TIMEOUTS {
            // Taken by every session opened from now on (the runtime's included).
            client
                .batch_execute(&format!(
                    "ALTER DATABASE {} SET {setting} = '{value}'",
                    run.db.name()
                ))
                .await?;
        }
    }
    eprintln!(
        "{}: {} caller(s) in {} process(es), {} actor(s) each, {} key(s), skew {}, for {}",
        kind.name(),
        args.concurrency,
        args.processes,
        args.actors,
        args.keys,
        args.skew,
        args.goal()
    );
    let projectors = match args.projection {
        Some(model) => {
            Some(crate::projection::Projectors::start(url, model, args.chaos.is_some()).await?)
        }
        None => None,
    };
    let injector = args.chaos.map(|kind| {
        chaos::Injector::start(kind, url.to_owned(), run.server.clone(), args.duration)
    });
    let (shares, killed) = if args.processes == 1 {
        let share = Share {
            process: 0,
            callers: args.concurrency,
            commands: args.commands,
            rate: args.rate,
        };
        let share = run_share(kind, args, url, share, metrics, Display::Auto).await?;
        (vec![share], None)
    } else {
        processes::run_children(kind, args, url).await?
    };
    let callers_ended = std::time::Instant::now();
    let injected = match injector {
        Some(injector) => Some(injector.finish().await?),
        None => None,
    };
    let projection = match projectors {
        Some(p) => Some(p.finish(url, callers_ended).await?),
        None => None,
    };
    let mut report = Report::merge(kind.name(), shares, killed.map(|k| k.process));
    report.projection = projection;
    report.concurrency = args.concurrency;
    report.rate_per_s = args.rate;
    report.actors = args.actors;
    report.keys = args.keys;
    report.skew = args.skew;
    report.seed = args.seed();
    report.setup_events = setup_events;
    // A new session: the one above may have been killed or restarted away, and it still has
    // the chaos timeouts.
    drop(client);
    let client = run.db.client().await?;
    if args.chaos == Some(Chaos::Timeouts) {
        for (setting, _) in chaos::TIMEOUTS {
            client
                .batch_execute(&format!("ALTER DATABASE {} RESET {setting}", run.db.name()))
                .await?;
        }
        drop(client);
    }
    let client = run.db.client().await?;
    if let Some(kind_of_chaos) = args.chaos {
        report.chaos = Some(kind_of_chaos);
        report.chaos_injected = injected;
        report.accounting = Some(
            chaos::account(
                &client,
                kind.decided_types(),
                &report.sent_ids,
                &report.acked_ids,
                killed,
            )
            .await?,
        );
    }
    report.invariant_violations = dcb_scenarios::count(&client, kind.invariant_sql()).await?;
    report.events_in_store = dcb_scenarios::count(&client, "SELECT count(*) FROM events").await?;
    if args.baseline {
        eprintln!("baseline: plain inserts for {:?}", args.duration);
        let b = baseline::plain_inserts(url, args.concurrency, args.duration).await?;
        report.with_baseline(b);
    }
    Ok(report)
}
