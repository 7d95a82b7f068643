//! The runtime under contention: many callers on few boundaries, invariants counted from the
//! `events` table afterwards.

#[path = "support/enrollment_sql.rs"]
mod enrollment_sql;

use std::sync::Arc;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{EventStore, ExecuteError, Runtime};
use dcb_scenarios::enrollment::{Refused, Subscribe, course_defined};
use enrollment_sql::subscribed_per_course;

const COURSES: usize = 5;
const CAPACITY: u64 = 150;
const COMMANDS: usize = 1_000;
const CALLERS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_commands_on_five_boundaries_never_overbook() {
    let metrics = dcb_runtime::metrics::prometheus_builder()
        .expect("buckets")
        .install_recorder()
        .expect("the only recorder of this test binary");
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    for c in 0..COURSES {
        store
            .append(vec![course_defined(&format!("c{c}"), CAPACITY)])
            .await
            .expect("define course");
    }
    let runtime = Runtime::builder(store)
        .actors(8)
        .start()
        .await
        .expect("runtime");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let runtime = runtime.clone();
        let next = next.clone();
        callers.push(tokio::spawn(async move {
            let (mut committed, mut full) = (0u64, 0u64);
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= COMMANDS {
                    return (committed, full);
                }
                let command = Subscribe {
                    course: format!("c{}", n % COURSES),
                    student: format!("s{n}"),
                };
                match runtime.execute(command).await {
                    Ok(c) => {
                        assert_eq!(c.positions.len(), 1);
                        committed += 1;
                    }
                    Err(ExecuteError::Rejected(Refused::CourseFull)) => full += 1,
                    Err(e) => panic!("unexpected outcome: {e:?}"),
                }
            }
        }));
    }
    let (mut committed, mut full) = (0, 0);
    for c in callers {
        let (a, b) = c.await.expect("caller");
        committed += a;
        full += b;
    }
    assert_eq!(committed + full, COMMANDS as u64);
    // 1,000 commands for 750 seats: exactly 750 commit.
    assert_eq!(committed, COURSES as u64 * CAPACITY);

    let per_course = subscribed_per_course(&db).await;
    assert_eq!(per_course.len(), COURSES);
    for (course, count) in per_course {
        assert_eq!(count, CAPACITY as i64, "course {course}");
    }
    // Key routing puts every command of a course on one actor: they queue instead of conflicting.
    let exposition = metrics.render();
    let attempts = |result: &str| -> f64 {
        exposition
            .lines()
            .filter(|l| {
                l.starts_with("dcb_append_attempts_total{")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (conflicts, appended) = (attempts("conflict"), attempts("committed"));
    assert_eq!(
        appended, committed as f64,
        "one committed append attempt per commit"
    );
    assert!(
        conflicts / appended < 0.05,
        "{conflicts} failed conditions for {appended} commits"
    );
    let store = runtime.store().clone();
    runtime.shutdown().await;
    let all = store
        .read(&dcb_runtime::Query::all(), Default::default())
        .await
        .expect("read");
    assert_eq!(all.events.len(), COURSES + COURSES * CAPACITY as usize);
}
