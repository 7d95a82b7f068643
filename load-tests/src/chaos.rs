//! `--chaos KIND`: faults injected while a scenario runs, and the accounting that shows nothing
//! acknowledged was lost and nothing was stored twice.
//!
//! Under chaos every command carries an idempotency key (`execute_with_key`), so the id of the
//! event it decides is known before it is sent. After the run, with SQL over the `events` table:
//! `acknowledged_missing` counts acknowledged events not stored; `duplicates` counts stored
//! events of the scenario's decisions that no command sent (a second copy of a decision would
//! be one) plus ids stored twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dcb_runtime::keyed_event_id;
use dcb_runtime::local::LocalPostgres;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The faults `--chaos` injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Chaos {
    /// Terminates every backend of the run's database once a second.
    KillConnections,
    /// Restarts PostgreSQL (immediate mode, as in a crash) every third of the run; needs a
    /// server the harness controls, so the run starts a throwaway one.
    Restart,
    /// A pool of 2 connections with a 250 ms wait timeout for all callers.
    PoolStarvation,
    /// A 5 ms statement timeout and a 1 ms lock timeout on the run's database.
    Timeouts,
    /// With --processes 2 or more: SIGKILLs, once, a third into the run, the process then
    /// holding a turn on a key contended by several processes (as `pg_locks` shows it).
    KillOwner,
    /// With --processes 2 or more: SIGKILLs, once, a third into the run, the process then
    /// writing every process's appends (the elected appender, as `pg_locks` shows it).
    KillAppender,
}

/// Session settings `--chaos timeouts` puts on the run's database.
pub(crate) const TIMEOUTS: &[(&str, &str)] =
    &[("statement_timeout", "5ms"), ("lock_timeout", "1ms")];

/// Pool settings under `--chaos pool-starvation`.
pub(crate) const STARVED_POOL: usize = 2;
pub(crate) const STARVED_WAIT: Duration = Duration::from_millis(250);

/// The running fault injector.
pub(crate) struct Injector {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
    /// Faults injected: backends terminated, restarts.
    pub(crate) injected: Arc<AtomicU64>,
}

impl Injector {
    /// Starts injecting `chaos` into the database at `url` (on `server` for restarts).
    pub(crate) fn start(
        chaos: Chaos,
        url: String,
        server: Option<Arc<LocalPostgres>>,
        run_for: Duration,
    ) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let injected = Arc::new(AtomicU64::new(0));
        let count = injected.clone();
        let task = tokio::spawn(async move {
            let period = match chaos {
                Chaos::KillConnections => Duration::from_secs(1),
                Chaos::Restart => (run_for / 3).max(Duration::from_secs(2)),
                // The parent of the processes kills one (see `processes.rs`).
                Chaos::PoolStarvation
                | Chaos::Timeouts
                | Chaos::KillOwner
                | Chaos::KillAppender => return Ok(()),
            };
            let started = tokio::time::Instant::now();
            let mut ticks = tokio::time::interval_at(started + period, period);
            // A restart takes a while: the next one waits a whole period after it.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Faults only while commands are sent: the commands still in flight after that are
            // let finish (restarting a loaded server again and again while they drain kept some
            // of them from ever meeting a running server before their deadline).
            let sending_ends = tokio::time::sleep_until(started + run_for);
            tokio::pin!(sending_ends);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.changed() => return Ok(()),
                    () = &mut sending_ends => return Ok(()),
                }
                if *stopped.borrow() {
                    return Ok(());
                }
                match chaos {
                    Chaos::KillConnections => {
                        let killed = kill_backends(&url).await?;
                        count.fetch_add(killed, Ordering::Relaxed);
                    }
                    Chaos::Restart => {
                        let server = server.clone().ok_or_else(|| {
                            anyhow::anyhow!("--chaos restart needs a server the harness started")
                        })?;
                        eprintln!("chaos: restarting PostgreSQL");
                        tokio::task::spawn_blocking(move || server.restart()).await??;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Chaos::PoolStarvation
                    | Chaos::Timeouts
                    | Chaos::KillOwner
                    | Chaos::KillAppender => {}
                }
            }
        });
        Self {
            stop,
            task,
            injected,
        }
    }

    /// Stops injecting; an error of the injector itself fails the run.
    pub(crate) async fn finish(self) -> anyhow::Result<u64> {
        let _ = self.stop.send(true);
        self.task.await??;
        Ok(self.injected.load(Ordering::Relaxed))
    }
}

/// Terminates every other backend connected to the run's database; how many.
async fn kill_backends(url: &str) -> anyhow::Result<u64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await?;
    drop(client);
    let _ = connection.await;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// What the database says about the acknowledged commands, counted after the run.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(crate) struct Accounting {
    /// Commands reported committed.
    pub(crate) acknowledged: u64,
    /// Of those, commands whose event is not in the store.
    pub(crate) acknowledged_missing: i64,
    /// Events stored more than once: events of the scenario's decisions that no command sent,
    /// plus ids stored twice.
    pub(crate) duplicates: i64,
    /// Commands that answered an error but whose event is stored (their outcome was unknown
    /// to them; a re-execution with the same key would answer the commit).
    pub(crate) unacknowledged_stored: i64,
    /// Under `--chaos kill-owner` or `kill-appender`: events stored by the killed process's commands (their ids
    /// are those its callers' keys give; it could not report what it sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) killed_process_stored: Option<i64>,
}

/// A process killed during the run: which, how many callers it had, the decisions they ran.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Killed {
    pub(crate) process: usize,
    pub(crate) callers: usize,
    pub(crate) decisions: &'static [&'static str],
}

impl Killed {
    /// Takes out of `ids` those a command of the killed process would have stored (the
    /// `n`-th command of caller `c` has key `p<process>-c<c>-<n>`); how many it took.
    fn explain(&self, ids: &mut HashSet<Uuid>) -> i64 {
        let before = ids.len();
        // A caller sends its commands one after the other: among `ids.len()` events, none of
        // its commands can have a number beyond that.
        let bound = ids.len() as u64;
        for decision in self.decisions {
            for caller in 0..self.callers {
                for n in 0..=bound {
                    let key = format!("p{}-c{caller}-{n}", self.process);
                    ids.remove(&keyed_event_id(decision, &key, 0));
                }
            }
        }
        i64::try_from(before - ids.len()).unwrap_or(i64::MAX)
    }
}

pub(crate) async fn account(
    client: &tokio_postgres::Client,
    decided_types: &[&str],
    sent: &[Uuid],
    acked: &[Uuid],
    killed: Option<Killed>,
) -> anyhow::Result<Accounting> {
    let row = client
        .query_one(
            "WITH sent AS (SELECT DISTINCT unnest($1::uuid[]) AS id), \
                  acked AS (SELECT DISTINCT unnest($2::uuid[]) AS id) \
             SELECT \
               (SELECT count(*) FROM acked a WHERE NOT EXISTS \
                  (SELECT 1 FROM events e WHERE e.id = a.id)), \
               (SELECT count(*) - count(DISTINCT id) FROM events), \
               (SELECT count(*) FROM events e WHERE e.id IN (SELECT id FROM sent) \
                  AND e.id NOT IN (SELECT id FROM acked)), \
               ARRAY(SELECT e.id FROM events e WHERE e.type = ANY($3) AND NOT EXISTS \
                  (SELECT 1 FROM sent s WHERE s.id = e.id))",
            &[&sent, &acked, &decided_types],
        )
        .await?;
    // Events of the scenario's decisions that no command sent: a second copy of a decision,
    // unless the killed process sent it.
    let mut unsent: HashSet<Uuid> = row.get::<_, Vec<Uuid>>(3).into_iter().collect();
    let killed_process_stored = killed.map(|k| k.explain(&mut unsent));
    let twice: i64 = row.get(1);
    Ok(Accounting {
        acknowledged: acked.len() as u64,
        acknowledged_missing: row.get(0),
        duplicates: twice + i64::try_from(unsent.len()).unwrap_or(i64::MAX),
        unacknowledged_stored: row.get(2),
        killed_process_stored,
    })
}

/// Waits, from `from` until `until`, for a process of the run to own a key contended by several
/// processes (a granted advisory lock in the ownership key space, `forwarding.rs`) or, if none
/// does, to hold a turn on one (the turns' key space, V6); which one, if any did.
pub(crate) async fn turn_holder(
    url: &str,
    from: Duration,
    until: Duration,
) -> anyhow::Result<Option<usize>> {
    // An owner first.
    let (which, order) = (
        "l.classid IN (1145258575, 1145258580)",
        "ORDER BY l.classid = 1145258575 DESC",
    );
    lock_holder(url, from, until, which, order).await
}

/// Waits, from `from` until `until`, for a process of the run to be the elected appender (the
/// holder of the leader's lock `('DCBL', 0)`, `store/postgres/leader.rs`); which one, if any was.
pub(crate) async fn appender(
    url: &str,
    from: Duration,
    until: Duration,
) -> anyhow::Result<Option<usize>> {
    lock_holder(
        url,
        from,
        until,
        "l.classid = 1145258572 AND l.objid = 0",
        "",
    )
    .await
}

/// Polls `pg_locks`, from `from` until `until`, for a granted two-key advisory lock matching
/// `which` (a condition on `l`), the first in `order`, held by a process of the run; which one
/// (its connections are named `dcb-load-p<index>`), if any held one.
async fn lock_holder(
    url: &str,
    from: Duration,
    until: Duration,
    which: &str,
    order: &str,
) -> anyhow::Result<Option<usize>> {
    let sql = format!(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND {which} \
           AND l.objsubid = 2 AND l.granted AND a.datname = current_database() \
           AND a.application_name LIKE 'dcb-load-p%' {order} LIMIT 1"
    );
    let started = tokio::time::Instant::now();
    tokio::time::sleep_until(started + from).await;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let mut polls = tokio::time::interval(Duration::from_millis(5));
    let found = loop {
        polls.tick().await;
        if started.elapsed() >= until {
            break None;
        }
        let row = client.query_opt(&sql, &[]).await?;
        if let Some(name) = row.map(|r| r.get::<_, String>(0)) {
            break name.strip_prefix("dcb-load-p").and_then(|i| i.parse().ok());
        }
    };
    drop(client);
    let _ = connection.await;
    Ok(found)
}
