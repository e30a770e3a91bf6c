-- Idempotency keys belong to whoever sent them (the end user, else the calling service), so
-- two clients that pick the same key never see each other's answers. Keys from before this
-- migration keep an empty scope: a retry of one of them does the work again, once.
ALTER TABLE idempotency_keys ADD COLUMN scope TEXT NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (operation, scope, key);

-- Keys are purged by age, in batches.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
