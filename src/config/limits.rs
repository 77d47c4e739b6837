//! `limits`: bounds on request input.
use serde::{Deserialize, Serialize};

/// Bounds on request input; anything larger is refused (400) before any work is done.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Longest accepted path including the query, in bytes.
    #[serde(default = "d_max_path")]
    pub max_path_bytes: usize,
    /// Most headers accepted in one request.
    #[serde(default = "d_max_headers")]
    pub max_headers: usize,
    /// Longest accepted token, checked before parsing.
    #[serde(default = "d_max_token")]
    pub max_token_bytes: usize,
    /// Largest accepted gRPC CheckRequest (it grows with `with_request_body`). A larger one is an
    /// RPC error, which Envoy turns into a deny with `failure_mode_allow: false`.
    #[serde(default = "d_max_message")]
    pub max_message_bytes: usize,
}

fn d_max_path() -> usize {
    8 * 1024
}
fn d_max_headers() -> usize {
    200
}
fn d_max_token() -> usize {
    16 * 1024
}
fn d_max_message() -> usize {
    4 * 1024 * 1024
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_path_bytes: d_max_path(),
            max_headers: d_max_headers(),
            max_token_bytes: d_max_token(),
            max_message_bytes: d_max_message(),
        }
    }
}
