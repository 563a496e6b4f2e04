//! S2's REST API: the bookstore over HTTP (seed 2, client-server), on axum.
//!
//! The wire contract is the seed's Flask app: `POST /customers|/books|/orders` with the
//! seed's JSON bodies answer `201 {"status":"success","message":…}`, and errors answer
//! `{"status":"error","message":…}`. On top of it: reads, listings with filters and
//! paging, field-level errors, a bearer token for writes, health and readiness, and an
//! OpenAPI document generated from this file ([`ApiDoc`]) with an offline docs UI.
//!
//! **A POST writes the stores directly, not through the bus.** It goes through the same
//! [`Router`] as S2's consumers, so the routing table, the validation and the idempotent
//! upserts are the very same code; but a client-server caller expects `201` to mean
//! "stored, and readable now" — the seed's client reads its answer as that. Going through
//! the bus would turn `201` into "queued" (a `202`) and a read-your-write into a race.
//! The bus stays the path for high-volume producers; the API is for callers that need an
//! answer. An order's customer and book must already be stored (no grace period: the
//! caller gets a `422` at once and can retry).
//!
//! Every store call has a deadline ([`ApiConfig::store_timeout`]): a store that is down
//! or hung gives `503` with `Retry-After`, never a hanging request.

mod batch;
mod error;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, middleware};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi, ToSchema};

pub use error::{ApiError, ErrorBody, FieldError, JsonBody, RETRY_AFTER_SECS};

use crate::domain::{Book, Customer, MAX_TEXT_LEN, Order};
use crate::routing::{
    self, BOOKS_COLLECTION, Entity, Outcome, Router, customer_orders_key, order_from_hash,
    order_key,
};
use crate::store::{Page, StoreResult, book_filters};

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

#[derive(Clone)]
struct AppState {
    router: Router,
    config: Arc<ApiConfig>,
    /// One group-commit writer per entity.
    writers: Arc<HashMap<Entity, batch::Writer>>,
}

impl AppState {
    /// Runs a store call under the API's deadline.
    async fn store<T>(
        &self,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.config.store_timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ApiError::unavailable(format!(
                "a store did not answer within {:?}",
                self.config.store_timeout
            ))),
        }
    }

    /// Validates and stores one entity through the routing table.
    async fn create(&self, entity: Entity, body: axum::body::Bytes) -> Result<Response, ApiError> {
        match self.store(self.writers[&entity].write(body)).await? {
            Outcome::Stored { id, .. } => Ok((
                StatusCode::CREATED,
                [(header::LOCATION, format!("/{}/{id}", entity.plural()))],
                Json(Created {
                    status: "success".into(),
                    message: format!(
                        "stored {} `{id}` in the {} store",
                        entity.name(),
                        routing::route_of(entity).store.name()
                    ),
                    id,
                }),
            )
                .into_response()),
            Outcome::Rejected(rejection) => Err(ApiError::from(rejection).about(entity)),
        }
    }
}

/// A filter value as a store can take it: no control characters (PostgreSQL refuses NUL),
/// no longer than any stored text.
fn filter_value<'a>(name: &str, value: &'a Option<String>) -> Result<Option<&'a str>, ApiError> {
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
fn storable_id(id: &str) -> bool {
    crate::domain::id_problem(id).is_none()
}

/// The answer to a successful write.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "success", "message": "stored customer `c-1` in the relational store", "id": "c-1"}))]
pub struct Created {
    /// Always `success`.
    #[schema(example = "success")]
    pub status: String,
    /// What was stored where.
    pub message: String,
    /// The stored entity's id.
    pub id: String,
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
    fn page(&self) -> Result<Page, ApiError> {
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

    fn listing<T>(&self, mut items: Vec<T>) -> Listing<T> {
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
struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = &state.config.token else {
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

/// Filters of `GET /customers`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CustomerFilter {
    /// Only customers with this e-mail address (exact).
    email: Option<String>,
}

/// Filters of `GET /books`; all given must match.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BookFilter {
    /// An author, exactly as stored (e.g. `Machado de Assis`).
    author: Option<String>,
    /// An ISBN-13 or ISBN-10; hyphens and spaces are ignored.
    isbn: Option<String>,
    /// Words that must all occur in the title, in any case.
    title: Option<String>,
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
enum WriteErrors {
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

/// Store a customer (PostgreSQL, or embedded SQLite). Posting the same id again updates it.
#[utoipa::path(post, path = "/customers", tag = "customers",
    request_body(content = Customer, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored", body = Created),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn create_customer(
    State(state): State<AppState>,
    _: Authorized,
    body: JsonBody,
) -> Result<Response, ApiError> {
    state.create(Entity::Customer, body.0).await
}

/// Store a book (MongoDB, or the embedded document store). Fields beyond the known ones
/// are kept as sent.
#[utoipa::path(post, path = "/books", tag = "books",
    request_body(content = Book, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored", body = Created),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn create_book(
    State(state): State<AppState>,
    _: Authorized,
    body: JsonBody,
) -> Result<Response, ApiError> {
    state.create(Entity::Book, body.0).await
}

/// Store an order (Redis, or the embedded key-value store). Its customer and book must
/// already be stored.
#[utoipa::path(post, path = "/orders", tag = "orders",
    request_body(content = Order, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored", body = Created),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn create_order(
    State(state): State<AppState>,
    _: Authorized,
    body: JsonBody,
) -> Result<Response, ApiError> {
    state.create(Entity::Order, body.0).await
}

/// One customer.
#[utoipa::path(get, path = "/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "Customer id")),
    responses(
        (status = 200, description = "The customer", body = Customer),
        (status = 404, description = "Not stored", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn get_customer(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Customer>, ApiError> {
    let Path(id) = id?;
    let found = if storable_id(&id) {
        state
            .store(state.router.stores().relational.customer(&id))
            .await?
    } else {
        None
    };
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found(Entity::Customer, &id))
}

/// One book, as stored.
#[utoipa::path(get, path = "/books/{id}", tag = "books",
    params(("id" = String, Path, description = "Book id")),
    responses(
        (status = 200, description = "The book", body = Book),
        (status = 404, description = "Not stored", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn get_book(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = id?;
    let found = if storable_id(&id) {
        state
            .store(state.router.stores().document.get(BOOKS_COLLECTION, &id))
            .await?
    } else {
        None
    };
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found(Entity::Book, &id))
}

/// One order.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 404, description = "Not stored", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn get_order(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Order>, ApiError> {
    let Path(id) = id?;
    let found = if storable_id(&id) {
        let fields = state
            .store(state.router.stores().key_value.hgetall(&order_key(&id)))
            .await?;
        order_from_hash(&id, &fields)
    } else {
        None
    };
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found(Entity::Order, &id))
}

/// Customers, ordered by id; by e-mail address when `email` is given.
#[utoipa::path(get, path = "/customers", tag = "customers",
    params(CustomerFilter, Paging),
    responses(
        (status = 200, description = "One page of customers", body = Listing<Customer>),
        (status = 400, description = "Invalid paging or filter", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn list_customers(
    State(state): State<AppState>,
    filter: Result<Query<CustomerFilter>, QueryRejection>,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Listing<Customer>>, ApiError> {
    let (Query(filter), Query(paging)) = (filter?, paging?);
    let page = paging.page()?;
    let email = filter_value("email", &filter.email)?;
    let found = state
        .store(state.router.stores().relational.customers(email, page))
        .await?;
    Ok(Json(paging.listing(found)))
}

/// Books, ordered by id, matching every filter given.
#[utoipa::path(get, path = "/books", tag = "books",
    params(BookFilter, Paging),
    responses(
        (status = 200, description = "One page of books", body = Listing<Book>),
        (status = 400, description = "Invalid paging or filter", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn list_books(
    State(state): State<AppState>,
    filter: Result<Query<BookFilter>, QueryRejection>,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Listing<serde_json::Value>>, ApiError> {
    let (Query(filter), Query(paging)) = (filter?, paging?);
    let page = paging.page()?;
    let filters = book_filters(
        filter_value("author", &filter.author)?,
        filter_value("isbn", &filter.isbn)?,
        filter_value("title", &filter.title)?,
    );
    let found = state
        .store(
            state
                .router
                .stores()
                .document
                .find(BOOKS_COLLECTION, &filters, page),
        )
        .await?;
    Ok(Json(paging.listing(found)))
}

/// A customer's orders, ordered by order id.
#[utoipa::path(get, path = "/customers/{id}/orders", tag = "orders",
    params(("id" = String, Path, description = "Customer id"), Paging),
    responses(
        (status = 200, description = "One page of the customer's orders", body = Listing<Order>),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
async fn customer_orders(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Listing<Order>>, ApiError> {
    let (Path(id), Query(paging)) = (id?, paging?);
    let page = paging.page()?;
    let stores = state.router.stores();
    let known = storable_id(&id)
        && state
            .store(stores.relational.customer(&id))
            .await?
            .is_some();
    if !known {
        return Err(ApiError::not_found(Entity::Customer, &id));
    }
    let ids = state
        .store(stores.key_value.smembers(&customer_orders_key(&id)))
        .await?;
    let ids: Vec<&String> = ids
        .iter()
        .skip(usize::try_from(page.skip).unwrap_or(usize::MAX))
        .take(page.limit as usize)
        .collect();
    let keys: Vec<String> = ids.iter().map(|id| order_key(id)).collect();
    let hashes = state.store(stores.key_value.hgetall_many(&keys)).await?;
    let orders = ids
        .iter()
        .zip(&hashes)
        .filter_map(|(id, fields)| order_from_hash(id, fields))
        .collect();
    Ok(Json(paging.listing(orders)))
}

/// The answer of `GET /`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Home {
    /// Always `success`.
    #[schema(example = "success")]
    pub status: String,
    /// The original server's greeting.
    #[schema(example = "Serviço S2 está no ar!")]
    pub message: String,
    /// Where the API is described.
    #[schema(example = "/docs")]
    pub docs: String,
}

/// The service is up: the original server answered `GET /` with "Serviço S2 está no ar!",
/// and its clients may check that; ours says the same, as JSON.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "Up", body = Home)))]
async fn home() -> Json<Home> {
    Json(Home {
        status: "success".into(),
        message: "Serviço S2 está no ar!".into(),
        docs: "/docs".into(),
    })
}

/// The process is up (no store is asked).
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Status)))]
async fn health() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
        stores: Default::default(),
    })
}

/// Every store answers.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Every store answers", body = Status),
        (status = 503, description = "Some store does not answer; `stores` says which", body = Status),
    ))]
async fn ready(State(state): State<AppState>) -> Response {
    let stores = state.router.stores();
    let (relational, document, key_value) = tokio::join!(
        state.store(stores.relational.ping()),
        state.store(stores.document.ping()),
        state.store(stores.key_value.ping()),
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

/// Prints `[S2] POST /customers → 201 (0.8 ms)` per request, like the seed's Flask server.
async fn print_request(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if !state.config.print_requests {
        return next.run(request).await;
    }
    let started = Instant::now();
    let line = format!("{} {}", request.method(), request.uri().path());
    let response = next.run(request).await;
    println!(
        "[S2] {line} → {} ({:.1} ms)",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    );
    response
}

/// Bearer-token security for the OpenAPI document.
struct BearerAuth;

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

/// The OpenAPI 3 document, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Livros & Dados",
        description = "The bookstore over HTTP: customers in the relational store, books in the document store, orders in the key-value store. Writes may require a bearer token (`--api-token`)."
    ),
    paths(
        create_customer, list_customers, get_customer, customer_orders,
        create_book, list_books, get_book,
        create_order, get_order,
        home, health, ready
    ),
    components(schemas(Customer, Book, Order, Created, ErrorBody, FieldError, Status, Home)),
    modifiers(&BearerAuth),
    tags(
        (name = "customers", description = "Relational store"),
        (name = "books", description = "Document store"),
        (name = "orders", description = "Key-value store"),
        (name = "operations", description = "Health and readiness"),
    )
)]
pub struct ApiDoc;

/// The API over `router`'s stores, with `/openapi.json` and the docs UI at `/docs`.
pub fn app(router: Router, config: ApiConfig) -> axum::Router {
    let body_limit = config.body_limit;
    let writers = Arc::new(
        routing::ROUTES
            .iter()
            .map(|r| (r.entity, batch::Writer::spawn(router.clone(), r.entity)))
            .collect(),
    );
    let state = AppState {
        router,
        config: Arc::new(config),
        writers,
    };
    let docs = utoipa_swagger_ui::SwaggerUi::new("/docs")
        .url("/openapi.json", ApiDoc::openapi())
        // The validator badge would call an external host; the UI must work offline.
        .config(utoipa_swagger_ui::Config::default().validator_url("none"));
    axum::Router::new()
        .route("/customers", get(list_customers).post(create_customer))
        .route("/customers/{id}", get(get_customer))
        .route("/customers/{id}/orders", get(customer_orders))
        .route("/books", get(list_books).post(create_book))
        .route("/books/{id}", get(get_book))
        .route("/orders", axum::routing::post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/", get(home))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(docs)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), print_request))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
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
    fn openapi_lists_every_endpoint() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for path in [
            "/customers",
            "/customers/{id}",
            "/customers/{id}/orders",
            "/books",
            "/books/{id}",
            "/orders",
            "/orders/{id}",
            "/",
            "/health",
            "/ready",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
        assert!(doc["components"]["schemas"].get("Customer").is_some());
    }

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
