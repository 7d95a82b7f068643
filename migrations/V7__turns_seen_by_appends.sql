-- Turns another session holds, as an append sees them (src/runtime/leases.rs).
--
-- A process takes turns on a key only once its appends conflicted with another process's on it.
-- A process that never conflicts never learns: at start-up, the first process to run a hot
-- boundary can append chain after chain, decided on its warm state, while the others take turns
-- among themselves and keep failing against it (measured: 4 processes on one boundary, up to 49
-- commands out of attempts in the first second, one process deciding 13,000 commands/s while
-- the others waited, p99 862 ms). So an append made without turns names the turn locks of its
-- keys, and the appender's statement answers which of them another session holds now: the
-- process then takes turns on those keys as well.
--
-- Each lock is tried at the transaction level: one that was free is held until the append's
-- statement commits (a turn taken meanwhile waits that long), and ends with it whatever happens,
-- a cancelled statement included. Only appends decided without a read watch their keys, so a
-- batch holds a handful of such locks, not one per key of every chain.
CREATE FUNCTION dcb_turns_held(locks int[]) RETURNS int[]
LANGUAGE sql VOLATILE AS $fn$
    SELECT coalesce(array_agg(k), '{}')
    FROM unnest(locks) AS k
    WHERE NOT pg_try_advisory_xact_lock(1145258580, k)
$fn$;
