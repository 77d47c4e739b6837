//! `request`: path canonicalization choices.
use serde::{Deserialize, Serialize};

/// Request canonicalization choices.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// What a `;` (or `%3B`) in a path segment means: `refuse` (400, default) or `strip`, where
    /// policies see each segment with its `;…` removed, as servlet containers route it.
    #[serde(default)]
    pub matrix_parameters: MatrixParameters,
}

/// Handling of matrix (path) parameters, `/a;jsessionid=1/b`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MatrixParameters {
    /// Refused with 400: upstreams disagree on what `;` means.
    #[default]
    Refuse,
    /// Removed from each segment before policies see the path.
    Strip,
}
