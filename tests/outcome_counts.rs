//! `dcb_commands_total{outcome}` counts each answer once, as the caller gets it: a keyed
//! re-execution the decision would reject but that answers the first execution's commit counts
//! as `committed`, and a command refused while the runtime shuts down as `shutting_down`, not
//! `overloaded`.

use dcb_runtime::metrics as names;
use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{EventStore, ExecuteError, Runtime};
use dcb_scenarios::transfer::{Refused, Transfer, account_opened};

/// The value of `dcb_commands_total` for the transfer decision and `outcome`, 0 if absent.
fn commands(exposition: &str, outcome: &str) -> f64 {
    let decision = r#"decision="transfer""#;
    let outcome = format!(r#"outcome="{outcome}""#);
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{}{{", names::COMMANDS_TOTAL)))
        .filter(|l| l.contains(decision) && l.contains(&outcome))
        .map(|l| {
            let value = l.rsplit(' ').next().expect("a sample has a value");
            value.parse::<f64>().expect("a number")
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_answer_is_counted_once_with_the_outcome_the_caller_gets() {
    let exporter = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    store
        .append(vec![account_opened("a1", 100), account_opened("a2", 0)])
        .await
        .expect("accounts");
    let runtime = Runtime::builder(store).start().await.expect("runtime");

    let first = runtime
        .execute_with_key("k", Transfer::new("a1", "a2", 80))
        .await
        .expect("committed");
    // 20 left: the decision rejects, the key's first execution answers.
    let again = runtime
        .execute_with_key("k", Transfer::new("a1", "a2", 80))
        .await
        .expect("the first execution");
    assert!(again.replayed && again.positions == first.positions);
    let refused = runtime.execute(Transfer::new("a1", "a2", 80)).await;
    assert!(matches!(
        refused,
        Err(ExecuteError::Rejected(Refused::InsufficientFunds))
    ));
    runtime.shutdown().await;
    let late = runtime.execute(Transfer::new("a1", "a2", 1)).await;
    assert!(matches!(late, Err(ExecuteError::ShuttingDown)), "{late:?}");

    let exposition = exporter.render();
    assert_eq!(commands(&exposition, "committed"), 2.0, "{exposition}");
    assert_eq!(commands(&exposition, "rejected"), 1.0, "{exposition}");
    assert_eq!(commands(&exposition, "shutting_down"), 1.0, "{exposition}");
    assert_eq!(commands(&exposition, "overloaded"), 0.0, "{exposition}");
}
