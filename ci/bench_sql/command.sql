-- The SQL of one command, POST /v1/orders/{id}/change_note of the example shop, statement
-- for statement as the services send it (see post.sql for the layout). The command runs
-- on one of the orders ci/bench.py seeded (ids md5('seed-<i>'), i in 1..:orders), as the
-- load does through the gateway. Billing lets the event pass by without a statement: it
-- does not subscribe to it.
\set n random(1, 1000000000000000)
\set o random(1, :orders)
SET search_path = orders;
-- orders: the change in two statements (platform::keyed_write): one reads the key and the
-- row it is decided from, one writes the row if it is still at that version, with its
-- outbox row and key; no transaction around them
SELECT k.request_sha256 AS idempotency_request_sha256, k.response AS idempotency_response, r.* FROM (SELECT 1) AS one LEFT JOIN (SELECT request_sha256, response FROM idempotency_keys WHERE operation = 'ChangeNoteOrder' AND scope = :scope AND key = md5(:n::text)) AS k ON true LEFT JOIN (SELECT "id", "customer_id", "total_cents", "note", (EXTRACT(EPOCH FROM "created_at") * 1000000)::BIGINT AS "created_at_micros", "version", "state" FROM "orders" WHERE "id" = md5('seed-' || :o::text)::uuid) AS r ON true \gset
WITH changed AS (UPDATE "orders" SET "customer_id" = 'customer-1', "total_cents" = 1250, "note" = 'note ' || :n::text, "version" = :version::bigint + 1, "state" = 'pending' WHERE "id" = md5('seed-' || :o::text)::uuid AND "version" = :version AND (cardinality(ARRAY[]::text[]) = 0 OR "state" = ANY(ARRAY[]::text[])) RETURNING 1), recorded AS (INSERT INTO outbox (id, topic, event_type, aggregate_type, aggregate_id, aggregate_version, payload, headers) SELECT md5((:n::bigint + 1)::text)::uuid, 'shop.orders.order.v1', 'shop.orders.v1.OrderNoteChanged', 'Order', md5('seed-' || :o::text)::uuid, :version::bigint + 1, decode(repeat('0a', 150), 'hex'), '{"correlation-id": "5b0c7a52-3c7e-4a8e-9f4e-2f3c1b9e8d11", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x-user-id": "bench"}'::jsonb WHERE EXISTS (SELECT 1 FROM changed)), claimed AS (INSERT INTO idempotency_keys (operation, scope, key, request_sha256, response) SELECT 'ChangeNoteOrder', :scope, md5(:n::text), sha256(:n::text::bytea), decode(repeat('0a', 100), 'hex') WHERE EXISTS (SELECT 1 FROM changed)) SELECT count(*) FROM changed;
-- orders: the relay, committing asynchronously
BEGIN;
SET LOCAL synchronous_commit = off;
SELECT aggregate_id FROM ( SELECT aggregate_id, min(created_at) AS since FROM outbox WHERE published_at IS NULL AND parked_at IS NULL GROUP BY aggregate_id ORDER BY since LIMIT 100 ) AS pending WHERE pg_try_advisory_xact_lock(2828, hashtext(aggregate_id::text));
SELECT id, topic, event_type, aggregate_id, payload, headers FROM outbox WHERE published_at IS NULL AND parked_at IS NULL AND aggregate_id = ANY(ARRAY[md5('seed-' || :o::text)::uuid]) ORDER BY aggregate_id, aggregate_version, created_at, id LIMIT 100;
UPDATE outbox SET published_at = now() WHERE id = ANY(ARRAY[md5((:n::bigint + 1)::text)::uuid]);
COMMIT;
