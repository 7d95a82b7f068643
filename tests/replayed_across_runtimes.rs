//! Two runtimes execute one key; the one whose append stored the events answers
//! `replayed: false`, the other `replayed: true`, also when the other's own append was cut and
//! re-sent (issue 9.2).
//!
//! Runtime R2 reads and is held before deciding; runtime R1 (its own pool, as another process
//! would have) executes the same key and commits. R2 then decides the same events; its append's
//! answer is cut, so it re-sends it, finds the events stored after its read, and must learn that
//! R1 stored them, not its own first send (the store records an append id with the events).

#[path = "support/cut_proxy.rs"]
mod cut_proxy;
#[path = "support/gate.rs"]
mod gate;
#[path = "support/hooked.rs"]
mod hooked;
#[path = "support/proxied_accounts.rs"]
mod proxied_accounts;

use cut_proxy::CutProxy;
use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{EventStore, Runtime};
use dcb_scenarios::transfer::{Transfer, account_opened};
use gate::Gate;
use hooked::Hooked;
use proxied_accounts::{accounts_behind_a_proxy, transfers_stored};

const KEY: &str = "transfer-7";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_re_sent_append_finding_another_runtimes_commit_answers_replayed() {
    let db = TestDatabase::create().await.expect("test database");
    let proxy = CutProxy::start(db.url()).await;
    let r1 = Runtime::builder(db.store().await.expect("store"))
        .start()
        .await
        .expect("runtime 1");
    let store2 = proxy.single_connection_store(db.url()).await;
    // Prepares dcb_append on R2's one connection, so its cut append is really sent.
    store2
        .append(vec![account_opened("a1", 100), account_opened("a2", 0)])
        .await
        .expect("accounts");
    let r2 = Runtime::builder(store2)
        .actors(1)
        .start()
        .await
        .expect("runtime 2");

    let gate = Gate::closed();
    let (waiting, arm) = (gate.clone(), proxy.arming());
    let second = tokio::spawn({
        let r2 = r2.clone();
        async move {
            let held = Hooked::new(Transfer::new("a1", "a2", 30), move || {
                waiting.pass();
                arm.arm(); // the next answer R2's connection gets, its append's, is cut
            });
            r2.execute_with_key(KEY, held).await
        }
    });
    gate.arrived(1).await;
    let first = r1
        .execute_with_key(KEY, Transfer::new("a1", "a2", 30))
        .await
        .expect("runtime 1 commits");
    assert!(!first.replayed, "runtime 1 stored the events: {first:?}");
    gate.open();
    let second = second
        .await
        .expect("the caller's task")
        .expect("runtime 2 answers the commit");

    let cuts = proxy.cuts();
    assert_eq!(cuts.len(), 1, "runtime 2's append was cut: {cuts:?}");
    assert_eq!(second.positions, first.positions, "one copy, stored once");
    assert_eq!(second.events, first.events);
    assert!(
        second.replayed,
        "runtime 1 stored the events, yet runtime 2 answers replayed: false: {second:?}"
    );
    assert_eq!(transfers_stored(&db).await, 1);
    r1.shutdown().await;
    r2.shutdown().await;
}

/// The control: a re-send that finds its own first send's events answers `replayed: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_re_sent_append_finding_its_own_first_send_answers_not_replayed() {
    let (_db, proxy, store) = accounts_behind_a_proxy().await;
    let runtime = Runtime::builder(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");
    let arm = proxy.arming();
    let committed = runtime
        .execute_with_key(
            KEY,
            Hooked::new(Transfer::new("a1", "a2", 30), move || arm.arm()),
        )
        .await
        .expect("committed");
    let cuts = proxy.cuts();
    assert_eq!(cuts.len(), 1, "the append was cut: {cuts:?}");
    assert!(
        cuts[0].swallowed.ends_with('C'),
        "it committed before the cut: {cuts:?}"
    );
    assert!(!committed.replayed, "{committed:?}");
    assert_eq!(committed.attempts, 1);
    let again = runtime
        .execute_with_key(KEY, Transfer::new("a1", "a2", 30))
        .await
        .expect("the first execution");
    assert!(again.replayed);
    assert_eq!(again.positions, committed.positions);
    runtime.shutdown().await;
}
