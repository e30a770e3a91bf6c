-- The tables every service's database has for the platform's machinery (outbox, inbox,
-- idempotency keys, sagas), in the shape a service's migrations leave them: the platform's
-- own database tests run against this, and each generated service's tests check that its
-- migrations produce the same shape (`test_support::assert_platform_schema`).
CREATE TABLE outbox (
    id UUID PRIMARY KEY,
    event_type TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id UUID NOT NULL,
    payload BYTEA NOT NULL,
    headers JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    topic TEXT NOT NULL DEFAULT '',
    aggregate_version BIGINT NOT NULL DEFAULT 0,
    parked_at TIMESTAMPTZ
);

CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_unpublished_by_aggregate ON outbox (aggregate_id, aggregate_version)
    WHERE published_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked ON outbox (parked_at) WHERE parked_at IS NOT NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE inbox (
    event_id UUID PRIMARY KEY,
    topic TEXT NOT NULL,
    event_type TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX inbox_received ON inbox (received_at);

CREATE TABLE idempotency_keys (
    operation TEXT NOT NULL,
    key TEXT NOT NULL,
    request_sha256 BYTEA NOT NULL,
    response BYTEA,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    scope TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (operation, scope, key)
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

CREATE TABLE saga (
    id UUID PRIMARY KEY,
    saga_type TEXT NOT NULL,
    aggregate_id UUID NOT NULL,
    state TEXT NOT NULL,
    step INTEGER NOT NULL,
    steps JSONB NOT NULL,
    subject BYTEA NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    deadline TIMESTAMPTZ NOT NULL,
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
