//! `request`: path canonicalization choices and the bounds on request bodies policies read.
use serde::{Deserialize, Serialize};

use super::{ConfigError, Limits};

/// Request canonicalization choices.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// What a `;` (or `%3B`) in a path segment means: `refuse` (400, default) or `strip`, where
    /// policies see each segment with its `;…` removed, as servlet containers route it.
    #[serde(default)]
    pub matrix_parameters: MatrixParameters,
    /// Largest request body (bytes) parsed for policies whose schema declares `context.body`;
    /// a larger or truncated body is a 413. Set Envoy's `with_request_body.max_request_bytes` to
    /// the same value with `allow_partial_message: false` (the chart does). Unset: 8 KiB, or
    /// less if `limits.max_message_bytes` is smaller (see [`RequestConfig::body_bytes`]).
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Deepest nesting of arrays and objects in a JSON body; deeper is a 400 (`body_too_deep`).
    #[serde(default = "d_max_body_depth")]
    pub max_body_depth: usize,
}

/// Matches the chart's `envoy.extAuthz.withRequestBody.maxRequestBytes`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8192;
pub const DEFAULT_MAX_BODY_DEPTH: usize = 32;
/// Bodies are parsed recursively: the depth bound keeps the stack bounded whatever is configured.
pub const MAX_BODY_DEPTH_LIMIT: usize = 128;

fn d_max_body_depth() -> usize {
    DEFAULT_MAX_BODY_DEPTH
}

impl Default for RequestConfig {
    fn default() -> Self {
        Self {
            matrix_parameters: MatrixParameters::default(),
            max_body_bytes: None,
            max_body_depth: d_max_body_depth(),
        }
    }
}

impl RequestConfig {
    /// The body limit in force: the configured one, else the default bounded by the message limit
    /// (a config valid before the setting existed stays valid).
    pub fn body_bytes(&self, limits: &Limits) -> usize {
        self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES.min(limits.max_message_bytes))
    }

    /// A configured body limit must fit in a CheckRequest the transport accepts.
    pub fn validate(&self, limits: &Limits) -> Result<(), ConfigError> {
        if let Some(max) = self.max_body_bytes
            && (max == 0 || max >= limits.max_message_bytes)
        {
            return Err(ConfigError::invalid(
                "request.max_body_bytes",
                format!("must be at least 1 and below limits.max_message_bytes ({})", limits.max_message_bytes),
            ));
        }
        if !(1..=MAX_BODY_DEPTH_LIMIT).contains(&self.max_body_depth) {
            return Err(ConfigError::invalid(
                "request.max_body_depth",
                format!("must be between 1 and {MAX_BODY_DEPTH_LIMIT}"),
            ));
        }
        Ok(())
    }
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
