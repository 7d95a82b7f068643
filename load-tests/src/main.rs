//! Load tests and benchmarks for dcb-runtime; see the README's "Load tests" section.

mod baseline;
mod database;
mod report;
mod store_scenarios;
mod telemetry;

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
    /// Every decision on its own new boundary: read + conditional append, the no-contention
    /// baseline of the store.
    Disjoint(RunArgs),
    /// Latency of read + conditional append with 10,000 and with 1,000,000 events stored.
    StoreSize(StoreSizeArgs),
}

/// Options shared by the timed scenarios.
#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// How long to run, e.g. 10s, 1m.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent callers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
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
        let metrics = telemetry::install()?;
        match cli.scenario {
            Scenario::Disjoint(args) => store_scenarios::disjoint(args, &metrics).await,
            Scenario::StoreSize(args) => store_scenarios::store_size(args).await,
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
