-- The SQL of one POST /v1/orders of the example shop (examples/shop.toml), statement for
-- statement as the services send it, for pgbench: the limit PostgreSQL sets for the same
-- work (ci/bench.py, phase "system"). Both services' tables live in one database, in the
-- schemas `orders` and `billing` (built from the generated migrations), since a pgbench
-- script talks to one database; the `SET search_path` between them is the script's only
-- statement the services do not send. Ids come from :n, so every transaction writes new
-- rows; payloads are of the sizes the services write.
--
-- A template: ci/bench_limit.py turns it into the script of one concurrency from what the
-- services sent PostgreSQL in that concurrency's run (pg_stat_statements). A block
--   -- @each <database> <text of its statement>   ...   [-- @else ...]   -- @end
-- runs as often per request as the services sent the statement whose normalised text
-- contains <text> in <database> (a nested block: as often per run of the block around it),
-- so the relays' passes and their batch sizes follow the services'. The relays' statements
-- pass on what they claimed and read (\gset), wrapped in an aggregate that pgbench can keep.
\set n random(1, 1000000000000000)
SET search_path = orders;
-- orders: the create, one statement: idempotency key, row and outbox row (platform::keyed_write)
WITH claimed AS (INSERT INTO idempotency_keys (operation, scope, key, request_sha256, response) VALUES ('CreateOrder', :scope, md5(:n::text), sha256(:n::text::bytea), decode(repeat('0a', 96), 'hex')) ON CONFLICT (operation, scope, key) DO NOTHING RETURNING 1), created AS (INSERT INTO "orders" ("id", "customer_id", "total_cents", "note", "created_at", "version", "state") SELECT md5(:n::text)::uuid, 'customer-1', 1250, 'bench', TIMESTAMPTZ 'epoch' + (extract(epoch FROM now()) * 1000000)::bigint * INTERVAL '1 microsecond', 1, 'pending' WHERE EXISTS (SELECT 1 FROM claimed)), recorded AS (INSERT INTO outbox (id, topic, event_type, aggregate_type, aggregate_id, aggregate_version, payload, headers) SELECT md5((:n::bigint + 1)::text)::uuid, 'shop.orders.order.v1', 'shop.orders.v1.OrderCreated', 'Order', md5(:n::text)::uuid, 1, decode(repeat('0a', 140), 'hex'), '{"correlation-id": "5b0c7a52-3c7e-4a8e-9f4e-2f3c1b9e8d11", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x-user-id": "bench"}'::jsonb WHERE EXISTS (SELECT 1 FROM claimed)) SELECT count(*) FROM claimed;
-- @include relay shop_orders
SET search_path = billing;
-- billing: the consumer's transaction: inbox row, then the create as orders' is
-- @each shop_billing INSERT INTO inbox
BEGIN;
INSERT INTO inbox (event_id, topic, event_type) VALUES (md5((:n::bigint + 1)::text)::uuid, 'shop.orders.order.v1', 'shop.orders.v1.OrderCreated') ON CONFLICT (event_id) DO NOTHING;
WITH claimed AS (INSERT INTO idempotency_keys (operation, scope, key, request_sha256, response) VALUES ('CreateInvoice', :scope, 'event:' || md5((:n::bigint + 1)::text)::uuid, sha256((:n::bigint + 1)::text::bytea), decode(repeat('0a', 96), 'hex')) ON CONFLICT (operation, scope, key) DO NOTHING RETURNING 1), created AS (INSERT INTO "invoices" ("id", "amount_cents", "order_id", "state", "created_at", "version") SELECT md5((:n::bigint + 2)::text)::uuid, 1250, md5(:n::text)::uuid::text, 'open', TIMESTAMPTZ 'epoch' + (extract(epoch FROM now()) * 1000000)::bigint * INTERVAL '1 microsecond', 1 WHERE EXISTS (SELECT 1 FROM claimed)), recorded AS (INSERT INTO outbox (id, topic, event_type, aggregate_type, aggregate_id, aggregate_version, payload, headers) SELECT md5((:n::bigint + 3)::text)::uuid, 'shop.billing.invoice.v1', 'shop.billing.v1.InvoiceCreated', 'Invoice', md5((:n::bigint + 2)::text)::uuid, 1, decode(repeat('0a', 140), 'hex'), '{"correlation-id": "5b0c7a52-3c7e-4a8e-9f4e-2f3c1b9e8d11", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x-user-id": "bench"}'::jsonb WHERE EXISTS (SELECT 1 FROM claimed)) SELECT count(*) FROM claimed;
COMMIT;
-- @end
-- @include relay shop_billing
