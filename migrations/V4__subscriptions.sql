-- The read side: one row per named subscription, holding its checkpoint, and a notification on
-- every append so that followers wake up without polling.
--
-- `position` is the last position the subscription has handled (0: none). Positions are assigned in
-- commit order under one lock (V1), so a reader that has seen position P has seen everything at or
-- below it: the checkpoint needs no gap detection, and a subscription resuming after it can never
-- skip an event that committed late.
--
-- `id` names the subscription in the session advisory lock its active consumer holds
-- (pg_advisory_lock(1145258579, id), a key space of its own: the two-int form never meets the
-- one-bigint keys of dcb_append and the migrations).
--
-- A consumer whose handler keeps failing records the event it stopped on in `failed_position`
-- (and why in `failed_error`); `skipped` keeps the positions an operator chose to skip.
CREATE TABLE dcb_subscriptions (
    name            text        PRIMARY KEY,
    id              int         GENERATED ALWAYS AS IDENTITY UNIQUE,
    position        bigint      NOT NULL CHECK (position >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    failed_position bigint,
    failed_error    text,
    skipped         bigint[]    NOT NULL DEFAULT '{}'
);

-- A hint, never the source of truth: followers read from their checkpoint whatever woke them, and
-- poll as well, so a lost notification costs at most one poll interval. No payload: identical
-- notifications of one transaction are folded into one.
CREATE FUNCTION dcb_notify_appended() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    PERFORM pg_notify('dcb_events', '');
    RETURN NULL;
END
$fn$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION dcb_notify_appended();
