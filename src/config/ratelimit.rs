//! `rate_limit`: per-caller rate limit settings.
use serde::{Deserialize, Serialize};

/// Rate-limit settings (off unless configured).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second allowed per caller.
    pub requests_per_second: u32,
    /// Burst above the sustained rate.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Most callers tracked at once (bounded memory).
    #[serde(default = "d_max_tracked")]
    pub max_tracked: usize,
}

fn d_max_tracked() -> usize {
    100_000
}
