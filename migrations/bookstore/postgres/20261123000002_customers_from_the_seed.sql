-- A database the original bookstore server filled already has
-- `customers (id TEXT PRIMARY KEY, name TEXT, email TEXT)`, which the first migration's
-- CREATE TABLE IF NOT EXISTS keeps as it is. Bring it to our schema: add what is missing,
-- never drop or rewrite a row. (Its name and email stay nullable: a NULL there is read
-- back as empty text rather than refused.)
ALTER TABLE customers ADD COLUMN IF NOT EXISTS updated_at TIMESTAMPTZ NOT NULL DEFAULT now();
