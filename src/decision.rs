//! The [`Decision`]: allow or deny, why (a bounded machine-readable reason), the determining
//! policies, and the headers to set. Built once per request by `check`, rendered once by
//! `response` (for the wire) or by the CLI (for people).
//!
//! A sum type, so a decision cannot contradict itself: only an [`Allow`] carries upstream
//! headers, only a [`Deny`] carries a status, a challenge or a `Retry-After`. Both carry an
//! [`Audit`]: who asked for what, as far as the check got, for the decision log.
use std::net::IpAddr;
use std::sync::Arc;

mod wire;
pub use wire::{RemoveHeaders, SetHeaders};

/// HTTP status of a denial (an allow is always 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    BadRequest,
    Unauthorized,
    Forbidden,
    PayloadTooLarge,
    TooManyRequests,
    InternalError,
    Unavailable,
}

impl Status {
    pub fn http(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::PayloadTooLarge => 413,
            Status::TooManyRequests => 429,
            Status::InternalError => 500,
            Status::Unavailable => 503,
        }
    }
}

/// The authentication scheme a challenge names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    ApiKey,
}

/// A `WWW-Authenticate` challenge as data; `response` formats it (RFC 6750 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: Scheme,
    /// `invalid_token`, `invalid_key`, `invalid_request`; none when no credential was sent.
    pub error: Option<&'static str>,
    pub description: Option<String>,
}

/// What the candidate (shadow) policy set would have decided; it never changes the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowOutcome {
    pub allowed: bool,
    /// The candidate's determining policy ids (empty when it could not evaluate).
    pub policies: Vec<String>,
    /// The candidate snapshot's version.
    pub version: String,
    /// The candidate failed to evaluate (error or panic): counted as its deny.
    pub errored: bool,
}

impl ShadowOutcome {
    /// `allow` or `deny`.
    pub fn verdict(&self) -> &'static str {
        if self.allowed { "allow" } else { "deny" }
    }
}

/// The authentication methods that succeeded (what was proven, before a route narrowed it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthnMethods {
    pub jwt: bool,
    pub mtls: bool,
    pub api_key: bool,
}

impl AuthnMethods {
    /// Comma-separated in a fixed order (`jwt,mtls,api_key`); empty when nothing was proven.
    /// Static strings, so logging them costs no allocation.
    pub fn as_str(self) -> &'static str {
        match (self.jwt, self.mtls, self.api_key) {
            (false, false, false) => "",
            (true, false, false) => "jwt",
            (false, true, false) => "mtls",
            (false, false, true) => "api_key",
            (true, true, false) => "jwt,mtls",
            (true, false, true) => "jwt,api_key",
            (false, true, true) => "mtls,api_key",
            (true, true, true) => "jwt,mtls,api_key",
        }
    }
}

/// Who asked for what and from where, for the decision log: filled as far as the check got.
/// Never a credential. Identities are only what authentication *verified*: a rejected token's
/// issuer or subject is never recorded (it is an unproven claim). Request facts are the
/// normalized ones; a request that did not normalize (400) has none of them. Built on every
/// check, so values that already live in a shared place (the snapshot's version, a cached
/// token's identity) are shared, not copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// The caller's trace id (W3C `traceparent` or B3), when one was sent and is valid.
    pub trace_id: Option<u128>,
    /// The connecting address Envoy reported.
    pub source_ip: Option<IpAddr>,
    /// The mTLS peer certificate's identity as Envoy reported it (`source.principal`, a SPIFFE
    /// id under Istio), whether or not its trust domain is trusted; dropped if not printable.
    pub peer: Option<String>,
    /// A verified token's issuer and subject.
    pub issuer: Option<Arc<str>>,
    pub subject: Option<SharedStr>,
    /// The client a valid API key belongs to (never the key).
    pub api_client: Option<SharedStr>,
    /// The decision's principal is the token's subject (so hashing the subject hashes it too).
    pub principal_is_subject: bool,
    /// Upper-case method, lower-case host, canonical path; empty when not parsed.
    pub request: RequestLine,
    pub authn: AuthnMethods,
    /// `hit` or `miss` when a bearer token was looked up in the verified-token cache; `None`
    /// when no token was sent or the cache is off.
    pub token_cache: Option<&'static str>,
    /// Version of the policy snapshot that decided, or (before Cedar) the live one.
    pub policy_version: Option<Arc<str>>,
}

/// A request's method, host and path, kept in one allocation (one per check instead of three).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RequestLine {
    text: String,
    method_end: usize,
    host_end: usize,
}

impl RequestLine {
    pub fn new(method: &str, host: &str, path: &str) -> Self {
        let mut text = String::with_capacity(method.len() + host.len() + path.len());
        text.push_str(method);
        text.push_str(host);
        text.push_str(path);
        RequestLine { text, method_end: method.len(), host_end: method.len() + host.len() }
    }

    pub fn method(&self) -> &str {
        &self.text[..self.method_end]
    }

    pub fn host(&self) -> &str {
        &self.text[self.method_end..self.host_end]
    }

    pub fn path(&self) -> &str {
        &self.text[self.host_end..]
    }
}

impl std::fmt::Debug for RequestLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLine")
            .field("method", &self.method())
            .field("host", &self.host())
            .field("path", &self.path())
            .finish()
    }
}

/// A value that holds a piece of text the audit records (a verified token's identity holds its
/// subject, an API key's identity its client), so the audit can keep the value, shared, instead
/// of a copy of the text.
pub trait AuditText: Send + Sync {
    fn audit_text(&self) -> &str;
}

impl AuditText for String {
    fn audit_text(&self) -> &str {
        self
    }
}

/// Text shared with the value that holds it: a clone is a reference count, not a copy.
#[derive(Clone)]
pub struct SharedStr(Arc<dyn AuditText>);

impl SharedStr {
    /// The text `owner` holds, shared with it.
    pub fn of(owner: Arc<dyn AuditText>) -> Self {
        SharedStr(owner)
    }

    pub fn as_str(&self) -> &str {
        self.0.audit_text()
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr(Arc::new(s.to_owned()))
    }
}

impl PartialEq for SharedStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SharedStr {}

impl std::fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// An allowed request and what to tell the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// Cedar principal, e.g. `User::"alice"`. Shared with the (memoized) outcome.
    pub principal: Arc<str>,
    pub action: Arc<str>,
    pub resource: Arc<str>,
    /// Determining Cedar policy ids.
    pub policies: Arc<[String]>,
    /// Identity headers for the upstream, lower-case names, with their wire form: shared into
    /// the answer (a cached identity keeps its set), not copied or encoded per check.
    pub upstream_headers: SetHeaders,
    /// Headers to remove from the upstream request.
    pub remove_headers: RemoveHeaders,
    pub request_id: String,
    /// The candidate set's outcome, when one was evaluated for this check.
    pub shadow: Option<ShadowOutcome>,
    pub audit: Audit,
}

/// A denied request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub status: Status,
    /// Bounded reason label: `no_permit`, `forbidden_by_policy`, `credential_required`,
    /// `malformed_credential`, `token_expired`, `jwks_unavailable`, `no_policy`, …
    pub reason: &'static str,
    /// `WWW-Authenticate` challenge (401s, and a 400 for a duplicated credential).
    pub challenge: Option<Challenge>,
    /// `Retry-After` seconds for 429/503.
    pub retry_after: Option<u32>,
    /// Cedar principal; empty when the denial happened before authorization.
    pub principal: Arc<str>,
    pub action: Arc<str>,
    pub resource: Arc<str>,
    pub policies: Arc<[String]>,
    pub request_id: String,
    /// The candidate set's outcome, when one was evaluated for this check.
    pub shadow: Option<ShadowOutcome>,
    pub audit: Audit,
}

impl Deny {
    /// A denial that happened before authorization (no principal, action or resource yet).
    pub fn new(status: Status, reason: &'static str, request_id: &str) -> Self {
        Deny {
            status,
            reason,
            challenge: None,
            retry_after: None,
            principal: Arc::default(),
            action: Arc::default(),
            resource: Arc::default(),
            policies: Arc::default(),
            request_id: request_id.to_owned(),
            shadow: None,
            audit: Audit::default(),
        }
    }

    pub fn with_challenge(mut self, challenge: Challenge) -> Self {
        self.challenge = Some(challenge);
        self
    }

    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
}

impl From<Deny> for Decision {
    fn from(d: Deny) -> Self {
        Decision::Deny(d)
    }
}

impl From<Allow> for Decision {
    fn from(a: Allow) -> Self {
        Decision::Allow(a)
    }
}

impl Decision {
    /// A denial that happened before authorization.
    pub fn deny(status: Status, reason: &'static str, request_id: &str) -> Self {
        Deny::new(status, reason, request_id).into()
    }

    /// The fail-closed answer for anything unexpected.
    pub fn internal_error(request_id: &str) -> Self {
        Self::deny(Status::InternalError, "internal_error", request_id)
    }

    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// `allow` or `deny`, as logs, metrics and metadata spell it.
    pub fn verdict(&self) -> &'static str {
        if self.is_allowed() { "allow" } else { "deny" }
    }

    /// The HTTP status the client sees: 200 for an allow.
    pub fn http_status(&self) -> u16 {
        match self {
            Decision::Allow(_) => 200,
            Decision::Deny(d) => d.status.http(),
        }
    }

    /// The bounded reason label; `allowed` for an allow.
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allowed",
            Decision::Deny(d) => d.reason,
        }
    }

    pub fn principal(&self) -> &str {
        match self {
            Decision::Allow(a) => &a.principal,
            Decision::Deny(d) => &d.principal,
        }
    }

    pub fn action(&self) -> &str {
        match self {
            Decision::Allow(a) => &a.action,
            Decision::Deny(d) => &d.action,
        }
    }

    pub fn resource(&self) -> &str {
        match self {
            Decision::Allow(a) => &a.resource,
            Decision::Deny(d) => &d.resource,
        }
    }

    pub fn policies(&self) -> &[String] {
        match self {
            Decision::Allow(a) => &a.policies,
            Decision::Deny(d) => &d.policies,
        }
    }

    pub fn request_id(&self) -> &str {
        match self {
            Decision::Allow(a) => &a.request_id,
            Decision::Deny(d) => &d.request_id,
        }
    }

    /// The candidate set's outcome, if one was evaluated.
    pub fn shadow(&self) -> Option<&ShadowOutcome> {
        match self {
            Decision::Allow(a) => a.shadow.as_ref(),
            Decision::Deny(d) => d.shadow.as_ref(),
        }
    }

    /// Who asked for what, as far as the check got.
    pub fn audit(&self) -> &Audit {
        match self {
            Decision::Allow(a) => &a.audit,
            Decision::Deny(d) => &d.audit,
        }
    }

    pub fn audit_mut(&mut self) -> &mut Audit {
        match self {
            Decision::Allow(a) => &mut a.audit,
            Decision::Deny(d) => &mut d.audit,
        }
    }

    /// The allow, if this is one.
    pub fn as_allow(&self) -> Option<&Allow> {
        match self {
            Decision::Allow(a) => Some(a),
            Decision::Deny(_) => None,
        }
    }

    /// The denial, if this is one.
    pub fn as_deny(&self) -> Option<&Deny> {
        match self {
            Decision::Allow(_) => None,
            Decision::Deny(d) => Some(d),
        }
    }
}
