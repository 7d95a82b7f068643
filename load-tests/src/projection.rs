//! `--projection`: the ledger read model (`dcb_scenarios::ledger`) kept by a transactional
//! subscription beside the run, and what it did: append-to-projected lag, the projection's
//! events/s, and exact equality with a fold over `events`. The harness process runs one
//! projector; under `--chaos` a second one runs in a process of its own (`load-tests project`),
//! killed with SIGKILL whenever it is the active one (and started again), besides the faults the
//! chaos kind injects on every connection.
//!
//! `catch-up`: the rate at which a transactional projection catches up with a long history.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dcb_runtime::subscription::SubscriptionHandle;
use dcb_runtime::subscription::{Subscription, SubscriptionState};
use dcb_runtime::{PostgresStore, Query};
use dcb_scenarios::ledger::{
    LAG_SQL, Ledger, MISMATCH_SQL, REAPPLIED_SQL, SCHEMA_SQL, TALLY_LAG_SQL, TALLY_MISMATCH_SQL,
    TALLY_SCHEMA_SQL, Tally,
};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cli::{CatchUpArgs, ProjectArgs};

/// The subscription's name.
pub(crate) const NAME: &str = "ledger";
/// The most a run waits, after its callers stop, for the projection to reach the head.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// The read models the harness can keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ReadModel {
    /// One row per event id (`dcb_scenarios::ledger::Ledger`): as much writing as the append.
    Ledger,
    /// Events counted by type, one upsert per batch (`dcb_scenarios::ledger::Tally`).
    Tally,
}

impl ReadModel {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Ledger => "ledger",
            Self::Tally => "tally",
        }
    }

    fn schema_sql(self) -> &'static str {
        match self {
            Self::Ledger => SCHEMA_SQL,
            Self::Tally => TALLY_SCHEMA_SQL,
        }
    }

    fn mismatch_sql(self) -> &'static str {
        match self {
            Self::Ledger => MISMATCH_SQL,
            Self::Tally => TALLY_MISMATCH_SQL,
        }
    }

    /// Per event for the ledger, per batch (its last event) for the tally.
    fn lag_sql(self) -> &'static str {
        match self {
            Self::Ledger => LAG_SQL,
            Self::Tally => TALLY_LAG_SQL,
        }
    }

    fn projected_sql(self) -> &'static str {
        match self {
            Self::Ledger => "SELECT count(*) FROM projected_events",
            Self::Tally => "SELECT coalesce(sum(events), 0)::bigint FROM projected_tally",
        }
    }

    fn reapplied_sql(self) -> &'static str {
        match self {
            Self::Ledger => REAPPLIED_SQL,
            // Counted as mismatches: a batch applied twice makes a type's count too high.
            Self::Tally => "SELECT 0::bigint",
        }
    }

    async fn run(
        self,
        subscription: Subscription,
        store: &PostgresStore,
    ) -> Result<SubscriptionHandle, dcb_runtime::StoreError> {
        match self {
            Self::Ledger => subscription.run_transactional(store, Ledger).await,
            Self::Tally => subscription.run_transactional(store, Tally).await,
        }
    }
}

/// What the projection did during a run.
#[derive(Serialize, Debug, Clone, Copy, Default)]
pub(crate) struct ProjectionReport {
    pub(crate) read_model: Option<ReadModel>,
    pub(crate) events_projected: i64,
    /// Events whose row is missing or wrong, rows without their event, rows applied other than
    /// once (0: the read model equals the fold over `events`).
    pub(crate) mismatches: i64,
    /// Of the mismatches, rows applied more than once.
    pub(crate) reapplied: i64,
    /// From the start of the appending transaction to the write in the projecting one (per
    /// event for the ledger, per batch for the tally).
    pub(crate) lag_p50_ms: f64,
    pub(crate) lag_p99_ms: f64,
    /// Projected events per second, from the projectors' start until the head was reached.
    pub(crate) events_per_s: f64,
    /// Time from the callers' end until the projection reached the head.
    pub(crate) drain_ms: f64,
    /// Projectors killed with SIGKILL (under `--chaos`).
    pub(crate) projectors_killed: u64,
}

/// `load-tests project`: one projector process; prints `active` / `standby` / `stopped: why`
/// lines as its state changes, and shuts down when its stdin closes.
pub(crate) async fn project(args: ProjectArgs) -> anyhow::Result<()> {
    let store = PostgresStore::builder(&args.database_url)
        .pool_size(4)
        .connect()
        .await?;
    connect(&args.database_url)
        .await?
        .batch_execute(args.read_model.schema_sql())
        .await?;
    let settings = Subscription::new(&args.name, Query::all()).batch_size(args.batch_size);
    let handle = args.read_model.run(settings, &store).await?;
    let mut progress = handle.watch();
    let report = async {
        let mut last = None;
        loop {
            let state = progress.borrow_and_update().state.clone();
            if last.as_ref() != Some(&state) {
                match &state {
                    SubscriptionState::Active => println!("active"),
                    SubscriptionState::Standby => println!("standby"),
                    SubscriptionState::Stopped(e) => println!("stopped: {e}"),
                    SubscriptionState::ShutDown => println!("shut down"),
                }
                last = Some(state);
            }
            if progress.changed().await.is_err() {
                break;
            }
        }
    };
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let closed = async { while let Ok(Some(_)) = stdin.next_line().await {} };
    tokio::select! {
        () = report => {}
        () = closed => {}
    }
    handle.shutdown().await;
    Ok(())
}

/// The projectors of a run: one in the harness process (its metrics are in the run's
/// `/metrics`), and under `--chaos` one more in a process of its own, SIGKILLed whenever it is
/// the active one.
pub(crate) struct Projectors {
    model: ReadModel,
    started: Instant,
    in_process: dcb_runtime::subscription::SubscriptionHandle,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<u64>>,
}

/// One projector process and whether it said it is active.
struct Projector {
    child: Child,
    active: Arc<AtomicBool>,
}

impl Projector {
    fn spawn(url: &str, model: ReadModel) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["project", "--database-url", url, "--name", NAME])
            .args(["--read-model", model.name()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let active = Arc::new(AtomicBool::new(false));
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let flag = active.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                flag.store(line == "active", Ordering::SeqCst);
                if line.starts_with("stopped") {
                    eprintln!("projector {line}");
                }
            }
        });
        Ok(Self { child, active })
    }
}

impl Projectors {
    /// Creates the read model and starts the projector(s) on the prepared database at `url`;
    /// with `kill`, also a projector process, SIGKILLed (and started again) whenever it is found
    /// active at a two-second tick.
    pub(crate) async fn start(url: &str, model: ReadModel, kill: bool) -> anyhow::Result<Self> {
        let client = connect(url).await?;
        client.batch_execute(model.schema_sql()).await?;
        let store = PostgresStore::builder(url).pool_size(4).connect().await?;
        let in_process = model
            .run(Subscription::new(NAME, Query::all()), &store)
            .await?;
        let count = usize::from(kill);
        let mut projectors = (0..count)
            .map(|_| Projector::spawn(url, model))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (stop, mut stopped) = watch::channel(false);
        let url = url.to_owned();
        let task = tokio::spawn(async move {
            let killed = AtomicU64::new(0);
            if kill {
                loop {
                    tokio::select! {
                        _ = stopped.changed() => break,
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                    if let Some(p) = projectors
                        .iter_mut()
                        .find(|p| p.active.load(Ordering::SeqCst))
                    {
                        p.child.start_kill()?;
                        p.child.wait().await?;
                        killed.fetch_add(1, Ordering::Relaxed);
                        *p = Projector::spawn(&url, model)?;
                    }
                }
            } else {
                let _ = stopped.changed().await;
            }
            // Close their stdin: they shut down and give their lock back.
            for mut p in projectors {
                drop(p.child.stdin.take());
                p.child.wait().await?;
            }
            Ok(killed.into_inner())
        });
        Ok(Self {
            model,
            started: Instant::now(),
            in_process,
            stop,
            task,
        })
    }

    /// After the callers stopped at `callers_ended`: waits for the projection to reach the head,
    /// stops the projectors, and compares the read model with `events`.
    pub(crate) async fn finish(
        self,
        url: &str,
        callers_ended: Instant,
    ) -> anyhow::Result<ProjectionReport> {
        let client = connect(url).await?;
        let head: i64 = client
            .query_one("SELECT coalesce(max(position), 0) FROM events", &[])
            .await?
            .get(0);
        let until = Instant::now() + DRAIN_LIMIT;
        loop {
            let position: Option<i64> = client
                .query_opt(
                    "SELECT position FROM dcb_subscriptions WHERE name = $1",
                    &[&NAME],
                )
                .await?
                .map(|r| r.get(0));
            if position.is_some_and(|p| p >= head) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < until,
                "the projection did not reach the head ({head}) within {DRAIN_LIMIT:?} (at {position:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drain_ms = callers_ended.elapsed().as_secs_f64() * 1e3;
        let _ = self.stop.send(true);
        let projectors_killed = self.task.await??;
        self.in_process.shutdown().await;
        let count = |sql: &'static str| {
            let client = &client;
            async move { anyhow::Ok(client.query_one(sql, &[]).await?.get::<_, i64>(0)) }
        };
        let model = self.model;
        let lag = client.query_one(model.lag_sql(), &[]).await?;
        let busy_s = self.started.elapsed().as_secs_f64();
        let events_projected = count(model.projected_sql()).await?;
        Ok(ProjectionReport {
            events_projected,
            read_model: Some(model),
            mismatches: count(model.mismatch_sql()).await?,
            reapplied: count(model.reapplied_sql()).await?,
            lag_p50_ms: lag.get::<_, f64>(0) * 1e3,
            lag_p99_ms: lag.get::<_, f64>(1) * 1e3,
            #[allow(clippy::cast_precision_loss)]
            events_per_s: events_projected as f64 / busy_s.max(1e-9),
            drain_ms,
            projectors_killed,
        })
    }
}

/// A plain connection to `url`.
async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// What `catch-up` measured.
#[derive(Serialize, Debug)]
struct CatchUpReport {
    events: i64,
    batch_size: usize,
    seconds: f64,
    events_per_s: f64,
    mismatches: i64,
}

/// `load-tests catch-up`: `--events` stored events (generated in SQL), then one transactional
/// ledger projection from the beginning, timed until it reaches the head.
pub(crate) async fn catch_up(args: CatchUpArgs) -> anyhow::Result<()> {
    let run = crate::database::open(args.database_url.as_deref(), false).await?;
    let url = run.db.url();
    let store = PostgresStore::builder(url).pool_size(4).connect().await?;
    let client = run.db.client().await?;
    client.batch_execute(SCHEMA_SQL).await?;
    eprintln!("storing {} events", args.events);
    const CHUNK: i64 = 200_000;
    let mut stored = 0;
    while stored < args.events {
        let upto = (stored + CHUNK).min(args.events);
        client
            .batch_execute(&format!(
                "INSERT INTO events (position, id, type, tags, payload) \
                 SELECT g, gen_random_uuid(), 'Filled', ARRAY['fill:' || (g % 1000)], \
                        jsonb_build_object('n', g) \
                 FROM generate_series({from}, {upto}) g; \
                 INSERT INTO event_tags (tag, position, type) \
                 SELECT 'fill:' || (g % 1000), g, 'Filled' FROM generate_series({from}, {upto}) g",
                from = stored + 1,
            ))
            .await?;
        stored = upto;
        eprintln!("  {stored} stored");
    }
    client
        .batch_execute("ANALYZE events; ANALYZE event_tags")
        .await?;
    let started = Instant::now();
    let handle = Subscription::new(NAME, Query::all())
        .batch_size(args.batch_size)
        .run_transactional(&store, Ledger)
        .await?;
    let mut progress = handle.watch();
    let mut shown = Instant::now();
    loop {
        let position = progress.borrow_and_update().position.get();
        if position >= args.events {
            break;
        }
        if shown.elapsed() >= Duration::from_secs(2) {
            eprintln!("  projected up to {position}");
            shown = Instant::now();
        }
        if let SubscriptionState::Stopped(e) = &progress.borrow().state {
            anyhow::bail!("the projection stopped: {e}");
        }
        progress.changed().await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    handle.shutdown().await;
    let mismatches: i64 = client.query_one(MISMATCH_SQL, &[]).await?.get(0);
    #[allow(clippy::cast_precision_loss)]
    let report = CatchUpReport {
        events: args.events,
        batch_size: args.batch_size,
        seconds,
        events_per_s: args.events as f64 / seconds,
        mismatches,
    };
    println!(
        "catch-up: {} events into a transactional read model in {:.1} s = {:.0} events/s \
         (batches of {}); mismatches with a fold over events: {}",
        report.events, report.seconds, report.events_per_s, report.batch_size, report.mismatches
    );
    crate::json_report::write(args.json.as_ref(), &report)?;
    anyhow::ensure!(mismatches == 0, "{mismatches} mismatches");
    Ok(())
}
