-- Events of one aggregate leave in version order: the relay publishes an aggregate's unsent
-- rows by this version (rows written before this migration have 0 and go first, in the
-- order they were written).
ALTER TABLE outbox ADD COLUMN aggregate_version BIGINT NOT NULL DEFAULT 0;

CREATE INDEX outbox_unpublished_by_aggregate ON outbox (aggregate_id, aggregate_version) WHERE published_at IS NULL;
