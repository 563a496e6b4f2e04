//! The streaming platform's events and records, and the one place that decides whether an
//! event is valid.
//!
//! An event on `user_events` is the seed's flat JSON: `event_type`, `correlation_id`,
//! `timestamp`, `source`, `target`, and the payload's fields at the top level. Something
//! that is not an event at all (not JSON, no `event_type` or `correlation_id`) is
//! dead-lettered ([`parse_event`]); an event whose fields are wrong is answered with an
//! error reply ([`command`]), since its sender waits on its correlation id.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::wire::{self, Invalid};

/// The plans the seed offers.
pub const PLANOS: [&str; 3] = ["Básico", "Padrão", "Premium"];
/// The payment methods the seed offers.
pub const FORMAS_PAGAMENTO: [&str; 3] = ["Cartão", "Pix", "Boleto"];
/// The kinds of title in the catalog.
pub const TIPOS: [&str; 2] = ["filme", "serie"];
/// Largest payment: NUMERIC(10, 2) holds less than 10^8.
pub const MAX_VALOR: f64 = 99_999_999.99;

/// What an event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A new user.
    CriarUsuario,
    /// A user's plan.
    AtualizarAssinatura,
    /// A payment by a user.
    PagamentoRealizado,
    /// A user's preferences.
    AtualizarConfig,
    /// A user watched (part of) a title.
    RegistrarVisualizacao,
    /// Read a user's viewing history.
    ObterHistoricoVisualizacao,
    /// Work out a user's recommendations and keep them.
    GerarRecomendacoes,
    /// Read a user's recommendations.
    ObterRecomendacoes,
    /// A user rates a title, 1 to 5 (one rating per user and title).
    AvaliarConteudo,
    /// A user opens a session on a device.
    CriarSessao,
    /// A session shows activity (a heartbeat): it lives on.
    AtualizarAtividadeSessao,
    /// A session ends (logout).
    EncerrarSessao,
    /// Read a user's sessions.
    ListarSessoesUsuario,
    /// Put a title in the cache.
    CacheConteudo,
    /// Read a title through the cache.
    ObterCacheConteudo,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 15] = [
        EventType::CriarUsuario,
        EventType::AtualizarAssinatura,
        EventType::PagamentoRealizado,
        EventType::AtualizarConfig,
        EventType::RegistrarVisualizacao,
        EventType::ObterHistoricoVisualizacao,
        EventType::GerarRecomendacoes,
        EventType::ObterRecomendacoes,
        EventType::AvaliarConteudo,
        EventType::CriarSessao,
        EventType::AtualizarAtividadeSessao,
        EventType::EncerrarSessao,
        EventType::ListarSessoesUsuario,
        EventType::CacheConteudo,
        EventType::ObterCacheConteudo,
    ];

    /// The name on the wire (`criar_usuario`, …).
    pub fn name(self) -> &'static str {
        match self {
            EventType::CriarUsuario => "criar_usuario",
            EventType::AtualizarAssinatura => "atualizar_assinatura",
            EventType::PagamentoRealizado => "pagamento_realizado",
            EventType::AtualizarConfig => "atualizar_config",
            EventType::RegistrarVisualizacao => "registrar_visualizacao",
            EventType::ObterHistoricoVisualizacao => "obter_historico_visualizacao",
            EventType::GerarRecomendacoes => "gerar_recomendacoes",
            EventType::ObterRecomendacoes => "obter_recomendacoes",
            EventType::AvaliarConteudo => "avaliar_conteudo",
            EventType::CriarSessao => "criar_sessao",
            EventType::AtualizarAtividadeSessao => "atualizar_atividade_sessao",
            EventType::EncerrarSessao => "encerrar_sessao",
            EventType::ListarSessoesUsuario => "listar_sessoes_usuario",
            EventType::CacheConteudo => "cache_conteudo",
            EventType::ObterCacheConteudo => "obter_cache_conteudo",
        }
    }

    /// The event type named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// True for the events that only read: nothing is recorded for them, and a
    /// redelivery simply answers again.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            EventType::ObterHistoricoVisualizacao
                | EventType::ObterRecomendacoes
                | EventType::ListarSessoesUsuario
                | EventType::ObterCacheConteudo
        )
    }
}

/// An event read off `user_events`: its envelope fields and its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `event_type`, as sent (it may name no known type: that is answered, not dropped).
    pub event_type: String,
    /// The request's correlation id.
    pub correlation_id: String,
    /// When it was sent, canonical RFC 3339 (now, if it did not say).
    pub timestamp: String,
    /// The whole object, payload fields included.
    pub fields: Map<String, Value>,
}

/// Reads an event; `Err` only for what is not an event at all (dead-lettered).
pub fn parse_event(payload: &[u8]) -> Result<Event, Invalid> {
    let fields = wire::object(payload)?;
    let event_type = wire::text(&fields, "event_type")?;
    let correlation_id = wire::id(&fields, "correlation_id")?;
    let timestamp = match fields.get("timestamp") {
        None | Some(Value::Null) => wire::format_timestamp(&chrono::Utc::now()),
        Some(v) => wire::timestamp(v)
            .map(|t| wire::format_timestamp(&t))
            .unwrap_or_else(|_| wire::format_timestamp(&chrono::Utc::now())),
    };
    Ok(Event {
        event_type,
        correlation_id,
        timestamp,
        fields,
    })
}

/// A user (table `usuarios`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usuario {
    /// The user's number.
    pub user_id: i64,
    /// Full name.
    pub nome: String,
    /// E-mail address, unique.
    pub email: String,
    /// CPF, 11 digits with valid check digits, unique.
    pub cpf: String,
    /// When the user was created (RFC 3339).
    pub data_criacao: String,
}

/// A user's subscription (table `assinaturas`, one per user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assinatura {
    /// Whose.
    pub user_id: i64,
    /// `Básico`, `Padrão` or `Premium`.
    pub plano: String,
    /// Start (RFC 3339).
    pub inicio: String,
    /// End (RFC 3339).
    pub fim: String,
    /// `ativa`, …
    pub status: String,
}

/// A payment (table `pagamentos`, insert-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pagamento {
    /// Whose.
    pub user_id: i64,
    /// Amount with two decimals, as text (`19.90`).
    pub valor: String,
    /// `Cartão`, `Pix` or `Boleto`.
    pub forma_pagamento: String,
    /// `aprovado`, …
    pub status: String,
    /// When (RFC 3339).
    pub data_pagamento: String,
}

/// A user's preferences (table `preferencias`, one per user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Preferencias {
    /// Whose.
    pub user_id: i64,
    /// Language (`pt-BR`, …).
    pub idioma: String,
    /// Whether to send notifications.
    pub notificacoes: bool,
    /// `claro` or `escuro`, …
    pub tema: String,
    /// When they last changed (RFC 3339).
    pub data_atualizacao: String,
}

/// A view of a title (collection `historico_visualizacao`, one document per event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Visualizacao {
    /// The event's correlation id: a redelivered view is the same document.
    pub id: String,
    /// Who watched.
    pub user_id: i64,
    /// The title's id in the catalog.
    pub conteudo_id: String,
    /// The title, from the catalog.
    pub titulo: String,
    /// `filme` or `serie`, from the catalog.
    pub tipo: String,
    /// Minutes watched in this view.
    pub tempo_assistido: i64,
    /// How far into the title, in percent (0 to 100).
    pub posicao: f64,
    /// Whether the title was finished (`posicao >= 90`).
    pub concluido: bool,
    /// When (RFC 3339).
    pub data: String,
}

/// A session: a user on a device (hash `sessao:<id>`, with a time to live).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sessao {
    /// Its id (the gateway makes one up).
    pub session_id: String,
    /// Whose.
    pub user_id: i64,
    /// `web`, `android`, `tv`, …
    pub dispositivo: String,
    /// Where from (a city, as the client says).
    pub localizacao: String,
    /// When it started (RFC 3339).
    pub inicio: String,
}

/// What a valid event asks the processor to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Create a user.
    Criar(Usuario),
    /// Set a user's subscription.
    Assinar(Assinatura),
    /// Record a payment.
    Pagar(Pagamento),
    /// Set a user's preferences.
    Configurar(Preferencias),
    /// Record a view. The title and type are filled in from the catalog.
    Assistir(Visualizacao),
    /// Rate a title.
    Avaliar {
        /// Who.
        user_id: i64,
        /// Which title.
        conteudo_id: String,
        /// 1 to 5.
        nota: i64,
    },
    /// Read a user's history, newest first.
    Historico {
        /// Whose.
        user_id: i64,
        /// Only `filme` or `serie`.
        tipo: Option<String>,
        /// Only finished (or unfinished) views.
        concluido: Option<bool>,
        /// At most this many (1 to 100; 20 when not given).
        limit: u64,
    },
    /// Work out and keep a user's recommendations.
    Recomendar {
        /// Whose.
        user_id: i64,
    },
    /// Read a user's kept recommendations.
    Recomendacoes {
        /// Whose.
        user_id: i64,
    },
    /// Open a session.
    AbrirSessao(Sessao),
    /// A session's heartbeat.
    Atividade {
        /// Which session.
        session_id: String,
    },
    /// End a session.
    Encerrar {
        /// Which session.
        session_id: String,
    },
    /// Read a user's sessions.
    Sessoes {
        /// Whose.
        user_id: i64,
        /// Only those not ended.
        ativas_apenas: bool,
    },
    /// Put a title in the cache.
    Cachear {
        /// Which title.
        conteudo_id: String,
    },
    /// Read a title through the cache.
    LerCache {
        /// Which title.
        conteudo_id: String,
    },
}

impl Command {
    /// The user who must exist for it to be applied, if any: reads and session-id
    /// commands name none.
    pub fn user_id(&self) -> Option<i64> {
        match self {
            Command::Criar(u) => Some(u.user_id),
            Command::Assinar(a) => Some(a.user_id),
            Command::Pagar(p) => Some(p.user_id),
            Command::Configurar(c) => Some(c.user_id),
            Command::Assistir(v) => Some(v.user_id),
            Command::Avaliar { user_id, .. }
            | Command::Recomendar { user_id }
            | Command::AbrirSessao(Sessao { user_id, .. }) => Some(*user_id),
            Command::Historico { .. }
            | Command::Recomendacoes { .. }
            | Command::Atividade { .. }
            | Command::Encerrar { .. }
            | Command::Sessoes { .. }
            | Command::Cachear { .. }
            | Command::LerCache { .. } => None,
        }
    }

    /// True for the commands kept in the relational store (users and what they pay);
    /// the others go to the document and key-value stores.
    pub fn is_relational(&self) -> bool {
        matches!(
            self,
            Command::Criar(_) | Command::Assinar(_) | Command::Pagar(_) | Command::Configurar(_)
        )
    }

    /// True for the commands that only read: they have no effect to record, so a
    /// redelivery simply answers again.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Command::Historico { .. }
                | Command::Recomendacoes { .. }
                | Command::Sessoes { .. }
                | Command::LerCache { .. }
        )
    }
}

/// A title id: a whole number from 1 (or its text), as the catalog numbers them.
pub fn conteudo_id(fields: &Map<String, Value>) -> Result<String, Invalid> {
    positive_id(fields, "conteudo_id").map(|n| n.to_string())
}

/// A required id that is a whole number from 1: a number, or its text (`"7"`, `7.0`).
fn positive_id(fields: &Map<String, Value>, field: &'static str) -> Result<i64, Invalid> {
    match fields.get(field) {
        None | Some(Value::Null) => Err(Invalid::Missing(field)),
        Some(v) => match wire::whole_number(v) {
            Ok(n) if n >= 1 => Ok(n),
            Ok(n) => Err(Invalid::field(
                field,
                format!("{n} is not an id (1 or more)"),
            )),
            Err(problem) => Err(Invalid::field(field, problem)),
        },
    }
}

/// An optional whole number within `range`, with a default.
fn number_in(
    fields: &Map<String, Value>,
    field: &'static str,
    range: std::ops::RangeInclusive<i64>,
    default: i64,
) -> Result<i64, Invalid> {
    match fields.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match wire::whole_number(v) {
            Ok(n) if range.contains(&n) => Ok(n),
            Ok(n) => Err(Invalid::field(
                field,
                format!("{n} is outside {} to {}", range.start(), range.end()),
            )),
            Err(problem) => Err(Invalid::field(field, problem)),
        },
    }
}

/// An optional number within `range` (0 when absent): a number, whole or not, or its
/// text — the seed's clients send `posicao` and `tempo_assistido` either way.
fn number_within(
    fields: &Map<String, Value>,
    field: &'static str,
    range: std::ops::RangeInclusive<f64>,
) -> Result<f64, Invalid> {
    let value = match fields.get(field) {
        None | Some(Value::Null) => return Ok(0.0),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(other) => {
            return Err(Invalid::field(
                field,
                format!("expected a number, found {}", wire::json_type(other)),
            ));
        }
    };
    match value {
        Some(p) if range.contains(&p) => Ok(p),
        _ => Err(Invalid::field(
            field,
            format!("a number from {} to {}", range.start(), range.end()),
        )),
    }
}

/// An optional boolean: `true`/`false`, or their text.
fn flag(fields: &Map<String, Value>, field: &'static str) -> Result<Option<bool>, Invalid> {
    match fields.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
        Some(other) => Err(Invalid::field(
            field,
            format!("expected true or false, found {other}"),
        )),
    }
}

/// A session id: non-empty text that fits a key.
fn session_id(fields: &Map<String, Value>) -> Result<String, Invalid> {
    let id = wire::id(fields, "session_id")?;
    if id.len() > 100 || id.chars().any(char::is_control) {
        return Err(Invalid::field("session_id", "not a session id"));
    }
    Ok(id)
}

/// A user id: a whole number from 1 (the seed's are integers; text of one is accepted).
pub fn user_id(fields: &Map<String, Value>) -> Result<i64, Invalid> {
    positive_id(fields, "user_id")
}

/// One of `allowed`, or the first when absent.
fn one_of(
    fields: &Map<String, Value>,
    field: &'static str,
    allowed: &[&str],
) -> Result<String, Invalid> {
    let value = wire::text(fields, field)?;
    if allowed.contains(&value.as_str()) {
        Ok(value)
    } else {
        Err(Invalid::field(
            field,
            format!("`{value}` is not one of {}", allowed.join(", ")),
        ))
    }
}

/// Optional text with a default.
fn text_or(
    fields: &Map<String, Value>,
    field: &'static str,
    default: &str,
) -> Result<String, Invalid> {
    match fields.get(field) {
        None | Some(Value::Null) => Ok(default.to_string()),
        Some(_) => wire::text(fields, field),
    }
}

/// An optional time, canonical, with a default.
fn time_or(
    fields: &Map<String, Value>,
    field: &'static str,
    default: &str,
) -> Result<String, Invalid> {
    match fields.get(field) {
        None | Some(Value::Null) => Ok(default.to_string()),
        Some(v) => wire::timestamp(v)
            .map(|t| wire::format_timestamp(&t))
            .map_err(|problem| Invalid::field(field, problem)),
    }
}

/// An amount of money: a number or its text, at least 0, at most two decimals.
pub fn valor(fields: &Map<String, Value>) -> Result<String, Invalid> {
    let text = match fields.get("valor") {
        None | Some(Value::Null) => return Err(Invalid::Missing("valor")),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.trim().replace(',', "."),
        Some(other) => {
            return Err(Invalid::field(
                "valor",
                format!("expected a number, found {}", wire::json_type(other)),
            ));
        }
    };
    let amount: f64 = text
        .parse()
        .map_err(|_| Invalid::field("valor", format!("`{text}` is not an amount")))?;
    let decimals = text
        .split_once('.')
        .map_or(0, |(_, d)| d.trim_end_matches('0').len());
    if !amount.is_finite() || !(0.0..=MAX_VALOR).contains(&amount) {
        return Err(Invalid::field(
            "valor",
            format!("{text} is outside 0 to {MAX_VALOR}"),
        ));
    }
    if decimals > 2 || text.contains(['e', 'E']) {
        return Err(Invalid::field(
            "valor",
            format!("{text} has more than two decimals"),
        ));
    }
    Ok(format!("{amount:.2}"))
}

/// Whether `cpf` (11 digits, punctuation ignored) has valid check digits and is not one
/// digit repeated.
pub fn cpf_is_valid(cpf: &str) -> bool {
    let digits: Vec<u32> = cpf.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() != 11
        || cpf
            .chars()
            .any(|c| !c.is_ascii_digit() && c != '.' && c != '-')
        || digits.iter().all(|d| *d == digits[0])
    {
        return false;
    }
    let check = |n: usize| {
        let sum: u32 = digits[..n]
            .iter()
            .enumerate()
            .map(|(i, d)| d * (n as u32 + 1 - i as u32))
            .sum();
        (sum * 10 % 11) % 10
    };
    check(9) == digits[9] && check(10) == digits[10]
}

/// A CPF's check digits for its first nine digits (the generator's).
pub fn cpf_with_check_digits(nine: [u32; 9]) -> String {
    let mut digits = nine.to_vec();
    for n in [9, 10] {
        let sum: u32 = digits
            .iter()
            .enumerate()
            .map(|(i, d)| d * (n as u32 + 1 - i as u32))
            .sum();
        digits.push((sum * 10 % 11) % 10);
    }
    digits
        .iter()
        .map(|d| char::from_digit(*d, 10).unwrap_or('0'))
        .collect()
}

/// The command a known event asks for; `Err` says why it cannot be done (an error reply).
pub fn command(event: &Event) -> Result<Command, Invalid> {
    let f = &event.fields;
    let now = &event.timestamp;
    let kind = EventType::from_name(&event.event_type).ok_or_else(|| {
        Invalid::field(
            "event_type",
            format!(
                "`{}` is not an event type: {}",
                event.event_type,
                EventType::ALL.map(EventType::name).join(", ")
            ),
        )
    })?;
    Ok(match kind {
        EventType::CriarUsuario => {
            let cpf: String = wire::text(f, "cpf")?
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            if !cpf_is_valid(&cpf) {
                return Err(Invalid::field("cpf", format!("`{cpf}` is not a valid CPF")));
            }
            Command::Criar(Usuario {
                user_id: user_id(f)?,
                nome: wire::text(f, "nome")?,
                email: wire::email(f)?,
                cpf,
                data_criacao: time_or(f, "data_criacao", now)?,
            })
        }
        EventType::AtualizarAssinatura => {
            let inicio = time_or(f, "inicio", now)?;
            let default_end = chrono::DateTime::parse_from_rfc3339(&inicio)
                .map(|t| wire::format_timestamp(&(t.to_utc() + chrono::Duration::days(30))))
                .unwrap_or_else(|_| inicio.clone());
            Command::Assinar(Assinatura {
                user_id: user_id(f)?,
                plano: one_of(f, "plano", &PLANOS)?,
                fim: time_or(f, "fim", &default_end)?,
                inicio,
                status: text_or(f, "status", "ativa")?,
            })
        }
        EventType::PagamentoRealizado => Command::Pagar(Pagamento {
            user_id: user_id(f)?,
            valor: valor(f)?,
            forma_pagamento: one_of(f, "forma_pagamento", &FORMAS_PAGAMENTO)?,
            status: text_or(f, "status", "aprovado")?,
            data_pagamento: time_or(f, "data_pagamento", now)?,
        }),
        EventType::AtualizarConfig => Command::Configurar(Preferencias {
            user_id: user_id(f)?,
            idioma: text_or(f, "idioma", "pt-BR")?,
            notificacoes: flag(f, "notificacoes")?.unwrap_or(true),
            tema: text_or(f, "tema", "escuro")?,
            data_atualizacao: now.clone(),
        }),
        EventType::RegistrarVisualizacao => {
            let posicao = number_within(f, "posicao", 0.0..=100.0)?;
            Command::Assistir(Visualizacao {
                id: event.correlation_id.clone(),
                user_id: user_id(f)?,
                conteudo_id: conteudo_id(f)?,
                // The catalog's, filled in by the processor; what the sender says is a hint.
                titulo: text_or(f, "titulo", "")?,
                tipo: text_or(f, "tipo", "")?,
                // Whole minutes; a fraction (`time.time()` arithmetic) is rounded.
                tempo_assistido: number_within(f, "tempo_assistido", 0.0..=100_000.0)?.round()
                    as i64,
                posicao,
                concluido: posicao >= 90.0,
                data: now.clone(),
            })
        }
        EventType::ObterHistoricoVisualizacao => Command::Historico {
            user_id: user_id(f)?,
            tipo: match f.get("tipo") {
                None | Some(Value::Null) => None,
                Some(_) => Some(one_of(f, "tipo", &TIPOS)?),
            },
            concluido: flag(f, "concluido")?,
            limit: number_in(f, "limit", 1..=100, 20)? as u64,
        },
        EventType::GerarRecomendacoes => Command::Recomendar {
            user_id: user_id(f)?,
        },
        EventType::ObterRecomendacoes => Command::Recomendacoes {
            user_id: user_id(f)?,
        },
        EventType::AvaliarConteudo => Command::Avaliar {
            user_id: user_id(f)?,
            conteudo_id: conteudo_id(f)?,
            nota: match f.get("nota") {
                None | Some(Value::Null) => return Err(Invalid::Missing("nota")),
                Some(_) => number_in(f, "nota", 1..=5, 0)?,
            },
        },
        EventType::CriarSessao => Command::AbrirSessao(Sessao {
            session_id: session_id(f)?,
            user_id: user_id(f)?,
            dispositivo: text_or(f, "dispositivo", "web")?,
            localizacao: text_or(f, "localizacao", "")?,
            inicio: now.clone(),
        }),
        EventType::AtualizarAtividadeSessao => Command::Atividade {
            session_id: session_id(f)?,
        },
        EventType::EncerrarSessao => Command::Encerrar {
            session_id: session_id(f)?,
        },
        EventType::ListarSessoesUsuario => Command::Sessoes {
            user_id: user_id(f)?,
            ativas_apenas: flag(f, "ativas_apenas")?.unwrap_or(true),
        },
        EventType::CacheConteudo => Command::Cachear {
            conteudo_id: conteudo_id(f)?,
        },
        EventType::ObterCacheConteudo => Command::LerCache {
            conteudo_id: conteudo_id(f)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Event {
        parse_event(json.as_bytes()).unwrap()
    }

    #[test]
    fn cpfs_are_checked_by_their_digits() {
        assert!(cpf_is_valid("529.982.247-25"));
        assert!(cpf_is_valid("52998224725"));
        assert!(!cpf_is_valid("52998224724"));
        assert!(!cpf_is_valid("11111111111"));
        assert!(!cpf_is_valid("1234"));
        assert_eq!(
            cpf_with_check_digits([5, 2, 9, 9, 8, 2, 2, 4, 7]),
            "52998224725"
        );
    }

    #[test]
    fn not_an_event_is_a_dead_letter_a_bad_event_an_error_reply() {
        assert!(parse_event(b"nope").is_err());
        assert!(parse_event(br#"{"event_type":"criar_usuario"}"#).is_err());
        let unknown = event(r#"{"event_type":"voar","correlation_id":"c1"}"#);
        assert!(command(&unknown).unwrap_err().to_string().contains("voar"));
        let bad_cpf = event(
            r#"{"event_type":"criar_usuario","correlation_id":"c1","user_id":7,"nome":"Ana","email":"ana@example.com","cpf":"12345678900"}"#,
        );
        assert!(command(&bad_cpf).unwrap_err().to_string().contains("CPF"));
    }

    #[test]
    fn seed_four_events_in_every_shape_a_client_sends() {
        // Numbers as numbers, as text, with fractions; nulls for what is optional; fields
        // we do not know.
        for json in [
            r#"{"event_type":"registrar_visualizacao","correlation_id":"c1","user_id":7,"conteudo_id":23,"titulo":"x","tipo":"filme","tempo_assistido":45,"posicao":92,"extra":{"a":1}}"#,
            r#"{"event_type":"registrar_visualizacao","correlation_id":"c1","user_id":"7","conteudo_id":"23","tempo_assistido":"44.6","posicao":"92.5","titulo":null,"tipo":null}"#,
            r#"{"event_type":"registrar_visualizacao","correlation_id":"c1","user_id":7.0,"conteudo_id":23,"tempo_assistido":44.6,"posicao":92.5}"#,
        ] {
            let Command::Assistir(v) = command(&event(json)).unwrap() else {
                panic!("a view: {json}")
            };
            assert_eq!(
                (v.user_id, v.conteudo_id.as_str(), v.tempo_assistido),
                (7, "23", 45)
            );
            assert!(v.concluido, "{json}");
        }
        let rating = event(
            r#"{"event_type":"avaliar_conteudo","correlation_id":"c2","user_id":"7","conteudo_id":"23","nota":"4"}"#,
        );
        assert!(matches!(
            command(&rating).unwrap(),
            Command::Avaliar { nota: 4, .. }
        ));
        let list = event(
            r#"{"event_type":"listar_sessoes_usuario","correlation_id":"c3","user_id":7,"ativas_apenas":"false"}"#,
        );
        assert!(matches!(
            command(&list).unwrap(),
            Command::Sessoes {
                ativas_apenas: false,
                ..
            }
        ));
        for bad in [
            r#""posicao":101"#,
            r#""posicao":"muito""#,
            r#""conteudo_id":0"#,
            r#""conteudo_id":"abc""#,
        ] {
            let json = format!(
                r#"{{"event_type":"registrar_visualizacao","correlation_id":"c4","user_id":7,"conteudo_id":23,{bad}}}"#
            );
            assert!(command(&event(&json)).is_err(), "{json}");
        }
    }

    #[test]
    fn the_seeds_events_become_commands() {
        let criar = event(
            r#"{"event_type":"criar_usuario","correlation_id":"c1","timestamp":"2026-11-23T10:00:00","source":"s1","target":"s2","user_id":7,"nome":"Ana Souza","email":"ana@example.com","cpf":"529.982.247-25"}"#,
        );
        let Command::Criar(u) = command(&criar).unwrap() else {
            panic!("a user")
        };
        assert_eq!((u.user_id, u.cpf.as_str()), (7, "52998224725"));
        assert_eq!(u.data_criacao, "2026-11-23T10:00:00.000000Z");
        let pagar = event(
            r#"{"event_type":"pagamento_realizado","correlation_id":"c2","user_id":"7","valor":19.9,"forma_pagamento":"Pix"}"#,
        );
        let Command::Pagar(p) = command(&pagar).unwrap() else {
            panic!("a payment")
        };
        assert_eq!(p.valor, "19.90");
        for bad in ["19.999", "-1", "abc"] {
            let e = event(&format!(
                r#"{{"event_type":"pagamento_realizado","correlation_id":"c3","user_id":7,"valor":"{bad}","forma_pagamento":"Pix"}}"#
            ));
            assert!(command(&e).is_err(), "{bad}");
        }
        let plano = event(
            r#"{"event_type":"atualizar_assinatura","correlation_id":"c4","user_id":7,"plano":"Ouro"}"#,
        );
        assert!(command(&plano).unwrap_err().to_string().contains("Premium"));
    }
}
