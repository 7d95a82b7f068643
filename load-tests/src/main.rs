//! Load tests and benchmarks for dcb-runtime; see the README's "Load tests" section.

mod baseline;
mod chaos;
mod chart;
mod cli;
mod cpu;
mod database;
mod json_report;
mod keys;
mod latency;
mod measure;
mod processes;
mod progress;
mod projection;
mod report;
mod run;
mod scenario;
mod schedule;
mod share;
mod store_scenarios;
mod sweep;
mod telemetry;
mod timeline;
mod workload;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::workload::Kind;

/// A profile of the main job (`perf record -e cpu-clock -p <pid>`, 5 s of `disjoint`) spent a
/// third of the harness process's CPU in glibc's `malloc` and `free`, while the process shares
/// two cores with PostgreSQL. Services that embed the library commonly choose such an allocator
/// too; the plain-insert baseline runs in this same process, so its ratio stays like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Disjoint(args) => scenario::run(Kind::Disjoint, args).await,
        Command::Invoice(args) => scenario::run(Kind::Invoice, args).await,
        Command::Enrollment(args) => scenario::run(Kind::Enrollment, args).await,
        Command::Lending(args) => scenario::run(Kind::Lending, args).await,
        Command::Transfer(args) => scenario::run(Kind::Transfer, args).await,
        Command::Sweep(args) => sweep::sweep(args).await,
        Command::StoreDisjoint(mut args) => {
            anyhow::ensure!(
                args.processes == 1,
                "store-disjoint runs in one process (--processes is for the runtime scenarios)"
            );
            anyhow::ensure!(
                args.rate.is_none(),
                "store-disjoint runs closed-loop only (--rate is for the runtime scenarios)"
            );
            let metrics = telemetry::install(args.metrics_addr)?;
            let seed = *args.seed.get_or_insert_with(|| fastrand::u64(..));
            let mut report = store_scenarios::disjoint(&args, &metrics).await?;
            report.seed = seed;
            scenario::conclude(&report, &args)
        }
        Command::Project(args) => projection::project(args).await,
        Command::CatchUp(args) => projection::catch_up(args).await,
        Command::StoreSize(args) => store_scenarios::store_size(args).await,
        Command::Baseline(args) => {
            let run = database::open(args.database_url.as_deref(), false).await?;
            for c in args.concurrency {
                let b = baseline::plain_inserts(run.db.url(), c, args.duration).await?;
                let ms = |x: Option<f64>| x.map_or("n/a".to_owned(), |x| format!("{x:.3}"));
                println!(
                    "concurrency {c:>4}: {:>8.0} plain inserts/s, cpu (ms/insert) client {} server {}",
                    b.tps,
                    ms(b.cpu_client_ms_per_insert),
                    ms(b.cpu_server_ms_per_insert)
                );
            }
            Ok(())
        }
    }
}
