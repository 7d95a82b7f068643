//! The load-test binary end to end, against the real database: every scenario runs a few
//! seconds with 32 callers and the report, counted from the `events` table, shows no violated
//! invariant and no error; the options do what they say (`--keep-database` is checked by
//! counting the kept database's events with SQL here).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn load_tests() -> Command {
    Command::new(env!("CARGO_BIN_EXE_load-tests"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcb-harness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// Runs the binary; on failure, shows everything it printed.
fn run(args: &[&str]) -> Output {
    let output = load_tests()
        .args(args)
        .output()
        .expect("the load-tests binary runs");
    assert!(
        output.status.success(),
        "load-tests {} failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the JSON report was written");
    serde_json::from_str(&text).expect("the report is JSON")
}

/// Runs `scenario` for 3 s with 32 callers plus `extra`, and checks the report.
fn scenario(scenario: &str, extra: &[&str]) -> Value {
    let json = scratch(&format!("{scenario}-{}.json", extra.join("_")));
    let json_arg = json.to_str().expect("utf-8 temp path");
    let duration = if extra.contains(&"--duration") {
        None
    } else {
        Some("3s")
    };
    let mut args = vec![scenario];
    args.extend(duration.map(|d| ["--duration", d]).into_iter().flatten());
    args.extend(["--concurrency", "32", "--json", json_arg]);
    if !extra.contains(&"--keys") {
        args.extend(["--keys", "50"]);
    }
    args.extend_from_slice(extra);
    run(&args);
    let r = report(&json);
    for field in [
        "scenario",
        "processes",
        "concurrency",
        "duration_s",
        "commands",
        "committed",
        "rejected",
        "conflicts",
        "retries",
        "errors",
        "throughput_per_s",
        "latency_ms",
        "invariant_violations",
        "events_in_store",
    ] {
        assert!(r.get(field).is_some(), "the report lacks {field}: {r}");
    }
    assert_eq!(r["scenario"], scenario);
    assert_eq!(r["invariant_violations"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(
        r["committed"].as_u64().unwrap() > 0,
        "nothing committed: {r}"
    );
    let commands = r["commands"].as_u64().unwrap();
    let parts = ["committed", "rejected", "errors"].map(|f| r[f].as_u64().unwrap());
    assert_eq!(commands, parts.iter().sum::<u64>(), "{r}");
    for p in ["p50", "p95", "p99", "max"] {
        assert!(r["latency_ms"][p].as_f64().unwrap() > 0.0, "{r}");
    }
    r
}

#[test]
fn disjoint_stores_one_event_per_command() {
    let r = scenario("disjoint", &[]);
    assert_eq!(r["events_in_store"], r["committed"], "{r}");
    assert_eq!(r["rejected"], 0, "{r}");
}

#[test]
fn invoice_numbers_are_gapless() {
    let r = scenario("invoice", &[]);
    assert_eq!(r["events_in_store"], r["committed"], "{r}");
}

#[test]
fn enrollment_respects_capacity() {
    let r = scenario("enrollment", &[]);
    // 50 courses of 10 seats: at most 500 subscriptions, plus the 50 course definitions.
    assert!(r["committed"].as_u64().unwrap() <= 500, "{r}");
}

#[test]
fn lending_never_lends_a_book_twice() {
    scenario("lending", &["--skew", "1.0"]);
}

/// The share of append attempts that met a conflict, which must stay below 5 %.
fn assert_few_conflicts(r: &Value) {
    let rate = r["conflict_rate"].as_f64().unwrap();
    assert!(rate < 0.05, "conflict rate {rate}: {r}");
}

#[test]
fn transfer_on_20_accounts_in_one_process_meets_few_conflicts() {
    let r = scenario("transfer", &["--keys", "20"]);
    assert_few_conflicts(&r);
    assert_eq!(r["conflicts_other_process"], 0, "{r}");
}

#[test]
fn transfer_on_20_accounts_never_overdraws_and_meets_few_conflicts_in_two_processes() {
    // 5 s: the processes find the keys they contend for by their first conflicts (in the first
    // second, measured), which a shorter run would weigh more.
    let r = scenario(
        "transfer",
        &["--processes", "2", "--keys", "20", "--duration", "5s"],
    );
    assert_eq!(r["processes"], 2, "{r}");
    assert_eq!(r["concurrency"], 32, "{r}");
    // Every committed transfer is one event, after the 20 accounts were opened.
    assert_eq!(
        r["events_in_store"].as_u64().unwrap(),
        r["committed"].as_u64().unwrap() + 20,
        "{r}"
    );
    assert_few_conflicts(&r);
    for p in r["per_process"].as_array().unwrap() {
        assert!(p["committed"].as_u64().unwrap() > 0, "{r}");
    }
}

#[test]
fn one_hot_boundary_from_three_processes_is_decided_by_its_owner_and_fails_no_command() {
    let r = scenario("invoice", &["--processes", "3"]);
    assert_eq!(r["processes"], 3, "{r}");
    // `scenario` checked: no error, gapless invoice numbers (SQL), one event per command.
    assert_eq!(r["events_in_store"], r["committed"], "{r}");
    assert_few_conflicts(&r);
    // The other processes sent their commands to the process owning the key, which ran them:
    // every answer a sender got was served by an owner, and (the processes end within a few
    // hundred ms of each other, within an owner's drain at shutdown) hardly any went unanswered.
    let forwarded = &r["forwarded"];
    let field = |name: &str| forwarded[name].as_u64().unwrap();
    assert!(field("committed") > 0, "no command was forwarded: {r}");
    let answered = field("committed") + field("run_here");
    assert!(
        (answered..=answered + field("no_answer")).contains(&field("served")),
        "{r}"
    );
    assert!(field("no_answer") * 100 <= field("committed"), "{r}");
    let per_process = r["per_process"].as_array().unwrap();
    assert_eq!(per_process.len(), 3, "{r}");
    for p in per_process {
        assert!(p["throughput_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn uncoordinated_processes_take_no_turns_forward_nothing_and_write_their_own_appends() {
    let r = scenario("disjoint", &["--processes", "2", "--uncoordinated"]);
    assert_eq!(r["events_in_store"], r["committed"], "{r}");
    assert_eq!(r["forwarded"]["committed"], 0, "{r}");
    for counter in ["taken", "handed_over", "lost", "seen"] {
        assert_eq!(r["leases"][counter], 0, "{counter}: {r}");
    }
    for counter in ["written", "failed", "leaderships"] {
        assert_eq!(r["shared_appender"][counter], 0, "{counter}: {r}");
    }
    for p in r["per_process"].as_array().unwrap() {
        assert!(p["committed"].as_u64().unwrap() > 0, "{r}");
    }
}

#[test]
fn one_hot_boundary_from_three_processes_takes_turns_and_fails_no_command() {
    let r = scenario("invoice", &["--processes", "3", "--turns-only"]);
    assert_eq!(r["forwarded"]["committed"], 0, "{r}");
    assert_eq!(r["processes"], 3, "{r}");
    // `scenario` checked: no error, gapless invoice numbers (SQL), one event per command.
    assert_eq!(r["events_in_store"], r["committed"], "{r}");
    assert_few_conflicts(&r);
    assert!(
        r["leases"]["handed_over"].as_u64().unwrap() > 0,
        "the processes never took turns: {r}"
    );
    // Every turn was given back when its chain ended: a turn kept would make the other
    // processes wait out the turn wait (2 s), and count it lost.
    assert_eq!(r["leases"]["lost"], 0, "{r}");
    let per_process = r["per_process"].as_array().unwrap();
    assert_eq!(per_process.len(), 3, "{r}");
    for p in per_process {
        assert!(p["throughput_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn killing_the_process_owning_the_hot_key_loses_nothing_and_the_others_go_on() {
    let r = scenario(
        "invoice",
        &[
            "--processes",
            "3",
            "--chaos",
            "kill-owner",
            "--duration",
            "4s",
        ],
    );
    assert_eq!(r["chaos"], "kill-owner", "{r}");
    let killed: Vec<&Value> = r["per_process"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["killed"] == true)
        .collect();
    assert_eq!(killed.len(), 1, "{r}");
    // The survivors: every acknowledged command stored, nothing stored twice (the killed
    // process's events are recognised by its callers' keys), no command failed, gapless numbers.
    assert!(r["acknowledged"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["acknowledged"], r["committed"], "{r}");
    assert_eq!(r["acknowledged_missing"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert!(r["killed_process_stored"].as_i64().unwrap() > 0, "{r}");
    assert_eq!(
        r["events_in_store"].as_i64().unwrap(),
        r["committed"].as_i64().unwrap() + r["killed_process_stored"].as_i64().unwrap(),
        "{r}"
    );
    // The survivors forwarded to the killed owner: the commands it had not answered were run by
    // their own process after the forward wait (0.5 s), under the same idempotency key (stored
    // once, as counted above), and its ownership ended with its session, so one of them took
    // the key over. None came near its 10 s deadline.
    assert!(r["forwarded"]["committed"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["forwarded"]["no_answer"].as_u64().unwrap() > 0,
        "no survivor had a command out to the owner when it was killed: {r}"
    );
    survivors_went_on(&r);
}

/// After a process was killed (a third into a 4 s run): no survivor waited 2.5 s or more, and
/// they went on committing, every second.
fn survivors_went_on(r: &Value) {
    let max_ms = r["latency_ms"]["max"].as_f64().unwrap();
    assert!(max_ms < 2_500.0, "a survivor waited {max_ms} ms: {r}");
    // Whole seconds only: the last sample may close an interval of a few milliseconds.
    let after_kill: Vec<f64> = r["timeline"]
        .as_array()
        .unwrap()
        .windows(2)
        .filter(|w| {
            let (before, t) = (w[0]["t_s"].as_f64().unwrap(), w[1]["t_s"].as_f64().unwrap());
            t > 2.0 && t - before > 0.5
        })
        .map(|w| w[1]["committed_per_s"].as_f64().unwrap())
        .collect();
    assert!(!after_kill.is_empty(), "{r}");
    assert!(after_kill.iter().all(|&c| c > 0.0), "{after_kill:?}: {r}");
}

#[test]
fn killing_the_elected_appender_loses_nothing_and_the_others_go_on() {
    let r = scenario(
        "disjoint",
        &[
            "--processes",
            "3",
            "--chaos",
            "kill-appender",
            "--duration",
            "4s",
        ],
    );
    assert_eq!(r["chaos"], "kill-appender", "{r}");
    let killed = r["per_process"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["killed"] == true)
        .count();
    assert_eq!(killed, 1, "{r}");
    // Before the kill the survivors had the appender write their appends.
    assert!(r["shared_appender"]["written"].as_u64().unwrap() > 0, "{r}");
    // Its lock ended with its session: a survivor was elected (the killed one's figures are
    // lost with it, so these are the survivors' own).
    assert!(
        r["shared_appender"]["leaderships"].as_u64().unwrap() >= 1,
        "{r}"
    );
    // Every acknowledged command stored, once: what the killed appender had not answered was
    // written by its own process under the same append id.
    assert!(r["acknowledged"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["acknowledged"], r["committed"], "{r}");
    assert_eq!(r["acknowledged_missing"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(
        r["events_in_store"].as_i64().unwrap(),
        r["committed"].as_i64().unwrap() + r["killed_process_stored"].as_i64().unwrap(),
        "{r}"
    );
    survivors_went_on(&r);
}

#[test]
fn kill_owner_needs_several_processes() {
    let output = load_tests()
        .args(["invoice", "--duration", "1s", "--chaos", "kill-owner"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--processes 2 or more"), "{stderr}");
}

/// A CPU figure of the report that must be there and above zero.
fn positive(r: &Value, field: &str) -> f64 {
    let x = r[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no {field}: {r}"));
    assert!(x > 0.0, "{field} is {x}: {r}");
    x
}

#[test]
fn rate_sends_on_schedule_and_times_from_when_due_with_cpu_per_decision() {
    let r = scenario("disjoint", &["--rate", "200", "--duration", "2s"]);
    assert_eq!(r["rate_per_s"], 200.0, "{r}");
    // Command k is due at k / 200 s for k / 200 < 2: exactly 400, and never more sent.
    assert_eq!(r["due"], 400, "{r}");
    let (committed, commands) = (
        r["committed"].as_u64().unwrap(),
        r["commands"].as_u64().unwrap(),
    );
    assert_eq!(commands + r["unsent"].as_u64().unwrap(), 400, "{r}");
    // 200/s is far below what 32 callers decide on disjoint boundaries (thousands a second):
    // at least 80 % of what was due commits even on a loaded machine.
    assert!(
        (320..=400).contains(&committed),
        "{committed} committed: {r}"
    );
    let late = r["late"].as_u64().unwrap();
    assert!(late <= commands, "{r}");
    let s = &r["scheduled_latency_ms"];
    let (p50, p99) = (s["p50"].as_f64().unwrap(), s["p99"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99, "{r}");
    assert!(p99 <= s["max"].as_f64().unwrap(), "{r}");
    // Timed from when due, not from when sent: never below the service latency's percentile.
    assert!(p50 >= r["latency_ms"]["p50"].as_f64().unwrap(), "{r}");
    positive(&r, "cpu_client_ms_per_decision");
    positive(&r, "cpu_server_ms_per_decision");
}

#[test]
fn rate_beyond_one_caller_counts_late_and_unsent_commands_and_times_them_from_when_due() {
    let json = scratch("rate-overload.json");
    run(&[
        "disjoint",
        "--rate",
        "5000",
        "--duration",
        "1s",
        "--concurrency",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = report(&json);
    assert_eq!(r["due"], 5000, "{r}");
    let (commands, late, unsent) = (
        r["commands"].as_u64().unwrap(),
        r["late"].as_u64().unwrap(),
        r["unsent"].as_u64().unwrap(),
    );
    // One caller, one command at a time, cannot keep up with 5000/s: the schedule does not
    // slow down to its pace, so commands go out late and some never go out.
    assert_eq!(commands + unsent, 5000, "{r}");
    assert!(late > 0 && unsent > 0, "{r}");
    // A command sent late waited for the caller: timed from when it was due, the median one
    // took longer than nearly any command took from when it was sent.
    let scheduled_p50 = r["scheduled_latency_ms"]["p50"].as_f64().unwrap();
    assert!(
        scheduled_p50 > r["latency_ms"]["p99"].as_f64().unwrap(),
        "{r}"
    );
}

#[test]
fn rate_over_two_processes_adds_up_and_sums_their_cpu() {
    let r = scenario(
        "disjoint",
        &["--rate", "150", "--duration", "2s", "--processes", "2"],
    );
    assert_eq!(r["processes"], 2, "{r}");
    // Each process has half the callers and so half the rate: 150 in 2 s in all.
    assert_eq!(r["due"], 300, "{r}");
    positive(&r, "cpu_client_ms_per_decision");
    positive(&r, "cpu_server_ms_per_decision");
}

#[test]
fn baseline_reports_cpu_per_plain_insert() {
    let json = scratch("baseline-cpu.json");
    run(&[
        "disjoint",
        "--duration",
        "1s",
        "--concurrency",
        "4",
        "--baseline",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = report(&json);
    assert!(r["baseline_tps"].as_f64().unwrap() > 0.0, "{r}");
    positive(&r, "baseline_cpu_client_ms_per_insert");
    positive(&r, "baseline_cpu_server_ms_per_insert");
    positive(&r, "cpu_client_ms_per_decision");
    positive(&r, "cpu_server_ms_per_decision");
    // Without --rate there is no schedule to report.
    assert!(r.get("scheduled_latency_ms").is_none(), "{r}");
}

#[test]
fn bad_rates_are_refused_with_a_clear_message() {
    for (args, says) in [
        (
            &["disjoint", "--rate", "0"][..],
            "must be above 0 commands per second",
        ),
        (
            &["disjoint", "--rate", "-5"],
            "must be above 0 commands per second",
        ),
        (
            &["disjoint", "--rate", "fast"],
            "invalid value 'fast' for '--rate",
        ),
        (
            &["disjoint", "--rate", "10", "--commands", "5"],
            "cannot be used with '--commands",
        ),
        (
            &["sweep", "disjoint", "--rate", "10"],
            "--rate (a fixed arrival rate) is refused",
        ),
        (
            &["store-disjoint", "--rate", "10"],
            "--rate is for the runtime scenarios",
        ),
    ] {
        let output = load_tests().args(args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted: {stderr}");
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{args:?} does not say {says:?}: {stderr}"
        );
    }
}

#[test]
fn commands_sends_exactly_that_many_over_processes_and_the_chart_is_drawn() {
    let json = scratch("commands.json");
    let chart = scratch("commands.svg");
    run(&[
        "enrollment",
        "--commands",
        "301",
        "--concurrency",
        "7",
        "--processes",
        "2",
        "--seed",
        "42",
        "--json",
        json.to_str().unwrap(),
        "--chart",
        chart.to_str().unwrap(),
    ]);
    let r = report(&json);
    assert_eq!(r["commands"], 301, "{r}");
    assert_eq!(r["seed"], 42, "{r}");
    assert_eq!(r["invariant_violations"], 0, "{r}");
    // Even a run shorter than a second has its (partial) sample, and so a chart.
    assert!(!r["timeline"].as_array().unwrap().is_empty(), "{r}");
    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    assert!(
        svg.contains("<svg") && svg.contains("committed / s"),
        "{svg:.300}"
    );
}

#[test]
fn sweep_charts_throughput_against_concurrency_and_runs_open_loop_at_a_fraction_of_peak() {
    let json = scratch("sweep.json");
    let chart = scratch("sweep.svg");
    run(&[
        "sweep",
        "disjoint",
        "--levels",
        "1,4",
        "--duration",
        "1s",
        "--json",
        json.to_str().unwrap(),
        "--chart",
        chart.to_str().unwrap(),
        "--open-loop-at",
        "0.5",
    ]);
    let reports = report(&json);
    let reports = reports.as_array().expect("one report per level");
    let levels: Vec<u64> = reports
        .iter()
        .map(|r| r["concurrency"].as_u64().unwrap())
        .collect();
    let peak = reports[..2]
        .iter()
        .max_by(|a, b| {
            let rate = |r: &serde_json::Value| r["throughput_per_s"].as_f64().unwrap();
            rate(a).total_cmp(&rate(b))
        })
        .unwrap();
    // The open-loop run comes last, at half the peak, with four times the peak's concurrency.
    assert_eq!(levels, [1, 4, 4 * peak["concurrency"].as_u64().unwrap()]);
    let open = &reports[2];
    let asked = open["rate_per_s"]
        .as_f64()
        .expect("the open-loop run has a rate");
    let half = peak["throughput_per_s"].as_f64().unwrap() / 2.0;
    assert!(
        (asked - half).abs() < 1e-6,
        "asked {asked}/s, half the peak is {half}/s"
    );
    assert!(reports[..2].iter().all(|r| r.get("rate_per_s").is_none()));
    let p99 = open["scheduled_latency_ms"]["p99"].as_f64().unwrap();
    assert!(
        p99 > 0.0 && open["committed"].as_u64().unwrap() > 0,
        "{open}"
    );
    let svg = std::fs::read_to_string(&chart).expect("the sweep chart was written");
    assert!(
        svg.contains("<svg") && svg.contains("concurrent callers"),
        "{svg:.300}"
    );
}

#[test]
fn store_size_times_both_sizes_in_each_round() {
    let json = scratch("store-size.json");
    run(&[
        "store-size",
        "--small",
        "100",
        "--large",
        "2000",
        "--commands",
        "20",
        "--rounds",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = report(&json);
    let rounds = r["rounds"].as_array().expect("one entry per round");
    assert_eq!(rounds.len(), 2);
    let mut ratios = Vec::new();
    for round in rounds {
        assert_eq!(round["small"]["events_stored"], 100);
        assert_eq!(round["large"]["events_stored"], 2000);
        let mean = |size: &str| round[size]["append_if_ms"]["mean"].as_f64().unwrap();
        assert!(mean("small") > 0.0 && mean("large") > 0.0, "{round}");
        let ratio = round["append_if_ratio"].as_f64().unwrap();
        assert!(
            (ratio - mean("large") / mean("small")).abs() < 1e-9,
            "{round}"
        );
        ratios.push(ratio);
    }
    // The median of two rounds is their mean.
    let median = r["append_if_ratio"].as_f64().unwrap();
    assert!((median - (ratios[0] + ratios[1]) / 2.0).abs() < 1e-9, "{r}");
}

#[test]
fn bad_options_are_refused_with_a_message() {
    for args in [
        &["lending", "--skew", "-1"][..],
        &["lending", "--keys", "0"],
        &["lending", "--concurrency", "1", "--processes", "2"],
        &["lending", "--duration", "soon"],
        &["lending", "--chart", "/tmp/x.gif", "--commands", "1"],
        &["sweep", "disjoint", "--open-loop-at", "1.5"],
        &["store-size", "--rounds", "0"],
        &["store-size", "--small", "1000", "--large", "100"],
        &[
            "disjoint",
            "--processes",
            "2",
            "--uncoordinated",
            "--chaos",
            "kill-owner",
        ],
    ] {
        let output = load_tests().args(args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains("error"),
            "{args:?}: no error message: {stderr}"
        );
    }
}

#[test]
fn without_json_stdout_holds_only_the_summary() {
    let output = run(&["disjoint", "--commands", "20", "--concurrency", "4"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("scenario             disjoint\n"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('{'),
        "JSON on stdout without --json: {stdout}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("invariant violations 0"), "{stdout}");
}

/// The server the binary runs on without `--database-url`, as `dcb_runtime::local` finds it
/// (these tests need one that answers: a throwaway server cannot keep a database).
fn default_server() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| dcb_runtime::local::DEFAULT_URL.to_owned())
}

/// The name and URL in the `database kept: <name> at <url> (...)` line on stderr.
fn kept_database(output: &Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("database kept: "))
        .unwrap_or_else(|| panic!("no kept database printed: {stderr}"));
    let (name, rest) = line.split_once(" at ").expect("<name> at <url>");
    let (url, _) = rest.split_once(" (").expect("<url> (how to remove it)");
    (name.to_owned(), url.to_owned())
}

/// Counts the events stored in the kept database `name` on `server`, then drops it.
fn count_events_and_drop(server: &str, name: &str) -> i64 {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let url = dcb_runtime::testing::with_database(server, name);
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("the kept database is there");
        tokio::spawn(connection);
        let events: i64 = client
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .expect("the events are counted")
            .get(0);
        let (admin, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
            .await
            .expect("the server answers");
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await
            .expect("the kept database is dropped");
        events
    })
}

#[test]
fn keep_database_on_a_named_server_keeps_what_the_run_stored_and_json_dash_is_all_of_stdout() {
    let server = default_server();
    let output = run(&[
        "transfer",
        "--duration",
        "2s",
        "--concurrency",
        "8",
        "--keys",
        "20",
        "--database-url",
        &server,
        "--keep-database",
        "--json",
        "-",
    ]);
    let (name, url) = kept_database(&output);
    let events = count_events_and_drop(&server, &name);
    let r: Value = serde_json::from_slice(&output.stdout).expect("stdout is one JSON document");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("scenario             transfer\n"),
        "the summary is not on stderr: {stderr}"
    );
    assert_eq!(r["kept_database"]["name"], name.as_str(), "{r}");
    assert_eq!(r["kept_database"]["url"], url.as_str(), "{r}");
    assert!(url.contains(&name), "{url}");
    // The 20 accounts opened, then one event per committed transfer.
    assert_eq!(r["setup_events"], 20, "{r}");
    let expected = r["committed"].as_i64().unwrap() + r["setup_events"].as_i64().unwrap();
    assert_eq!(events, expected, "{r}");
}

#[test]
fn keep_database_on_the_default_server() {
    let json = scratch("kept-default.json");
    let output = run(&[
        "disjoint",
        "--commands",
        "40",
        "--concurrency",
        "4",
        "--keep-database",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (name, _) = kept_database(&output);
    let events = count_events_and_drop(&default_server(), &name);
    let r = report(&json);
    assert_eq!(r["kept_database"]["name"], name.as_str(), "{r}");
    assert_eq!(r["setup_events"], 0, "{r}");
    assert_eq!(r["committed"], 40, "{r}");
    assert_eq!(events, 40, "{r}");
}

#[test]
fn keep_database_is_refused_on_the_throwaway_server_of_chaos_restart() {
    let output = load_tests()
        .args(["invoice", "--chaos", "restart", "--keep-database"])
        .args(["--commands", "1"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("error: --keep-database cannot keep"),
        "{stderr}"
    );
}

/// Runs `scenario` under `--chaos kind` and checks the database's account of it: everything
/// acknowledged is stored, nothing is stored twice, the invariant holds, no command failed.
fn chaos(scenario_name: &str, kind: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--chaos", kind, "--duration", "4s"];
    args.extend_from_slice(extra);
    let r = scenario(scenario_name, &args);
    assert_eq!(r["chaos"], kind, "{r}");
    assert!(r["acknowledged"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["acknowledged"], r["committed"], "{r}");
    assert_eq!(r["acknowledged_missing"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    r
}

#[test]
fn chaos_kill_connections_loses_nothing() {
    // Four actors keep several connections busy: with one, the four kills of a 4 s run can all
    // land between its queries (seen once), and nothing would test the faults.
    let r = chaos("transfer", "kill-connections", &["--actors", "4"]);
    assert!(
        r["chaos_injected"].as_u64().unwrap() > 0,
        "nothing was killed: {r}"
    );
    assert!(
        r["store_errors"].as_u64().unwrap() > 0,
        "no command met a fault: {r}"
    );
}

#[test]
fn chaos_restart_loses_nothing() {
    let r = chaos("invoice", "restart", &[]);
    assert!(r["chaos_injected"].as_u64().unwrap() > 0, "no restart: {r}");
    assert!(
        r["store_errors"].as_u64().unwrap() > 0,
        "no command met a fault: {r}"
    );
}

#[test]
fn chaos_pool_starvation_loses_nothing() {
    chaos("lending", "pool-starvation", &[]);
}

#[test]
fn chaos_timeouts_lose_nothing() {
    chaos("enrollment", "timeouts", &[]);
}

/// `--projection` keeps the ledger read model beside the scenario (under chaos with a second
/// projector process, SIGKILLed when active), and reports its lag and its equality with the events.
#[test]
fn projection_follows_the_run_exactly_even_with_its_connections_killed() {
    for extra in [
        &["--projection"][..],
        &["--projection", "tally"],
        &[
            "--projection",
            "--chaos",
            "kill-connections",
            "--duration",
            "5s",
        ],
    ] {
        let r = scenario("transfer", extra);
        let p = &r["projection"];
        assert_eq!(p["mismatches"], 0, "{r}");
        assert_eq!(p["reapplied"], 0, "{r}");
        assert_eq!(p["events_projected"], r["events_in_store"], "{r}");
        for field in ["lag_p50_ms", "lag_p99_ms", "events_per_s"] {
            positive(p, field);
        }
    }
}

/// `catch-up` stores its events in SQL, projects them all and compares the read model.
#[test]
fn catch_up_projects_every_stored_event_once() {
    let json = scratch("catch-up.json");
    run(&[
        "catch-up",
        "--events",
        "5000",
        "--batch-size",
        "300",
        "--json",
        json.to_str().expect("utf-8 temp path"),
    ]);
    let r = report(&json);
    assert_eq!(r["events"], 5000, "{r}");
    assert_eq!(r["mismatches"], 0, "{r}");
    positive(&r, "events_per_s");
}
