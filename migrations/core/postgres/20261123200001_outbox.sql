-- The transactional outbox (src/services/outbox.rs): records a system writes in the same
-- transaction as its data, for the relay to publish. Times are Unix milliseconds, set by
-- the relay's clock, so one SQL text serves both engines.
CREATE TABLE IF NOT EXISTS outbox (
    id            BIGSERIAL PRIMARY KEY,
    topic         TEXT NOT NULL,
    msg_key       TEXT,
    version       BIGINT,
    payload       TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_by    TEXT,
    claimed_until BIGINT,
    published_at  BIGINT
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
