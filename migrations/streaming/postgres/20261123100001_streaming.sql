-- The streaming platform (seed 3): users and what they do. Times are RFC 3339 text (one
-- canonical form, the same on every engine); money is NUMERIC(10,2).
CREATE TABLE IF NOT EXISTS usuarios (
    user_id      BIGINT PRIMARY KEY,
    nome         TEXT NOT NULL,
    email        TEXT NOT NULL UNIQUE,
    cpf          TEXT NOT NULL UNIQUE,
    data_criacao TEXT NOT NULL
);
-- One subscription per user; a new plan replaces the old.
CREATE TABLE IF NOT EXISTS assinaturas (
    user_id BIGINT PRIMARY KEY REFERENCES usuarios (user_id),
    plano   TEXT NOT NULL,
    inicio  TEXT NOT NULL,
    fim     TEXT NOT NULL,
    status  TEXT NOT NULL
);
-- Insert-only, as in the seed; the id is the event's correlation id, so a redelivered
-- event cannot pay twice.
CREATE TABLE IF NOT EXISTS pagamentos (
    id              TEXT PRIMARY KEY,
    user_id         BIGINT NOT NULL REFERENCES usuarios (user_id),
    valor           NUMERIC(10, 2) NOT NULL,
    forma_pagamento TEXT NOT NULL,
    status          TEXT NOT NULL,
    data_pagamento  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pagamentos_user ON pagamentos (user_id, data_pagamento);
-- One set of preferences per user.
CREATE TABLE IF NOT EXISTS preferencias (
    user_id          BIGINT PRIMARY KEY REFERENCES usuarios (user_id),
    idioma           TEXT NOT NULL,
    notificacoes     BOOLEAN NOT NULL,
    tema             TEXT NOT NULL,
    data_atualizacao TEXT NOT NULL
);
-- Every event processed, with the reply sent: written in the same transaction as the
-- event's effect, so an event has exactly one effect however often it is delivered.
CREATE TABLE IF NOT EXISTS respostas (
    correlation_id TEXT PRIMARY KEY,
    resposta       TEXT NOT NULL
);
