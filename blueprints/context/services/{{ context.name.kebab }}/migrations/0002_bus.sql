-- The event bus: which topic each outbox row goes to, and the inbox that makes
-- consumers idempotent (an event id is applied at most once).
ALTER TABLE outbox ADD COLUMN topic TEXT NOT NULL DEFAULT '';

CREATE TABLE inbox (
    event_id UUID PRIMARY KEY,
    topic TEXT NOT NULL,
    event_type TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
