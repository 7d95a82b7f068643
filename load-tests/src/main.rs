//! Load tests and benchmarks for dcb-runtime; see the README's "Load tests" section.

mod baseline;
mod chaos;
mod chart;
mod database;
mod keys;
mod processes;
mod progress;
mod report;
mod run;
mod store_scenarios;
mod telemetry;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dcb_runtime::PostgresStore;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::progress::Display;
use crate::report::Report;
use crate::run::Share;
use crate::workload::Kind;

/// Drive dcb-runtime under load against a real PostgreSQL and report throughput, latency,
/// conflicts and invariant violations counted from the database afterwards.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every command on its own new boundary: the no-contention baseline.
    Disjoint(RunArgs),
    /// Every command on ONE boundary: the next gapless invoice number (the hottest boundary).
    Invoice(RunArgs),
    /// Students subscribe to `--keys` courses of capacity 10 (at most 5 courses per student).
    Enrollment(RunArgs),
    /// Readers borrow and return `--keys` books (one reader per book, at most 3 books each).
    Lending(RunArgs),
    /// Random transfers between `--keys` accounts; no balance may go below zero.
    Transfer(RunArgs),
    /// Runs a scenario at several concurrencies and charts throughput and p99 against them.
    Sweep(SweepArgs),
    /// The store alone, without the runtime: read + conditional append on distinct boundaries.
    StoreDisjoint(RunArgs),
    /// Latency of read + conditional append with 10,000 and with 1,000,000 events stored.
    StoreSize(StoreSizeArgs),
    /// Only the plain-insert rate (one event row plus its tags per transaction) at each of the
    /// given concurrencies, to find PostgreSQL's best.
    Baseline(BaselineArgs),
}

/// Options shared by the timed scenarios.
#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// How long to run, e.g. 10s, 1m (ignored with --commands).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Send this many commands in all, then stop (instead of running for --duration).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    commands: Option<u64>,
    /// Concurrent callers, in all processes together.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    concurrency: usize,
    /// Command actors of the runtime in each process (default: the runtime's, twice the cores).
    #[arg(long, default_value_t = dcb_runtime::default_actors(), value_parser = at_least_one)]
    actors: usize,
    /// Keys to spread commands over: courses, books (and readers), accounts.
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    keys: usize,
    /// Zipf exponent of key popularity: 0 is uniform, 1 makes key 0 twice as popular as key 1.
    #[arg(long, default_value_t = 0.0)]
    skew: f64,
    /// OS processes running the callers against the same database; results are merged.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    processes: usize,
    /// Seed of the callers' random choices (default: random, printed in the report).
    #[arg(long)]
    seed: Option<u64>,
    /// Database server (libpq URL); else DATABASE_URL; else the local default. The run uses a
    /// fresh database on that server and drops it afterwards.
    #[arg(long)]
    database_url: Option<String>,
    /// Also measure the plain-insert rate (one event row plus its tags per transaction) of the
    /// same database at the same concurrency, and report the ratio.
    #[arg(long)]
    baseline: bool,
    /// Write the JSON report here (else it is printed after the summary).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw throughput, conflict rate and p99 over time into this .svg or .png file.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Inject faults while running: kill-connections, restart, pool-starvation, timeouts.
    /// Commands then carry idempotency keys, and the report counts acknowledged commands
    /// missing from the store and commands stored twice.
    #[arg(long, value_enum)]
    chaos: Option<chaos::Chaos>,
    /// Serve Prometheus `/metrics` on this address (e.g. 127.0.0.1:9464) while the run lasts
    /// (with --processes, the first process serves it).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Internal: run as one of --processes against this prepared database.
    #[arg(long, hide = true)]
    child_of: Option<String>,
    /// Internal: which of --processes this is.
    #[arg(long, hide = true, default_value_t = 0)]
    process_index: usize,
}

impl RunArgs {
    /// The seed (set before a run starts).
    fn seed(&self) -> u64 {
        self.seed.unwrap_or_default()
    }

    fn goal(&self) -> String {
        match self.commands {
            Some(n) => format!("{n} commands"),
            None => format!("{:?}", self.duration),
        }
    }
}

#[derive(Args, Debug, Clone)]
struct SweepArgs {
    /// The scenario to sweep.
    #[arg(value_enum)]
    scenario: Kind,
    /// Concurrencies to run at.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
    levels: Vec<usize>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug, Clone)]
struct BaselineArgs {
    /// How long to measure each concurrency.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrencies to measure, e.g. 1,8,16,64.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,64")]
    concurrency: Vec<usize>,
    /// Database server (libpq URL); else DATABASE_URL; else the local default.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Args, Debug, Clone)]
struct StoreSizeArgs {
    /// Decisions timed at each store size.
    #[arg(long, default_value_t = 2_000)]
    commands: usize,
    /// The large store size.
    #[arg(long, default_value_t = 1_000_000)]
    large: i64,
    /// The small store size.
    #[arg(long, default_value_t = 10_000)]
    small: i64,
    /// Database server (libpq URL); else DATABASE_URL; else the local default.
    #[arg(long)]
    database_url: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // tokio-postgres' Display says only "db error": print the whole chain with the
            // server's message.
            eprintln!("error: {e:#}");
            for cause in e.chain() {
                if let Some(db) = cause
                    .downcast_ref::<tokio_postgres::Error>()
                    .and_then(tokio_postgres::Error::as_db_error)
                {
                    eprintln!("  server said: {db}");
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Disjoint(args) => scenario(Kind::Disjoint, args).await,
        Command::Invoice(args) => scenario(Kind::Invoice, args).await,
        Command::Enrollment(args) => scenario(Kind::Enrollment, args).await,
        Command::Lending(args) => scenario(Kind::Lending, args).await,
        Command::Transfer(args) => scenario(Kind::Transfer, args).await,
        Command::Sweep(args) => sweep(args).await,
        Command::StoreDisjoint(mut args) => {
            anyhow::ensure!(
                args.processes == 1,
                "store-disjoint runs in one process (--processes is for the runtime scenarios)"
            );
            let metrics = telemetry::install(args.metrics_addr)?;
            let seed = *args.seed.get_or_insert_with(|| fastrand::u64(..));
            let mut report = store_scenarios::disjoint(&args, &metrics).await?;
            report.seed = seed;
            output(&report, &args)
        }
        Command::StoreSize(args) => store_scenarios::store_size(args).await,
        Command::Baseline(args) => {
            let run = database::open(args.database_url.as_deref()).await?;
            for c in args.concurrency {
                let tps = baseline::plain_insert_tps(run.db.url(), c, args.duration).await?;
                println!("concurrency {c:>4}: {tps:>8.0} plain inserts/s");
            }
            Ok(())
        }
    }
}

/// One scenario: the summary, the JSON report, the chart; an error on violations or errors.
async fn scenario(kind: Kind, mut args: RunArgs) -> anyhow::Result<()> {
    let metrics = telemetry::install(args.metrics_addr)?;
    args.seed.get_or_insert_with(|| fastrand::u64(..));
    if let Some(url) = args.child_of.clone() {
        return child(kind, &args, &url, &metrics).await;
    }
    let report = measure(kind, &args, &metrics).await?;
    output(&report, &args)
}

/// The summary, the JSON report and the chart; an error on violations or errors.
fn output(report: &Report, args: &RunArgs) -> anyhow::Result<()> {
    report.print();
    report::write_json(args.json.as_deref(), report)?;
    if let Some(path) = &args.chart {
        let title = format!(
            "{}: {} callers, {} actors, {} keys",
            report.scenario, report.concurrency, report.actors, report.keys
        );
        chart::timeline(path, &title, &report.timeline)?;
    }
    match report.failure() {
        Some(failure) => anyhow::bail!(failure),
        None => Ok(()),
    }
}

/// Runs `kind` on a fresh, prepared database, in one or several processes, and counts the
/// result in the database.
async fn measure(kind: Kind, args: &RunArgs, metrics: &PrometheusHandle) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.concurrency >= args.processes,
        "--concurrency {} is below --processes {}: every process needs a caller",
        args.concurrency,
        args.processes
    );
    let own_server = args.chaos == Some(chaos::Chaos::Restart);
    let run = database::open_on(args.database_url.as_deref(), own_server).await?;
    let url = run.db.url();
    {
        let store = PostgresStore::builder(url).pool_size(2).connect().await?;
        kind.prepare(&store, args.keys).await?;
    }
    let client = run.db.client().await?;
    if args.chaos == Some(chaos::Chaos::Timeouts) {
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
    let injector = args.chaos.map(|kind| {
        chaos::Injector::start(kind, url.to_owned(), run.server.clone(), args.duration)
    });
    let shares = if args.processes == 1 {
        let share = Share {
            process: 0,
            callers: args.concurrency,
            commands: args.commands,
        };
        vec![run::run_share(kind, args, url, share, metrics, Display::Auto).await?]
    } else {
        processes::run_children(kind, args, url).await?
    };
    let injected = match injector {
        Some(injector) => Some(injector.finish().await?),
        None => None,
    };
    let mut report = Report::merge(kind.name(), shares);
    report.concurrency = args.concurrency;
    report.actors = args.actors;
    report.keys = args.keys;
    report.skew = args.skew;
    report.seed = args.seed();
    // A new session: the one above may have been killed or restarted away, and it still has
    // the chaos timeouts.
    drop(client);
    let client = run.db.client().await?;
    if args.chaos == Some(chaos::Chaos::Timeouts) {
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
            )
            .await?,
        );
    }
    report.invariant_violations = dcb_scenarios::count(&client, kind.invariant_sql()).await?;
    report.events_in_store = dcb_scenarios::count(&client, "SELECT count(*) FROM events").await?;
    if args.baseline {
        eprintln!("baseline: plain inserts for {:?}", args.duration);
        let tps = baseline::plain_insert_tps(url, args.concurrency, args.duration).await?;
        report.baseline_tps = Some(tps);
        report.ratio = Some(report.throughput_per_s / tps);
    }
    Ok(report)
}

/// One of `--processes`: its share of the run, as JSON on stdout for the parent.
async fn child(
    kind: Kind,
    args: &RunArgs,
    url: &str,
    metrics: &PrometheusHandle,
) -> anyhow::Result<()> {
    let share = Share {
        process: args.process_index,
        callers: args.concurrency,
        commands: args.commands,
    };
    let result = run::run_share(kind, args, url, share, metrics, Display::Quiet).await?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// The scenario at each concurrency level, on a fresh database each time.
async fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    let metrics = telemetry::install(args.run.metrics_addr)?;
    let mut run = args.run.clone();
    run.seed.get_or_insert_with(|| fastrand::u64(..));
    let mut reports = Vec::new();
    for &level in &args.levels {
        anyhow::ensure!(level >= 1, "--levels must be at least 1");
        run.concurrency = level;
        let mut report = measure(args.scenario, &run, &metrics).await?;
        report.timeline.clear();
        eprintln!(
            "concurrency {level:>4}: {:>8.0} committed/s, p99 {:.2} ms, {} violations, {} errors",
            report.throughput_per_s,
            report.latency_ms.p99,
            report.invariant_violations,
            report.errors
        );
        reports.push(report);
    }
    println!("scenario {}", args.scenario.name());
    println!("concurrency  committed/s  decided/s  conflict %   p50 ms   p99 ms  ratio");
    for r in &reports {
        println!(
            "{:>11}  {:>11.0}  {:>9.0}  {:>10.1}  {:>7.2}  {:>7.2}  {}",
            r.concurrency,
            r.throughput_per_s,
            r.decisions_per_s,
            r.conflict_rate * 100.0,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.ratio.map_or("-".into(), |x| format!("{x:.2}x"))
        );
    }
    let chart = run
        .chart
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("sweep-{}.svg", args.scenario.name())));
    chart::sweep(&chart, &format!("{} sweep", args.scenario.name()), &reports)?;
    report::write_json(run.json.as_deref(), &reports)?;
    let failures: Vec<String> = reports.iter().filter_map(Report::failure).collect();
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}
