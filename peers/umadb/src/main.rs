//! Bench client for UmaDB: the "fresh counter" DCB workload, one decision per operation.
//!
//! Each client loops for the duration: it picks a NEW boundary (tag `counter:<uuid v4>`), reads
//! the events matching `type Incremented AND tag counter:<uuid>` and keeps the read's head, then
//! appends one `Incremented` event with that tag, conditioned on no event matching the same query
//! after that head. Boundaries never repeat, so no append should conflict; conflicts and errors
//! are counted anyway. CPU time of this process and of the server (`--server-pid`) is taken from
//! `/proc/<pid>/stat` (utime + stime) at the start and the end of the timed window.
//!
//! Run it through `run.sh`, which starts and stops the server.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use umadb_client::{AsyncUmaDbClient, UmaDbClient};
use umadb_dcb::{
    DcbAppendCondition, DcbError, DcbEvent, DcbEventStoreAsync, DcbQuery, DcbQueryItem,
};
use uuid::Uuid;

const EVENT_TYPE: &str = "Incremented";

struct Options {
    url: String,
    clients: usize,
    duration: Duration,
    server_pid: Option<u32>,
    clk_tck: u64,
}

const USAGE: &str = "usage: umadb-peer-bench --url http://127.0.0.1:PORT [--clients N] \
[--duration SECS] [--server-pid PID] [--clk-tck TICKS]";

fn parse_options() -> Result<Options, String> {
    let mut url = None;
    let mut clients = 8usize;
    let mut duration_secs = 10f64;
    let mut server_pid = None;
    let mut clk_tck = 100u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--url" => url = Some(value("--url")?),
            "--clients" => {
                clients = value("--clients")?
                    .parse()
                    .map_err(|e| format!("--clients: {e}"))?
            }
            "--duration" => {
                duration_secs = value("--duration")?
                    .parse()
                    .map_err(|e| format!("--duration: {e}"))?
            }
            "--server-pid" => {
                server_pid = Some(
                    value("--server-pid")?
                        .parse()
                        .map_err(|e| format!("--server-pid: {e}"))?,
                )
            }
            "--clk-tck" => {
                clk_tck = value("--clk-tck")?
                    .parse()
                    .map_err(|e| format!("--clk-tck: {e}"))?
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let url = url.ok_or(format!("--url is required\n{USAGE}"))?;
    if clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    if !(duration_secs.is_finite() && duration_secs > 0.0) {
        return Err("--duration must be a positive number of seconds".into());
    }
    if clk_tck == 0 {
        return Err("--clk-tck must be positive".into());
    }
    Ok(Options {
        url,
        clients,
        duration: Duration::from_secs_f64(duration_secs),
        server_pid,
        clk_tck,
    })
}

/// utime + stime of a process, in clock ticks, from `/proc/<pid>/stat` (fields 14 and 15).
fn cpu_ticks(pid: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or(format!("{path}: unexpected format"))?;
    // `rest` starts at field 3 (state), so utime (14) and stime (15) are its 12th and 13th words.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .ok_or(format!("{path}: too few fields"))?
            .parse()
            .map_err(|e| format!("{path}: {e}"))
    };
    Ok(field(11)? + field(12)?)
}

fn boundary(tag: &str) -> DcbQuery {
    DcbQuery::new().item(DcbQueryItem::new().types([EVENT_TYPE]).tags([tag]))
}

enum Outcome {
    Appended,
    Conflict,
}

/// One decision: read the boundary, then append conditioned on the read's head.
async fn decide(client: &AsyncUmaDbClient) -> Result<Outcome, String> {
    let tag = format!("counter:{}", Uuid::new_v4());
    let query = boundary(&tag);
    let (events, head) = client
        .read_with_head(Some(query.clone()), None, false, None)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if !events.is_empty() {
        return Err(format!(
            "read: fresh boundary {tag} has {} events",
            events.len()
        ));
    }
    let event = DcbEvent::default()
        .event_type(EVENT_TYPE)
        .tags([tag.as_str()])
        .data(br#"{"by":1}"#.to_vec())
        .uuid(Uuid::new_v4());
    let condition = DcbAppendCondition::new(query).after(head);
    match client.append(vec![event], Some(condition), None).await {
        Ok(_) => Ok(Outcome::Appended),
        Err(DcbError::IntegrityError(_)) => Ok(Outcome::Conflict),
        Err(e) => Err(format!("append: {e}")),
    }
}

#[derive(Default)]
struct WorkerResult {
    latencies_us: Vec<u64>,
    conflicts: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn worker(client: AsyncUmaDbClient, start: Arc<Barrier>, duration: Duration) -> WorkerResult {
    let mut result = WorkerResult::default();
    start.wait().await;
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        let began = Instant::now();
        match decide(&client).await {
            Ok(Outcome::Appended) => result.latencies_us.push(began.elapsed().as_micros() as u64),
            Ok(Outcome::Conflict) => result.conflicts += 1,
            Err(e) => {
                result.errors += 1;
                result.first_error.get_or_insert(e);
            }
        }
    }
    result
}

fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

async fn run(options: Options) -> Result<(), String> {
    // One connection (tonic channel) per client, as N independent clients would have.
    let mut clients = Vec::with_capacity(options.clients);
    for i in 0..options.clients {
        let client = UmaDbClient::new(options.url.clone())
            .connect_async()
            .await
            .map_err(|e| format!("client {i}: connecting to {}: {e}", options.url))?;
        // Warm-up: one decision per client, outside the timed window (and a check that it works).
        match decide(&client).await? {
            Outcome::Appended => {}
            Outcome::Conflict => return Err("warm-up append conflicted on a fresh boundary".into()),
        }
        clients.push(client);
    }

    let start = Arc::new(Barrier::new(options.clients + 1));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(worker(client, start.clone(), options.duration)))
        .collect();

    let server_pid = options.server_pid.map(|p| p.to_string());
    start.wait().await;
    let began = Instant::now();
    let client_cpu_0 = cpu_ticks("self")?;
    let server_cpu_0 = server_pid.as_deref().map(cpu_ticks).transpose()?;

    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.map_err(|e| format!("worker panicked: {e}"))?);
    }

    let elapsed = began.elapsed().as_secs_f64();
    let client_cpu_1 = cpu_ticks("self")?;
    let server_cpu_1 = server_pid.as_deref().map(cpu_ticks).transpose()?;

    let mut latencies: Vec<u64> = results
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let ops = latencies.len() as u64;
    let conflicts: u64 = results.iter().map(|r| r.conflicts).sum();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let ms_per_tick = 1000.0 / options.clk_tck as f64;
    let per_op = |ticks: u64| {
        if ops == 0 {
            f64::NAN
        } else {
            ticks as f64 * ms_per_tick / ops as f64
        }
    };
    let client_cpu = per_op(client_cpu_1 - client_cpu_0);
    let server_cpu = match (server_cpu_0, server_cpu_1) {
        (Some(a), Some(b)) => format!("{:.3}", per_op(b.saturating_sub(a))),
        _ => "n/a".to_string(),
    };

    for r in &results {
        if let Some(e) = &r.first_error {
            eprintln!("first error of a client: {e}");
        }
    }
    println!(
        "umadb: {} clients, {:.2} s window, {} ops (read + conditional append each)",
        options.clients, elapsed, ops
    );
    println!("throughput {:.1} ops/s", ops as f64 / elapsed);
    println!(
        "latency (ms) p50 {:.3} p99 {:.3}",
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 99.0)
    );
    println!("cpu (ms/op) client {client_cpu:.3} server {server_cpu}");
    println!("conflicts {conflicts} errors {errors}");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("umadb-peer-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("umadb-peer-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
