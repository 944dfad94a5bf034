//! One invalid field of a request: what validation in the domain (a DNS record) and the API
//! report, field by field, so that every problem of a request is named at once.

use serde::Serialize;

/// One invalid field of a request.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}
