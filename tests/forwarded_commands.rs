//! Commands on a key two runtimes contend for run in the process owning the key
//! (`RuntimeBuilder::forward`), and their callers get the answers they would have got running
//! them themselves: the commits, once each, and the rejections, typed.
//!
//! Two runtimes on separate pools of one database, as two processes would be (the harness's
//! `invoice --processes 3` and `--chaos kill-owner` tests run them as OS processes, one killed).
//! They take tickets of one sold-out-able counter; the forwarding metrics tell that commands
//! crossed over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    Decision, Event, ExecuteError, P, Position, Projection, Query, QueryItem, Runtime,
    SequencedEvent, keyed_event_id,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;

const TICKETS: u64 = 1_000;
const CALLERS_PER_RUNTIME: usize = 16;
const COMMANDS_PER_CALLER: u64 = 90;

/// Tickets taken so far.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Taken(String);

impl Projection for Taken {
    type State = u64;
    fn query(&self) -> Query {
        QueryItem::new(["TicketTaken"], [P("show", &*self.0)]).into()
    }
    fn initial_state(&self) -> u64 {
        0
    }
    fn evolve(&self, taken: &mut u64, _event: &SequencedEvent) {
        *taken += 1;
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TakeTicket {
    show: String,
}

impl Decision for TakeTicket {
    const NAME: &'static str = "take_ticket";
    type Projection = Taken;
    type Rejection = String;

    fn projection(&self) -> Taken {
        Taken(self.show.clone())
    }

    fn decide(&self, taken: &u64) -> Result<Vec<Event>, String> {
        if *taken >= TICKETS {
            return Err(format!("{} sold out", self.show));
        }
        Ok(vec![
            Event::new("TicketTaken", json!({ "number": taken + 1 })).tagged("show", &*self.show),
        ])
    }
}

/// The test binary's recorder, installed once for its tests.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("the test binary's recorder")
    })
}

/// The sum of a counter's series whose labels include `label`.
fn counter(exposition: &str, name: &str, label: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Two runtimes on separate pools of `db` (as two processes would have), forwarding `D`.
async fn two_runtimes_forwarding<D>(db: &TestDatabase) -> Vec<Runtime>
where
    D: Decision + serde::Serialize + serde::de::DeserializeOwned,
{
    let mut runtimes = Vec::new();
    for _ in 0..2 {
        let runtime = Runtime::builder(db.store().await.expect("store"))
            .forward::<D>()
            .deadline(Duration::from_secs(30))
            .start()
            .await
            .expect("runtime");
        runtimes.push(runtime);
    }
    runtimes
}

/// Two runtimes on `db`, their callers taking tickets until sold out: the commits (position,
/// number) and the count of rejections.
async fn sell_out(db: &TestDatabase) -> (Vec<Runtime>, Vec<(Position, u64)>, u64) {
    let runtimes = two_runtimes_forwarding::<TakeTicket>(db).await;
    let mut callers = Vec::new();
    for runtime in &runtimes {
        for _ in 0..CALLERS_PER_RUNTIME {
            let runtime = runtime.clone();
            callers.push(tokio::spawn(async move {
                let (mut committed, mut rejected) = (Vec::new(), 0u64);
                for _ in 0..COMMANDS_PER_CALLER {
                    let take = TakeTicket {
                        show: "premiere".to_owned(),
                    };
                    match runtime.execute(take).await {
                        Ok(c) => {
                            assert!(!c.replayed, "an unkeyed command answered a replay: {c:?}");
                            assert_eq!(c.events.len(), 1, "{c:?}");
                            assert_eq!(c.events[0].event_type(), "TicketTaken");
                            let number = c.events[0].payload()["number"].as_u64().unwrap();
                            committed.push((c.positions[0], number));
                        }
                        Err(ExecuteError::Rejected(why)) => {
                            assert_eq!(why, "premiere sold out");
                            rejected += 1;
                        }
                        Err(e) => panic!("a command failed: {e:?}"),
                    }
                }
                (committed, rejected)
            }));
        }
    }
    let (mut committed, mut rejected) = (Vec::new(), 0);
    for caller in callers {
        let (c, r) = caller.await.expect("caller");
        committed.extend(c);
        rejected += r;
    }
    (runtimes, committed, rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_on_a_contended_key_run_at_its_owner_and_answer_as_if_run_here() {
    let metrics = recorder();
    // Another database on the server, whose runtimes own the same key there and keep
    // forwarding to its owner (refusals, once sold out) while the run below goes on: ownership
    // (an advisory lock) is per database, and so must the look-up of the owner be.
    let elsewhere = TestDatabase::create().await.expect("test database");
    let (others, _, _) = sell_out(&elsewhere).await;
    let done = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = others
        .iter()
        .map(|runtime| {
            let (runtime, done) = (runtime.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    let take = TakeTicket {
                        show: "premiere".to_owned(),
                    };
                    let refused = runtime.execute(take).await;
                    assert!(
                        matches!(refused, Err(ExecuteError::Rejected(_))),
                        "{refused:?}"
                    );
                }
            })
        })
        .collect();
    let forwarded = "dcb_forwarded_commands_total";
    let before = metrics.render();
    assert!(
        counter(&before, forwarded, "outcome=\"run_here\"") > 0.0,
        "the other database's runtimes forwarded nothing:\n{before}"
    );

    let db = TestDatabase::create().await.expect("test database");
    let (runtimes, mut committed, rejected) = sell_out(&db).await;
    let exposition = metrics.render();
    // The owners' tokens are in this database's table (V9), not in the `application_name`
    // every role of the server can read in `pg_stat_activity`.
    let advertised = db
        .client()
        .await
        .expect("client")
        .query_one(
            "SELECT count(*) FILTER (WHERE t.address IS NOT NULL), \
                    count(*) FILTER (WHERE position(t.token IN a.application_name) > 0) \
             FROM dcb_forward_tokens t JOIN pg_stat_activity a ON a.pid = t.pid",
            &[],
        )
        .await
        .expect("tokens");
    let (sessions, leaked): (i64, i64) = (advertised.get(0), advertised.get(1));
    assert!(sessions >= 1, "no advertising session recorded its token");
    assert_eq!(leaked, 0, "a token is readable in pg_stat_activity");
    done.store(true, Ordering::Relaxed);
    for task in busy {
        task.await.expect("the other database's callers");
    }
    for runtime in runtimes.iter().chain(&others) {
        runtime.shutdown().await;
    }
    // What this run forwarded (the other database's runtimes add refusals only).
    let since =
        |label: &str| counter(&exposition, forwarded, label) - counter(&before, forwarded, label);

    // Every ticket once, in order, each answered to exactly one caller; the rest refused.
    let sent = 2 * CALLERS_PER_RUNTIME as u64 * COMMANDS_PER_CALLER;
    assert_eq!(committed.len() as u64, TICKETS, "{exposition}");
    assert_eq!(rejected, sent - TICKETS);
    committed.sort_by_key(|(position, _)| *position);
    let numbers: Vec<u64> = committed.iter().map(|(_, n)| *n).collect();
    assert_eq!(numbers, (1..=TICKETS).collect::<Vec<_>>());
    let client = db.client().await.expect("client");
    let stored: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE type = 'TicketTaken'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored as u64, TICKETS);

    // Commands crossed over: committed at the owner, and refused there, then run (and refused)
    // by their own runtime, whose caller got the typed rejection above; every one was answered
    // (none went to the owner of the key in the other database).
    assert!(
        since("committed") > 0.0,
        "no command was committed by the key's owner:\n{exposition}"
    );
    assert!(
        since("run_here") > 0.0,
        "no refused command came back to run where it was sent:\n{exposition}"
    );
    assert_eq!(since("no_answer"), 0.0, "{exposition}");
}

/// A seat at the one table everybody books (never full): a hot key for the shutdown test.
#[derive(serde::Serialize, serde::Deserialize)]
struct TakeSeat;

impl Decision for TakeSeat {
    const NAME: &'static str = "take_seat";
    type Projection = Taken;
    type Rejection = String;

    fn projection(&self) -> Taken {
        Taken("table".to_owned())
    }

    fn decide(&self, taken: &u64) -> Result<Vec<Event>, String> {
        Ok(vec![
            Event::new("TicketTaken", json!({ "number": taken + 1 })).tagged("show", "table"),
        ])
    }
}

/// Both runtimes shut down while their callers' commands are being forwarded: every command
/// answered committed is stored, and every one answered `ShuttingDown` is not (a forward still
/// out when the shutdown began is waited for, and so is its answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shutdown_waits_for_the_commands_it_forwarded() {
    let metrics = recorder();
    let db = TestDatabase::create().await.expect("test database");
    let runtimes = two_runtimes_forwarding::<TakeSeat>(&db).await;
    let mut callers = Vec::new();
    for (r, runtime) in runtimes.iter().enumerate() {
        for c in 0..CALLERS_PER_RUNTIME {
            let runtime = runtime.clone();
            callers.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                for i in 0.. {
                    let key = format!("{r}-{c}-{i}");
                    match runtime.execute_with_key(key.clone(), TakeSeat).await {
                        Ok(committed) => answers.push((key, true, committed.replayed)),
                        Err(ExecuteError::ShuttingDown) => {
                            answers.push((key, false, false));
                            break;
                        }
                        Err(e) => panic!("command {key} failed: {e:?}"),
                    }
                }
                answers
            }));
        }
    }
    // Shut down once commands are being forwarded (bounded wait for that condition).
    let label = "decision=\"take_seat\",outcome=\"committed\"";
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter(&metrics.render(), "dcb_forwarded_commands_total", label) < 200.0 {
        assert!(Instant::now() < deadline, "nothing was forwarded in 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (first, second) = (runtimes[0].clone(), runtimes[1].clone());
    tokio::join!(first.shutdown(), second.shutdown());

    let mut answers = Vec::new();
    for caller in callers {
        answers.extend(caller.await.expect("caller"));
    }
    let client = db.client().await.expect("client");
    let stored: Vec<uuid::Uuid> = client
        .query("SELECT id FROM events WHERE type = 'TicketTaken'", &[])
        .await
        .expect("ids")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let stored: std::collections::HashSet<uuid::Uuid> = stored.into_iter().collect();
    let mut committed = 0;
    for (key, ok, replayed) in &answers {
        let id = keyed_event_id(TakeSeat::NAME, key, 0);
        if *ok {
            committed += 1;
            assert!(!replayed, "{key} answered a replay");
            assert!(
                stored.contains(&id),
                "{key} was answered committed but is not stored"
            );
        } else {
            assert!(
                !stored.contains(&id),
                "{key} was answered ShuttingDown but is stored"
            );
        }
    }
    assert_eq!(
        stored.len(),
        committed,
        "stored events no caller was told of"
    );
}
