-- The sagas this service runs as their owner (`src/sagas.rs`, `platform::saga`): one row per
-- instance, started by the owner's event through the inbox, advanced by one conditional
-- UPDATE per step (`version`). Every service has the table; only owners write to it.
CREATE TABLE saga (
    id UUID PRIMARY KEY,
    saga_type TEXT NOT NULL,
    -- The subject: the owner's aggregate the starting event was about.
    aggregate_id UUID NOT NULL,
    -- running, completing, compensating, failing, completed, compensated, compensation_failed
    state TEXT NOT NULL,
    -- The next step forward while running; the next to undo (downwards) while compensating.
    step INTEGER NOT NULL,
    -- Per step: status (pending, trying, done, refused, compensated), result, error.
    steps JSONB NOT NULL,
    -- The subject as the starting event carried it (protobuf): every step reads this one.
    subject BYTEA NOT NULL,
    -- Why it compensates, once it does.
    reason TEXT,
    -- Failed attempts of the current step, and the last failure.
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    -- When compensation starts if it is still running.
    deadline TIMESTAMPTZ NOT NULL,
    -- When a runner may take it next: now, after a backoff, or when a claim's lease ends.
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    correlation_id TEXT NOT NULL DEFAULT '',
    traceparent TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (saga_type, aggregate_id)
);

CREATE INDEX saga_runnable ON saga (next_attempt_at)
    WHERE state IN ('running', 'completing', 'compensating', 'failing');
CREATE INDEX saga_by_subject ON saga (aggregate_id);
