//! Every answer the API gives to something that went wrong, and the extractors that turn
//! axum's own rejections (bad JSON, bad query, body too large) into those answers, so a
//! client always gets `{"status":"error","message":…}` and never a plain-text body.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::services::Rejection;
use crate::store::StoreError;
use crate::wire::Invalid;

/// Seconds a client is asked to wait when a store is unavailable.
pub const RETRY_AFTER_SECS: u64 = 5;

/// What is wrong with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's name (`email`, `quantity`, `customer_id`…).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"status": "error", "message": "invalid record: field `email`: `nope` is not an e-mail address",
    "errors": [{"field": "email", "problem": "`nope` is not an e-mail address"}]}))]
pub struct ErrorBody {
    /// Always `error`.
    #[schema(example = "error")]
    pub status: String,
    /// What went wrong, in a sentence.
    pub message: String,
    /// One entry per field at fault, when the request's content is invalid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// An error answer: a status, a JSON body, and, for 503, a `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    /// An answer with `status` and `message` and no field errors.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                status: "error".into(),
                message: message.into(),
                errors: Vec::new(),
            },
        }
    }

    /// 422: the request is well-formed but its content is not acceptable.
    pub fn unprocessable(message: impl Into<String>, errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, message);
        e.body.errors = errors;
        e
    }

    /// 404 for a record (`what`: `customer`, …) that is not stored.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no {what} with id `{id}`"))
    }

    /// 503: a store is down or too slow; the client should retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 401: a write without the API token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "this server requires a bearer token for writes: send `Authorization: Bearer <token>`",
        )
    }

    /// The same error with these field errors.
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.body.errors = errors;
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON body.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }

    /// The same error, its message saying what it is about (`customer`, …).
    pub fn about(mut self, what: &str) -> Self {
        self.body.message = format!("invalid {what}: {}", self.body.message);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        (self.status, headers, axum::Json(self.body)).into_response()
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        let field = |field: &str, problem: String| {
            vec![FieldError {
                field: field.to_string(),
                problem,
            }]
        };
        match invalid {
            Invalid::NotJson(reason) => {
                Self::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {reason}"))
            }
            Invalid::Missing(name) => Self::unprocessable(
                format!("missing field `{name}`"),
                field(name, "missing".into()),
            ),
            Invalid::Field {
                field: name,
                problem,
            } => Self::unprocessable(format!("field `{name}`: {problem}"), field(name, problem)),
            Invalid::UnknownReference { kind, id } => Self::unprocessable(
                format!("unknown {kind} `{id}`: store the {kind} first"),
                field(&format!("{kind}_id"), format!("no {kind} with id `{id}`")),
            ),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Invalid(invalid) => invalid.into(),
            Rejection::Store(reason) => Self::unprocessable(reason, Vec::new()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { .. } => Self::unavailable(e.to_string()),
            StoreError::Rejected { .. } => Self::unprocessable(e.to_string(), Vec::new()),
            // Not the client's fault, and not something waiting fixes: a server error.
            StoreError::Fault { .. } => Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::new(e.status(), e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}

/// A request body that claims to be JSON and fits the size limit. Parsing it is the
/// domain's job ([`crate::systems::bookstore::entities`]), so the API and the bus accept exactly the same input.
pub struct JsonBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !(essence == "application/json" || essence.ends_with("+json")) {
            let found = if content_type.is_empty() {
                "none".to_string()
            } else {
                format!("`{content_type}`")
            };
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "send the body as JSON with `Content-Type: application/json` (content type: {found})"
                ),
            ));
        }
        axum::body::Bytes::from_request(req, state)
            .await
            .map(JsonBody)
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the body is larger than this server accepts",
                    )
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, e.body_text())
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_input_maps_to_400_or_422_with_the_field() {
        let e = ApiError::from(Invalid::NotJson("eof".into()));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = ApiError::from(Invalid::Missing("email"));
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.body().errors[0].field, "email");
        let e = ApiError::from(Invalid::UnknownReference {
            kind: "book",
            id: "b9".into(),
        });
        assert_eq!(e.body().errors[0].field, "book_id");
        let e = ApiError::from(StoreError::Unavailable {
            store: "redis",
            reason: "refused".into(),
        });
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let response = e.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        // A store set up wrong is never the client's fault.
        let e = ApiError::from(StoreError::Fault {
            store: "postgres",
            reason: "column \"updated_at\" does not exist".into(),
        });
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
