//! Newline-framed connections between processes, for the two transports (forwarded commands,
//! appends sent to the elected appender): the token each connection opens with, and reads with a
//! length limit.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// How long a connection has to present its token, and a connecting side to connect.
pub(crate) const HANDSHAKE_WAIT: Duration = Duration::from_secs(1);

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
