//! Authentication: proves who the caller is, as data. Authenticators never decide access; they
//! return what was proven, or reject a credential that is present but invalid.
use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::request::RequestView;

pub mod apikey;
pub mod jwks;
pub mod jwt;
pub mod peer;
pub mod route;

pub use apikey::ApiClientIdentity;
pub use jwt::{JwtError, JwtIdentity};
pub use peer::PeerIdentity;
pub use route::{CredentialKind, RouteRefusal, RouteRequirementError, RouteRequirements};

/// Everything authentication proved about one request. Several may hold at once (a service
/// calling on behalf of a user); all `None` is an anonymous caller.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    pub jwt: Option<Arc<JwtIdentity>>,
    pub peer: Option<PeerIdentity>,
    pub api_client: Option<Arc<ApiClientIdentity>>,
}

/// The upstream headers an allow for one identity sets, as the check computed them: the same for
/// every check that identity gets, so a verified token (shared by every check that presents it,
/// through the token cache) keeps them, computed at its first allow.
#[derive(Debug)]
pub struct UpstreamHeaders {
    /// The principal they were computed for (`principal` header); another principal for the
    /// same identity does not reuse them.
    pub principal: Box<str>,
    /// Who computed them (a token of the checker, whose config they follow); another checker
    /// does not reuse them. Weak, so the token's address stays reserved while this is kept.
    pub owner: std::sync::Weak<()>,
    /// `(name, value)` pairs set upstream, and their wire form (`decision::SetHeaders`).
    pub set: Arc<[(bytes::Bytes, bytes::Bytes)]>,
    pub set_wire: bytes::Bytes,
    /// The removal list that goes with them, in its wire form.
    pub remove_wire: bytes::Bytes,
}

/// Where an identity keeps its [`UpstreamHeaders`]. A clone starts empty: a cloned identity may
/// be changed (tests do), and must not carry the original's headers.
#[derive(Default)]
pub struct UpstreamSlot(std::sync::OnceLock<UpstreamHeaders>);

impl UpstreamSlot {
    /// The kept headers, computing them with `make` the first time.
    pub fn get_or_init(&self, make: impl FnOnce() -> UpstreamHeaders) -> &UpstreamHeaders {
        self.0.get_or_init(make)
    }
}

impl Clone for UpstreamSlot {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for UpstreamSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "UpstreamSlot(kept)" } else { "UpstreamSlot(empty)" })
    }
}

/// The principal a request acts as, chosen by [`Identities::principal`]: what was proven, by
/// reference, so callers (Cedar entities, rate-limit keys) need not repeat the precedence rule.
#[derive(Debug, Clone, Copy)]
pub enum PrincipalRef<'a> {
    /// A verified JWT: `User::"<sub>"`.
    User(&'a JwtIdentity),
    /// A known API key: `ApiClient::"<client>"`.
    ApiClient(&'a ApiClientIdentity),
    /// A trusted mTLS peer: `Service::"<spiffe id>"`.
    Service(&'a PeerIdentity),
    /// No credential proved anything.
    Anonymous,
}

impl Identities {
    /// The single precedence rule: User > ApiClient > Service > Anonymous. A user token wins
    /// over the workload that carries it (a service calling on behalf of a user acts as the user).
    pub fn principal(&self) -> PrincipalRef<'_> {
        if let Some(j) = &self.jwt {
            PrincipalRef::User(j)
        } else if let Some(c) = &self.api_client {
            PrincipalRef::ApiClient(c)
        } else if let Some(p) = &self.peer {
            PrincipalRef::Service(p)
        } else {
            PrincipalRef::Anonymous
        }
    }

    /// True when no credential proved anything.
    pub fn is_anonymous(&self) -> bool {
        self.jwt.is_none() && self.peer.is_none() && self.api_client.is_none()
    }

    /// Names of the methods that succeeded, for Cedar's `context.authn` (in this order; one
    /// static list per combination, so no list is built per check).
    pub fn methods(&self) -> &'static [&'static str] {
        const BY_BITS: [&[&str]; 8] = [
            &[],
            &["jwt"],
            &["mtls"],
            &["jwt", "mtls"],
            &["api_key"],
            &["jwt", "api_key"],
            &["mtls", "api_key"],
            &["jwt", "mtls", "api_key"],
        ];
        let bits = usize::from(self.jwt.is_some())
            | usize::from(self.peer.is_some()) << 1
            | usize::from(self.api_client.is_some()) << 2;
        BY_BITS[bits]
    }
}

/// A credential was present but could not be accepted, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// A bearer token failed verification (401, RFC 6750 `invalid_token`).
    #[error("invalid token: {0}")]
    InvalidToken(#[from] JwtError),
    /// The token's keys cannot be had because the issuer's provider is unreachable (503).
    #[error("signing keys for issuer unavailable")]
    KeysUnavailable,
    /// The token's status list cannot be had (and `authn.status_list.on_unavailable: deny`) (503).
    #[error("token status list unavailable")]
    StatusListUnavailable,
    /// The request carries a credential more than once, which is ambiguous (400).
    #[error("{0} appears more than once")]
    DuplicateCredential(Credential),
    /// A configured credential source is present but does not parse: our scheme with bad
    /// spacing, an empty value, a value that is not UTF-8 (401 in that credential's scheme).
    #[error("{0} is malformed")]
    MalformedCredential(Credential),
    /// An API key was presented that matches no client (401).
    #[error("unknown API key")]
    InvalidApiKey,
    /// The mTLS peer principal is not a SPIFFE id of a trusted domain (403).
    #[error("untrusted peer: {0}")]
    UntrustedPeer(&'static str),
}

impl AuthnError {
    /// Bounded label for metrics and the machine-readable deny reason.
    pub fn label(&self) -> &'static str {
        match self {
            AuthnError::InvalidToken(e) => e.label(),
            AuthnError::KeysUnavailable => "jwks_unavailable",
            AuthnError::StatusListUnavailable => "status_list_unavailable",
            AuthnError::DuplicateCredential(_) => "duplicate_credential",
            AuthnError::MalformedCredential(_) => "malformed_credential",
            AuthnError::InvalidApiKey => "invalid_api_key",
            AuthnError::UntrustedPeer(_) => "untrusted_peer",
        }
    }
}

/// A kind of credential, so a refusal can name the right authentication scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    BearerToken,
    ApiKey,
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::BearerToken => "bearer token",
            Credential::ApiKey => "API key",
        })
    }
}

/// All authenticators, run in a fixed order on every request.
pub struct Authenticator {
    jwt: jwt::JwtAuthenticator,
    peer: peer::PeerAuthenticator,
    api_keys: apikey::ApiKeyAuthenticator,
    /// Configured issuer names: the most a route's `portcullis.issuers` may list.
    issuers: Vec<String>,
}

impl Authenticator {
    /// Builds the authenticators from config; each registers its own metrics.
    pub fn new(cfg: &Config, registry: &mut Registry) -> anyhow::Result<Self> {
        Ok(Self {
            jwt: jwt::JwtAuthenticator::new(&cfg.authn, &cfg.limits, registry.sub_registry_with_prefix("jwt"))?,
            peer: peer::PeerAuthenticator::new(&cfg.authn.peer),
            api_keys: apikey::ApiKeyAuthenticator::new(
                &cfg.authn.api_keys,
                registry.sub_registry_with_prefix("api_keys"),
            )?,
            issuers: cfg.authn.issuers.iter().map(|i| i.issuer.clone()).collect(),
        })
    }

    /// Proves what the request's credentials say. Any present-but-invalid credential fails the
    /// whole request: a bad token never degrades to "anonymous".
    pub async fn authenticate(&self, req: &RequestView<'_>) -> Result<Identities, AuthnError> {
        self.authenticate_noting(req, &mut None).await
    }

    /// [`Authenticator::authenticate`], also noting in `token_cache` whether a token was
    /// answered from the verified-token cache (`hit`/`miss`; left alone when none was looked up).
    pub async fn authenticate_noting(
        &self,
        req: &RequestView<'_>,
        token_cache: &mut Option<&'static str>,
    ) -> Result<Identities, AuthnError> {
        let peer = self.peer.authenticate(req)?;
        let api_client = self.api_keys.authenticate(req)?;
        let jwt = self.jwt.authenticate(req, token_cache).await?;
        Ok(Identities { jwt, peer, api_client })
    }

    /// The API key authenticator (its Secret-backed store is watched by the server).
    pub fn api_keys(&self) -> &apikey::ApiKeyAuthenticator {
        &self.api_keys
    }

    /// The route's own requirements (its `portcullis.*` context extensions), which may only
    /// narrow this config: an error is a misconfigured route.
    pub fn route_requirements<'a>(
        &self,
        req: &RequestView<'a>,
    ) -> Result<RouteRequirements<'a>, RouteRequirementError> {
        RouteRequirements::parse(&req.route_facts, |iss| self.issuers.iter().any(|i| i == iss))
    }

    /// The JWT authenticator, for warm-up and tests.
    pub fn jwt(&self) -> &jwt::JwtAuthenticator {
        &self.jwt
    }

    /// Authorization-style headers of this request that hold a scheme we do not read (e.g.
    /// `Basic`): not our credentials, stripped on allow only when configured to be.
    pub fn foreign_credential_headers(&self, req: &RequestView<'_>) -> Vec<String> {
        self.jwt.foreign_credential_headers(req)
    }

    /// Header names that carry credentials (never exposed to policies, optionally stripped).
    pub fn credential_headers(&self) -> Vec<String> {
        let mut v = self.jwt.token_headers();
        if self.api_keys.enabled() {
            v.push(self.api_keys.header().to_owned());
        }
        v.sort();
        v.dedup();
        v
    }
}

/// A short, non-reversible fingerprint of a secret for logs (never log the secret itself).
pub fn fingerprint(secret: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(secret);
    hex::encode(&d[..6])
}

#[cfg(test)]
mod tests;
