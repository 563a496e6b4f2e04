-- The transactional outbox (src/services/outbox.rs): records a system writes in the same
-- transaction as its data, for the relay to publish. Times are Unix milliseconds, set by
-- the relay's clock, so one SQL text serves both engines. AUTOINCREMENT: ids are never
-- reused once published rows are pruned, so they keep the order rows were written in.
CREATE TABLE IF NOT EXISTS outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    topic         TEXT NOT NULL,
    msg_key       TEXT,
    version       INTEGER,
    payload       TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    claimed_by    TEXT,
    claimed_until INTEGER,
    published_at  INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
