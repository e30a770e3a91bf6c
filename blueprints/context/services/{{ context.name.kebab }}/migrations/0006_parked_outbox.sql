-- An outbox row the broker refuses for good (too large, malformed) is parked after a few
-- refusals instead of holding up the relay: `parked_at` says when. Parked rows are kept
-- until an operator deals with them (see the README: fix, then set parked_at to NULL to
-- send again, or delete). The relay's indexes leave them out.
ALTER TABLE outbox ADD COLUMN parked_at TIMESTAMPTZ;

DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL AND parked_at IS NULL;

DROP INDEX outbox_unpublished_by_aggregate;
CREATE INDEX outbox_unpublished_by_aggregate ON outbox (aggregate_id, aggregate_version)
    WHERE published_at IS NULL AND parked_at IS NULL;

CREATE INDEX outbox_parked ON outbox (parked_at) WHERE parked_at IS NOT NULL;
