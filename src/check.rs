//! The check pipeline: request view → authentication → Cedar over the live snapshot → one
//! [`Decision`]. Shared by the gRPC server and the offline `portcullis check`, so both decide
//! identically. Every failure on the way is a deny.
use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::authn::{Authenticator, AuthnError, Credential, Identities};
use crate::authz::{self, CedarMapping};
use crate::config::{Config, HeaderNames, Limits, MatrixParameters};
use crate::decision::{Decision, Status};
use crate::policy::PolicyStore;
use crate::proto::auth::CheckRequest;
use crate::ratelimit::RateLimiter;
use crate::request::RequestView;

const REALM: &str = "portcullis";

/// Runs checks against the live policy snapshot.
pub struct Checker {
    authn: Authenticator,
    store: Arc<PolicyStore>,
    limits: Limits,
    matrix: MatrixParameters,
    mapping: CedarMapping,
    names: HeaderNames,
    identity_headers: Vec<String>,
    credential_headers: Vec<String>,
    bearer_configured: bool,
    api_keys_configured: bool,
    rate_limiter: Option<RateLimiter>,
}

impl Checker {
    pub fn new(cfg: &Config, store: Arc<PolicyStore>, registry: &mut Registry) -> anyhow::Result<Self> {
        let authn = Authenticator::new(cfg, registry.sub_registry_with_prefix("authn"))?;
        let credential_headers = authn.credential_headers();
        Ok(Self {
            // Policies never see credentials, nor identity headers a client could have spoofed.
            mapping: CedarMapping::new(
                &cfg.cedar.context_headers,
                &[credential_headers.clone(), cfg.identity_header_names()].concat(),
            ),
            authn,
            store,
            limits: cfg.limits.clone(),
            matrix: cfg.request.matrix_parameters,
            names: cfg.headers.clone(),
            identity_headers: cfg.identity_header_names(),
            credential_headers,
            bearer_configured: !cfg.authn.issuers.is_empty(),
            api_keys_configured: !cfg.authn.api_keys.keys.is_empty(),
            rate_limiter: cfg.rate_limit.as_ref().and_then(RateLimiter::new),
        })
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.authn
    }

    /// Decides one wire request.
    pub async fn check(&self, req: &CheckRequest) -> Decision {
        match RequestView::from_check_with(req, &self.limits, self.matrix) {
            Ok(view) => self.check_view(&view).await,
            Err(e) => Decision::deny(Status::BadRequest, e.label(), bounded(crate::request::raw_request_id(req))),
        }
    }

    /// Decides one normalized request.
    pub async fn check_view(&self, view: &RequestView<'_>) -> Decision {
        let rid = bounded(view.request_id);
        let ids = match self.authn.authenticate(view).await {
            Ok(ids) => ids,
            Err(e) => return self.authn_denial(&e, rid),
        };
        // Over-quota callers are turned away before any policy work.
        if let Some(rl) = &self.rate_limiter
            && let Err(wait) = rl.check(view, &ids)
        {
            return Decision::deny(Status::TooManyRequests, "rate_limited", rid).with_retry_after(wait);
        }
        let Some(snapshot) = self.store.load() else {
            return Decision::deny(Status::Unavailable, "no_policy", rid).with_retry_after(5);
        };
        // An empty policy set (e.g. every policy ConfigMap deleted) is an explicit deny-all.
        if snapshot.policy_count == 0 {
            return Decision::deny(Status::Forbidden, "deny_all", rid);
        }
        let outcome = match authz::authorize(&snapshot, view, &ids, &self.mapping) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(request_id = rid, error = %e, "request could not be evaluated; denied");
                let mut d = Decision::deny(Status::Forbidden, "unmapped_request", rid);
                d.action = format!("Action::\"{}\"", view.method);
                return d;
            }
        };
        if !outcome.errors.is_empty() {
            tracing::warn!(request_id = rid, errors = ?outcome.errors, "policy evaluation errors; denied");
        }
        let mut d = Decision::deny(Status::Forbidden, "", rid);
        d.principal = outcome.principal;
        d.action = outcome.action;
        d.resource = outcome.resource;
        d.policies = outcome.policies;
        if outcome.allowed {
            d.allowed = true;
            d.status = Status::Ok;
            d.reason = "allowed";
            self.identity_headers_for(&ids, &mut d);
            return d;
        }
        d.reason = if !outcome.errors.is_empty() {
            "evaluation_error"
        } else if d.policies.is_empty() {
            "no_permit"
        } else {
            "forbidden_by_policy"
        };
        // An anonymous caller that is denied could succeed with a credential: 401, not 403.
        if ids.is_anonymous()
            && let Some(ch) = self.challenge()
        {
            d.status = Status::Unauthorized;
            d.reason = "credential_required";
            d.www_authenticate = Some(ch);
        }
        d
    }

    /// The challenge for an anonymous caller: the scheme a credential could be sent with.
    fn challenge(&self) -> Option<String> {
        if self.bearer_configured {
            Some(format!("Bearer realm=\"{REALM}\""))
        } else if self.api_keys_configured {
            Some(format!("ApiKey realm=\"{REALM}\""))
        } else {
            None
        }
    }

    fn authn_denial(&self, e: &AuthnError, rid: &str) -> Decision {
        let d = Decision::deny(Status::Unauthorized, e.label(), rid);
        match e {
            AuthnError::InvalidToken(je) => {
                d.with_challenge(scheme_challenge(Credential::BearerToken, "invalid_token", Some(&je.to_string())))
            }
            AuthnError::InvalidApiKey => d.with_challenge(scheme_challenge(Credential::ApiKey, "invalid_key", None)),
            AuthnError::KeysUnavailable => Decision { status: Status::Unavailable, ..d }.with_retry_after(5),
            // RFC 6750 §3.1: a credential sent twice is an `invalid_request` (400) in its own scheme.
            AuthnError::DuplicateCredential(kind) => Decision {
                status: Status::BadRequest,
                ..d.with_challenge(scheme_challenge(*kind, "invalid_request", None))
            },
            AuthnError::UntrustedPeer(_) => Decision { status: Status::Forbidden, ..d },
        }
    }

    /// Identity headers for the upstream. Every identity header name not set here is removed,
    /// so a client copy can never pass through (the ones set here overwrite client copies).
    fn identity_headers_for(&self, ids: &Identities, d: &mut Decision) {
        let n = &self.names;
        let mut set: Vec<(String, String)> = vec![(n.principal.to_ascii_lowercase(), d.principal.clone())];
        if let Some(j) = &ids.jwt {
            set.push((n.subject.to_ascii_lowercase(), j.subject.clone()));
            set.push((n.issuer.to_ascii_lowercase(), j.issuer.to_string()));
            set.extend(j.headers.iter().cloned());
        }
        if let Some(p) = &ids.peer {
            set.push((n.peer.to_ascii_lowercase(), p.spiffe_id.clone()));
        }
        if let Some(c) = &ids.api_client {
            set.push((n.client.to_ascii_lowercase(), c.client.clone()));
        }
        // A value that cannot be a header value (control characters) is dropped, never sent.
        set.retain(|(_, v)| !v.is_empty() && v.bytes().all(|b| b >= 0x20 && b != 0x7f));
        let mut remove: Vec<String> =
            self.identity_headers.iter().filter(|h| !set.iter().any(|(k, _)| k == *h)).cloned().collect();
        if n.remove_credentials {
            remove.extend(self.credential_headers.iter().cloned());
        }
        d.upstream_headers = set;
        d.remove_headers = remove;
    }
}

/// `WWW-Authenticate` for a refused credential, in that credential's scheme.
fn scheme_challenge(kind: Credential, error: &str, description: Option<&str>) -> String {
    let scheme = match kind {
        Credential::BearerToken => "Bearer",
        Credential::ApiKey => "ApiKey",
    };
    match description {
        Some(desc) => format!("{scheme} realm=\"{REALM}\", error=\"{error}\", error_description=\"{desc}\""),
        None => format!("{scheme} realm=\"{REALM}\", error=\"{error}\""),
    }
}

/// Request ids are echoed in logs and bodies: keep them short and printable.
fn bounded(id: &str) -> &str {
    let ok = id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
    if ok { id } else { "" }
}
