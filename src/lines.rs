//! Newline-framed connections between processes, for the two transports (forwarded commands,
//! appends sent to the elected appender): the token each connection opens with, and reads with a
//! length limit.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// How long a connection has to present its token, and a connecting side to connect.
pub(crate) const HANDSHAKE_WAIT: Duration = Duration::from_secs(1);

/// How long the side that takes connections keeps one on which nothing comes and nothing is to
/// be answered. A peer whose host vanished sends no end: without this, its task and the part of
/// a line it sent would be kept for ever. A peer that was only quiet connects again when it
/// sends again.
pub(crate) const IDLE_WAIT: Duration = Duration::from_secs(60);

/// Connects to `socket` and presents `token` on a line of its own.
pub(crate) async fn connect_with_token(socket: &str, token: &str) -> std::io::Result<TcpStream> {
    let connect = async {
        let mut stream = TcpStream::connect(socket).await?;
        stream.set_nodelay(true)?;
        stream.write_all(format!("{token}\n").as_bytes()).await?;
        Ok(stream)
    };
    tokio::time::timeout(HANDSHAKE_WAIT, connect)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting took longer than the handshake allows",
            ))
        })
}

/// The halves of an accepted connection that presented `token` in time; `None` (the
/// connection dropped) for any other. Reads no more than the token's length before it is
/// checked: an unauthenticated peer gets no larger buffer.
pub(crate) async fn accept_with_token(
    stream: TcpStream,
    token: &str,
) -> Option<(BufReader<OwnedReadHalf>, OwnedWriteHalf)> {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut presented = Vec::new();
    let longest = token.len() as u64 + 1;
    let read = tokio::time::timeout(
        HANDSHAKE_WAIT,
        read_line_into(&mut reader, &mut presented, longest),
    );
    (matches!(read.await, Ok(Ok(true))) && presented == token.as_bytes()).then_some((reader, write))
}

/// Reads into `line` until a newline, which it drops: `true` when a whole line is there, `false`
/// at the end of the stream. Cancel-safe: what a cancelled call read stays in `line` for the next
/// one. A line of more than `longest` bytes with its newline is an error (the peer is not one of
/// ours).
pub(crate) async fn read_line_into<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
    longest: u64,
) -> std::io::Result<bool> {
    loop {
        let room = longest.saturating_sub(line.len() as u64);
        if room == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a line longer than its limit",
            ));
        }
        let read = (&mut *reader).take(room).read_until(b'\n', line).await?;
        if line.last() == Some(&b'\n') {
            line.pop();
            return Ok(true);
        }
        if read == 0 {
            return Ok(false);
        }
    }
}

/// For the tests of both transports: whether the side serving a connection closes it once it
/// has been idle for [`IDLE_WAIT`].
#[cfg(test)]
pub(crate) mod idle {
    use std::future::Future;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::IDLE_WAIT;

    /// Connects to a listener, sends `sent` (a token and part of a line) and then nothing more,
    /// as a peer whose host vanished; runs `serve` on the accepted end with the clock paused,
    /// and checks that it ends by its idle timer: not within an hour is kept for ever, at once
    /// is a refusal (of the token).
    pub(crate) async fn served_until_idle<F>(sent: &[u8], serve: impl FnOnce(TcpStream) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let at = listener.local_addr().expect("bound");
        let (client, accepted) = tokio::join!(TcpStream::connect(at), listener.accept());
        let (mut client, (stream, _)) = (client.expect("connected"), accepted.expect("accepted"));
        client.write_all(sent).await.expect("written");
        // The clock stands still but for timers: the wait for the rest of the line can only
        // end by the idle timer, whose time shows, or by a refusal, at once.
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        let served = tokio::spawn(serve(stream));
        let ended = tokio::time::timeout(Duration::from_secs(3_600), served).await;
        assert!(ended.is_ok(), "an hour later the connection is still kept");
        assert!(
            started.elapsed() >= IDLE_WAIT,
            "closed after {:?}: the token was refused, not the idle connection closed",
            started.elapsed()
        );
        drop(client);
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// Accepts one connection that sends `sent`, and says whether it was taken.
    async fn taken(sent: &[u8]) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = listener.local_addr().unwrap().to_string();
        let send = async {
            let mut stream = TcpStream::connect(&socket).await.unwrap();
            stream.write_all(sent).await.unwrap();
            stream
        };
        let accept = async {
            let (stream, _) = listener.accept().await.unwrap();
            accept_with_token(stream, "s3cret").await.is_some()
        };
        let (_stream, taken) = tokio::join!(send, accept);
        taken
    }

    #[tokio::test]
    async fn only_a_connection_presenting_the_token_is_taken() {
        assert!(taken(b"s3cret\n").await);
        assert!(!taken(b"guess\n").await);
        assert!(!taken(b"s3cret-and-more\n").await, "longer than the token");
        assert!(!taken(b"s3cre").await, "cut off before the newline");
    }

    #[tokio::test]
    async fn connecting_presents_the_token() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = listener.local_addr().unwrap().to_string();
        let (connected, accepted) = tokio::join!(connect_with_token(&socket, "s3cret"), async {
            let (stream, _) = listener.accept().await.unwrap();
            accept_with_token(stream, "s3cret").await.is_some()
        });
        connected.expect("connected");
        assert!(accepted);
    }
}
