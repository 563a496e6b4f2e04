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

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::catalog::book_filters;
use super::customers::Customers;
use super::entities::{Book, Customer, Order};
use super::routing::{
    self, BOOKS_COLLECTION, Entity, Router, customer_orders_key, order_from_hash, order_key,
};
use crate::api::batch::Writer;
use crate::api::{
    ApiConfig, ApiError, Authorized, ErrorBody, HasApiConfig, JsonBody, Listing, Paging, Status,
    WriteErrors, deadline, filter_value, storable_id,
};
use crate::services::{Handler, Outcome};
use crate::store::StoreResult;

/// Shared by every request behind one `Arc` (see [`crate::api::HasApiConfig`]).
struct AppState {
    router: Router,
    config: Arc<ApiConfig>,
    /// One group-commit writer per entity.
    writers: Arc<HashMap<Entity, Writer>>,
}

impl HasApiConfig for AppState {
    fn api_config(&self) -> &ApiConfig {
        &self.config
    }
}

/// A POST of one entity: the router, for that entity, with no reference grace (an API
/// caller gets its answer now, and can retry).
struct Create {
    router: Router,
    entity: Entity,
}

#[async_trait::async_trait]
impl Handler for Create {
    async fn handle(&self, payloads: &[&[u8]]) -> StoreResult<Vec<Outcome>> {
        self.router.apply(self.entity, payloads).await
    }
}

impl AppState {
    /// Runs a store call under the API's deadline.
    async fn store<T>(
        &self,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> Result<T, ApiError> {
        deadline(self.config.store_timeout, call).await
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
            Outcome::Rejected(rejection) => Err(ApiError::from(rejection).about(entity.name())),
        }
    }
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

/// Store a customer (PostgreSQL, or embedded SQLite). Posting the same id again updates it.
#[utoipa::path(post, path = "/customers", tag = "customers",
    request_body(content = Customer, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored", body = Created),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn create_customer(
    State(state): State<Arc<AppState>>,
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
    State(state): State<Arc<AppState>>,
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
    State(state): State<Arc<AppState>>,
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
    State(state): State<Arc<AppState>>,
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
        .ok_or_else(|| ApiError::not_found(Entity::Customer.name(), &id))
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
    State(state): State<Arc<AppState>>,
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
        .ok_or_else(|| ApiError::not_found(Entity::Book.name(), &id))
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
    State(state): State<Arc<AppState>>,
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
        .ok_or_else(|| ApiError::not_found(Entity::Order.name(), &id))
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
    State(state): State<Arc<AppState>>,
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
    State(state): State<Arc<AppState>>,
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
    State(state): State<Arc<AppState>>,
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
        return Err(ApiError::not_found(Entity::Customer.name(), &id));
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
        home, crate::api::health, crate::api::ready
    ),
    components(schemas(Customer, Book, Order, Created, ErrorBody, crate::api::FieldError, Status, Home)),
    tags(
        (name = "customers", description = "Relational store"),
        (name = "books", description = "Document store"),
        (name = "orders", description = "Key-value store"),
        (name = "operations", description = "Health and readiness"),
    )
)]
pub struct ApiDoc;

/// The bookstore's API over `router`'s stores, with `/openapi.json` and the docs UI.
pub fn app(router: Router, config: ApiConfig) -> axum::Router {
    let writers = Arc::new(
        routing::ROUTES
            .iter()
            .map(|r| {
                let create = Create {
                    router: router.clone(),
                    entity: r.entity,
                };
                (r.entity, Writer::spawn(r.entity.plural(), Arc::new(create)))
            })
            .collect(),
    );
    let config = Arc::new(config);
    let stores = router.stores().clone();
    let state = AppState {
        router,
        config: config.clone(),
        writers,
    };
    let routes = axum::Router::new()
        .route("/", get(home))
        .route("/customers", get(list_customers).post(create_customer))
        .route("/customers/{id}", get(get_customer))
        .route("/customers/{id}/orders", get(customer_orders))
        .route("/books", get(list_books).post(create_book))
        .route("/books/{id}", get(get_book))
        .route("/orders", axum::routing::post(create_order))
        .route("/orders/{id}", get(get_order))
        .with_state(Arc::new(state));
    crate::api::finish(
        routes,
        ApiDoc::openapi(),
        stores,
        config,
        ("bookstore", "S2"),
    )
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
}
