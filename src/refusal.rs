//! What a refusal is: a status, a machine-readable code and a human sentence, declared next
//! to each error type. Knows no body type: [`crate::response`] turns a refusal into the
//! JSON response every refusal takes.

use hyper::StatusCode;

/// A refusal that knows its status, its machine-readable code and its human sentence.
pub trait ApiError: std::fmt::Display {
    /// The HTTP status.
    fn status(&self) -> StatusCode;
    /// The `error` code of the JSON body.
    fn code(&self) -> &'static str;
    /// Seconds for `Retry-After`, for refusals the client should retry.
    fn retry_after(&self) -> Option<u64> {
        None
    }
}
