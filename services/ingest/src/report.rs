//! The answer to an ingest request.
//!
//! Item-level answer (200, 207, 400 when no item was valid, 429, 503):
//! ```json
//! {"accepted": 998, "rejected": 1, "failed": 1,
//!  "errors": [
//!    {"index": 3, "status": "rejected", "field": "amount", "code": "out_of_range", "reason": "…"},
//!    {"index": 7, "line": 8, "status": "failed", "code": "broker_unavailable", "reason": "…", "retryable": true}
//!  ]}
//! ```
//! Only items that were not accepted are listed; `index` is the item's 0-based position, `line`
//! its 1-based line in an NDJSON body.
//!
//! Request-level answer (400, 401, 413, 415): `{"error": "<code>", "message": "…"}`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use lambdalake_events::body::BodyError;
use lambdalake_events::{ErrorCode, FieldError};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Invalid: fix the item, do not retry as is.
    Rejected,
    /// Valid but not persisted: retry (the same event id is never counted twice).
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct ItemError {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub status: ItemStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub code: &'static str,
    pub reason: String,
    pub retryable: bool,
}

impl ItemError {
    pub fn rejected(index: usize, line: Option<usize>, e: FieldError) -> Self {
        ItemError {
            index,
            line,
            status: ItemStatus::Rejected,
            field: e.field,
            code: e.code.as_str(),
            reason: e.reason,
            retryable: false,
        }
    }

    pub fn failed(
        index: usize,
        line: Option<usize>,
        code: &'static str,
        reason: String,
        retryable: bool,
    ) -> Self {
        ItemError {
            index,
            line,
            status: ItemStatus::Failed,
            field: None,
            code,
            reason,
            retryable,
        }
    }
}

/// Per-item outcome of a request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    pub accepted: usize,
    pub rejected: usize,
    pub failed: usize,
    pub errors: Vec<ItemError>,
}

impl IngestReport {
    /// The status that tells the client what happened as a whole:
    /// 200 all accepted; 207 some rejected as invalid, the rest accepted; 400 none valid;
    /// 503 some valid items could not reach the broker; 429 the producer queue was full; 422 the
    /// broker refused an item for good.
    pub fn status(&self) -> StatusCode {
        let failed_with = |code: &str| {
            self.errors
                .iter()
                .any(|e| e.status == ItemStatus::Failed && e.code == code)
        };
        if failed_with(BROKER_UNAVAILABLE) {
            StatusCode::SERVICE_UNAVAILABLE
        } else if failed_with(QUEUE_FULL) {
            StatusCode::TOO_MANY_REQUESTS
        } else if self.failed > 0 {
            // refused by the broker for good (e.g. larger than the topic allows)
            StatusCode::UNPROCESSABLE_ENTITY
        } else if self.rejected == 0 {
            StatusCode::OK
        } else if self.accepted > 0 {
            StatusCode::MULTI_STATUS
        } else {
            StatusCode::BAD_REQUEST
        }
    }
}

pub const QUEUE_FULL: &str = "queue_full";
pub const BROKER_UNAVAILABLE: &str = "broker_unavailable";
pub const REFUSED: &str = "refused_by_broker";

/// A request refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error(
        "too many requests from this caller (API key, or client address without keys); retry in {retry_after:?}"
    )]
    RateLimited { retry_after: std::time::Duration },
    #[error(
        "unsupported Content-Type {0:?}: send application/json (one object or an array) or application/x-ndjson"
    )]
    UnsupportedMediaType(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request body holds more than {limit} events; split it into smaller requests")]
    TooManyEvents { limit: usize },
    #[error("{0}")]
    Body(BodyError),
    #[error("could not read the request body: {0}")]
    Read(String),
    #[error("the request body did not arrive within {timeout:?}")]
    BodyTimeout { timeout: std::time::Duration },
}

impl RequestError {
    fn code(&self) -> &'static str {
        match self {
            RequestError::Unauthorized(_) => "unauthorized",
            RequestError::RateLimited { .. } => "rate_limited",
            RequestError::UnsupportedMediaType(_) => "unsupported_media_type",
            RequestError::BodyTooLarge { .. } => "body_too_large",
            RequestError::TooManyEvents { .. } => "too_many_events",
            RequestError::Body(BodyError::Empty) => "empty_body",
            RequestError::Body(BodyError::NoEvents) => "no_events",
            RequestError::Body(BodyError::InvalidJson(_)) => ErrorCode::InvalidJson.as_str(),
            RequestError::Body(BodyError::NotObjectOrArray(_)) => "invalid_type",
            RequestError::Body(BodyError::TooManyEvents { .. }) => "too_many_events",
            RequestError::Read(_) => "bad_body",
            RequestError::BodyTimeout { .. } => "body_timeout",
        }
    }
}

impl From<BodyError> for RequestError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooManyEvents { limit } => RequestError::TooManyEvents { limit },
            other => RequestError::Body(other),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ResponseError for RequestError {
    fn status_code(&self) -> StatusCode {
        match self {
            RequestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RequestError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            RequestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestError::BodyTooLarge { .. } | RequestError::TooManyEvents { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            RequestError::Body(_) | RequestError::Read(_) => StatusCode::BAD_REQUEST,
            RequestError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            RequestError::Unauthorized(_) => {
                response
                    .insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            RequestError::RateLimited { retry_after } => {
                // whole seconds, rounded up (RFC 9110)
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                response.insert_header((header::RETRY_AFTER, secs.max(1)));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: self.code(),
            message: self.to_string(),
        })
    }
}
