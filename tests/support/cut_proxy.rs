//! A TCP proxy in front of PostgreSQL that can drop a connection right after the server has
//! committed, before the client learns it: the "connection lost during COMMIT" of a real network.
//!
//! Every connection is forwarded both ways unchanged, and its server-to-client stream is parsed as
//! backend messages (one type byte, then a 4-byte big-endian length counting itself) from its first
//! byte, so the proxy always knows where a message starts. Connect with `sslmode=disable`: an SSL
//! request is answered with a single unframed byte.
//!
//! [`CutProxy::arm`] (or [`Arm::arm`], from synchronous code such as a decision's `decide`) makes
//! the next connection that receives anything from the server swallow everything from then on,
//! and close both of its sockets as soon as a ReadyForQuery (`Z`) message starts, without
//! forwarding it. The server sends ReadyForQuery only after the statement's implicit transaction
//! has committed (or rolled back), so the client sees its connection drop while the outcome is
//! settled on the server. Arm only while the client waits for nothing: the first bytes the server
//! sends after arming must be the answer to the next request.
#![allow(dead_code)] // each test binary uses part of it

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// One cut connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The connection's number, counted from 1 in accept order.
    pub connection: usize,
    /// The types of the messages swallowed before the ReadyForQuery, in order: `2DC` (bind
    /// complete, a data row, command complete) for a statement that ran to its end.
    pub swallowed: String,
}

struct Shared {
    upstream: String,
    armed: AtomicBool,
    accepted: AtomicUsize,
    cuts: Mutex<Vec<Cut>>,
}

/// The proxy; it stops, closing every connection, when dropped.
pub struct CutProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

/// A handle that arms the proxy, for code that cannot hold the proxy itself.
#[derive(Clone)]
pub struct Arm(Arc<Shared>);

impl Arm {
    /// See [`CutProxy::arm`].
    pub fn arm(&self) {
        self.0.armed.store(true, Ordering::SeqCst);
    }
}

impl CutProxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards to the server `url` names (a URL or
    /// key=value string naming one TCP host).
    ///
    /// # Panics
    ///
    /// The URL names no TCP host, or the port cannot be bound.
    pub async fn start(url: &str) -> Self {
        let config = tokio_postgres::Config::from_str(url).expect("a valid database URL");
        let host = match config.get_hosts() {
            [tokio_postgres::config::Host::Tcp(host)] => host.clone(),
            other => panic!("the proxy needs exactly one TCP host, the URL names {other:?}"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shared = Arc::new(Shared {
            upstream: format!("{host}:{port}"),
            armed: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            cuts: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Self {
            addr,
            shared,
            accept,
        }
    }

    /// `url` (the database the proxy forwards to) as reached through the proxy, without SSL.
    pub fn url(&self, url: &str) -> String {
        let config = tokio_postgres::Config::from_str(url).expect("a valid database URL");
        let mut through = format!(
            "host={} port={} sslmode=disable",
            self.addr.ip(),
            self.addr.port()
        );
        if let Some(user) = config.get_user() {
            through.push_str(&format!(" user={}", quote(user)));
        }
        if let Some(password) = config.get_password() {
            let password = String::from_utf8_lossy(password);
            through.push_str(&format!(" password={}", quote(&password)));
        }
        if let Some(dbname) = config.get_dbname() {
            through.push_str(&format!(" dbname={}", quote(dbname)));
        }
        through
    }

    /// A store on the database `url` names whose one connection goes through this proxy, so
    /// that every statement of the store (reads, appends, look-ups) takes it.
    ///
    /// # Panics
    ///
    /// The store cannot connect.
    pub async fn single_connection_store(&self, url: &str) -> dcb_runtime::PostgresStore {
        // Migrated directly (migrations open a connection of their own): the proxy then counts
        // only the pool's connections.
        drop(
            dcb_runtime::PostgresStore::builder(url)
                .pool_size(1)
                .connect()
                .await
                .expect("migrated"),
        );
        dcb_runtime::PostgresStore::builder(self.url(url))
            .pool_size(1)
            .migrate(false)
            .connect()
            .await
            .expect("store through the proxy")
    }

    /// Cuts the next response: see the module documentation.
    pub fn arm(&self) {
        self.arming().arm();
    }

    /// A handle arming this proxy.
    pub fn arming(&self) -> Arm {
        Arm(self.shared.clone())
    }

    /// Whether an arm is still waiting for its response.
    pub fn is_armed(&self) -> bool {
        self.shared.armed.load(Ordering::SeqCst)
    }

    /// Stops the proxy and waits until it is gone: its listening port is closed (connecting is
    /// refused) and no connection through it forwards anything any more.
    pub async fn close(mut self) {
        self.accept.abort();
        // Resolves once the accept loop's future is dropped, with the tasks of its connections.
        let _ = (&mut self.accept).await;
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// The connections cut so far, in order. A cut is recorded before its sockets are closed, so
    /// a client that saw its connection drop finds it here.
    pub fn cuts(&self) -> Vec<Cut> {
        self.shared.cuts.lock().expect("cuts").clone()
    }
}

/// A fresh database, a proxy in front of its server, and a store on the database whose one
/// connection goes through the proxy ([`CutProxy::single_connection_store`]).
pub async fn proxied() -> (
    dcb_runtime::testing::TestDatabase,
    CutProxy,
    dcb_runtime::PostgresStore,
) {
    let db = dcb_runtime::testing::TestDatabase::create()
        .await
        .expect("test database");
    let proxy = CutProxy::start(db.url()).await;
    let store = proxy.single_connection_store(db.url()).await;
    (db, proxy, store)
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        // The accept loop owns the connections' tasks: aborting it drops (aborts) them all.
        self.accept.abort();
    }
}

/// A libpq key=value value, quoted.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let number = shared.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                connections.spawn(serve(client, shared.clone(), number));
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(client: TcpStream, shared: Arc<Shared>, number: usize) {
    let Ok(upstream) = TcpStream::connect(&shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = upstream.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    };
    let down = pump(&mut server_read, &mut client_write, &shared, number);
    // Whichever direction ends first (a side closed, or the cut) ends both: the halves are
    // dropped here, which closes both sockets.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Where the parser stands in the server's message stream.
#[derive(Default)]
struct Framing {
    /// Bytes of the current message's header (type and length) seen so far.
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message still to come.
    body_left: usize,
}

impl Framing {
    /// Feeds `bytes`, calling `on_start` with the type of each message that starts in them; stops
    /// early (returning false) when `on_start` returns false.
    fn feed(&mut self, mut bytes: &[u8], mut on_start: impl FnMut(u8) -> bool) -> bool {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skip = self.body_left.min(bytes.len());
                self.body_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            if self.header_len == 0 && !on_start(bytes[0]) {
                return false;
            }
            let take = (5 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == 5 {
                let length = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                let length = usize::try_from(length).expect("a u32 fits in usize");
                assert!(
                    length >= 4,
                    "not a PostgreSQL backend message (length {length}); is SSL disabled?"
                );
                self.body_left = length - 4;
                self.header_len = 0;
            }
        }
        true
    }
}

/// Forwards the server's bytes to the client until either side closes, or until the cut.
async fn pump(
    server: &mut (impl AsyncRead + Unpin),
    client: &mut (impl AsyncWrite + Unpin),
    shared: &Shared,
    number: usize,
) {
    let mut framing = Framing::default();
    let mut buf = vec![0u8; 64 * 1024];
    // Set once this connection took the arm: everything is swallowed from then on.
    let mut swallowed: Option<String> = None;
    loop {
        let n = match server.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if swallowed.is_none()
            && shared
                .armed
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            swallowed = Some(String::new());
        }
        let Some(types) = swallowed.as_mut() else {
            framing.feed(&buf[..n], |_| true);
            if client.write_all(&buf[..n]).await.is_err() {
                return;
            }
            continue;
        };
        let reached_ready = !framing.feed(&buf[..n], |kind| {
            if kind == b'Z' {
                return false;
            }
            types.push(char::from(kind));
            true
        });
        if reached_ready {
            let cut = Cut {
                connection: number,
                swallowed: types.clone(),
            };
            shared.cuts.lock().expect("cuts").push(cut);
            return;
        }
    }
}

#[cfg(test)]
mod framing_tests {
    use super::Framing;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn message_starts_are_found_across_any_split() {
        let stream: Vec<u8> = [
            message(b'2', b""),
            message(b'D', b"row data"),
            message(b'C', b"SELECT 1\0"),
            message(b'Z', b"I"),
        ]
        .concat();
        for split in 0..=stream.len() {
            let mut framing = Framing::default();
            let mut kinds = Vec::new();
            let (a, b) = stream.split_at(split);
            for part in [a, b] {
                framing.feed(part, |k| {
                    kinds.push(k);
                    true
                });
            }
            assert_eq!(kinds, b"2DCZ", "split at {split}");
        }
    }
}
