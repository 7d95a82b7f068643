-- Where forwarded commands are taken: the token a process asks of whoever connects to it.
--
-- A process that takes forwarded commands advertises its address in its session's
-- `application_name` (see `runtime/forwarding/transport.rs`). Until V9 the token was there too,
-- but `pg_stat_activity` shows every session's `application_name` to every role that can log in
-- to the server, whatever its database and privileges. A table is read only by the roles this
-- database grants it to, as the events are.
--
-- One row per advertising session, by its backend pid, written by that session before it takes
-- any ownership; a sender reads the token of the pid holding the ownership lock. Rows of ended
-- sessions are removed whenever a session writes its own (a reused pid is overwritten by its new
-- session before it can hold an ownership lock).
CREATE TABLE dcb_forward_tokens (
    pid         int         PRIMARY KEY,
    token       text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
