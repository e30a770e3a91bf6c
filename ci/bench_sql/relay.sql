-- One relay pass (platform::relay), included by post.sql and command.sql for each service's
-- relay (@include relay <database>; <database> stands for it here): it claims the oldest
-- waiting aggregates, reads their rows and marks them sent, committing asynchronously
-- (BEGIN and the SET are one message from the relay, two here). A pass that claims nothing
-- rolls back. What it claims and reads is whatever waits, as the services' relay finds it,
-- so its batches are as large as the passes' frequency makes them.
-- @each <database> min(created_at) AS since
BEGIN;
SET LOCAL synchronous_commit = off;
SELECT coalesce(array_agg(aggregate_id), '{}') AS claimed FROM (SELECT aggregate_id FROM ( SELECT aggregate_id, min(created_at) AS since FROM ( SELECT aggregate_id, created_at FROM outbox WHERE published_at IS NULL AND parked_at IS NULL ORDER BY created_at LIMIT 1000 ) AS oldest GROUP BY aggregate_id ORDER BY since LIMIT 100 ) AS pending WHERE pg_try_advisory_xact_lock(2828, hashtext(aggregate_id::text))) AS claim \gset
-- @each <database> UPDATE outbox SET published_at
SELECT coalesce(array_agg(id), '{}') AS sent, sum(octet_length(payload) + octet_length(headers::text)) AS bytes FROM (SELECT id, topic, event_type, aggregate_id, payload, headers FROM outbox WHERE published_at IS NULL AND parked_at IS NULL AND aggregate_id = ANY(:claimed::uuid[]) ORDER BY aggregate_id, aggregate_version, created_at, id LIMIT 100) AS batch \gset
UPDATE outbox SET published_at = now() WHERE id = ANY(:sent::uuid[]);
COMMIT;
-- @else
ROLLBACK;
-- @end
-- @end
