use serde::Serialize;

/// What kind of problem an item had: a small, stable set, so it can label metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The item is not well-formed JSON (syntax error, invalid UTF-8, number too large).
    InvalidJson,
    /// A required field is absent.
    MissingField,
    /// A field appears twice in one object.
    DuplicateField,
    /// A field has the wrong JSON type (e.g. a string where a number is expected, or `null`).
    InvalidType,
    /// A field has the right type but a value the format does not allow (bad code, bad id).
    InvalidValue,
    /// A number outside its allowed range.
    OutOfRange,
    /// `ts` is further in the future than the allowed clock skew.
    FutureTimestamp,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::DuplicateField => "duplicate_field",
            ErrorCode::InvalidType => "invalid_type",
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::OutOfRange => "out_of_range",
            ErrorCode::FutureTimestamp => "future_timestamp",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one event was rejected: which field (absent when the item as a whole is wrong), a stable
/// code and a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}: {reason}", field.as_deref().unwrap_or("(item)"))]
pub struct FieldError {
    pub field: Option<String>,
    pub code: ErrorCode,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &str, code: ErrorCode, reason: impl Into<String>) -> Self {
        FieldError {
            field: Some(field.to_owned()),
            code,
            reason: reason.into(),
        }
    }

    pub fn item(code: ErrorCode, reason: impl Into<String>) -> Self {
        FieldError {
            field: None,
            code,
            reason: reason.into(),
        }
    }

    /// Translate a serde error (with the path where it happened) into a field error.
    pub(crate) fn from_serde(err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let full = inner.to_string();
        // serde_json appends " at line L column C": keep it for syntax errors (it locates the
        // problem in the item), drop it for data errors (the field name says where)
        let message = match full.rfind(" at line ") {
            Some(at) if inner.is_data() => full[..at].to_owned(),
            _ => full.clone(),
        };
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            return FieldError::item(ErrorCode::InvalidJson, format!("invalid JSON: {full}"));
        }
        let field = if path == "." { None } else { Some(path) };
        if let Some(name) = backticked(&message, "missing field `") {
            return FieldError::new(name, ErrorCode::MissingField, "required field is missing");
        }
        if let Some(name) = backticked(&message, "duplicate field `") {
            return FieldError::new(
                name,
                ErrorCode::DuplicateField,
                "field appears more than once",
            );
        }
        let reason = message
            .replace("expected f64", "expected a number")
            .replace("expected a borrowed string", "expected a string");
        match field {
            Some(field) => FieldError {
                field: Some(field),
                code: ErrorCode::InvalidType,
                reason,
            },
            None => FieldError::item(
                ErrorCode::InvalidType,
                format!(
                    "expected a JSON object ({})",
                    reason.trim_start_matches("invalid type: ")
                ),
            ),
        }
    }
}

fn backticked<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}
