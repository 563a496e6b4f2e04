//! The gateway (seed 3's S1), on axum: each POST publishes one event on `user_events` and
//! answers at once with the seed's reply (`mensagem`, the data, `correlation_id`,
//! `status_url`), `200` as the seed did; `GET /status/{id}` answers what the processor
//! replied, from the key-value store, so any replica can answer any id.
//!
//! Beyond the seed: `?wait=SECONDS` (up to 30) answers the reply itself when it comes in
//! time — `201`, or `404`/`409`/`422` for an error reply — and the seed's reply otherwise;
//! a body is optional (the seed took none and made up the data), and when given its
//! fields are validated by the same code as the processor's, so a bad body is a `422`
//! before anything is published; reads of users the seed lacked.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::activity::{self, Activity};
use super::catalog::{self, Titulo};
use super::entities::{self, EventType, TIPOS, Usuario};
use super::generator::{Fakes, event_record};
use super::routing::{CATALOGO, Ranking, STATUS_TTL, pending, ranking_key, sessao_key, status_key};
use super::users::Users;
use crate::api::batch::{Batch, Writer};
use crate::api::{
    ApiConfig, ApiError, Authorized, ErrorBody, HasApiConfig, Listing, Paging, Status, WriteErrors,
    deadline, filter_value,
};
use crate::bus::{Bus, Record, Topics};
use crate::store::{self, KvWrite, Sort, Stores};

/// Longest `?wait=` a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting request looks for its reply.
const WAIT_POLL: Duration = Duration::from_millis(10);

/// Shared by every request behind one `Arc` (see [`crate::api::HasApiConfig`]).
struct Gateway {
    activity: Activity,
    stores: Stores,
    topics: Topics,
    config: Arc<ApiConfig>,
    fakes: Arc<std::sync::Mutex<Fakes>>,
    publisher: Writer<(), (String, Record)>,
}

/// The gateway's write, group-committed: each request's status kept as pending and its
/// event published, at once; the requests that arrive together share one key-value write
/// and one publish. The status is set only if absent, so a reply that comes back before
/// it is written is never overwritten by it. The two at once rather than one after the
/// other: each request waits for one durable write instead of two (with 32 clients,
/// `POST /usuarios` 3,500–4,700 → 5,000–7,200 req/s embedded).
struct Publish {
    stores: Stores,
    bus: Arc<dyn Bus>,
}

#[async_trait::async_trait]
impl Batch for Publish {
    /// The correlation id and its event.
    type Input = (String, Record);
    type Output = ();

    async fn apply(&self, events: &[(String, Record)]) -> store::StoreResult<Vec<()>> {
        let statuses: Vec<KvWrite> = events
            .iter()
            .map(|(correlation_id, _)| KvWrite::SetIfAbsent {
                key: status_key(correlation_id),
                value: pending().to_string(),
                ttl: Some(STATUS_TTL),
            })
            .collect();
        let records: Vec<Record> = events.iter().map(|(_, r)| r.clone()).collect();
        let (kept, published) = tokio::join!(
            self.stores.key_value.write(&statuses),
            self.bus.publish(&records)
        );
        kept?;
        published.map_err(|e| store::StoreError::Unavailable {
            store: "bus",
            reason: format!("the bus did not take the event: {e}"),
        })?;
        Ok(vec![(); events.len()])
    }
}

impl HasApiConfig for Gateway {
    fn api_config(&self) -> &ApiConfig {
        &self.config
    }
}

/// `?wait=SECONDS`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Wait {
    /// Wait up to this many seconds (0 to 30) for the processor's reply and answer it.
    #[param(minimum = 0, maximum = 30)]
    wait: Option<u64>,
}

/// A new user's fields; those not given are made up, as the seed did.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // Documents the body; the entities' parser reads it.
pub struct UsuarioBody {
    /// The user's number (1 or more).
    #[schema(minimum = 1)]
    user_id: Option<i64>,
    /// Full name.
    #[schema(min_length = 1)]
    nome: Option<String>,
    /// E-mail address.
    #[schema(min_length = 3)]
    email: Option<String>,
    /// CPF with valid check digits.
    #[schema(min_length = 11)]
    cpf: Option<String>,
}

/// A plan; fields not given are made up.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct AssinaturaBody {
    /// `Básico`, `Padrão` or `Premium`.
    #[schema(pattern = "^(Básico|Padrão|Premium)$")]
    plano: Option<String>,
    /// `ativa`, …
    #[schema(min_length = 1)]
    status: Option<String>,
}

/// A payment; fields not given are made up.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct PagamentoBody {
    /// Amount, at least 0, at most two decimals.
    #[schema(minimum = 0, maximum = 99999999.99, multiple_of = 0.01)]
    valor: Option<f64>,
    /// `Cartão`, `Pix` or `Boleto`.
    #[schema(pattern = "^(Cartão|Pix|Boleto)$")]
    forma_pagamento: Option<String>,
}

/// Preferences; fields not given are made up.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct ConfigBody {
    /// Language (`pt-BR`, …).
    #[schema(min_length = 1)]
    idioma: Option<String>,
    /// Whether to send notifications.
    notificacoes: Option<bool>,
    /// `claro`, `escuro`, …
    #[schema(min_length = 1)]
    tema: Option<String>,
}

/// The JSON object a request's body holds; none for an empty body.
fn body_fields(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.contains("json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON with `Content-Type: application/json`, or no body",
        ));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed JSON: {e}"),
        )),
    }
}

/// Query parameters as event fields (text; the processor's parser reads numbers in it).
fn query_fields(query: BTreeMap<String, String>) -> Map<String, Value> {
    query
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}

/// What the seed's reply says was sent, and the key it puts the event's fields under.
fn announced(kind: EventType) -> (&'static str, &'static str) {
    match kind {
        EventType::CriarUsuario => ("Solicitação de criação de usuário enviada", "usuario"),
        EventType::AtualizarAssinatura => (
            "Solicitação de atualização de assinatura enviada",
            "assinatura",
        ),
        EventType::PagamentoRealizado => ("Solicitação de pagamento enviada", "pagamento"),
        EventType::AtualizarConfig => (
            "Solicitação de atualização de configurações enviada",
            "config",
        ),
        EventType::RegistrarVisualizacao => (
            "Solicitação de registro de visualização enviada",
            "visualizacao",
        ),
        EventType::ObterHistoricoVisualizacao => (
            "Solicitação de histórico de visualização enviada",
            "consulta",
        ),
        EventType::GerarRecomendacoes => (
            "Solicitação de geração de recomendações enviada",
            "consulta",
        ),
        EventType::ObterRecomendacoes => ("Solicitação de recomendações enviada", "consulta"),
        EventType::AvaliarConteudo => ("Solicitação de avaliação enviada", "avaliacao"),
        EventType::CriarSessao => ("Solicitação de criação de sessão enviada", "sessao"),
        EventType::AtualizarAtividadeSessao => {
            ("Solicitação de atualização de atividade enviada", "sessao")
        }
        EventType::EncerrarSessao => ("Solicitação de encerramento de sessão enviada", "sessao"),
        EventType::ListarSessoesUsuario => {
            ("Solicitação de listagem de sessões enviada", "consulta")
        }
        EventType::CacheConteudo => ("Solicitação de cache de conteúdo enviada", "conteudo"),
        EventType::ObterCacheConteudo => ("Solicitação de conteúdo do cache enviada", "conteudo"),
    }
}

impl Gateway {
    /// Publishes one event of `kind` with the `given` fields (the rest made up, as the
    /// seed did; a path's user id wins) and answers.
    async fn request(
        &self,
        kind: EventType,
        user_id: Option<i64>,
        given: Map<String, Value>,
        wait: Option<u64>,
    ) -> Result<Response, ApiError> {
        let wait = Duration::from_secs(wait.unwrap_or(0));
        if wait > MAX_WAIT {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("wait is at most {} seconds", MAX_WAIT.as_secs()),
            ));
        }
        let mut fields = self
            .fakes
            .lock()
            .expect("the fakes lock is never poisoned")
            .fields(kind, user_id);
        fields.extend(given);
        if let Some(user_id) = user_id {
            fields.insert("user_id".into(), user_id.into());
        }
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let mut record = event_record(&self.topics, kind.name(), &correlation_id, &fields);
        record
            .headers
            .extend(crate::trace::header_for_publish(&record.topic));
        // The processor's own validation, before anything is published.
        let event = entities::parse_event(&record.payload)?;
        entities::command(&event).map_err(|e| ApiError::from(e).about(kind.name()))?;
        deadline(
            self.config.store_timeout,
            self.publisher.write((correlation_id.clone(), record)),
        )
        .await?;
        if !wait.is_zero()
            && let Some(reply) = self.await_reply(&correlation_id, wait).await?
        {
            let status = match (reply["status"].as_str(), reply["erro"].as_str()) {
                (Some("success"), _) if kind.is_read() => StatusCode::OK,
                (Some("success"), _) => StatusCode::CREATED,
                (_, Some("nao_encontrado")) => StatusCode::NOT_FOUND,
                (_, Some("conflito")) => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            return Ok((status, Json(reply)).into_response());
        }
        let (mensagem, key) = announced(kind);
        Ok(Json(json!({
            "mensagem": mensagem,
            key: fields,
            "correlation_id": correlation_id,
            "status_url": format!("/status/{correlation_id}"),
        }))
        .into_response())
    }

    /// The reply to `correlation_id` once it is in, or `None` after `wait`.
    async fn await_reply(
        &self,
        correlation_id: &str,
        wait: Duration,
    ) -> Result<Option<Value>, ApiError> {
        let started = Instant::now();
        let key = status_key(correlation_id);
        while started.elapsed() < wait {
            let found =
                deadline(self.config.store_timeout, self.stores.key_value.get(&key)).await?;
            if let Some(reply) = found.and_then(|t| serde_json::from_str::<Value>(&t).ok())
                && reply["status"] != "pendente"
            {
                return Ok(Some(reply));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
        Ok(None)
    }
}

/// The seed's greeting.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "Up", body = Object)))]
async fn home() -> Json<Value> {
    Json(
        json!({"status": "success", "msg": "API S1 da plataforma de streaming no ar", "docs": "/docs"}),
    )
}

/// Create a user: publishes `criar_usuario`.
#[utoipa::path(post, path = "/usuarios", tag = "usuarios", params(Wait),
    request_body(content = Option<UsuarioBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Published; the reply comes at `status_url`", body = Object),
        (status = 201, description = "With `wait`: the processor's reply, success", body = Object),
        (status = 409, description = "With `wait`: e-mail, CPF or user id taken", body = Object),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn criar_usuario(
    State(gw): State<Arc<Gateway>>,
    _: Authorized,
    wait: Result<Query<Wait>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Query(wait) = wait?;
    let given = body_fields(&headers, &body)?;
    gw.request(EventType::CriarUsuario, None, given, wait.wait)
        .await
}

/// A path's user id, or a 404 for one that cannot exist.
fn path_user(id: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(id) = id?;
    match id.parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(ApiError::not_found("usuário", &id)),
    }
}

macro_rules! user_event {
    ($name:ident, $path:literal, $kind:expr, $body:ty, $what:literal) => {
        #[doc = concat!("Publishes `", $what, "` for the user.")]
        #[utoipa::path(post, path = $path, tag = "usuarios",
            params(("user_id" = i64, Path, description = "The user's number"), Wait),
            request_body(content = Option<$body>, content_type = "application/json"),
            responses(
                (status = 200, description = "Published; the reply comes at `status_url`", body = Object),
                (status = 201, description = "With `wait`: the processor's reply, success", body = Object),
                (status = 404, description = "No such user (with `wait`), or not a user id", body = Object),
                WriteErrors,
            ),
            security((), ("bearer" = [])))]
        async fn $name(
            State(gw): State<Arc<Gateway>>,
            _: Authorized,
            user_id: Result<Path<String>, PathRejection>,
            wait: Result<Query<Wait>, QueryRejection>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Result<Response, ApiError> {
            let user_id = path_user(user_id)?;
            let Query(wait) = wait?;
            let given = body_fields(&headers, &body)?;
            gw.request($kind, Some(user_id), given, wait.wait).await
        }
    };
}

user_event!(
    atualizar_assinatura,
    "/usuarios/{user_id}/assinatura",
    EventType::AtualizarAssinatura,
    AssinaturaBody,
    "atualizar_assinatura"
);
user_event!(
    pagamento,
    "/usuarios/{user_id}/pagamento",
    EventType::PagamentoRealizado,
    PagamentoBody,
    "pagamento_realizado"
);
user_event!(
    atualizar_config,
    "/usuarios/{user_id}/config",
    EventType::AtualizarConfig,
    ConfigBody,
    "atualizar_config"
);

/// What became of a request: the processor's reply, or `pendente` while it has not come.
#[utoipa::path(get, path = "/status/{correlation_id}", tag = "status",
    params(("correlation_id" = String, Path, description = "From the POST's answer")),
    responses(
        (status = 200, description = "The reply, or `{\"status\":\"pendente\"}`", body = Object),
        (status = 404, description = "An id this platform never issued (or older than an hour)", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn status(
    State(gw): State<Arc<Gateway>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = id?;
    let found = if crate::api::storable_id(&id) {
        deadline(
            gw.config.store_timeout,
            gw.stores.key_value.get(&status_key(&id)),
        )
        .await?
    } else {
        None
    };
    found
        .and_then(|t| serde_json::from_str(&t).ok())
        .map(Json)
        .ok_or_else(|| ApiError::not_found("correlation_id", &id))
}

/// A user, with subscription, preferences and latest payments.
#[utoipa::path(get, path = "/usuarios/{user_id}", tag = "usuarios",
    params(("user_id" = i64, Path, description = "The user's number")),
    responses(
        (status = 200, description = "The user", body = Object),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn usuario(
    State(gw): State<Arc<Gateway>>,
    user_id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let user_id = path_user(user_id)?;
    deadline(
        gw.config.store_timeout,
        gw.stores.relational.user_view(user_id),
    )
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::not_found("usuário", &user_id.to_string()))
}

/// Filters of `GET /usuarios`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsuarioFilter {
    /// Only the user with this e-mail address.
    email: Option<String>,
}

/// Users, ordered by id; by e-mail when given.
#[utoipa::path(get, path = "/usuarios", tag = "usuarios",
    params(UsuarioFilter, Paging),
    responses(
        (status = 200, description = "One page of users", body = Listing<Usuario>),
        (status = 400, description = "Invalid paging or filter", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn usuarios(
    State(gw): State<Arc<Gateway>>,
    filter: Result<Query<UsuarioFilter>, QueryRejection>,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Listing<Usuario>>, ApiError> {
    let (Query(filter), Query(paging)) = (filter?, paging?);
    let page = paging.page()?;
    let email = filter_value("email", &filter.email)?;
    let found = deadline(
        gw.config.store_timeout,
        gw.stores.relational.users(email, page),
    )
    .await?;
    Ok(Json(paging.listing(found)))
}

/// `POST /historico-visualizacao`'s parameters; those not given are made up.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; the entities' parser reads it.
pub struct VisualizacaoParams {
    /// Who watched.
    user_id: Option<i64>,
    /// The title's id in the catalog (`GET /catalogo`).
    conteudo_id: Option<i64>,
    /// Ignored: the catalog's title is stored.
    titulo: Option<String>,
    /// Ignored: the catalog's type is stored.
    tipo: Option<String>,
    /// Minutes watched (a fraction is rounded to whole minutes).
    #[param(minimum = 0, maximum = 100000)]
    tempo_assistido: Option<f64>,
    /// How far in, in percent; 90 or more counts as finished.
    #[param(minimum = 0, maximum = 100)]
    posicao: Option<f64>,
    /// Wait up to this many seconds (0 to 30) for the processor's reply and answer it.
    #[param(minimum = 0, maximum = 30)]
    wait: Option<u64>,
}

/// Splits `?wait=` off the query; the rest are the event's fields.
fn split_wait(
    mut query: BTreeMap<String, String>,
) -> Result<(Map<String, Value>, Option<u64>), ApiError> {
    let wait = match query.remove("wait") {
        None => None,
        Some(w) => Some(w.trim().parse::<u64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "wait is a whole number of seconds, 0 to 30",
            )
        })?),
    };
    Ok((query_fields(query), wait))
}

/// The query as text pairs, or a 400.
type RawQuery = Result<Query<BTreeMap<String, String>>, QueryRejection>;

impl Gateway {
    /// [`Gateway::request`] with the event's fields from the query (and `extra`, which
    /// wins), `?wait` taken out.
    async fn request_from_query(
        &self,
        kind: EventType,
        user_id: Option<i64>,
        query: RawQuery,
        extra: Map<String, Value>,
    ) -> Result<Response, ApiError> {
        let Query(query) = query?;
        let (mut given, wait) = split_wait(query)?;
        given.extend(extra);
        self.request(kind, user_id, given, wait).await
    }
}

/// Record a view: publishes `registrar_visualizacao`.
#[utoipa::path(post, path = "/historico-visualizacao", tag = "atividade", params(VisualizacaoParams),
    responses(
        (status = 200, description = "Published; the reply comes at `status_url`", body = Object),
        (status = 201, description = "With `wait`: the view as stored", body = Object),
        (status = 404, description = "With `wait`: no such user or title", body = Object),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn registrar_visualizacao(
    State(gw): State<Arc<Gateway>>,
    _: Authorized,
    query: RawQuery,
) -> Result<Response, ApiError> {
    gw.request_from_query(EventType::RegistrarVisualizacao, None, query, Map::new())
        .await
}

/// `GET /historico-visualizacao/{user_id}`'s filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct HistoricoParams {
    /// Only `filme` or `serie`.
    tipo: Option<String>,
    /// Only finished (`true`) or unfinished (`false`) views.
    concluido: Option<bool>,
    /// At most this many, newest first (1 to 100; 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
    /// Wait up to this many seconds (0 to 30) for the reply and answer it.
    #[param(minimum = 0, maximum = 30)]
    wait: Option<u64>,
}

/// A user's viewing history, through the bus: publishes `obter_historico_visualizacao`;
/// the reply holds the history.
#[utoipa::path(get, path = "/historico-visualizacao/{user_id}", tag = "atividade",
    params(("user_id" = i64, Path, description = "The user's number"), HistoricoParams),
    responses(
        (status = 200, description = "Published (the reply comes at `status_url`), or with `wait` the reply", body = Object),
        (status = 400, description = "Invalid `wait`", body = ErrorBody),
        (status = 404, description = "Not a user id", body = ErrorBody),
        (status = 422, description = "A filter is invalid", body = ErrorBody),
        (status = 503, description = "The bus or a store is unavailable", body = ErrorBody),
    ))]
async fn obter_historico(
    State(gw): State<Arc<Gateway>>,
    user_id: Result<Path<String>, PathRejection>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let user_id = path_user(user_id)?;
    gw.request_from_query(
        EventType::ObterHistoricoVisualizacao,
        Some(user_id),
        query,
        Map::new(),
    )
    .await
}

/// A user id in the query, and `?wait`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct UserParams {
    /// The user's number (made up when not given, as the seed did).
    user_id: Option<i64>,
    /// Wait up to this many seconds (0 to 30) for the reply and answer it.
    #[param(minimum = 0, maximum = 30)]
    wait: Option<u64>,
}

/// Work out a user's recommendations: publishes `gerar_recomendacoes`.
#[utoipa::path(post, path = "/recomendacoes/gerar", tag = "atividade", params(UserParams),
    responses(
        (status = 200, description = "Published; the reply comes at `status_url`", body = Object),
        (status = 201, description = "With `wait`: the recommendations", body = Object),
        (status = 404, description = "With `wait`: no such user", body = Object),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn gerar_recomendacoes(
    State(gw): State<Arc<Gateway>>,
    _: Authorized,
    query: RawQuery,
) -> Result<Response, ApiError> {
    gw.request_from_query(EventType::GerarRecomendacoes, None, query, Map::new())
        .await
}

/// `?wait` alone.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct WaitParams {
    /// Wait up to this many seconds (0 to 30) for the reply and answer it.
    #[param(minimum = 0, maximum = 30)]
    wait: Option<u64>,
}

/// A user's recommendations, through the bus: publishes `obter_recomendacoes`.
#[utoipa::path(get, path = "/recomendacoes/{user_id}", tag = "atividade",
    params(("user_id" = i64, Path, description = "The user's number"), WaitParams),
    responses(
        (status = 200, description = "Published (the reply comes at `status_url`), or with `wait` the reply", body = Object),
        (status = 400, description = "Invalid `wait`", body = ErrorBody),
        (status = 404, description = "With `wait`: none generated yet; or not a user id", body = Object),
        (status = 503, description = "The bus or a store is unavailable", body = ErrorBody),
    ))]
async fn obter_recomendacoes(
    State(gw): State<Arc<Gateway>>,
    user_id: Result<Path<String>, PathRejection>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let user_id = path_user(user_id)?;
    gw.request_from_query(
        EventType::ObterRecomendacoes,
        Some(user_id),
        query,
        Map::new(),
    )
    .await
}

/// `POST /avaliacoes`' parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AvaliacaoParams {
    /// Who rates.
    user_id: Option<i64>,
    /// The title's id in the catalog.
    conteudo_id: Option<i64>,
    /// 1 to 5; a second rating by the same user replaces the first.
    #[param(minimum = 1, maximum = 5)]
    nota: Option<i64>,
    /// Wait up to this many seconds (0 to 30) for the reply and answer it.
    #[param(minimum = 0, maximum = 30)]
    wait: Option<u64>,
}

/// Rate a title: publishes `avaliar_conteudo`.
#[utoipa::path(post, path = "/avaliacoes", tag = "atividade", params(AvaliacaoParams),
    responses(
        (status = 200, description = "Published; the reply comes at `status_url`", body = Object),
        (status = 201, description = "With `wait`: the rating and the title's new average", body = Object),
        (status = 404, description = "With `wait`: no such user or title", body = Object),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn avaliar_conteudo(
    State(gw): State<Arc<Gateway>>,
    _: Authorized,
    query: RawQuery,
) -> Result<Response, ApiError> {
    gw.request_from_query(EventType::AvaliarConteudo, None, query, Map::new())
        .await
}

/// `POST /sessoes`' parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SessaoParams {
    /// Whose session.
    user_id: Option<i64>,
    /// `web`, `android`, `ios`, `smart-tv`…
    dispositivo: Option<String>,
    /// Where from.
    localizacao: Option<String>,
    /// Wait up to this many seconds (0 to 30) for the reply and answer it.
    #[param(minimum = 0, maximum = 30)]
    wait: Option<u64>,
}

/// Open a session: publishes `criar_sessao` with a new session id.
#[utoipa::path(post, path = "/sessoes", tag = "sessoes", params(SessaoParams),
    responses(
        (status = 200, description = "Published; `sessao.session_id` is its id", body = Object),
        (status = 201, description = "With `wait`: the session", body = Object),
        (status = 404, description = "With `wait`: no such user", body = Object),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn criar_sessao(
    State(gw): State<Arc<Gateway>>,
    _: Authorized,
    query: RawQuery,
) -> Result<Response, ApiError> {
    // Always a new id: a client may not pick (or take over) a session.
    let id = uuid::Uuid::new_v4().to_string();
    let extra = Map::from_iter([("session_id".to_string(), id.into())]);
    gw.request_from_query(EventType::CriarSessao, None, query, extra)
        .await
}

impl Gateway {
    /// A session event's fields: its id, and its user's for the record's key, so it is
    /// ordered after the session's creation on a partitioned bus.
    async fn session_fields(&self, session_id: &str) -> Result<Map<String, Value>, ApiError> {
        if !crate::api::storable_id(session_id) {
            return Err(ApiError::not_found("sessão", session_id));
        }
        let mut given = Map::new();
        given.insert("session_id".into(), session_id.into());
        let session = deadline(
            self.config.store_timeout,
            self.stores
                .key_value
                .hget_many(&[(sessao_key(session_id), "user_id".into())]),
        )
        .await?;
        if let Some(Some(user)) = session.into_iter().next() {
            given.insert("user_id".into(), user.into());
        }
        Ok(given)
    }
}

/// A session's heartbeat: publishes `atualizar_atividade_sessao`; the session lives on.
#[utoipa::path(put, path = "/sessoes/{session_id}/atividade", tag = "sessoes",
    params(("session_id" = String, Path, description = "From `POST /sessoes`"), WaitParams),
    responses(
        (status = 200, description = "Published; the reply comes at `status_url`", body = Object),
        (status = 201, description = "With `wait`: the session", body = Object),
        (status = 404, description = "With `wait`: no such session (or it expired)", body = Object),
        (status = 409, description = "With `wait`: the session was ended", body = Object),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn atividade_sessao(
    State(gw): State<Arc<Gateway>>,
    _: Authorized,
    session_id: Result<Path<String>, PathRejection>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let Path(session_id) = session_id?;
    let given = gw.session_fields(&session_id).await?;
    gw.request_from_query(EventType::AtualizarAtividadeSessao, None, query, given)
        .await
}

/// End a session (logout): publishes `encerrar_sessao`.
#[utoipa::path(delete, path = "/sessoes/{session_id}", tag = "sessoes",
    params(("session_id" = String, Path, description = "From `POST /sessoes`"), WaitParams),
    responses(
        (status = 200, description = "Published; the reply comes at `status_url`", body = Object),
        (status = 201, description = "With `wait`: the ended session", body = Object),
        (status = 404, description = "With `wait`: no such session (or it expired)", body = Object),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn encerrar_sessao(
    State(gw): State<Arc<Gateway>>,
    _: Authorized,
    session_id: Result<Path<String>, PathRejection>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let Path(session_id) = session_id?;
    let given = gw.session_fields(&session_id).await?;
    gw.request_from_query(EventType::EncerrarSessao, None, query, given)
        .await
}

/// `GET /sessoes/usuario/{user_id}`'s parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SessoesParams {
    /// Only sessions not ended (default `true`).
    ativas_apenas: Option<bool>,
    /// Wait up to this many seconds (0 to 30) for the reply and answer it.
    #[param(minimum = 0, maximum = 30)]
    wait: Option<u64>,
}

/// A user's sessions, through the bus: publishes `listar_sessoes_usuario`.
#[utoipa::path(get, path = "/sessoes/usuario/{user_id}", tag = "sessoes",
    params(("user_id" = i64, Path, description = "The user's number"), SessoesParams),
    responses(
        (status = 200, description = "Published (the reply comes at `status_url`), or with `wait` the reply", body = Object),
        (status = 400, description = "Invalid `wait`", body = ErrorBody),
        (status = 404, description = "Not a user id", body = ErrorBody),
        (status = 422, description = "With `wait`: an invalid `ativas_apenas`", body = Object),
        (status = 503, description = "The bus or a store is unavailable", body = ErrorBody),
    ))]
async fn listar_sessoes(
    State(gw): State<Arc<Gateway>>,
    user_id: Result<Path<String>, PathRejection>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let user_id = path_user(user_id)?;
    gw.request_from_query(
        EventType::ListarSessoesUsuario,
        Some(user_id),
        query,
        Map::new(),
    )
    .await
}

/// A path's title id, or a 404 for one that cannot exist.
fn path_title(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = id?;
    match id.parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n.to_string()),
        _ => Err(ApiError::not_found("conteúdo", &id)),
    }
}

/// Put a title in the cache for an hour: publishes `cache_conteudo`.
#[utoipa::path(post, path = "/cache/conteudo/{conteudo_id}", tag = "cache",
    params(("conteudo_id" = i64, Path, description = "The title's id"), WaitParams),
    responses(
        (status = 200, description = "Published; the reply comes at `status_url`", body = Object),
        (status = 201, description = "With `wait`: what was cached", body = Object),
        (status = 404, description = "With `wait`: no such title", body = Object),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn cache_conteudo(
    State(gw): State<Arc<Gateway>>,
    _: Authorized,
    conteudo_id: Result<Path<String>, PathRejection>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let conteudo_id = path_title(conteudo_id)?;
    let extra = Map::from_iter([("conteudo_id".to_string(), conteudo_id.into())]);
    gw.request_from_query(EventType::CacheConteudo, None, query, extra)
        .await
}

/// A title through the cache (filled from the catalog on a miss), through the bus:
/// publishes `obter_cache_conteudo`.
#[utoipa::path(get, path = "/cache/conteudo/{conteudo_id}", tag = "cache",
    params(("conteudo_id" = i64, Path, description = "The title's id"), WaitParams),
    responses(
        (status = 200, description = "Published (the reply comes at `status_url`), or with `wait` the reply (`origem`: `cache` or `catalogo`)", body = Object),
        (status = 400, description = "Invalid `wait`", body = ErrorBody),
        (status = 404, description = "No such title (with `wait`), or not a title id", body = Object),
        (status = 503, description = "The bus or a store is unavailable", body = ErrorBody),
    ))]
async fn obter_cache_conteudo(
    State(gw): State<Arc<Gateway>>,
    conteudo_id: Result<Path<String>, PathRejection>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let conteudo_id = path_title(conteudo_id)?;
    let extra = Map::from_iter([("conteudo_id".to_string(), conteudo_id.into())]);
    gw.request_from_query(EventType::ObterCacheConteudo, None, query, extra)
        .await
}

/// Filters of `GET /catalogo`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CatalogoFilter {
    /// A genre (`Drama`, `Ficção científica`…; case ignored).
    genero: Option<String>,
    /// `filme` or `serie`.
    tipo: Option<String>,
    /// Words of the title.
    q: Option<String>,
}

/// The catalog, by title; filtered by genre, type and words of the title.
#[utoipa::path(get, path = "/catalogo", tag = "catalogo",
    params(CatalogoFilter, Paging),
    responses(
        (status = 200, description = "One page of titles", body = Listing<Titulo>),
        (status = 400, description = "Invalid paging or filter", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn catalogo(
    State(gw): State<Arc<Gateway>>,
    filter: Result<Query<CatalogoFilter>, QueryRejection>,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Listing<Value>>, ApiError> {
    let (Query(filter), Query(paging)) = (filter?, paging?);
    let page = paging.page()?;
    let mut filters = Vec::new();
    if let Some(genero) = filter_value("genero", &filter.genero)? {
        match catalog::genero(genero) {
            Some(g) => filters.push(store::eq("generos", g)),
            None => return Ok(Json(paging.listing(Vec::new()))),
        }
    }
    if let Some(tipo) = filter_value("tipo", &filter.tipo)? {
        if !TIPOS.contains(&tipo) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("tipo is one of {}", TIPOS.join(", ")),
            ));
        }
        filters.push(store::eq("tipo", tipo));
    }
    if let Some(q) = filter_value("q", &filter.q)? {
        filters.push(store::Filter::Words {
            field: "titulo".into(),
            words: q.split_whitespace().map(str::to_string).collect(),
        });
    }
    let by_title = Sort {
        field: "titulo".into(),
        descending: false,
    };
    let found = deadline(
        gw.config.store_timeout,
        gw.stores
            .document
            .find_sorted(CATALOGO, &filters, Some(&by_title), page),
    )
    .await?;
    Ok(Json(paging.listing(found)))
}

/// One title of the catalog.
#[utoipa::path(get, path = "/catalogo/{conteudo_id}", tag = "catalogo",
    params(("conteudo_id" = i64, Path, description = "The title's id")),
    responses(
        (status = 200, description = "The title", body = Titulo),
        (status = 404, description = "No such title", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn titulo(
    State(gw): State<Arc<Gateway>>,
    conteudo_id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_title(conteudo_id)?;
    deadline(
        gw.config.store_timeout,
        gw.stores.document.get(CATALOGO, &id),
    )
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::not_found("conteúdo", &id))
}

/// The leaderboards, as the path names them.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documents the path; `Ranking::from_name` reads it.
pub enum RankingName {
    /// By how many users watched.
    #[schema(rename = "mais-assistidos")]
    MaisAssistidos,
    /// By rating.
    #[schema(rename = "mais-bem-avaliados")]
    MaisBemAvaliados,
}

/// Titles related to one: sharing its direction or creators, its cast, its genres, the
/// most related first, with what they share.
#[utoipa::path(get, path = "/catalogo/{conteudo_id}/relacionados", tag = "catalogo",
    params(("conteudo_id" = i64, Path, description = "The title's id"), LimitParams),
    responses(
        (status = 200, description = "The related titles", body = Object),
        (status = 400, description = "Invalid limit", body = ErrorBody),
        (status = 404, description = "No such title", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn relacionados(
    State(gw): State<Arc<Gateway>>,
    conteudo_id: Result<Path<String>, PathRejection>,
    params: Result<Query<LimitParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_title(conteudo_id)?;
    let Query(params) = params?;
    let limit = limit(params.limit)?;
    let timeout = gw.config.store_timeout;
    let documents = &*gw.stores.document;
    let titles = deadline(
        timeout,
        gw.activity.titles.get(documents, std::slice::from_ref(&id)),
    )
    .await?;
    let title = titles
        .get(&id)
        .ok_or_else(|| ApiError::not_found("conteúdo", &id))?;
    let related = deadline(timeout, catalog::related(documents, title, limit as usize)).await?;
    let itens: Vec<Value> = related
        .into_iter()
        .map(|(t, weight, shared)| {
            json!({"conteudo_id": t.id, "titulo": t.titulo, "tipo": t.tipo, "ano": t.ano,
                   "generos": t.generos, "em_comum": shared, "pontuacao": weight})
        })
        .collect();
    Ok(Json(
        json!({"conteudo_id": id, "titulo": title.titulo, "itens": itens}),
    ))
}

/// `GET /rankings/{ranking}`'s parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RankingParams {
    /// Only titles of this genre (case ignored).
    genero: Option<String>,
    /// How many, 1 to 100 (10).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
}

/// A leaderboard: `mais-assistidos` (by how many users watched) or `mais-bem-avaliados`
/// (by rating, an average pulled towards 3 by five imaginary ratings, so a title needs
/// several ratings to lead), overall or of one genre, read from the key-value store.
#[utoipa::path(get, path = "/rankings/{ranking}", tag = "rankings",
    params(("ranking" = RankingName, Path, description = "Which leaderboard"), RankingParams),
    responses(
        (status = 200, description = "The leaderboard, first place first", body = Object),
        (status = 400, description = "Invalid limit", body = ErrorBody),
        (status = 404, description = "No such leaderboard or genre", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn ranking(
    State(gw): State<Arc<Gateway>>,
    name: Result<Path<String>, PathRejection>,
    params: Result<Query<RankingParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (Path(name), Query(params)) = (name?, params?);
    let ranking = Ranking::from_name(&name).ok_or_else(|| ApiError::not_found("ranking", &name))?;
    let limit = limit(params.limit)?;
    let genre = match filter_value("genero", &params.genero)? {
        None => None,
        Some(g) => Some(catalog::genero(g).ok_or_else(|| ApiError::not_found("gênero", g))?),
    };
    let timeout = gw.config.store_timeout;
    let kv = &*gw.stores.key_value;
    let top = deadline(
        timeout,
        kv.ztop(&ranking_key(ranking, genre.as_deref()), limit as usize),
    )
    .await?;
    let ids: Vec<String> = top.iter().map(|(id, _)| id.clone()).collect();
    let titles = deadline(timeout, gw.activity.titles.get(&*gw.stores.document, &ids)).await?;
    let rated = if ranking == Ranking::MaisBemAvaliados {
        deadline(timeout, activity::ratings(kv, &ids)).await?
    } else {
        Vec::new()
    };
    let itens: Vec<Value> = top
        .iter()
        .enumerate()
        .map(|(i, (id, value))| {
            let t = titles.get(id);
            let mut item = json!({
                "posicao": i + 1,
                "conteudo_id": id,
                "titulo": t.map(|t| t.titulo.as_str()),
                "tipo": t.map(|t| t.tipo.as_str()),
                "ano": t.map(|t| t.ano),
                "generos": t.map(|t| t.generos.clone()),
            });
            let map = item.as_object_mut().expect("an object");
            match ranking {
                Ranking::MaisAssistidos => {
                    map.insert("espectadores".into(), (*value as i64).into());
                }
                Ranking::MaisBemAvaliados => {
                    let r = rated.get(i).copied().unwrap_or_default();
                    map.insert("media".into(), r.average().into());
                    map.insert("total_avaliacoes".into(), r.count.into());
                    map.insert(
                        "pontuacao".into(),
                        ((r.score() * 1000.0).round() / 1000.0).into(),
                    );
                }
            }
            item
        })
        .collect();
    Ok(Json(
        json!({"ranking": ranking.name(), "genero": genre, "itens": itens}),
    ))
}

/// A `?limit`: 1 to 100, 10 when not given.
fn limit(given: Option<u64>) -> Result<u64, ApiError> {
    match given.unwrap_or(10) {
        n @ 1..=100 => Ok(n),
        _ => Err(ApiError::new(StatusCode::BAD_REQUEST, "limit is 1 to 100")),
    }
}

/// `?limit` for "continue watching".
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitParams {
    /// How many, 1 to 100 (10).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
}

/// "Continue watching": titles the user started and did not finish, the most recently
/// watched first, each once (its latest view), from the viewing history.
#[utoipa::path(get, path = "/usuarios/{user_id}/continuar-assistindo", tag = "atividade",
    params(("user_id" = i64, Path, description = "The user's number"), LimitParams),
    responses(
        (status = 200, description = "The titles, latest first", body = Object),
        (status = 400, description = "Invalid limit", body = ErrorBody),
        (status = 404, description = "Not a user id", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn continuar_assistindo(
    State(gw): State<Arc<Gateway>>,
    user_id: Result<Path<String>, PathRejection>,
    params: Result<Query<LimitParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let user_id = path_user(user_id)?;
    let Query(params) = params?;
    let limit = limit(params.limit)?;
    let itens = deadline(
        gw.config.store_timeout,
        gw.activity.continue_watching(user_id, limit as usize),
    )
    .await?;
    Ok(Json(json!({"user_id": user_id, "itens": itens})))
}

/// The gateway's OpenAPI 3 document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Livros & Dados — streaming platform gateway",
        description = "Seeds 3 and 4's gateway: each request publishes an event on `user_events`; the processor applies it in the store that suits it and answers on `response_events`; `GET /status/{correlation_id}` tells the answer (or add `?wait=SECONDS`). The catalog, leaderboards and \"continue watching\" are read directly. Writes may require a bearer token."
    ),
    paths(
        home, criar_usuario, atualizar_assinatura, pagamento, atualizar_config, status, usuario, usuarios,
        registrar_visualizacao, obter_historico, gerar_recomendacoes, obter_recomendacoes,
        avaliar_conteudo, criar_sessao, atividade_sessao, encerrar_sessao, listar_sessoes,
        cache_conteudo, obter_cache_conteudo, catalogo, titulo, relacionados, ranking,
        continuar_assistindo,
        crate::api::health, crate::api::ready
    ),
    components(schemas(UsuarioBody, AssinaturaBody, PagamentoBody, ConfigBody, Usuario, Titulo, RankingName,
        ErrorBody, crate::api::FieldError, Status)),
    tags(
        (name = "usuarios", description = "Accounts: requests and reads (relational store)"),
        (name = "atividade", description = "Views, ratings, history, recommendations (document and key-value stores)"),
        (name = "sessoes", description = "Sessions with a time to live, renewed by activity (key-value store)"),
        (name = "cache", description = "The read-through cache of the catalog (key-value store)"),
        (name = "catalogo", description = "Films and series (document store)"),
        (name = "rankings", description = "Leaderboards (key-value store)"),
        (name = "status", description = "Replies"),
        (name = "operations", description = "Health and readiness"),
    )
)]
pub struct ApiDoc;

/// The gateway over `stores`, publishing on `bus`.
pub fn app(
    stores: Stores,
    bus: Arc<dyn Bus>,
    topics: Topics,
    activity: Activity,
    config: ApiConfig,
) -> axum::Router {
    let config = Arc::new(config);
    let gateway = Gateway {
        activity,
        stores: stores.clone(),
        topics,
        config: config.clone(),
        fakes: Arc::new(std::sync::Mutex::new(Fakes::new(None))),
        publisher: Writer::spawn(
            "gateway",
            Arc::new(Publish {
                stores: stores.clone(),
                bus,
            }),
        ),
    };
    let routes = axum::Router::new()
        .route("/", get(home))
        .route("/usuarios", get(usuarios).post(criar_usuario))
        .route("/usuarios/{user_id}", get(usuario))
        .route("/usuarios/{user_id}/assinatura", post(atualizar_assinatura))
        .route("/usuarios/{user_id}/pagamento", post(pagamento))
        .route("/usuarios/{user_id}/config", post(atualizar_config))
        .route("/status/{correlation_id}", get(status))
        .route("/historico-visualizacao", post(registrar_visualizacao))
        .route("/historico-visualizacao/{user_id}", get(obter_historico))
        .route("/recomendacoes/gerar", post(gerar_recomendacoes))
        .route("/recomendacoes/{user_id}", get(obter_recomendacoes))
        .route("/avaliacoes", post(avaliar_conteudo))
        .route("/sessoes", post(criar_sessao))
        .route("/sessoes/{session_id}/atividade", put(atividade_sessao))
        .route("/sessoes/{session_id}", delete(encerrar_sessao))
        .route("/sessoes/usuario/{user_id}", get(listar_sessoes))
        .route(
            "/cache/conteudo/{conteudo_id}",
            get(obter_cache_conteudo).post(cache_conteudo),
        )
        .route("/catalogo", get(catalogo))
        .route("/catalogo/{conteudo_id}", get(titulo))
        .route("/catalogo/{conteudo_id}/relacionados", get(relacionados))
        .route("/rankings/{ranking}", get(ranking))
        .route(
            "/usuarios/{user_id}/continuar-assistindo",
            get(continuar_assistindo),
        )
        .with_state(Arc::new(gateway));
    crate::api::finish(
        routes,
        ApiDoc::openapi(),
        stores,
        config,
        ("streaming", "S1"),
    )
}
