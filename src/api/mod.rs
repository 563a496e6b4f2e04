//! HTTP plumbing every system's API is built with (axum): settings, error answers and
//! the body extractor ([`error`]), the bearer token for writes, paging, a deadline on
//! every store call, health and readiness, the OpenAPI docs UI served from the binary, and
//! binding and serving. A system's `http.rs` adds its routes and calls [`finish`].

pub mod batch;
mod error;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, middleware};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

pub use error::{ApiError, ErrorBody, FieldError, JsonBody, RETRY_AFTER_SECS};

use crate::store::{Page, StoreResult, Stores};
use crate::wire::MAX_TEXT_LEN;

/// The API's settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// When set, every write must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Longest a request waits for a store before answering `503`.
    pub store_timeout: Duration,
    /// Print one line per request (the seed's server did).
    pub print_requests: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            token: None,
            // Catalogue records with long descriptions stay well under this.
            body_limit: 256 * 1024,
            store_timeout: Duration::from_secs(5),
            print_requests: false,
        }
    }
}

/// Default page size of listings, and the largest a client may ask for.
const PER_PAGE: u64 = 20;
const MAX_PER_PAGE: u64 = 100;
/// Highest page number: deep paging by offset gets slow, and no caller needs more.
const MAX_PAGE: u64 = 1_000_000;

/// A system's API state gives its settings to the shared extractors ([`Authorized`]).
///
/// A system keeps its state in an `Arc` (`State<Arc<AppState>>`): axum clones the state
/// for every request, and one reference count is cheaper than one per field.
pub trait HasApiConfig {
    /// The API's settings.
    fn api_config(&self) -> &ApiConfig;
}

impl<T: HasApiConfig> HasApiConfig for Arc<T> {
    fn api_config(&self) -> &ApiConfig {
        T::api_config(self)
    }
}

/// Runs a store call under a deadline: a store that is down or hung answers `503` with
/// `Retry-After`, never a hanging request.
pub async fn deadline<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = StoreResult<T>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ApiError::unavailable(format!(
            "a store did not answer within {timeout:?}"
        ))),
    }
}

/// A filter value as a store can take it: no control characters (PostgreSQL refuses NUL),
/// no longer than any stored text.
pub fn filter_value<'a>(
    name: &str,
    value: &'a Option<String>,
) -> Result<Option<&'a str>, ApiError> {
    match value.as_deref().map(str::trim) {
        Some(v) if v.chars().any(char::is_control) || v.chars().count() > MAX_TEXT_LEN => Err(
            ApiError::new(StatusCode::BAD_REQUEST, "invalid filter").with_errors(vec![
                FieldError {
                    field: name.to_string(),
                    problem: format!(
                        "must be at most {MAX_TEXT_LEN} characters, without control characters"
                    ),
                },
            ]),
        ),
        other => Ok(other),
    }
}

/// An id from a path that could be stored at all; anything else is simply not found.
pub fn storable_id(id: &str) -> bool {
    crate::wire::id_problem(id).is_none()
}

/// One page of a listing, ordered by id.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Listing<T> {
    /// The records of this page.
    pub items: Vec<T>,
    /// This page's number, from 1.
    pub page: u64,
    /// Records per page.
    pub per_page: u64,
    /// Whether a next page has records.
    pub has_more: bool,
}

/// Which page of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 1000000, default = 1)]
    page: Option<u64>,
    /// Records per page, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    per_page: Option<u64>,
}

impl Paging {
    /// The store's page, fetching one more record than asked to learn whether more follow.
    pub fn page(&self) -> Result<Page, ApiError> {
        let (page, per_page) = self.numbers();
        let mut errors = Vec::new();
        if !(1..=MAX_PAGE).contains(&page) {
            errors.push(FieldError {
                field: "page".into(),
                problem: format!("pages are numbered 1 to {MAX_PAGE}"),
            });
        }
        if !(1..=MAX_PER_PAGE).contains(&per_page) {
            errors.push(FieldError {
                field: "per_page".into(),
                problem: format!("must be 1 to {MAX_PER_PAGE}"),
            });
        }
        if !errors.is_empty() {
            return Err(
                ApiError::new(StatusCode::BAD_REQUEST, "invalid paging").with_errors(errors)
            );
        }
        let skip = (page - 1).saturating_mul(per_page);
        Ok(Page {
            skip,
            limit: per_page + 1,
        })
    }

    /// The page number and size asked for, defaults filled in.
    fn numbers(&self) -> (u64, u64) {
        (self.page.unwrap_or(1), self.per_page.unwrap_or(PER_PAGE))
    }

    pub fn listing<T>(&self, mut items: Vec<T>) -> Listing<T> {
        let (page, per_page) = self.numbers();
        let has_more = items.len() as u64 > per_page;
        items.truncate(per_page as usize);
        Listing {
            items,
            page,
            per_page,
            has_more,
        }
    }
}

/// A write's permission: the bearer token, when the server has one.
pub struct Authorized;

impl<S: HasApiConfig + Send + Sync> FromRequestParts<S> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Some(token) = &state.api_config().token else {
            return Ok(Authorized);
        };
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(presented.trim().as_bytes(), token.as_bytes()) {
            Ok(Authorized)
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The answer of `/health` and `/ready`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// `ok`, `ready`, or `error`.
    pub status: String,
    /// Per store (`relational`, `document`, `key-value`): `ok` or why not; only on `/ready`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stores: std::collections::BTreeMap<String, String>,
}

/// The error answers every write may give.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only documents the answers; `ApiError` builds them.
pub enum WriteErrors {
    /// Malformed JSON
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Missing or wrong bearer token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Body too large
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Not JSON
    #[response(status = 415)]
    NotJson(ErrorBody),
    /// Invalid entity: a field missing or wrong; for an order, an unknown customer or book
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// A store is set up wrong (not the request's fault); the message says what failed
    #[response(status = 500)]
    StoreFault(ErrorBody),
    /// A store is unavailable; retry after `Retry-After` seconds
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The process is up (no store is asked).
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Status)))]
pub async fn health() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
        stores: Default::default(),
    })
}

/// What `/ready` and [`observe`] need: the stores and the settings.
pub struct Ops {
    stores: Stores,
    config: Arc<ApiConfig>,
    /// The system's name, for the metrics.
    system: &'static str,
    /// The service's name in printed lines (`S2`).
    label: &'static str,
}

/// Every store answers.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Every store answers", body = Status),
        (status = 503, description = "Some store does not answer; `stores` says which", body = Status),
    ))]
pub async fn ready(State(state): State<Arc<Ops>>) -> Response {
    let stores = &state.stores;
    let timeout = state.config.store_timeout;
    let (relational, document, key_value) = tokio::join!(
        deadline(timeout, stores.relational.ping()),
        deadline(timeout, stores.document.ping()),
        deadline(timeout, stores.key_value.ping()),
    );
    let mut report = std::collections::BTreeMap::new();
    let mut all_ok = true;
    for (name, result) in [
        ("relational", relational),
        ("document", document),
        ("key-value", key_value),
    ] {
        let line = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                all_ok = false;
                e.body().message.clone()
            }
        };
        report.insert(name.to_string(), line);
    }
    let status = Status {
        status: if all_ok { "ready" } else { "error" }.into(),
        stores: report,
    };
    if all_ok {
        (StatusCode::OK, Json(status)).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, RETRY_AFTER_SECS.to_string())],
            Json(status),
        )
            .into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; /openapi.json lists them, /docs shows them",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method; /docs shows which it takes",
    )
}

/// What this process has recorded, in Prometheus' text format (see [`crate::metrics`]).
/// `GET /metrics`: the process's metrics in Prometheus' text format.
pub async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

/// Around every request, in one layer (each layer clones the route behind it for every
/// request): its trace ([`crate::trace::middleware`]), its count and latency in the
/// metrics by its route (the matched path, so ids do not multiply the series), and, when
/// the settings ask for it, a printed line like the seeds' servers printed:
/// `[S2] POST /customers → 201 (0.8 ms)`.
async fn observe(
    State(ops): State<Arc<Ops>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let printed = ops
        .config
        .print_requests
        .then(|| format!("{method} {}", request.uri().path()));
    let response = crate::trace::middleware(request, next).await;
    let status = response.status().as_u16();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    crate::metrics::http_request(ops.system, method.as_str(), route, status, started);
    if let Some(line) = printed {
        println!(
            "[{}] {line} → {status} ({:.1} ms)",
            ops.label,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    response
}

/// Bearer-token security for the OpenAPI document.
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// A system's routes (their state already given) made into the whole API: `/health`,
/// `/ready`, `/metrics`, `/openapi.json` (`doc`, with the bearer scheme) and the docs UI at `/docs`,
/// JSON answers for unknown endpoints and methods, the body limit, every request counted
/// in the metrics under the system's name, and one printed line per request (labelled
/// with the service's name, `S2`) when the settings ask for it.
pub fn finish(
    routes: axum::Router,
    mut doc: utoipa::openapi::OpenApi,
    stores: Stores,
    config: Arc<ApiConfig>,
    (system, label): (&'static str, &'static str),
) -> axum::Router {
    use utoipa::Modify;
    BearerAuth.modify(&mut doc);
    let body_limit = config.body_limit;
    let ops = Arc::new(Ops {
        stores,
        config,
        system,
        label,
    });
    let docs = utoipa_swagger_ui::SwaggerUi::new("/docs")
        .url("/openapi.json", doc)
        // The validator badge would call an external host; the UI must work offline.
        .config(utoipa_swagger_ui::Config::default().validator_url("none"));
    crate::metrics::handle();
    let operations = axum::Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(ops.clone());
    routes
        .merge(operations)
        .merge(docs)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(ops, observe))
        .layer(DefaultBodyLimit::max(body_limit))
}

/// Binds the API's address, with an error that says what to do when it is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {addr}: {e}. Pass another address with --http (or LIVROS_HTTP), port 0 for any free port, or `--http off`"
            ),
        )
    })
}

/// Serves `app` on `listener` until `shutdown` is cancelled; requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_checks_bounds_and_fetches_one_extra() {
        let p = Paging {
            page: Some(3),
            per_page: Some(10),
        };
        let page = p.page().unwrap();
        assert_eq!((page.skip, page.limit), (20, 11));
        let listing = p.listing((0..11).collect::<Vec<_>>());
        assert!(listing.has_more);
        assert_eq!(listing.items.len(), 10);
        let bad = Paging {
            page: Some(0),
            per_page: Some(1000),
        };
        assert_eq!(bad.page().unwrap_err().body().errors.len(), 2);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
