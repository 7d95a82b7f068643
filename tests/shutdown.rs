//! Graceful shutdown: commands accepted before `shutdown` finish; later ones are refused.

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{EventStore, ExecuteError, Runtime};
use dcb_scenarios::enrollment::{Subscribe, course_defined};

const WORKER_THREADS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_accepted_commands_and_refuses_new_ones() {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    store
        .append(vec![course_defined("c1", 1_000)])
        .await
        .expect("course");
    let runtime = Runtime::builder(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");

    let mut callers = Vec::new();
    for n in 0..200 {
        let runtime = runtime.clone();
        let command = Subscribe {
            course: "c1".into(),
            student: format!("s{n}"),
        };
        callers.push(tokio::spawn(async move { runtime.execute(command).await }));
    }
    // Shut down while many are in flight (one actor decides and appends them chain by chain).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while runtime.inflight() < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "commands never got in flight"
        );
        tokio::task::yield_now().await;
    }
    let in_flight_at_shutdown = runtime.inflight();
    runtime.shutdown().await;
    assert_eq!(
        runtime.inflight(),
        0,
        "shutdown returns once nothing is in flight"
    );

    let mut committed = 0;
    for caller in callers {
        match caller.await.expect("caller") {
            Ok(_) => committed += 1,
            Err(ExecuteError::ShuttingDown) => {}
            Err(e) => panic!("a command either commits or is refused at the door: {e:?}"),
        }
    }
    // A command is counted in flight just before it looks at the shutdown flag; only the
    // commands running on a worker thread at that instant (at most one per thread) can have been
    // counted and then refused. Every other one counted in flight was accepted, and commits.
    assert!(
        committed + WORKER_THREADS >= in_flight_at_shutdown,
        "{committed} committed, but {in_flight_at_shutdown} were in flight when shutdown began"
    );

    let refused = runtime
        .execute(Subscribe {
            course: "c1".into(),
            student: "late".into(),
        })
        .await;
    assert!(
        matches!(refused, Err(ExecuteError::ShuttingDown)),
        "{refused:?}"
    );

    let stored: i64 = db
        .client()
        .await
        .expect("client")
        .query_one(
            "SELECT count(*) FROM events WHERE type = 'StudentSubscribed'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        stored, committed as i64,
        "every committed command is stored, and only those"
    );
    let read = runtime
        .store()
        .read(&dcb_runtime::Query::all(), Default::default())
        .await
        .expect("the store stays usable");
    assert_eq!(read.events.len(), committed + 1);
}
