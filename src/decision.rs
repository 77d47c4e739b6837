//! The [`Decision`]: allow or deny, why (a bounded machine-readable reason), the determining
//! policies, and the headers to set. Built once per request by `check`, rendered once by
//! `response` (for the wire) or by the CLI (for people).
use serde::Serialize;

/// HTTP status of a denial; an allow is `Ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    BadRequest,
    Unauthorized,
    Forbidden,
    TooManyRequests,
    InternalError,
    Unavailable,
}

impl Status {
    pub fn http(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::TooManyRequests => 429,
            Status::InternalError => 500,
            Status::Unavailable => 503,
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub allowed: bool,
    pub status: Status,
    /// Bounded reason label: `allowed`, `no_permit`, `forbidden_by_policy`, `credential_required`,
    /// `malformed_credential`, `token_expired`, `jwks_unavailable`, `no_policy`, …
    pub reason: &'static str,
    /// Determining Cedar policy ids.
    pub policies: Vec<String>,
    /// Cedar principal, e.g. `User::"alice"`; empty when authentication failed.
    pub principal: String,
    pub action: String,
    pub resource: String,
    /// Identity headers for the upstream (allow only), lower-case names.
    pub upstream_headers: Vec<(String, String)>,
    /// Headers to remove from the upstream request (allow only).
    pub remove_headers: Vec<String>,
    /// `WWW-Authenticate` challenge for 401s.
    pub www_authenticate: Option<String>,
    /// `Retry-After` seconds for 429/503.
    pub retry_after: Option<u32>,
    pub request_id: String,
}

impl Decision {
    /// A denial that happened before authorization (no principal, action or resource yet).
    pub fn deny(status: Status, reason: &'static str, request_id: &str) -> Self {
        Decision {
            allowed: false,
            status,
            reason,
            policies: Vec::new(),
            principal: String::new(),
            action: String::new(),
            resource: String::new(),
            upstream_headers: Vec::new(),
            remove_headers: Vec::new(),
            www_authenticate: None,
            retry_after: None,
            request_id: request_id.to_owned(),
        }
    }

    /// The fail-closed answer for anything unexpected.
    pub fn internal_error(request_id: &str) -> Self {
        Self::deny(Status::InternalError, "internal_error", request_id)
    }

    pub fn with_challenge(mut self, challenge: String) -> Self {
        self.www_authenticate = Some(challenge);
        self
    }

    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }
}
