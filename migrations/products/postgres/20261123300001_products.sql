-- The products pipeline (seed 5). Prices are NUMERIC(14,2); the availability time is RFC
-- 3339 text in UTC (one canonical form, the same on every engine, as in the other systems).
CREATE TABLE IF NOT EXISTS products (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    description  TEXT,
    price        NUMERIC(14,2) NOT NULL CHECK (price >= 0),
    currency     TEXT NOT NULL CHECK (length(currency) = 3),
    quantity     BIGINT NOT NULL CHECK (quantity >= 0),
    available_at TEXT NOT NULL,
    category     TEXT,
    -- The name in lower case, for word search alike on every engine.
    search       TEXT NOT NULL,
    -- 1 when first stored, one more at every change; published with each announcement.
    version      BIGINT NOT NULL,
    -- The write that made this version: only that write adds the version's outbox row.
    write_id     TEXT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS products_category ON products (category, id);
