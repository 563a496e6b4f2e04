-- Customers, as in the seed: id, name, email. The id is the entity id from the event,
-- so a redelivered event upserts the same row.
CREATE TABLE IF NOT EXISTS customers (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    email      TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Looking customers up by e-mail is the common query; e-mail is not unique (families share one).
CREATE INDEX IF NOT EXISTS customers_email ON customers (email);
