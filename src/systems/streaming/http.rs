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

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::entities::{self, EventType, Usuario};
use super::generator::{Fakes, event_record};
use super::routing::{STATUS_TTL, pending, status_key};
use super::users::Users;
use crate::api::{
    ApiConfig, ApiError, Authorized, ErrorBody, HasApiConfig, Listing, Paging, Status, WriteErrors,
    deadline, filter_value,
};
use crate::bus::{Bus, Topics};
use crate::store::{KvWrite, Stores};

/// Longest `?wait=` a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting request looks for its reply.
const WAIT_POLL: Duration = Duration::from_millis(10);

#[derive(Clone)]
struct Gateway {
    stores: Stores,
    bus: Arc<dyn Bus>,
    topics: Topics,
    config: Arc<ApiConfig>,
    fakes: Arc<std::sync::Mutex<Fakes>>,
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

impl Gateway {
    /// Publishes one event of `kind` built from the body (or made-up fields) and answers.
    async fn request(
        &self,
        kind: EventType,
        user_id: Option<i64>,
        headers: &HeaderMap,
        body: &Bytes,
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
        if !body.iter().all(u8::is_ascii_whitespace) {
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
            let given: Map<String, Value> = match serde_json::from_slice(body) {
                Ok(Value::Object(map)) => map,
                Ok(_) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "the body must be a JSON object",
                    ));
                }
                Err(e) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("malformed JSON: {e}"),
                    ));
                }
            };
            fields.extend(
                given
                    .into_iter()
                    .filter(|(k, _)| k != "user_id" || user_id.is_none()),
            );
        }
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let record = event_record(&self.topics, kind.name(), &correlation_id, &fields);
        // The processor's own validation, before anything is published.
        let event = entities::parse_event(&record.payload)?;
        entities::command(&event).map_err(|e| ApiError::from(e).about(kind.name()))?;
        let timeout = self.config.store_timeout;
        deadline(
            timeout,
            self.stores.key_value.write(&[KvWrite::Set {
                key: status_key(&correlation_id),
                value: pending().to_string(),
                ttl: Some(STATUS_TTL),
            }]),
        )
        .await?;
        match tokio::time::timeout(timeout, self.bus.publish(std::slice::from_ref(&record))).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(ApiError::unavailable(format!(
                    "the bus did not take the event: {e}"
                )));
            }
            Err(_) => return Err(ApiError::unavailable("the bus did not answer in time")),
        }
        if !wait.is_zero()
            && let Some(reply) = self.await_reply(&correlation_id, wait).await?
        {
            let status = match (reply["status"].as_str(), reply["erro"].as_str()) {
                (Some("success"), _) => StatusCode::CREATED,
                (_, Some("nao_encontrado")) => StatusCode::NOT_FOUND,
                (_, Some("conflito")) => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            return Ok((status, Json(reply)).into_response());
        }
        let (mensagem, key) = match kind {
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
        };
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
    State(gw): State<Gateway>,
    _: Authorized,
    wait: Result<Query<Wait>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Query(wait) = wait?;
    gw.request(EventType::CriarUsuario, None, &headers, &body, wait.wait)
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
            State(gw): State<Gateway>,
            _: Authorized,
            user_id: Result<Path<String>, PathRejection>,
            wait: Result<Query<Wait>, QueryRejection>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Result<Response, ApiError> {
            let user_id = path_user(user_id)?;
            let Query(wait) = wait?;
            gw.request($kind, Some(user_id), &headers, &body, wait.wait).await
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
    State(gw): State<Gateway>,
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
    State(gw): State<Gateway>,
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
    State(gw): State<Gateway>,
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

/// The gateway's OpenAPI 3 document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Livros & Dados — streaming platform gateway",
        description = "Seed 3's S1: each POST publishes an event on `user_events`; the processor stores it in the relational store and answers on `response_events`; `GET /status/{correlation_id}` tells the answer. Writes may require a bearer token."
    ),
    paths(
        home, criar_usuario, atualizar_assinatura, pagamento, atualizar_config, status, usuario, usuarios,
        crate::api::health, crate::api::ready
    ),
    components(schemas(UsuarioBody, AssinaturaBody, PagamentoBody, ConfigBody, Usuario, ErrorBody,
        crate::api::FieldError, Status)),
    tags(
        (name = "usuarios", description = "Requests and reads"),
        (name = "status", description = "Replies"),
        (name = "operations", description = "Health and readiness"),
    )
)]
pub struct ApiDoc;

/// The gateway over `stores`, publishing on `bus`.
pub fn app(stores: Stores, bus: Arc<dyn Bus>, topics: Topics, config: ApiConfig) -> axum::Router {
    let config = Arc::new(config);
    let gateway = Gateway {
        stores: stores.clone(),
        bus,
        topics,
        config: config.clone(),
        fakes: Arc::new(std::sync::Mutex::new(Fakes::new(None))),
    };
    let routes = axum::Router::new()
        .route("/", get(home))
        .route("/usuarios", get(usuarios).post(criar_usuario))
        .route("/usuarios/{user_id}", get(usuario))
        .route("/usuarios/{user_id}/assinatura", post(atualizar_assinatura))
        .route("/usuarios/{user_id}/pagamento", post(pagamento))
        .route("/usuarios/{user_id}/config", post(atualizar_config))
        .route("/status/{correlation_id}", get(status))
        .with_state(gateway);
    crate::api::finish(routes, ApiDoc::openapi(), stores, config, "S1")
}
