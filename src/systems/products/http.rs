//! The products API (seed 5's second service), on axum: `POST /products/` stores a
//! product and answers the seed's `200` with the product as stored; `GET /products/` and
//! `GET /products/{id}` read them. Each answer about one product carries its version as
//! the `ETag` (`"3"`).
//!
//! A POST goes through the group-commit writer ([`crate::api::batch`]) to the
//! [`ProductWriter`]: the product and, when it changed, its announcement in the outbox, in
//! one transaction. The announcement reaches `produtos-persistidos` through the relay, not
//! from this request: the answer never waits for the bus, and a crash after the commit
//! loses nothing. `/products` (no slash) takes the same requests, since FastAPI's
//! redirect to `/products/` is what the seed's clients got.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, OpenApi};

use super::catalog::{Products, Stored};
use super::entities::{Availability, Pricing, Product};
use super::routing::ProductWriter;
use crate::api::batch::Writer;
use crate::api::{
    ApiConfig, ApiError, Authorized, ErrorBody, HasApiConfig, JsonBody, Listing, Paging, Status,
    WriteErrors, deadline, filter_value, storable_id,
};
use crate::services::Rejection;
use crate::store::Stores;

/// Shared by every request behind one `Arc` (see [`crate::api::HasApiConfig`]).
struct AppState {
    stores: Stores,
    writer: Writer<Result<Stored, Rejection>>,
    config: Arc<ApiConfig>,
}

impl HasApiConfig for AppState {
    fn api_config(&self) -> &ApiConfig {
        &self.config
    }
}

/// A product and its version as an answer: the seed's JSON, the version as `ETag`.
fn answer(stored: Stored) -> Response {
    let mut response = Json(stored.product).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", stored.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// Store a product. The same product again changes nothing (its `availability.timestamp`
/// alone is not a change); a changed one is stored as its next version, and each version
/// is announced once on `produtos-persistidos`.
#[utoipa::path(post, path = "/products/", tag = "products",
    request_body(content = Product, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored (or already stored as sent): the product as stored; `ETag` is its version", body = Product),
        WriteErrors,
    ),
    security((), ("bearer" = [])))]
async fn create_product(
    State(state): State<Arc<AppState>>,
    _: Authorized,
    body: JsonBody,
) -> Result<Response, ApiError> {
    match deadline(state.config.store_timeout, state.writer.write(body.0)).await? {
        Ok(stored) => Ok(answer(stored)),
        Err(rejection) => Err(ApiError::from(rejection).about("product")),
    }
}

/// One product, as stored; `ETag` is its version.
#[utoipa::path(get, path = "/products/{id}", tag = "products",
    params(("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 404, description = "Not stored", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
async fn get_product(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let found = if storable_id(&id) {
        deadline(
            state.config.store_timeout,
            state.stores.relational.product(&id),
        )
        .await?
    } else {
        None
    };
    found
        .map(answer)
        .ok_or_else(|| ApiError::not_found("product", &id))
}

/// Filters of `GET /products/`; all given must match.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductFilter {
    /// Only this category (exact).
    category: Option<String>,
    /// Words that must all occur in the name, in any case (`cafeteira inox`).
    name: Option<String>,
}

/// Products, ordered by id, matching every filter given.
#[utoipa::path(get, path = "/products/", tag = "products",
    params(ProductFilter, Paging),
    responses(
        (status = 200, description = "One page of products", body = Listing<Product>),
        (status = 400, description = "Invalid paging or filter", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
async fn list_products(
    State(state): State<Arc<AppState>>,
    filter: Result<Query<ProductFilter>, QueryRejection>,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Listing<Product>>, ApiError> {
    let (Query(filter), Query(paging)) = (filter?, paging?);
    let page = paging.page()?;
    let category = filter_value("category", &filter.category)?.filter(|c| !c.is_empty());
    let words: Vec<String> = filter_value("name", &filter.name)?
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let found = deadline(
        state.config.store_timeout,
        state.stores.relational.products(category, &words, page),
    )
    .await?;
    Ok(Json(
        paging.listing(found.into_iter().map(|s| s.product).collect()),
    ))
}

/// The service is up.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "Up", body = Object)))]
async fn home() -> Json<Value> {
    Json(json!({"status": "success", "message": "API de produtos no ar", "docs": "/docs"}))
}

/// The OpenAPI 3 document, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Livros & Dados — products",
        description = "Seed 5's API: products stored in the relational store, each new version announced on `produtos-persistidos` through a transactional outbox. Writes may require a bearer token (`--api-token`)."
    ),
    paths(create_product, list_products, get_product, home, crate::api::health, crate::api::ready),
    components(schemas(Product, Pricing, Availability, ErrorBody, crate::api::FieldError, Status)),
    tags(
        (name = "products", description = "Relational store, announced through the outbox"),
        (name = "operations", description = "Health and readiness"),
    )
)]
pub struct ApiDoc;

/// The products API over `stores`, writing through `writer`'s handler.
pub fn app(stores: Stores, writer: ProductWriter, config: ApiConfig) -> axum::Router {
    let config = Arc::new(config);
    let state = AppState {
        stores: stores.clone(),
        writer: Writer::spawn("products", Arc::new(writer)),
        config: config.clone(),
    };
    let routes = axum::Router::new()
        .route("/", get(home))
        .route("/products/", get(list_products).post(create_product))
        .route("/products", get(list_products).post(create_product))
        .route("/products/{id}", get(get_product))
        .with_state(Arc::new(state));
    crate::api::finish(
        routes,
        ApiDoc::openapi(),
        stores,
        config,
        ("products", "API"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_lists_every_endpoint() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for path in ["/products/", "/products/{id}", "/", "/health", "/ready"] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
        assert!(doc["components"]["schemas"].get("Product").is_some());
    }
}
