//! Two OS processes run the same subscription (`load-tests project`: the ledger read model by a
//! transactional subscription): exactly one is active; the active one is killed with SIGKILL while
//! writers append, the other takes over within the bound, and the read model ends exactly equal
//! to a fold over `events`, every event applied once.
//!
//! The bound: the standby tries the lock every takeover interval (250 ms by default), and the
//! server releases a killed process's lock as soon as it sees its socket closed (at once on one
//! host). The test allows 5 s and prints what it measured.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Event, EventStore};
use dcb_scenarios::ledger::{MISMATCH_SQL, REAPPLIED_SQL};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const TAKEOVER_BOUND: Duration = Duration::from_secs(5);

struct Projector {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Projector {
    fn spawn(url: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_load-tests"))
            .args(["project", "--database-url", url, "--batch-size", "50"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the projector starts");
        let (tx, lines) = mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next state line, within `limit`.
    async fn next(&mut self, limit: Duration) -> Option<String> {
        tokio::time::timeout(limit, self.lines.recv())
            .await
            .ok()
            .flatten()
    }
}

async fn one_value(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

const CHECKPOINT: &str = "SELECT coalesce((SELECT position FROM dcb_subscriptions), 0)";
/// Granted subscription locks (key space 0x44434253) in this database.
const HOLDERS: &str = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND classid = 1145258579 AND database = (SELECT oid FROM pg_database \
     WHERE datname = current_database())";

/// Polls `sql` until it answers at least `target` (bounded).
async fn wait_at_least(client: &tokio_postgres::Client, sql: &str, target: i64) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let value = one_value(client, sql).await;
        if value >= target {
            return;
        }
        assert!(
            Instant::now() < until,
            "{sql} stayed at {value}, below {target}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_takes_over_from_a_killed_active_projector_and_the_model_stays_exact() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let client = db.client().await.expect("client");

    let mut projectors = [Projector::spawn(db.url()), Projector::spawn(db.url())];
    // Each says where it stands as it changes; one becomes active, the other stays standing by.
    let mut last: [Option<String>; 2] = [None, None];
    let active = loop {
        let [a, b] = &mut projectors;
        let (index, line) = tokio::select! {
            line = a.next(Duration::from_secs(60)) => (0, line),
            line = b.next(Duration::from_secs(60)) => (1, line),
        };
        let line = line.expect("a projector says where it stands");
        if line == "active" {
            break index;
        }
        last[index] = Some(line);
    };
    let standby = 1 - active;
    if last[standby].is_none() {
        last[standby] = projectors[standby].next(Duration::from_secs(60)).await;
    }
    assert_eq!(last[standby].as_deref(), Some("standby"));

    // Writers append all along, from 8 tasks.
    let writing = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (store, writing) = (store.clone(), writing.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while writing.load(Ordering::Relaxed) {
                    let events = (0..3)
                        .map(|k| Event::new("Written", json!({ "w": w, "n": n, "k": k })))
                        .collect();
                    store.append(events).await.expect("append");
                    n += 1;
                }
            })
        })
        .collect();

    wait_at_least(&client, CHECKPOINT, 300).await;
    // The standby stayed standing by while the active one projected; the lock is held once.
    assert!(
        projectors[standby].lines.try_recv().is_err(),
        "the standby changed state"
    );
    assert_eq!(one_value(&client, HOLDERS).await, 1);
    let killed_at = Instant::now();
    projectors[active].child.start_kill().expect("SIGKILL");
    projectors[active].child.wait().await.expect("killed");
    let line = projectors[standby]
        .next(TAKEOVER_BOUND)
        .await
        .expect("the standby speaks within the bound");
    assert_eq!(line, "active");
    let takeover = killed_at.elapsed();
    eprintln!("took over {takeover:?} after the SIGKILL");
    let at_kill = one_value(&client, CHECKPOINT).await;
    wait_at_least(&client, CHECKPOINT, at_kill + 300).await;

    writing.store(false, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let head = one_value(&client, "SELECT max(position) FROM events").await;
    wait_at_least(&client, CHECKPOINT, head).await;
    assert_eq!(one_value(&client, REAPPLIED_SQL).await, 0);
    assert_eq!(one_value(&client, MISMATCH_SQL).await, 0);
    assert_eq!(
        one_value(&client, "SELECT count(*) FROM projected_events").await,
        head
    );
    assert_eq!(one_value(&client, HOLDERS).await, 1);

    // Closing its stdin shuts the survivor down; it gives the lock back.
    let survivor = &mut projectors[standby];
    drop(survivor.child.stdin.take());
    let status = survivor.child.wait().await.expect("exits");
    assert!(status.success(), "{status}");
    assert_eq!(one_value(&client, HOLDERS).await, 0);
}
