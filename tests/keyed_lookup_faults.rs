//! A keyed re-execution whose look-up of the earlier execution fails (issue 9.1).
//!
//! `execute_with_key` answers the first execution when one committed. A re-execution that the
//! decision now rejects (the money is gone: the first execution took it) looks the first one up
//! by its event ids; when that look-up meets a transient error it is retried like any other, and
//! when it cannot be made before the deadline the answer is `Store(..)` (outcome unknown), never
//! the rejection, which would tell a client that a withdrawal that went through was refused.

#[path = "support/cut_proxy.rs"]
mod cut_proxy;
#[path = "support/gate.rs"]
mod gate;
#[path = "support/hooked.rs"]
mod hooked;
#[path = "support/proxied_accounts.rs"]
mod proxied_accounts;

use std::time::Duration;

use cut_proxy::CutProxy;
use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{ExecuteError, PostgresStore, Runtime};
use dcb_scenarios::transfer::{Refused, Transfer};
use gate::Gate;
use hooked::Hooked;
use proxied_accounts::{accounts_behind_a_proxy, transfers_stored};

const KEY: &str = "withdrawal-1";

/// Accounts a1 (100) and a2 (0) behind a proxy, and a runtime of one actor on the store whose one
/// connection goes through the proxy.
async fn set_up(deadline: Duration) -> (TestDatabase, CutProxy, Runtime<PostgresStore>) {
    let (db, proxy, store) = accounts_behind_a_proxy().await;
    let runtime = Runtime::builder(store)
        .actors(1)
        .deadline(deadline)
        .start()
        .await
        .expect("runtime");
    (db, proxy, runtime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_look_up_is_retried_and_answers_the_committed_first_execution() {
    let (db, proxy, runtime) = set_up(Duration::from_secs(10)).await;
    let first = runtime
        .execute_with_key(KEY, Transfer::new("a1", "a2", 80))
        .await
        .expect("the first execution commits");
    assert!(!first.replayed);

    // The re-execution reads 20 left and rejects; the look-up that follows is the next statement
    // on the one connection, and its answer is cut.
    let arm = proxy.arming();
    let again = runtime
        .execute_with_key(
            KEY,
            Hooked::new(Transfer::new("a1", "a2", 80), move || arm.arm()),
        )
        .await;
    assert_eq!(
        proxy.cuts().len(),
        1,
        "the look-up was cut: {:?}",
        proxy.cuts()
    );
    let again = match again {
        Ok(committed) => committed,
        Err(ExecuteError::Rejected(why)) => {
            panic!("answered Rejected({why:?}) although the key committed")
        }
        Err(e) => panic!("expected the first execution, got {e:?}"),
    };
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.positions, first.positions);
    assert_eq!(again.events, first.events);
    assert_eq!(transfers_stored(&db).await, 1, "one withdrawal stored");

    // Control: without a cut the same call answers the same.
    let control = runtime
        .execute_with_key(KEY, Transfer::new("a1", "a2", 80))
        .await
        .expect("the first execution");
    assert_eq!(control, again);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_up_failing_until_the_deadline_answers_an_unknown_outcome_not_the_rejection() {
    let (db, proxy, runtime) = set_up(Duration::from_secs(1)).await;
    runtime
        .execute_with_key(KEY, Transfer::new("a1", "a2", 80))
        .await
        .expect("the first execution commits");

    // The re-execution waits before deciding while the database becomes unreachable.
    let gate = Gate::closed();
    let waiting = gate.clone();
    let again = tokio::spawn({
        let runtime = runtime.clone();
        async move {
            runtime
                .execute_with_key(
                    KEY,
                    Hooked::new(Transfer::new("a1", "a2", 80), move || waiting.pass()),
                )
                .await
        }
    });
    gate.arrived(1).await;
    proxy.close().await;
    gate.open();
    match again.await.expect("the caller's task") {
        Err(ExecuteError::Store(e)) => assert!(e.is_transient(), "{e:?}"),
        Err(ExecuteError::Rejected(Refused::InsufficientFunds)) => {
            panic!("answered Rejected although the key committed and the look-up failed")
        }
        other => panic!("expected Store(..), got {other:?}"),
    }
    assert_eq!(transfers_stored(&db).await, 1, "one withdrawal stored");
}
