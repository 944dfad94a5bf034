//! One invalid field of a request: what validation in the domain (a DNS record) and the API
//! report, field by field, so that every problem of a request is named at once.

use serde::Serialize;

/// One invalid field of a request.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    /// The field's name as the request spelt it (`mac`, `labels.zone`, `groups[0]`); empty
    /// for the request as a whole.
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}
