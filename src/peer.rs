//! Where a process takes connections from the other processes of a store, and the token it asks
//! of whoever connects: the owner of a key takes forwarded commands (`runtime/forwarding`), the
//! elected appender takes appends (`store/postgres/leader.rs`).
//!
//! A process advertises both in `dcb_forward_tokens` (V9, V10), by the backend pid of the session
//! holding the lock the others look for (a key's ownership, the appender's election), before that
//! session can hold it. The others read the row of the lock's holder. In the table and not in the
//! session's `application_name`: `pg_stat_activity` shows that to every role of the server, while
//! the table is read only by the roles this database grants it to (as the events are), so only
//! they learn a token, and only they can make a process run a command or write an append. The
//! session keeps the name its process gave it, so operators can tell which process it is.

use std::net::SocketAddr;

/// Records the session's address (`$2`) and token (`$1`) by its pid; rows of sessions that ended
/// go at the same time (a reused pid is overwritten by its new session before it can hold a lock).
pub(crate) const ADVERTISE_SQL: &str = "WITH gone AS (DELETE FROM dcb_forward_tokens \
                   WHERE pid NOT IN (SELECT pid FROM pg_stat_activity)) \
     INSERT INTO dcb_forward_tokens (pid, token, address) VALUES (pg_backend_pid(), $1, $2) \
     ON CONFLICT (pid) DO UPDATE \
     SET token = EXCLUDED.token, address = EXCLUDED.address, recorded_at = now()";

/// Where a process takes connections, and the token it asks of who connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Peer {
    pub(crate) socket: String,
    pub(crate) token: String,
}

impl Peer {
    /// This process at `socket`, with a fresh random token (122 bits from the operating system's
    /// generator).
    pub(crate) fn fresh(socket: SocketAddr) -> Self {
        Self {
            socket: socket.to_string(),
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The peer a row of `dcb_forward_tokens` advertises; `None` without an address or a token.
    pub(crate) fn parse(socket: &str, token: &str) -> Option<Self> {
        (!socket.is_empty() && !token.is_empty()).then(|| Self {
            socket: socket.to_owned(),
            token: token.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_without_an_address_or_a_token_is_none() {
        assert_eq!(
            Peer::parse("127.0.0.1:4567", "t0k"),
            Some(Peer {
                socket: "127.0.0.1:4567".to_owned(),
                token: "t0k".to_owned()
            })
        );
        assert_eq!(Peer::parse("", "t0k"), None);
        assert_eq!(Peer::parse("127.0.0.1:4567", ""), None);
    }

    #[test]
    fn each_peer_gets_a_fresh_token() {
        let socket = "127.0.0.1:45678".parse().unwrap();
        let (one, other) = (Peer::fresh(socket), Peer::fresh(socket));
        assert_eq!(one.socket, "127.0.0.1:45678");
        assert_eq!(one.token.len(), 32);
        assert_ne!(one.token, other.token);
    }
}
