//! Load tests and benchmarks for dcb-runtime; see the README's "Load tests" section.

mod baseline;
mod database;
mod report;
mod runtime_scenarios;
mod scenarios;
mod store_scenarios;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Drive dcb-runtime under load against a real PostgreSQL and report throughput, latency,
/// conflicts and invariant violations counted from the database afterwards.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Every command on its own new boundary through the runtime: the no-contention baseline.
    Disjoint(RunArgs),
    /// Every command on ONE boundary: the next gapless invoice number (the hottest boundary).
    Invoice(RunArgs),
    /// Students subscribe to `--keys` courses of capacity 10 (a capacity rule under contention).
    Enrollment(RunArgs),
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
    /// How long to run, e.g. 10s, 1m.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Command actors of the runtime.
    #[arg(long, default_value_t = 16)]
    actors: usize,
    /// Boundaries to spread commands over (courses in `enrollment`).
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// Database server (libpq URL); else DATABASE_URL; else the local default. The run uses a
    /// fresh database on that server and drops it afterwards.
    #[arg(long)]
    database_url: Option<String>,
    /// Also measure the plain-insert rate (one event row plus its tags per transaction) of the
    /// same database at the same concurrency, and report the ratio.
    #[arg(long)]
    baseline: bool,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Serve Prometheus `/metrics` on this address (e.g. 127.0.0.1:9464) while the run lasts.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let outcome = async {
        let metrics_addr = match &cli.scenario {
            Scenario::Disjoint(args)
            | Scenario::Invoice(args)
            | Scenario::Enrollment(args)
            | Scenario::StoreDisjoint(args) => args.metrics_addr,
            Scenario::StoreSize(_) | Scenario::Baseline(_) => None,
        };
        let metrics = telemetry::install(metrics_addr)?;
        match cli.scenario {
            Scenario::Disjoint(args) => {
                runtime_scenarios::run(scenarios::Scenario::Disjoint, args, &metrics).await
            }
            Scenario::Invoice(args) => {
                runtime_scenarios::run(scenarios::Scenario::Invoice, args, &metrics).await
            }
            Scenario::Enrollment(args) => {
                runtime_scenarios::run(scenarios::Scenario::Enrollment, args, &metrics).await
            }
            Scenario::StoreDisjoint(args) => store_scenarios::disjoint(args, &metrics).await,
            Scenario::StoreSize(args) => store_scenarios::store_size(args).await,
            Scenario::Baseline(args) => {
                let run = database::open(args.database_url.as_deref()).await?;
                for c in args.concurrency {
                    let tps = baseline::plain_insert_tps(run.db.url(), c, args.duration).await?;
                    println!("concurrency {c:>4}: {tps:>8.0} plain inserts/s");
                }
                Ok(())
            }
        }
    }
    .await;
    match outcome {
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
