-- The store is append-only: an event, once stored, is never changed or removed. Every UPDATE,
-- DELETE and TRUNCATE of `events` and `event_tags` is refused, whoever runs it, with SQLSTATE 42501
-- (insufficient_privilege, the code a revoked privilege gives too) and a message naming the
-- table. Statement-level triggers fire even when no row matches, so a stray
-- `DELETE ... WHERE false` is refused as well. INSERT (what dcb_append does) is unaffected.
--
-- A table's owner or a superuser can disable these triggers (ALTER TABLE ... DISABLE TRIGGER,
-- session_replication_role = replica): they guard against mistakes, the grants of the role the
-- application connects as are the real guard (see "Append-only" in the README).

CREATE FUNCTION dcb_refuse_change() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    RAISE EXCEPTION 'dcb: % are append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Stored events are never changed or removed; append new events instead.';
END
$fn$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION dcb_refuse_change();

-- TRUNCATE fires only TRUNCATE triggers, and only statement-level ones.
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION dcb_refuse_change();

CREATE TRIGGER event_tags_append_only
    BEFORE UPDATE OR DELETE ON event_tags
    FOR EACH STATEMENT EXECUTE FUNCTION dcb_refuse_change();

CREATE TRIGGER event_tags_no_truncate
    BEFORE TRUNCATE ON event_tags
    FOR EACH STATEMENT EXECUTE FUNCTION dcb_refuse_change();
