-- Where the appender elected by a store's processes takes the others' appends (see
-- `store/postgres/leader.rs`): its session records its address with its token, by its pid, before
-- it can hold the leader's lock. In the table, not in the session's `application_name` (where
-- forwarded commands advertise theirs), so that the session keeps the name its process gave it
-- and operators can tell which process writes for all. NULL for sessions that advertise nothing
-- here.
ALTER TABLE dcb_forward_tokens ADD COLUMN address text;
