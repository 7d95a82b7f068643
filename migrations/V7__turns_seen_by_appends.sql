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
-- Each lock is tried and, when free, released at once (session level, on the appender's own
-- connection): nothing is held past the call and no shared lock slot is kept per key.
CREATE FUNCTION dcb_turns_held(locks int[]) RETURNS int[]
LANGUAGE sql VOLATILE AS $fn$
    SELECT coalesce(array_agg(k), '{}')
    FROM unnest(locks) AS k
    -- CASE fixes the order: unlock only what the try took.
    WHERE CASE WHEN pg_try_advisory_lock(1145258580, k)
               THEN NOT pg_advisory_unlock(1145258580, k)
               ELSE true
          END
$fn$;
