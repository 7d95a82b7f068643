//! The command line: the subcommands and their options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::chaos::Chaos;
use crate::json_report::JsonDestination;
use crate::workload::Kind;

/// Drive dcb-runtime under load against a real PostgreSQL and report throughput, latency,
/// conflicts and invariant violations counted from the database afterwards.
#[derive(Parser, Debug)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
    /// One projector process: the ledger read model by a transactional subscription on a
    /// prepared database (what `--projection` starts); prints `active` or `standby` as its state
    /// changes and stops when its stdin closes.
    Project(ProjectArgs),
    /// How fast a transactional projection catches up with --events stored events.
    CatchUp(CatchUpArgs),
    /// Only the plain-insert rate (one event row plus its tags per transaction) at each of the
    /// given concurrencies, to find PostgreSQL's best.
    Baseline(BaselineArgs),
}

/// Options shared by the timed scenarios.
#[derive(Args, Debug, Clone)]
pub(crate) struct RunArgs {
    /// How long to run, e.g. 10s, 1m (ignored with --commands).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Send this many commands in all, then stop (instead of running for --duration).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) commands: Option<u64>,
    /// Open loop: send commands at this fixed rate per second in total (over all callers and
    /// processes) for --duration, whether earlier ones have answered or not, and time each from
    /// when it was due. --concurrency then bounds the commands in flight.
    #[arg(
        long,
        value_name = "PER_S",
        value_parser = positive_rate,
        allow_negative_numbers = true,
        conflicts_with = "commands"
    )]
    pub(crate) rate: Option<f64>,
    /// Concurrent callers, in all processes together.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    pub(crate) concurrency: usize,
    /// Command actors of the runtime in each process (default: the runtime's, half the cores, at least one).
    #[arg(long, default_value_t = dcb_runtime::default_actors(), value_parser = at_least_one)]
    pub(crate) actors: usize,
    /// Keys to spread commands over: courses, books (and readers), accounts.
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    pub(crate) keys: usize,
    /// Zipf exponent of key popularity: 0 is uniform, 1 makes key 0 twice as popular as key 1.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) skew: f64,
    /// OS processes running the callers against the same database; results are merged.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub(crate) processes: usize,
    /// Do not forward commands on a key contended by several processes to the process owning
    /// it: every process takes turns on the key with its own commands (as before forwarding),
    /// for comparison.
    #[arg(long)]
    pub(crate) turns_only: bool,
    /// Each process writes its own appends (each transaction then carries one process's), instead
    /// of the processes electing one appender that writes them all (`shared_appender`), for
    /// comparison.
    #[arg(long)]
    pub(crate) own_appends: bool,
    /// No coordination across processes at all, for comparison: no turns, no ownership, no
    /// forwarding, and each process writes its own appends; only the append condition keeps
    /// decisions consistent (a conflict is retried). What the mechanism costs keys no other
    /// process contends for is the difference to a run without this.
    #[arg(long)]
    pub(crate) uncoordinated: bool,
    /// Seed of the callers' random choices (default: random, printed in the report).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Database server (libpq URL); else DATABASE_URL; else the local default. The run uses a
    /// fresh database on that server and drops it afterwards (unless --keep-database).
    #[arg(long)]
    pub(crate) database_url: Option<String>,
    /// Keep the run's database on its server afterwards and print its name and URL, to look at
    /// what the run stored. Refused on a throwaway server, which is removed on exit (under
    /// --chaos restart, or when no server answers).
    #[arg(long)]
    pub(crate) keep_database: bool,
    /// Also measure the plain-insert rate (one event row plus its tags per transaction) of the
    /// same database at the same concurrency, and report the ratio.
    #[arg(long)]
    pub(crate) baseline: bool,
    /// Write the JSON report to this file, or with `-` to stdout (the summary then goes to
    /// stderr, so stdout holds only the JSON).
    #[arg(long, value_name = "PATH|-")]
    pub(crate) json: Option<JsonDestination>,
    /// Draw throughput, conflict rate and p99 over time into this .svg or .png file.
    #[arg(long)]
    pub(crate) chart: Option<PathBuf>,
    /// Inject faults while running: kill-connections, restart, pool-starvation, timeouts.
    /// Commands then carry idempotency keys, and the report counts acknowledged commands
    /// missing from the store and commands stored twice.
    #[arg(long, value_enum)]
    pub(crate) chaos: Option<Chaos>,
    /// Serve Prometheus `/metrics` on this address (e.g. 127.0.0.1:9464) while the run lasts
    /// (with --processes, the first process serves it).
    #[arg(long)]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Keep the ledger read model by a transactional subscription beside the run (in this
    /// process), and report its lag (append to projected), its events/s and whether it equals a
    /// fold over `events` (the run fails if not). Under --chaos a second projector runs in a
    /// process of its own and is killed with SIGKILL whenever it is the active one (then
    /// restarted).
    /// `--projection tally` keeps a light read model instead (events counted by type, one upsert
    /// per batch), to tell the subscription's own cost from a per-event read model's.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "ledger")]
    pub(crate) projection: Option<crate::projection::ReadModel>,
    /// Internal: run as one of --processes against this prepared database.
    #[arg(long, hide = true)]
    pub(crate) child_of: Option<String>,
    /// Internal: which of --processes this is.
    #[arg(long, hide = true, default_value_t = 0)]
    pub(crate) process_index: usize,
}

impl RunArgs {
    /// The seed (set before a run starts).
    pub(crate) fn seed(&self) -> u64 {
        self.seed.unwrap_or_default()
    }

    pub(crate) fn goal(&self) -> String {
        match (self.commands, self.rate) {
            (Some(n), _) => format!("{n} commands"),
            (None, Some(rate)) => format!("{:?} at {rate} commands/s", self.duration),
            (None, None) => format!("{:?}", self.duration),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub(crate) struct SweepArgs {
    /// The scenario to sweep.
    #[arg(value_enum)]
    pub(crate) scenario: Kind,
    /// Concurrencies to run at.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
    pub(crate) levels: Vec<usize>,
    /// After the levels, one open-loop run at this fraction of the peak (the highest committed/s
    /// of the levels), with four times the peak's concurrency bounding the commands in flight:
    /// its latency is timed from each command's due time. 0.8 gives p99 at 80 % of peak.
    #[arg(long, value_name = "FRACTION", value_parser = fraction)]
    pub(crate) open_loop_at: Option<f64>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct BaselineArgs {
    /// How long to measure each concurrency.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Concurrencies to measure, e.g. 1,8,16,64.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,64")]
    pub(crate) concurrency: Vec<usize>,
    /// Database server (libpq URL); else DATABASE_URL; else the local default.
    #[arg(long)]
    pub(crate) database_url: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct StoreSizeArgs {
    /// Decisions timed at each store size.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) commands: usize,
    /// The large store size.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) large: i64,
    /// The small store size.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) small: i64,
    /// Rounds of timing, each the small store then the large one.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub(crate) rounds: usize,
    /// Database server (libpq URL); else DATABASE_URL; else the local default.
    #[arg(long)]
    pub(crate) database_url: Option<String>,
    /// Write the JSON report to this file, or with `-` to stdout (the figures then go to
    /// stderr).
    #[arg(long, value_name = "PATH|-")]
    pub(crate) json: Option<JsonDestination>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ProjectArgs {
    /// The prepared database (libpq URL).
    #[arg(long)]
    pub(crate) database_url: String,
    /// The subscription's name.
    #[arg(long, default_value = "ledger")]
    pub(crate) name: String,
    /// Most events per batch.
    #[arg(long, default_value_t = 500, value_parser = at_least_one)]
    pub(crate) batch_size: usize,
    /// The read model to keep.
    #[arg(long, value_enum, default_value = "ledger")]
    pub(crate) read_model: crate::projection::ReadModel,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct CatchUpArgs {
    /// Events stored before the projection starts (generated in SQL).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub(crate) events: i64,
    /// Most events per batch (one transaction each).
    #[arg(long, default_value_t = 1_000, value_parser = at_least_one)]
    pub(crate) batch_size: usize,
    /// Database server (libpq URL); else DATABASE_URL; else the local default.
    #[arg(long)]
    pub(crate) database_url: Option<String>,
    /// Write the JSON report to this file, or with `-` to stdout.
    #[arg(long, value_name = "PATH|-")]
    pub(crate) json: Option<JsonDestination>,
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A rate of commands per second: a finite number above 0.
fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        Ok(_) => Err("must be above 0 and at most 1 (a fraction of the peak)".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        Ok(_) => Err("must be above 0 commands per second".into()),
        Err(e) => Err(e.to_string()),
    }
}
