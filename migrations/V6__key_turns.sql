-- Turns on keys contended by several processes (src/runtime/leases.rs). A command actor that
-- found a key contended by another process holds a session advisory lock on it (key space
-- 1145258580, 'DCBT', of the two-int form) on a connection of its own, from its chain's read to
-- its append, so that processes take turns on a hot boundary instead of invalidating each other's
-- reads. The lock ends with the session: a process that dies gives its turns back at once.
--
-- Keys are taken in the order given, which every process sorts ascending: no two sessions ever
-- wait for each other in a circle. Returns the keys that were held by another session and waited
-- for (turns handed over), so the caller knows which keys are still contended.
CREATE FUNCTION dcb_take_turns(keys int[]) RETURNS int[]
LANGUAGE plpgsql AS $fn$
DECLARE
    k int;
    waited int[] := '{}';
BEGIN
    FOREACH k IN ARRAY keys LOOP
        IF NOT pg_try_advisory_lock(1145258580, k) THEN
            PERFORM pg_advisory_lock(1145258580, k);
            waited := waited || k;
        END IF;
    END LOOP;
    RETURN waited;
END
$fn$;
