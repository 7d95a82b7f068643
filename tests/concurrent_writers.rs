//! No lost decision under real concurrency: many tasks, several store instances (so several
//! concurrent writer connections) and several OS processes all subscribe students to courses
//! against the same database, and a plain SQL count afterwards shows no course overbooked.
//!
//! The decision reads one boundary made of two items (the course's events, the student's
//! subscriptions), so a condition that dropped either item would show up as an overbooked course
//! or a student over their limit.

#[path = "support/enrollment_sql.rs"]
mod enrollment_sql;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    AppendCondition, AppendError, Event, EventStore, P, PostgresStore, Query, QueryItem,
    ReadOptions,
};
use enrollment_sql::subscribed_per_course;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

const COURSES: u64 = 20;
const CAPACITY: u64 = 10;
const STUDENTS: u64 = 100;
/// Most courses a student may take; with 100 students this never blocks a course from filling.
const STUDENT_LIMIT: u64 = 4;
/// Decisions (read, decide, maybe append) one task makes at most.
const MAX_DECISIONS: u32 = 3_000;

const PARENT_STORES: usize = 4;
const PARENT_POOL: usize = 4;
const PARENT_TASKS: usize = 64;
const WORKER_PROCESSES: usize = 2;
const WORKER_STORES: usize = 2;
const WORKER_POOL: usize = 4;
const WORKER_TASKS: usize = 16;

/// Set in a worker process's environment: the database to work on.
const ENV_URL: &str = "DCB_CONCURRENT_WRITERS_URL";
/// Set in a worker process's environment: the worker's id (seeds its randomness).
const ENV_WORKER: &str = "DCB_CONCURRENT_WRITERS_WORKER";
const WORKER_TEST: &str = "concurrent_writer_worker_process";

/// Lines a worker prints on stdout for the parent to parse.
const READY: &str = "DCB-WORKER-READY";
const SUCCESS: &str = "DCB-WORKER-SUCCESS";
const TOTALS: &str = "DCB-WORKER-TOTALS";

/// A small xorshift generator: enough randomness for picking courses and students.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        // Half of a random v4 UUID; never zero.
        Self(Uuid::new_v4().as_u64_pair().0 | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn course_item(course: u64) -> QueryItem {
    QueryItem::new(
        ["CourseDefined", "StudentSubscribed"],
        [P("course", course.to_string())],
    )
}

fn student_item(student: u64) -> QueryItem {
    QueryItem::new(["StudentSubscribed"], [P("student", student.to_string())])
}

/// What one task (or one process) did.
#[derive(Debug, Default)]
struct Tally {
    /// Ids of the events whose append the store reported as done.
    successes: Vec<Uuid>,
    conflicts: u64,
    decisions: u64,
}

impl Tally {
    fn absorb(&mut self, other: Tally) {
        self.successes.extend(other.successes);
        self.conflicts += other.conflicts;
        self.decisions += other.decisions;
    }
}

/// One subscriber: picks random (course, student) pairs until it has seen every course full or
/// made `MAX_DECISIONS` decisions. A failed condition means "read and decide again".
async fn subscribe_until_full(store: PostgresStore) -> Tally {
    let mut rng = Rng::seeded();
    let mut tally = Tally::default();
    // Courses this task has seen full; a full course never empties.
    let mut full: HashSet<u64> = HashSet::new();
    let mut retry: Option<(u64, u64)> = None;
    while full.len() < usize::try_from(COURSES).unwrap()
        && tally.decisions < u64::from(MAX_DECISIONS)
    {
        let (course, student) = retry.take().unwrap_or_else(|| {
            let open: Vec<u64> = (0..COURSES).filter(|c| !full.contains(c)).collect();
            let course = open[usize::try_from(rng.below(open.len() as u64)).unwrap()];
            (course, rng.below(STUDENTS))
        });
        tally.decisions += 1;
        let query = Query::from_items([course_item(course), student_item(student)]);
        let read = store
            .read(&query, ReadOptions::default())
            .await
            .expect("read the boundary");
        let mut defined = false;
        let mut subscribed = 0_u64;
        let mut already_in = false;
        let mut student_courses = 0_u64;
        for e in &read.events {
            let payload = e.event.payload();
            let in_course = payload["course_id"].as_u64() == Some(course);
            let by_student = payload["student_id"].as_u64() == Some(student);
            match e.event.event_type() {
                "CourseDefined" if in_course => defined = true,
                "StudentSubscribed" => {
                    subscribed += u64::from(in_course);
                    student_courses += u64::from(by_student);
                    already_in |= in_course && by_student;
                }
                other => panic!("unexpected event {other} in the boundary"),
            }
        }
        assert!(defined, "course {course} is defined before any task starts");
        if subscribed >= CAPACITY {
            full.insert(course);
            continue;
        }
        if already_in || student_courses >= STUDENT_LIMIT {
            continue;
        }
        let event = Event::new(
            "StudentSubscribed",
            json!({"course_id": course, "student_id": student}),
        )
        .tagged("course", course.to_string())
        .tagged("student", student.to_string());
        let id = event.id();
        match store
            .append_if(vec![event], AppendCondition::new(query, read.head))
            .await
        {
            Ok(appended) => {
                assert!(!appended.replayed, "a fresh event id cannot be a replay");
                tally.successes.push(id);
            }
            Err(AppendError::ConditionFailed { .. }) => {
                tally.conflicts += 1;
                retry = Some((course, student));
            }
            Err(e) => panic!("append failed: {e:?}"),
        }
    }
    tally
}

async fn stores(url: &str, count: usize, pool: usize) -> Vec<PostgresStore> {
    let mut stores = Vec::with_capacity(count);
    for _ in 0..count {
        stores.push(
            PostgresStore::builder(url)
                .pool_size(pool)
                .connect()
                .await
                .expect("store"),
        );
    }
    stores
}

async fn run_tasks(stores: &[PostgresStore], tasks: usize) -> Tally {
    let handles: Vec<_> = (0..tasks)
        .map(|i| tokio::spawn(subscribe_until_full(stores[i % stores.len()].clone())))
        .collect();
    let mut total = Tally::default();
    for h in handles {
        total.absorb(h.await.expect("subscriber task"));
    }
    total
}

/// Not a test of its own: the body of the extra OS processes of
/// `no_course_is_overbooked_by_concurrent_tasks_and_processes`, which re-executes this test binary
/// with `--exact concurrent_writer_worker_process --ignored` and the database in
/// `DCB_CONCURRENT_WRITERS_URL`. Without that variable (a plain `cargo test -- --ignored`) it
/// returns at once and does nothing.
///
/// Protocol on stdout/stdin: prints `DCB-WORKER-READY` once its stores are connected, waits for a
/// line on stdin (the parent's "go"), runs the workload, then prints one
/// `DCB-WORKER-SUCCESS <uuid>` line per successful append and a final
/// `DCB-WORKER-TOTALS successes=<n> conflicts=<n> decisions=<n>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a worker process of no_course_is_overbooked_by_concurrent_tasks_and_processes"]
async fn concurrent_writer_worker_process() {
    let Ok(url) = std::env::var(ENV_URL) else {
        return;
    };
    let worker = std::env::var(ENV_WORKER).unwrap_or_default();
    let stores = stores(&url, WORKER_STORES, WORKER_POOL).await;
    println!("{READY} {worker}");
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
        .await
        .expect("stdin reader")
        .expect("the parent's go");
    let tally = run_tasks(&stores, WORKER_TASKS).await;
    for id in &tally.successes {
        println!("{SUCCESS} {id}");
    }
    println!(
        "{TOTALS} successes={} conflicts={} decisions={}",
        tally.successes.len(),
        tally.conflicts,
        tally.decisions
    );
}

/// A running worker process and the reader of its stdout.
struct Worker {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

async fn spawn_worker(url: &str, id: usize) -> Worker {
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", WORKER_TEST, "--ignored", "--nocapture"])
        .env(ENV_URL, url)
        .env(ENV_WORKER, id.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn a worker process");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    Worker { child, lines }
}

impl Worker {
    /// Waits (bounded) until the worker says it is connected.
    async fn ready(&mut self) {
        let wait = async {
            while let Some(line) = self.lines.next_line().await.expect("worker stdout") {
                if line.starts_with(READY) {
                    return;
                }
            }
            panic!("worker exited before it was ready");
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("worker ready within 30 s");
    }

    async fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"go\n")
            .await
            .expect("tell the worker to go");
        stdin.flush().await.expect("flush");
    }

    /// Reads the worker's report to the end and checks it exited successfully.
    async fn finish(mut self) -> Tally {
        let mut tally = Tally::default();
        let mut totals = None;
        let read = async {
            while let Some(line) = self.lines.next_line().await.expect("worker stdout") {
                if let Some(id) = line.strip_prefix(SUCCESS) {
                    tally
                        .successes
                        .push(id.trim().parse().expect("a uuid on a success line"));
                } else if let Some(rest) = line.strip_prefix(TOTALS) {
                    let fields: HashMap<&str, u64> = rest
                        .split_whitespace()
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k, v.parse().expect("a count")))
                        .collect();
                    totals = Some((
                        fields["successes"],
                        fields["conflicts"],
                        fields["decisions"],
                    ));
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("worker finished within 60 s");
        let status = self.child.wait().await.expect("worker exit status");
        assert!(status.success(), "worker process failed: {status}");
        let (successes, conflicts, decisions) = totals.expect("worker printed its totals");
        assert_eq!(
            successes,
            tally.successes.len() as u64,
            "every success line was received"
        );
        tally.conflicts = conflicts;
        tally.decisions = decisions;
        tally
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_course_is_overbooked_by_concurrent_tasks_and_processes() {
    let db = TestDatabase::create().await.expect("test database");
    let stores = stores(db.url(), PARENT_STORES, PARENT_POOL).await;
    for course in 0..COURSES {
        stores[0]
            .append(vec![
                Event::new(
                    "CourseDefined",
                    json!({"course_id": course, "capacity": CAPACITY}),
                )
                .tagged("course", course.to_string()),
            ])
            .await
            .expect("define a course");
    }

    let mut workers = Vec::with_capacity(WORKER_PROCESSES);
    for id in 0..WORKER_PROCESSES {
        workers.push(spawn_worker(db.url(), id).await);
    }
    for w in &mut workers {
        w.ready().await;
    }

    // Everyone starts together: the workers on their "go", the tasks right after.
    let started = Instant::now();
    for w in &mut workers {
        w.go().await;
    }
    let local = run_tasks(&stores, PARENT_TASKS).await;
    let mut per_worker = Vec::with_capacity(WORKER_PROCESSES);
    for w in workers {
        per_worker.push(w.finish().await);
    }
    let elapsed = started.elapsed();

    let mut all = Tally::default();
    let local_successes = local.successes.len();
    let local_conflicts = local.conflicts;
    all.absorb(local);
    let worker_figures: Vec<(usize, u64, u64)> = per_worker
        .iter()
        .map(|t| (t.successes.len(), t.conflicts, t.decisions))
        .collect();
    for t in per_worker {
        all.absorb(t);
    }
    eprintln!(
        "concurrent writers: {} successes ({local_successes} in-process, workers {worker_figures:?} \
         as (successes, conflicts, decisions)), {} conflicts ({local_conflicts} in-process), \
         {} decisions, in {elapsed:?}",
        all.successes.len(),
        all.conflicts,
        all.decisions
    );

    // (a) Plain SQL over the table: no course above capacity, and (the proof that there was
    // contention to survive) every course full.
    let per_course = subscribed_per_course(&db).await;
    let overbooked: Vec<_> = per_course
        .iter()
        .filter(|(_, n)| **n > i64::try_from(CAPACITY).unwrap())
        .collect();
    assert!(overbooked.is_empty(), "overbooked courses: {overbooked:?}");
    for course in 0..COURSES {
        assert_eq!(
            per_course.get(&course.to_string()).copied(),
            Some(i64::try_from(CAPACITY).unwrap()),
            "course {course} is exactly full: {per_course:?}"
        );
    }
    // The other boundary of the decision: no student twice in a course, none above the limit.
    let client = db.client().await.expect("sql client");
    let twice: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM events WHERE type = 'StudentSubscribed' \
             GROUP BY payload->>'course_id', payload->>'student_id' HAVING count(*) > 1) d",
            &[],
        )
        .await
        .expect("duplicate subscriptions")
        .get(0);
    assert_eq!(twice, 0, "a student subscribed twice to one course");
    let over_limit: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM events WHERE type = 'StudentSubscribed' \
             GROUP BY payload->>'student_id' HAVING count(*) > $1) d",
            &[&i64::try_from(STUDENT_LIMIT).unwrap()],
        )
        .await
        .expect("subscriptions per student")
        .get(0);
    assert_eq!(over_limit, 0, "a student is above the limit of courses");

    // (b) Every success any task or process was told about is stored exactly once.
    let distinct: HashSet<Uuid> = all.successes.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        all.successes.len(),
        "an event id was reported twice"
    );
    let once = client
        .prepare("SELECT count(*) FROM events WHERE id = $1")
        .await
        .expect("prepare");
    for id in &all.successes {
        let n: i64 = client.query_one(&once, &[id]).await.expect("count").get(0);
        assert_eq!(n, 1, "reported success {id} is stored {n} times");
    }

    // (c) Nothing stored that nobody was told about.
    let stored: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE type = 'StudentSubscribed'",
            &[],
        )
        .await
        .expect("total")
        .get(0);
    assert_eq!(
        stored,
        i64::try_from(all.successes.len()).unwrap(),
        "stored subscriptions vs reported successes"
    );
    assert_eq!(stored, i64::try_from(COURSES * CAPACITY).unwrap());

    // The race was real: some decisions were overtaken and had to be taken again, and the
    // processes took part.
    assert!(all.conflicts > 0, "no append condition ever failed");
    assert!(
        worker_figures
            .iter()
            .all(|(_, _, decisions)| *decisions > 0),
        "every worker process made decisions: {worker_figures:?}"
    );
}
