//! The streaming platform's SQL: users, subscriptions, payments, preferences and the
//! ledger of processed events — one text per statement for SQLite and PostgreSQL.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use serde_json::{Value, json};

use super::entities::{Command, Usuario};
use super::routing::ErrorKind;
use crate::store::{self, Page, RelationalStore, SqlRow, SqlValue, Statement, StoreResult};

/// What a successful relational command replies: a message and the stored record. The
/// processor sends only [`Command::is_relational`] commands here.
pub fn success(command: &Command) -> (String, Value) {
    match command {
        Command::Criar(u) => (
            format!("Usuário {} criado", u.user_id),
            serde_json::to_value(u).expect("serializes"),
        ),
        Command::Assinar(a) => (
            format!("Assinatura {} do usuário {} atualizada", a.plano, a.user_id),
            serde_json::to_value(a).expect("serializes"),
        ),
        Command::Pagar(p) => (
            format!(
                "Pagamento de {} do usuário {} registrado",
                p.valor, p.user_id
            ),
            serde_json::to_value(p).expect("serializes"),
        ),
        Command::Configurar(c) => (
            format!("Preferências do usuário {} atualizadas", c.user_id),
            serde_json::to_value(c).expect("serializes"),
        ),
        other => unreachable!("{other:?} is not kept in the relational store"),
    }
}

/// The effect of `command`, for the transaction that also records its reply.
fn effect(correlation_id: &str, command: &Command) -> Statement {
    match command {
        Command::Criar(u) => Statement::new(
            "INSERT INTO usuarios (user_id, nome, email, cpf, data_criacao) VALUES ($1, $2, $3, $4, $5)",
            vec![
                u.user_id.into(),
                u.nome.as_str().into(),
                u.email.as_str().into(),
                u.cpf.as_str().into(),
                u.data_criacao.as_str().into(),
            ],
        ),
        Command::Assinar(a) => Statement::new(
            "INSERT INTO assinaturas (user_id, plano, inicio, fim, status) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id) DO UPDATE SET plano = excluded.plano, inicio = excluded.inicio,
               fim = excluded.fim, status = excluded.status",
            vec![
                a.user_id.into(),
                a.plano.as_str().into(),
                a.inicio.as_str().into(),
                a.fim.as_str().into(),
                a.status.as_str().into(),
            ],
        ),
        Command::Pagar(p) => Statement::new(
            "INSERT INTO pagamentos (id, user_id, valor, forma_pagamento, status, data_pagamento)
             VALUES ($1, $2, CAST($3 AS NUMERIC), $4, $5, $6)",
            vec![
                correlation_id.into(),
                p.user_id.into(),
                p.valor.as_str().into(),
                p.forma_pagamento.as_str().into(),
                p.status.as_str().into(),
                p.data_pagamento.as_str().into(),
            ],
        ),
        Command::Configurar(c) => Statement::new(
            "INSERT INTO preferencias (user_id, idioma, notificacoes, tema, data_atualizacao)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id) DO UPDATE SET idioma = excluded.idioma,
               notificacoes = excluded.notificacoes, tema = excluded.tema,
               data_atualizacao = excluded.data_atualizacao",
            vec![
                c.user_id.into(),
                c.idioma.as_str().into(),
                c.notificacoes.into(),
                c.tema.as_str().into(),
                c.data_atualizacao.as_str().into(),
            ],
        ),
        other => unreachable!("{other:?} is not kept in the relational store"),
    }
}

fn ledger(correlation_id: &str, reply: &Value) -> Statement {
    Statement::new(
        "INSERT INTO respostas (correlation_id, resposta) VALUES ($1, $2)",
        vec![correlation_id.into(), reply.to_string().into()],
    )
}

fn usuario(row: &SqlRow) -> Usuario {
    Usuario {
        user_id: row.int("user_id").unwrap_or_default(),
        nome: row.text("nome").unwrap_or_default(),
        email: row.text("email").unwrap_or_default(),
        cpf: row.text("cpf").unwrap_or_default(),
        data_criacao: row.text("data_criacao").unwrap_or_default(),
    }
}

const USUARIO: &str = "SELECT user_id, nome, email, cpf, data_criacao FROM usuarios";

/// Which user ids, e-mails and CPFs are taken: read once for a batch, then kept up to date
/// in memory as the batch creates users, so a later event in the same batch sees an
/// earlier one's user.
#[derive(Debug, Default)]
pub struct Taken {
    ids: HashSet<i64>,
    emails: HashSet<String>,
    cpfs: HashSet<String>,
}

impl Taken {
    /// Why `command` cannot be applied (an unknown user, a taken e-mail…), if so.
    pub fn refusal(&self, command: &Command) -> Option<(ErrorKind, String)> {
        match command {
            Command::Criar(u) => {
                let what = if self.ids.contains(&u.user_id) {
                    format!("o user_id {}", u.user_id)
                } else if self.emails.contains(&u.email) {
                    format!("o e-mail {}", u.email)
                } else if self.cpfs.contains(&u.cpf) {
                    "este CPF".to_string()
                } else {
                    return None;
                };
                Some((
                    ErrorKind::Conflict,
                    format!("Já existe um usuário com {what}"),
                ))
            }
            other => other
                .user_id()
                .filter(|id| !self.ids.contains(id))
                .map(|id| (ErrorKind::NotFound, format!("Usuário {id} não encontrado"))),
        }
    }

    /// Records the user `command` creates, if any.
    pub fn add(&mut self, command: &Command) {
        if let Command::Criar(u) = command {
            self.ids.insert(u.user_id);
            self.emails.insert(u.email.clone());
            self.cpfs.insert(u.cpf.clone());
        }
    }
}

/// The statements that apply `command` and record `reply` as the event's one outcome: the
/// ledger row's primary key makes a second effect of the same event impossible (a
/// concurrent duplicate fails its transaction).
pub fn applied(correlation_id: &str, command: &Command, reply: &Value) -> [Statement; 2] {
    [
        ledger(correlation_id, reply),
        effect(correlation_id, command),
    ]
}

/// The statement that records a reply as the event's one outcome (an error, or the
/// reply of an event whose effect is in the other stores).
pub fn recorded(correlation_id: &str, reply: &Value) -> Statement {
    ledger(correlation_id, reply)
}

/// The platform's records, read and written through any [`RelationalStore`].
#[async_trait]
pub trait Users {
    /// The replies recorded for those of `correlation_ids` already processed.
    async fn replies_for(&self, correlation_ids: &[String]) -> StoreResult<HashMap<String, Value>>;
    /// Records `reply` as an event's outcome, unless one is recorded already.
    async fn record_reply(&self, correlation_id: &str, reply: &Value) -> StoreResult<()>;
    /// Which of the users `commands` name or would create exist already.
    async fn taken(&self, commands: &[&Command]) -> StoreResult<Taken>;
    /// A user with subscription, preferences and latest payments, as the gateway answers.
    async fn user_view(&self, user_id: i64) -> StoreResult<Option<Value>>;
    /// Users ordered by id, one page; only those with this e-mail when given.
    async fn users(&self, email: Option<&str>, page: Page) -> StoreResult<Vec<Usuario>>;
    /// How many users, payments and processed events are stored.
    async fn counts(&self) -> StoreResult<(i64, i64, i64)>;
}

#[async_trait]
impl<S: RelationalStore + ?Sized> Users for S {
    async fn replies_for(&self, correlation_ids: &[String]) -> StoreResult<HashMap<String, Value>> {
        let statements = store::select_in(
            "SELECT correlation_id, resposta FROM respostas",
            "correlation_id",
            correlation_ids,
        );
        Ok(store::select_rows(self, &statements)
            .await?
            .iter()
            .filter_map(|row| {
                let reply = serde_json::from_str(&row.text("resposta")?).ok()?;
                Some((row.text("correlation_id")?, reply))
            })
            .collect())
    }

    async fn record_reply(&self, correlation_id: &str, reply: &Value) -> StoreResult<()> {
        let mut statement = ledger(correlation_id, reply);
        statement
            .sql
            .push_str(" ON CONFLICT (correlation_id) DO NOTHING");
        self.transaction(&[statement]).await.map(drop)
    }

    async fn taken(&self, commands: &[&Command]) -> StoreResult<Taken> {
        // Three IN lists, not a chain of ORs: SQLite caps an expression's depth at 1,000.
        let mut args: Vec<SqlValue> = Vec::new();
        let mut lists: [Vec<String>; 3] = Default::default();
        let mut push = |list: usize, value: SqlValue| {
            args.push(value);
            lists[list].push(format!("${}", args.len()));
        };
        for command in commands {
            let Some(user_id) = command.user_id() else {
                continue;
            };
            push(0, user_id.into());
            if let Command::Criar(u) = command {
                push(1, u.email.as_str().into());
                push(2, u.cpf.as_str().into());
            }
        }
        let conditions: Vec<String> = ["user_id", "email", "cpf"]
            .iter()
            .zip(&lists)
            .filter(|(_, list)| !list.is_empty())
            .map(|(column, list)| format!("{column} IN ({})", list.join(", ")))
            .collect();
        let mut taken = Taken::default();
        if conditions.is_empty() {
            return Ok(taken);
        }
        let rows = self
            .select(&Statement::new(
                format!("{USUARIO} WHERE {}", conditions.join(" OR ")),
                args,
            ))
            .await?;
        for user in rows.iter().map(usuario) {
            taken.ids.insert(user.user_id);
            taken.emails.insert(user.email);
            taken.cpfs.insert(user.cpf);
        }
        Ok(taken)
    }

    async fn user_view(&self, user_id: i64) -> StoreResult<Option<Value>> {
        let results = self
            .transaction(&[
                Statement::new(format!("{USUARIO} WHERE user_id = $1"), vec![user_id.into()]),
                Statement::new(
                    "SELECT plano, inicio, fim, status FROM assinaturas WHERE user_id = $1",
                    vec![user_id.into()],
                ),
                Statement::new(
                    "SELECT idioma, notificacoes, tema, data_atualizacao FROM preferencias WHERE user_id = $1",
                    vec![user_id.into()],
                ),
                Statement::new(
                    "SELECT id, CAST(valor AS TEXT) AS valor, forma_pagamento, status, data_pagamento
                     FROM pagamentos WHERE user_id = $1 ORDER BY data_pagamento DESC, id LIMIT 10",
                    vec![user_id.into()],
                ),
            ])
            .await?;
        let Some(user) = results[0].first().map(usuario) else {
            return Ok(None);
        };
        let assinatura = results[1].first().map(|r| {
            json!({"plano": r.text("plano"), "inicio": r.text("inicio"), "fim": r.text("fim"),
                   "status": r.text("status")})
        });
        let preferencias = results[2].first().map(|r| {
            json!({"idioma": r.text("idioma"), "notificacoes": r.int("notificacoes").map(|n| n != 0)
                       .or_else(|| r.text("notificacoes").map(|t| t == "true")),
                   "tema": r.text("tema"), "data_atualizacao": r.text("data_atualizacao")})
        });
        let pagamentos: Vec<Value> = results[3]
            .iter()
            .map(|r| {
                let valor = r
                    .text("valor")
                    .and_then(|v| v.parse::<f64>().ok())
                    .map(|v| format!("{v:.2}"));
                json!({"id": r.text("id"), "valor": valor, "forma_pagamento": r.text("forma_pagamento"),
                       "status": r.text("status"), "data_pagamento": r.text("data_pagamento")})
            })
            .collect();
        let mut view = serde_json::to_value(user).expect("serializes");
        let map = view.as_object_mut().expect("an object");
        map.insert("assinatura".into(), assinatura.unwrap_or(Value::Null));
        map.insert("preferencias".into(), preferencias.unwrap_or(Value::Null));
        map.insert("pagamentos".into(), pagamentos.into());
        Ok(Some(view))
    }

    async fn users(&self, email: Option<&str>, page: Page) -> StoreResult<Vec<Usuario>> {
        let rows = self
            .select(&Statement::new(
                format!(
                    "{USUARIO} WHERE (CAST($1 AS TEXT) IS NULL OR email = $1) ORDER BY user_id LIMIT $2 OFFSET $3"
                ),
                vec![
                    SqlValue::Text(email.map(str::to_string)),
                    SqlValue::Int(Some(i64::try_from(page.limit).unwrap_or(i64::MAX))),
                    SqlValue::Int(Some(i64::try_from(page.skip).unwrap_or(i64::MAX))),
                ],
            ))
            .await?;
        Ok(rows.iter().map(usuario).collect())
    }

    async fn counts(&self) -> StoreResult<(i64, i64, i64)> {
        let results = self
            .transaction(&[
                Statement::new("SELECT COUNT(*) AS n FROM usuarios", vec![]),
                Statement::new("SELECT COUNT(*) AS n FROM pagamentos", vec![]),
                Statement::new("SELECT COUNT(*) AS n FROM respostas", vec![]),
            ])
            .await?;
        let n = |i: usize| results[i].first().and_then(|r| r.int("n")).unwrap_or(0);
        Ok((n(0), n(1), n(2)))
    }
}
