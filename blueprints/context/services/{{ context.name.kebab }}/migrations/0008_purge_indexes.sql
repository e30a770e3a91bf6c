-- The relay's purge deletes old rows in batches, oldest first (`platform::relay::purge`):
-- these indexes let each batch find its rows without reading the table. Without them the
-- purge was one DELETE over the whole table, which outgrew the statement timeout.
-- Built in the migration's transaction: writes to these tables wait for one index build.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX inbox_received ON inbox (received_at);
