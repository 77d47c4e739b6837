//! Authorization with Cedar: builds the principal, action, resource and context for one request
//! from what authentication proved, and evaluates them against one compiled [`Engine`]. Knows
//! nothing of gRPC or of where policies come from; never decides on anything but Cedar's answer
//! (default deny, forbid wins), and treats any evaluation error as a deny.
//!
//! `model` names the Cedar model; `documents` parses and validates policy documents; `engine`
//! compiles them and evaluates requests, with `entities` and `context` building the request
//! and `index` (with its `guard` compiler) choosing the policies that can matter; `memo` keeps
//! each engine's answers by distinct input (exactly what the policies of the index's slice, and
//! their guards, can read), asked before the guards run.
mod context;
mod documents;
mod engine;
mod entities;
mod guard;
mod index;
mod memo;
pub mod model;

pub use documents::{DocKind, LoadError, PolicyDocument, format_errors};
pub use engine::{Compiled, Engine, Explanation, authorize, authorize_shared, explain};
pub use memo::DecisionMemoSettings;

use std::sync::Arc;

/// Why an authorization request could not even be evaluated (each is a deny).
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("cannot build Cedar entity: {0}")]
    Entity(String),
    #[error("request does not fit the schema: {0}")]
    Request(String),
    /// The schema declares a body for the action and the request's body was refused.
    #[error("request body: {0}")]
    Body(#[from] crate::request::BodyError),
}

/// Cedar's answer for one request.
#[derive(Debug, Clone)]
pub struct AuthzOutcome {
    pub allowed: bool,
    /// Determining policies: the permits that allowed, or the forbids that denied.
    pub policies: Arc<[String]>,
    /// Evaluation errors (any of them turns the answer into a deny).
    pub errors: Vec<String>,
    /// `Type::"id"` of the principal, for logs and headers. Shared (like the policy ids), so a
    /// decision built from a memoized outcome takes reference counts, not copies.
    pub principal: Arc<str>,
    pub action: Arc<str>,
    pub resource: Arc<str>,
}

/// Which request headers to expose as `Route` tags, how much body a policy may read, and the
/// decision memo (off unless set with [`CedarMapping::with_decision_memo`]).
#[derive(Debug, Clone, Default)]
pub struct CedarMapping {
    pub context_headers: Vec<String>,
    pub body_limits: crate::request::BodyLimits,
    pub decision_memo: DecisionMemoSettings,
}

impl CedarMapping {
    /// Lower-cases the names and removes credential headers, which policies never see.
    pub fn new(context_headers: &[String], credential_headers: &[String]) -> Self {
        let context_headers = context_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| !credential_headers.contains(h) && h != "cookie")
            .collect();
        Self { context_headers, body_limits: Default::default(), decision_memo: Default::default() }
    }

    /// With `request.max_body_bytes` / `request.max_body_depth`.
    pub fn with_body_limits(self, body_limits: crate::request::BodyLimits) -> Self {
        Self { body_limits, ..self }
    }

    /// With `cedar.decision_memo`.
    pub fn with_decision_memo(self, decision_memo: DecisionMemoSettings) -> Self {
        Self { decision_memo, ..self }
    }
}

#[cfg(test)]
mod tests;
