//! A connection lost while the server commits a command's append, on the real database, through
//! a proxy that drops the connection after the server committed and before the client hears of
//! it (`tests/support/cut_proxy.rs`): the runtime answers `Committed` with the stored positions,
//! with and without a key, having re-sent the same events instead of deciding again; it goes on
//! from the committed state.

#[path = "support/cut_proxy.rs"]
mod cut_proxy;
#[path = "support/event_rows.rs"]
mod event_rows;
#[path = "support/pings.rs"]
mod pings;

use std::sync::atomic::Ordering;

use cut_proxy::proxied;
use dcb_runtime::{EventStore, Runtime};
use event_rows::{assert_stored_once, rows};
use pings::{Ping, pinged};
use serde_json::json;

/// The command's append is cut after its commit; the runtime re-sends the same events (never
/// deciding again) and answers the positions where they are stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_answers_committed_when_its_append_is_cut_after_commit() {
    let (db, proxy, store) = proxied().await;
    // Warm-up: prepares dcb_append on the one connection.
    store
        .append(vec![pinged("other", 1)])
        .await
        .expect("warm-up");
    let runtime = Runtime::builder(store).start().await.expect("runtime");

    for (round, key) in [None, Some("cut-key")].into_iter().enumerate() {
        let counter = format!("c{round}");
        let ping = Ping::cutting(&counter, proxy.arming());
        let decides = ping.decides.clone();
        let committed = match key {
            None => runtime.execute(ping).await,
            Some(key) => runtime.execute_with_key(key, ping).await,
        }
        .unwrap_or_else(|e| panic!("round {round}: expected Committed, got {e:?}"));
        let cuts = proxy.cuts();
        assert_eq!(cuts.len(), round + 1, "the append was cut: {cuts:?}");
        assert!(cuts[round].swallowed.ends_with('C'), "{cuts:?}");
        assert_eq!(decides.load(Ordering::SeqCst), 1, "decided once");
        assert!(
            !committed.replayed,
            "this execution committed: {committed:?}"
        );
        assert_eq!(committed.events.len(), 1);
        assert_eq!(committed.positions.len(), 1);
        assert_eq!(committed.events[0].payload(), &json!({"n": 1}));

        let stored = rows(&db).await;
        assert_stored_once(&stored, &committed.events[0], committed.positions[0]);
        let on_counter = stored
            .iter()
            .filter(|r| r.tags.contains(&format!("counter:{counter}")))
            .count();
        assert_eq!(on_counter, 1, "one ping on {counter}: {stored:#?}");
        assert_eq!(
            runtime
                .store()
                .read_ids(&[committed.events[0].id()])
                .await
                .expect("read_ids")
                .iter()
                .map(|e| e.position)
                .collect::<Vec<_>>(),
            committed.positions
        );

        // The runtime goes on from the committed state.
        let next = runtime
            .execute(Ping::new(&counter))
            .await
            .expect("next ping");
        assert_eq!(next.events[0].payload(), &json!({"n": 2}));
        assert!(next.positions[0] > committed.positions[0]);
    }
    assert_eq!(proxy.cuts().len(), 2);
    runtime.shutdown().await;
}
