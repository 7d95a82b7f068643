//! How forwarded commands travel: straight between the processes, over TCP, one connection from
//! each sender to each owner; and the database session that holds this process's ownerships and
//! tells the others where to send.
//!
//! They travelled as `NOTIFY` before. PostgreSQL 15 wakes *every* listening backend of a
//! database for each notifying commit, whatever its channel, so with four processes each append
//! and each packet of requests or answers woke four backends, and a quarter of the server's CPU
//! went to signals (`kill`) and to backends reading notifications that were not theirs (profiled
//! on `invoice --processes 4`). Now the server only holds the ownership locks.
//!
//! - **Where**: the session that holds this process's ownerships advertises its address and
//!   token (`peer.rs`) before it takes any. A process that finds another one holding a key's
//!   ownership lock reads both by the holder's pid: only a role that may read this database's
//!   tables learns the token, and so only such a role can make this process run a command.
//! - **Framing**: a connection opens with the token on a line of its own; then each line is one
//!   packet (`wire::pack`): requests from the sender, answers back on the same connection.
//! - **One task per connection**, on each side: the sender's writes, in one write, whatever
//!   queued while it wrote the last, and reads the answers; the owner's reads the requests, runs
//!   them, and writes each answer as it is ready (with every other one ready then). No task per
//!   request, no writer task: each would be a wake-up per command.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

use super::{Forwarding, RELEASE_EVERY, locked, wire};
use crate::lines::{IDLE_WAIT, accept_with_token, connect_with_token, read_line_into};
use crate::peer::{ADVERTISE_SQL, Peer};
use crate::runtime::Inner;
use crate::store::{EventStore, Session};

/// The longest line a peer may send: one packet and its newline.
const MAX_LINE: u64 = wire::MAX_PAYLOAD as u64 + 1;

/// How long a write may wait for the peer to read. A peer that reads nothing for this long is
/// stalled or gone (its requests' senders have given up waiting by then): the connection closes,
/// and what was sent on it goes unanswered at once instead of queueing behind a write that never
/// ends. Both sides write without reading meanwhile, so without it two large writes crossing
/// would wait for each other for ever.
const WRITE_WAIT: Duration = super::FORWARD_WAIT;

/// The session that holds this process's ownerships (they end with it).
pub(super) struct Link {
    pub(super) client: tokio_postgres::Client,
    /// Which session this is: an ownership taken on an earlier one is gone.
    pub(super) generation: u64,
}

/// What a connection's writer sends: a packet's item, or a marker answered once everything
/// queued before it was written.
pub(super) enum Out {
    Item(String),
    Marker(oneshot::Sender<()>),
}

/// Binds this process's listener and starts taking forwarded commands on it; then holds the
/// session that advertises it, reconnecting after a failure. Ownerships end with each session.
pub(super) async fn serve<S: EventStore + 'static>(
    forwarding: Arc<Forwarding<S>>,
    runtime: Weak<Inner<S>>,
    bind: SocketAddr,
) {
    let listener = match TcpListener::bind(bind).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, %bind, "cannot take forwarded commands: no listener");
            return;
        }
    };
    let address = match listener.local_addr() {
        Ok(socket) => Peer::fresh(socket),
        Err(e) => {
            tracing::warn!(error = %e, %bind, "cannot take forwarded commands: no address");
            return;
        }
    };
    let _ = forwarding.me.set(address.token.clone());
    let accepting = tokio::spawn(accept(
        forwarding.clone(),
        runtime,
        listener,
        address.token.clone(),
    ));
    forwarding.track(accepting);
    let mut failures = 0u32;
    let mut generation = 0u64;
    loop {
        generation += 1;
        match hold(&forwarding, &address, generation).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::debug!(error = %e, "the forwarding session failed");
            }
        }
        forwarding.link_lost().await;
        tokio::time::sleep(Duration::from_millis(50u64 << failures.min(5))).await;
    }
}

/// Opens the session that advertises `address` and holds ownerships, until it ends.
async fn hold<S: EventStore + 'static>(
    forwarding: &Forwarding<S>,
    address: &Peer,
    generation: u64,
) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = Session::config(forwarding.leases.config())
        .connect(NoTls)
        .await?;
    let mut connection = std::pin::pin!(connection);
    // Before any ownership is taken on this session: a sender finding it holding one finds
    // where it is.
    let advertised: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
        [&address.token, &address.socket];
    let record = client.execute(ADVERTISE_SQL, &advertised);
    tokio::select! {
        recorded = record => {
            recorded?;
        }
        ended = &mut connection => return ended,
    }
    *locked(&forwarding.link) = Some(Arc::new(Link { client, generation }));
    connection.await
}

/// Takes connections from senders.
async fn accept<S: EventStore + 'static>(
    forwarding: Arc<Forwarding<S>>,
    runtime: Weak<Inner<S>>,
    listener: TcpListener,
    token: String,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let task = tokio::spawn(take_requests(
                    forwarding.clone(),
                    runtime.clone(),
                    stream,
                    token.clone(),
                ));
                forwarding.track(task);
            }
            Err(e) => {
                // Out of descriptors, say: try again shortly rather than spin.
                tracing::debug!(error = %e, "could not accept a forwarding connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A sender's connection: its token first, then requests, each answered on it.
async fn take_requests<S: EventStore + 'static>(
    forwarding: Arc<Forwarding<S>>,
    runtime: Weak<Inner<S>>,
    stream: TcpStream,
    token: String,
) {
    let Some((mut reader, mut write)) = accept_with_token(stream, &token).await else {
        tracing::debug!("a forwarding connection without this process's token: closed");
        return;
    };
    // One task reads the requests, runs them and writes their answers: no task per request,
    // no writer task (each a wake-up per command). `Forwarding::flush` asks through `flushes`.
    let (flushes, mut flush_asked) = mpsc::unbounded_channel();
    forwarding.keep_queue(&flushes);
    let mut running = FuturesUnordered::new();
    let mut line = Vec::new();
    loop {
        tokio::select! {
            packet = next_packet(&mut reader, &mut line) => match packet {
                Some(packet) => running.extend(forwarding.requested(&runtime, &packet)),
                // The sender is gone, or not one of ours: its requests' runs end here.
                None => return,
            },
            Some(first) = running.next(), if !running.is_empty() => {
                let answers: Vec<String> = first.into_iter().chain(ready(&mut running)).collect();
                if write_packet_lines(&mut write, "Answers", &answers).await.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(IDLE_WAIT), if running.is_empty() => {
                tracing::debug!("a sender's connection idle for {IDLE_WAIT:?}: closed");
                return;
            }
            Some(asked) = flush_asked.recv() => {
                // Every answer ready by now is written before the flush is answered.
                let answers: Vec<String> = ready(&mut running).collect();
                if write_packet_lines(&mut write, "Answers", &answers).await.is_err() {
                    return;
                }
                if let Out::Marker(flushed) = asked {
                    let _ = flushed.send(());
                }
            }
        }
    }
}

/// Connects to the owner at `to` and sends it what `requests` queues; hands its answers over.
/// When the connection ends (or cannot be opened), its requests go unanswered at once.
pub(super) async fn send_requests<S: EventStore + 'static>(
    forwarding: Arc<Forwarding<S>>,
    to: Peer,
    connection: u64,
    requests: mpsc::UnboundedReceiver<Out>,
) {
    if !exchange(&forwarding, &to, connection, requests).await {
        forwarding.found_unreachable(&to);
    }
    forwarding.connection_lost(&to, connection);
}

async fn exchange<S: EventStore + 'static>(
    forwarding: &Forwarding<S>,
    to: &Peer,
    connection: u64,
    mut requests: mpsc::UnboundedReceiver<Out>,
) -> bool {
    let stream = match connect_with_token(&to.socket, &to.token).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(error = %e, to = %to.socket, "could not connect to a key's owner");
            return false;
        }
    };
    // One task writes the requests, packed, and reads the answers.
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        tokio::select! {
            packet = next_packet(&mut reader, &mut line) => match packet {
                Some(packet) => forwarding.answered(&packet, connection),
                // The owner is gone (its requests go unanswered at once: `connection_lost`).
                None => return true,
            },
            queued = requests.recv() => {
                let Some(first) = queued else { return true };
                let (mut items, mut markers) = (Vec::new(), Vec::new());
                let mut take = |out| match out {
                    Out::Item(item) => items.push(item),
                    Out::Marker(sent) => markers.push(sent),
                };
                take(first);
                // The tasks ready to run go first (the callers an answer packet just woke send
                // their next commands), so that one write carries them all.
                tokio::task::yield_now().await;
                // Whatever queued while the last write went out goes in this one.
                while let Ok(out) = requests.try_recv() {
                    take(out);
                }
                if let Err(e) = write_packet_lines(&mut write, "Requests", &items).await {
                    tracing::debug!(error = %e, "a forwarding connection closed");
                    return true;
                }
                for sent in markers {
                    let _ = sent.send(());
                }
            }
        }
    }
}

/// Writes `items` packed as `kind`, a packet per line, in one write.
async fn write_packet_lines(
    write: &mut OwnedWriteHalf,
    kind: &str,
    items: &[String],
) -> std::io::Result<()> {
    let mut bytes = String::new();
    for packet in wire::pack(kind, items) {
        bytes.push_str(&packet);
        bytes.push('\n');
    }
    if bytes.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(WRITE_WAIT, write.write_all(bytes.as_bytes()))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the peer of a forwarding connection read nothing for too long",
            ))
        })
}

/// The next packet; `None` at the end of the stream or on a line that is not one (too long, not
/// UTF-8). Cancel-safe as [`read_line_into`] is.
async fn next_packet<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
) -> Option<String> {
    match read_line_into(reader, line, MAX_LINE).await {
        Ok(true) => String::from_utf8(std::mem::take(line)).ok(),
        _ => None,
    }
}

/// The answers of the runs in `running` that are ready now, without waiting for the others.
fn ready<'a>(
    running: &'a mut FuturesUnordered<BoxFuture<'static, Option<String>>>,
) -> impl Iterator<Item = String> + 'a {
    std::iter::from_fn(move || running.next().now_or_never().flatten()).flatten()
}

/// Gives back, every [`RELEASE_EVERY`], the keys whose lease lapsed.
pub(super) async fn release<S: EventStore + 'static>(forwarding: Arc<Forwarding<S>>) {
    let mut ticks = tokio::time::interval(RELEASE_EVERY);
    loop {
        ticks.tick().await;
        forwarding.release_lapsed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn the_owner_closes_a_connection_on_which_nothing_comes() {
        let (_db, f) = super::super::tests::forwarding().await;
        // The token, then half a packet.
        crate::lines::idle::served_until_idle(b"t0k\n{\"Requests\":[", |stream| {
            take_requests(f, Weak::new(), stream, "t0k".to_owned())
        })
        .await;
    }

    #[tokio::test]
    async fn a_write_the_peer_does_not_read_ends_instead_of_waiting_for_ever() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stream, accepted) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        // The peer holds its end open and reads nothing.
        let (_peer, _) = accepted.unwrap();
        let (_read, mut write) = stream.unwrap().into_split();
        let packet = vec!["x".repeat(wire::MAX_PAYLOAD / 2); 64];
        // Far more than the sockets' buffers hold; each write waits at most WRITE_WAIT.
        let writes = async {
            for _ in 0..1_000 {
                write_packet_lines(&mut write, "Answers", &packet).await?;
            }
            std::io::Result::Ok(())
        };
        let outcome = tokio::time::timeout(Duration::from_secs(30), writes)
            .await
            .expect("the writes waited for ever on a peer that reads nothing");
        let error = outcome.expect_err("a write to a peer that never reads must end");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_line_read_in_parts_is_whole_and_a_longer_one_than_a_packet_refused() {
        let mut line = Vec::new();
        let mut two = BufReader::new(&b"one\ntwo\npart"[..]);
        assert!(read_line_into(&mut two, &mut line, MAX_LINE).await.unwrap());
        assert_eq!(std::mem::take(&mut line), b"one");
        assert!(read_line_into(&mut two, &mut line, MAX_LINE).await.unwrap());
        assert_eq!(std::mem::take(&mut line), b"two");
        assert!(
            !read_line_into(&mut two, &mut line, MAX_LINE).await.unwrap(),
            "cut off: the end"
        );
        // What an earlier (cancelled) call read stays and is completed.
        let mut line = b"half ".to_vec();
        let mut rest = BufReader::new(&b"a line\n"[..]);
        assert!(
            read_line_into(&mut rest, &mut line, MAX_LINE)
                .await
                .unwrap()
        );
        assert_eq!(line, b"half a line");
        let mut long = vec![b'x'; wire::MAX_PAYLOAD + 1];
        long.push(b'\n');
        let mut line = Vec::new();
        assert!(
            read_line_into(&mut BufReader::new(&long[..]), &mut line, MAX_LINE)
                .await
                .is_err()
        );
    }
}
