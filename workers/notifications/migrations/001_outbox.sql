-- The notification outbox: a message is queued once per dedupe key (workflow id and
-- step), then delivered by the dispatcher and marked sent.
CREATE TABLE outbox (
    dedupe_key  text PRIMARY KEY,
    kind        text NOT NULL,
    recipient   text NOT NULL,
    language    text NOT NULL CHECK (language IN ('az', 'en')),
    text        text NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_pending ON outbox (queued_at) WHERE sent_at IS NULL;
