//! Newline-framed reads with a length limit, for the two transports between processes
//! (forwarded commands, appends sent to the elected appender).

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

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
