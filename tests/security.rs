//! Security basics: the Prometheus exporter listens on loopback unless told otherwise, and a
//! password in a database URL never shows in the library's errors (their `Display`, `Debug` and
//! sources) nor in the `Debug` output of its builders and handles. (That SQL binds every value
//! is checked by `read_sql`'s unit test and by the SQL-laden strings of `tests/validation.rs`.)

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use dcb_runtime::local::LocalPostgres;
use dcb_runtime::testing::{TestDatabase, with_database};
use dcb_runtime::{PostgresStore, PostgresStoreBuilder, StoreError};

const SECRET: &str = "s3cret-pw";

#[test]
fn the_exporter_listens_on_loopback_by_default() {
    let addr = dcb_runtime::metrics::DEFAULT_ADDR;
    assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(addr.ip().is_loopback());
}

/// Everything an error can show: `Display`, `Debug` (plain and pretty), for it and its sources.
fn shown(error: &(dyn Error + 'static)) -> Vec<String> {
    let mut texts = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        texts.push(format!("{e}"));
        texts.push(format!("{e:?}"));
        texts.push(format!("{e:#?}"));
        next = e.source();
    }
    texts
}

#[track_caller]
fn assert_hidden(what: &str, texts: &[String]) {
    for text in texts {
        assert!(!text.contains(SECRET), "{what} shows the password: {text}");
    }
}

/// The server's URL with `SECRET` as the password (the test server trusts local connections, so
/// the password is ignored where a connection succeeds).
fn with_secret(server_url: &str) -> String {
    match server_url.split_once("://") {
        Some((scheme, rest)) => {
            let (user, location) = match rest.rsplit_once('@') {
                Some((userinfo, location)) => {
                    (userinfo.split(':').next().unwrap_or("postgres"), location)
                }
                None => ("postgres", rest),
            };
            format!("{scheme}://{user}:{SECRET}@{location}")
        }
        None => format!("{server_url} password={SECRET}"),
    }
}

/// Connecting to `url` fails, and neither the error nor the builder shows the password.
async fn refused_without_showing_the_password(url: &str) -> StoreError {
    let builder = PostgresStore::builder(url)
        .connect_timeout(Duration::from_secs(5))
        .wait_timeout(Duration::from_secs(5));
    let debug = format!("{builder:?}");
    assert_hidden("the builder's Debug", std::slice::from_ref(&debug));
    assert!(debug.contains("***"), "{debug}");
    refused_without_showing(builder, url).await
}

/// Connecting fails, and the error does not show `SECRET`.
async fn refused_without_showing(builder: PostgresStoreBuilder, url: &str) -> StoreError {
    let error = builder.connect().await.expect_err(&format!(
        "connecting must fail: {}",
        url.replace(SECRET, "<secret>")
    ));
    assert_hidden(&format!("the error of {url:?}"), &shown(&error));
    error
}

#[tokio::test]
async fn connection_errors_never_show_the_password() {
    let server = LocalPostgres::from_env().await.expect("a server");
    let real = with_secret(server.url());
    let unknown = format!("no_such_db_{}", uuid::Uuid::new_v4().simple());
    // Where nothing listens.
    let closed = format!("postgres://postgres:{SECRET}@127.0.0.1:1/x");
    let e = refused_without_showing_the_password(&closed).await;
    assert!(
        e.is_transient(),
        "a refused connection is worth retrying: {e:?}"
    );
    // A server that answers, with a database or a role that does not exist.
    let e = refused_without_showing_the_password(&with_database(&real, &unknown)).await;
    assert!(
        shown(&e).iter().any(|t| t.contains(&unknown)),
        "the error says what is wrong: {e:?}"
    );
    if let Some((scheme, rest)) = real.split_once("://")
        && let Some((_, location)) = rest.rsplit_once('@')
    {
        let role = format!("{scheme}://no_such_role:{SECRET}@{location}");
        refused_without_showing_the_password(&role).await;
    }
    // URLs the parser refuses, some with the password where it does not belong.
    for bad in [
        format!("postgres://postgres:{SECRET}@127.0.0.1:notaport/x"),
        format!("postgres://postgres:{SECRET}@[::1/x"),
        format!("postgres://postgres:{SECRET}@127.0.0.1/x?sslmode=bogus"),
        format!("postgres://postgres@127.0.0.1:1/x?password={SECRET}&nonsense=1"),
        format!("postgres://postgres:{SECRET}%zz@127.0.0.1:1/x"),
        format!("host=127.0.0.1 port=1 user=postgres password={SECRET} dbname=x"),
        format!("host=127.0.0.1 password='{SECRET}"),
        format!("host=127.0.0.1 password={SECRET} port=none"),
        format!("host=127.0.0.1 password {SECRET}"),
    ] {
        refused_without_showing_the_password(&bad).await;
    }
    // A value the parser refuses is not repeated in its error either.
    let url = format!("postgres://postgres@127.0.0.1/x?connect_timeout={SECRET}");
    refused_without_showing(PostgresStore::builder(&url), &url).await;
    // The test database helper, on the server and where nothing listens.
    let e = TestDatabase::create_on(&closed)
        .await
        .expect_err("nothing listens");
    assert_hidden("TestDatabase::create_on's error", &shown(&e));
}

#[tokio::test]
async fn handles_on_a_database_never_show_the_password() {
    let server = LocalPostgres::from_env().await.expect("a server");
    let db = TestDatabase::create_on(&with_secret(server.url()))
        .await
        .expect("a database (the password is ignored by a trusting server)");
    assert!(db.url().contains(SECRET), "the URL itself is the caller's");
    let debug = format!("{db:?} {db:#?}");
    assert_hidden("TestDatabase's Debug", std::slice::from_ref(&debug));
    assert!(
        debug.contains(db.name()) && debug.contains("***"),
        "{debug}"
    );
    let store = db.store().await.expect("store");
    assert_hidden("PostgresStore's Debug", &[format!("{store:?} {store:#?}")]);
}

/// `LocalPostgres` takes its URL from `DATABASE_URL`; setting the variable inside this process
/// would be `unsafe` (other threads read the environment), so this test runs itself again as a
/// child process with the variable set and reads what the child printed.
#[test]
fn local_postgres_never_shows_the_password_of_database_url() {
    const CHILD: &str = "DCB_SECURITY_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let local = rt
            .block_on(LocalPostgres::from_env())
            .expect("DATABASE_URL");
        assert!(local.url().contains(SECRET), "the child reads DATABASE_URL");
        println!("child: {local:?}");
        println!("child: {local:#?}");
        return;
    }
    let url = format!("postgres://app:{SECRET}@db.invalid:5432/postgres");
    let out = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "local_postgres_never_shows_the_password_of_database_url",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("DATABASE_URL", &url)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("child: LocalPostgres") && stdout.contains("app:***@db.invalid"),
        "the child printed its Debug output: {stdout}"
    );
    assert_hidden(
        "LocalPostgres's Debug",
        &[stdout.into_owned(), stderr.into_owned()],
    );
}
