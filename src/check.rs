//! The check pipeline: request view → authentication → Cedar over the live snapshot → one
//! [`Decision`]. Shared by the gRPC server and the offline `portcullis check`, so both decide
//! identically. Every failure on the way is a deny. The caller normalizes the wire request
//! (`RequestView::from_check_with`) and renders the decision (`response`); a request that does
//! not normalize is decided by [`invalid_request`].
use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::registry::Registry;

use crate::anomaly::{Anomalies, CredentialHeaders};
use crate::authn::{
    ApiClientIdentity, Authenticator, AuthnError, Credential, CredentialKind, Identities, JwtIdentity, RouteRefusal,
    RouteRequirements, UpstreamHeaders,
};
use crate::authz::{self, CedarMapping};
use crate::config::{CandidateConfig, Config, HeaderNames};
use crate::decision::{
    Allow, Audit, AuditText, AuthnMethods, Challenge, Decision, Deny, RemoveHeaders, RequestLine, Scheme, SetHeaders,
    SharedStr, Status,
};
use crate::policy::PolicyStore;
use crate::ratelimit::RateLimiter;
use crate::request::{BodyLimits, InvalidRequest, RequestView};

/// Runs checks against the live policy snapshot.
pub struct Checker {
    authn: Authenticator,
    store: Arc<PolicyStore>,
    mapping: CedarMapping,
    names: HeaderNames,
    /// The identity header names, lower-cased once here rather than on every allow.
    identity_names: IdentityNames,
    /// Every spelling of every owned header, sorted: removed on allow unless set exactly.
    /// One shared list per distinct set of names set, not built per check.
    removals: removals::RemovalLists,
    bearer_configured: bool,
    api_keys_configured: bool,
    rate_limiter: Option<RateLimiter>,
    /// The candidate (shadow) set; `None` costs nothing on the check path.
    shadow: Option<shadow::Shadow>,
    /// Failed-authentication tracking and the optional pre-authentication throttle.
    anomalies: Arc<Anomalies>,
    /// This checker, as the owner of the upstream headers an identity keeps.
    upstream_owner: Arc<()>,
    /// Whether a token's identity outlives its check (the verified-token cache is on), so
    /// keeping its upstream headers can pay off.
    keep_upstream: bool,
}

impl Checker {
    pub fn new(cfg: &Config, store: Arc<PolicyStore>, registry: &mut Registry) -> anyhow::Result<Self> {
        let authn = Authenticator::new(cfg, registry.sub_registry_with_prefix("authn"))?;
        let cred_headers = CredentialHeaders {
            token: authn.jwt().token_headers(),
            api_key: authn.api_keys().enabled().then(|| authn.api_keys().header().to_ascii_lowercase()),
        };
        let anomalies =
            Arc::new(Anomalies::new(&cfg.authn.throttle, cred_headers, registry.sub_registry_with_prefix("anomaly")));
        let credential_headers = authn.credential_headers();
        let spellings = |names: &[String]| -> Vec<String> {
            names.iter().flat_map(|n| crate::config::separator_spellings(n)).collect()
        };
        let identity_spellings = spellings(&cfg.identity_header_names());
        // Owned: identity and claim headers, the strip list, and credentials when removed.
        // Computed once here; an upstream may read `-` and `_` alike, so every spelling goes.
        let mut owned_spellings = [identity_spellings.clone(), spellings(&cfg.headers.strip_on_allow)].concat();
        if cfg.headers.remove_credentials {
            owned_spellings.extend(spellings(&credential_headers));
        }
        owned_spellings.sort();
        owned_spellings.dedup();
        let removals = removals::RemovalLists::new(owned_spellings.into_iter().map(Bytes::from).collect());
        Ok(Self {
            // Policies never see credentials, nor identity headers a client could have spoofed.
            mapping: CedarMapping::new(&cfg.cedar.context_headers, &[credential_headers, identity_spellings].concat())
                .with_body_limits(BodyLimits::of(&cfg.request, &cfg.limits))
                .with_decision_memo(authz::DecisionMemoSettings::new(
                    cfg.cedar.decision_memo.max_entries,
                    registry.sub_registry_with_prefix("authz"),
                )),
            authn,
            store,
            names: cfg.headers.clone(),
            identity_names: IdentityNames::of(&cfg.headers, &removals),
            removals,
            bearer_configured: !cfg.authn.issuers.is_empty(),
            api_keys_configured: !cfg.authn.api_keys.keys.is_empty()
                || cfg.authn.api_keys.dir.is_some()
                || cfg.authn.api_keys.kubernetes.is_some(),
            rate_limiter: RateLimiter::for_config(cfg),
            shadow: None,
            anomalies,
            upstream_owner: Arc::new(()),
            keep_upstream: cfg.authn.token_cache.max_entries > 0,
        })
    }

    /// The same checker without the rate limit: `portcullis test` cases are not traffic.
    pub fn without_rate_limit(mut self) -> Self {
        self.rate_limiter = None;
        self
    }

    /// Also evaluates (a `policy.candidate.sample` fraction of) the checks that reach Cedar
    /// against `store`, the candidate set; `registry` receives `portcullis_shadow_*`.
    pub fn with_shadow(mut self, cfg: &CandidateConfig, store: Arc<PolicyStore>, registry: &mut Registry) -> Self {
        self.shadow = Some(shadow::Shadow::new(cfg, store, registry.sub_registry_with_prefix("shadow")));
        self
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.authn
    }

    /// Failed-authentication signals (`/anomalies`).
    pub fn anomalies(&self) -> &Arc<Anomalies> {
        &self.anomalies
    }

    /// Decides one normalized request.
    pub async fn check(&self, view: &RequestView<'_>) -> Decision {
        // A source over its failed-authentication budget is turned away before any credential
        // is read or verified (off unless `authn.throttle.enabled`).
        if let Some(wait) = self.anomalies.throttled(view) {
            return Deny::new(Status::TooManyRequests, "auth_throttled", bounded(view.request_id))
                .with_retry_after(wait)
                .into();
        }
        let mut token_cache = None;
        match self.authn.authenticate_noting(view, &mut token_cache).await {
            Ok(ids) => {
                let mut d = self.check_as(view, ids);
                d.audit_mut().token_cache = token_cache;
                d
            }
            // Nothing was verified: the audit has the request's facts, no claimed identity.
            Err(e) => {
                // Unavailable keys are our outage, not the caller's failure.
                if !matches!(e, AuthnError::KeysUnavailable) {
                    self.anomalies.record_failure(view, e.label());
                }
                let audit = Audit { token_cache, ..request_audit(view) };
                self.authn_denial(&e, bounded(view.request_id)).with_audit(audit).into()
            }
        }
    }

    /// Decides one normalized request as if authentication had proven `ids`: everything after
    /// authentication, exactly as [`Checker::check`] does it (`portcullis test` states identities).
    pub fn check_as(&self, view: &RequestView<'_>, ids: Identities) -> Decision {
        let mut audit = identity_audit(view, &ids);
        let mut d = self.decide_as(view, ids, &mut audit);
        *d.audit_mut() = audit;
        d
    }

    /// The version of the live policy snapshot, if any (for decisions that never reached it).
    pub fn live_policy_version(&self) -> Option<Arc<str>> {
        self.store.load().map(|s| s.version.clone())
    }

    /// [`Checker::check_as`] without the audit record, which it completes as it goes.
    fn decide_as(&self, view: &RequestView<'_>, ids: Identities, audit: &mut Audit) -> Decision {
        let rid = bounded(view.request_id);
        // The route's own requirements (Envoy's per-route context extensions) narrow what
        // authentication proved, before any quota or policy work. A requirement that cannot be
        // read is the route's misconfiguration: denied (500), never judged as absent.
        let ids = match self.authn.route_requirements(view) {
            Err(e) => {
                tracing::warn!(request_id = rid, key = ?e.key, error = %e, "invalid route requirement; denied");
                return Decision::deny(Status::InternalError, "invalid_route_requirement", rid);
            }
            Ok(route) => match route.apply(ids) {
                Ok(ids) => ids,
                Err(refusal) => return self.route_denial(&route, refusal, rid).into(),
            },
        };
        // User wins the principal precedence, so a token left after narrowing is the principal.
        audit.principal_is_subject = ids.jwt.is_some();
        // Over-quota callers are turned away before any policy work.
        if let Some(rl) = &self.rate_limiter
            && let Err(wait) = rl.check(view, &ids)
        {
            return Deny::new(Status::TooManyRequests, "rate_limited", rid).with_retry_after(wait).into();
        }
        let Some(snapshot) = self.store.load() else {
            return Deny::new(Status::Unavailable, "no_policy", rid).with_retry_after(5).into();
        };
        audit.policy_version = Some(snapshot.version.clone());
        // An empty policy set (e.g. every policy ConfigMap deleted) is an explicit deny-all.
        if snapshot.policy_count == 0 {
            return Decision::deny(Status::Forbidden, "deny_all", rid);
        }
        let outcome = match authz::authorize(&snapshot.engine, view, &ids, &self.mapping) {
            Ok(o) => o,
            // A body a policy reads that cannot be read as declared is the client's error.
            Err(authz::AuthzError::Body(e)) => {
                let status = if e.too_large() { Status::PayloadTooLarge } else { Status::BadRequest };
                return Decision::deny(status, e.label(), rid);
            }
            Err(e) => {
                tracing::warn!(request_id = rid, error = %e, "request could not be evaluated; denied");
                let mut d = Deny::new(Status::Forbidden, "unmapped_request", rid);
                d.action = format!("Action::\"{}\"", view.method).into();
                return d.into();
            }
        };
        if !outcome.errors.is_empty() {
            tracing::warn!(request_id = rid, errors = ?outcome.errors, "policy evaluation errors; denied");
        }
        // Shadowing: only checks that reached Cedar on the live set; never changes the decision.
        let shadow =
            self.shadow.as_ref().and_then(|s| s.evaluate(view, &ids, &self.mapping, &outcome, &snapshot.version, rid));
        if outcome.allowed {
            let (upstream_headers, mut remove_headers) = self.identity_headers_for(&ids, &outcome.principal);
            if self.names.strip_foreign_credentials || self.names.remove_credentials {
                for h in self.authn.foreign_credential_headers(view) {
                    if !remove_headers.contains(h.as_bytes()) {
                        remove_headers.push(Bytes::from(h));
                    }
                }
            }
            return Allow {
                principal: outcome.principal,
                action: outcome.action,
                resource: outcome.resource,
                policies: outcome.policies,
                upstream_headers,
                remove_headers,
                request_id: rid.to_owned(),
                shadow,
                audit: Audit::default(),
            }
            .into();
        }
        let reason = if !outcome.errors.is_empty() {
            "evaluation_error"
        } else if outcome.policies.is_empty() {
            "no_permit"
        } else {
            "forbidden_by_policy"
        };
        let mut d = Deny {
            principal: outcome.principal,
            action: outcome.action,
            resource: outcome.resource,
            policies: outcome.policies,
            shadow,
            ..Deny::new(Status::Forbidden, reason, rid)
        };
        // An anonymous caller that is denied could succeed with a credential: 401, not 403.
        if ids.is_anonymous()
            && let Some(ch) = self.challenge()
        {
            d.status = Status::Unauthorized;
            d.reason = "credential_required";
            d.challenge = Some(ch);
        }
        d.into()
    }

    /// What Cedar saw and did for this request as `ids`, against the live snapshot; `None`
    /// without a snapshot. Offline diagnostics only (`portcullis check --explain`).
    pub fn explain(
        &self,
        view: &RequestView<'_>,
        ids: &Identities,
    ) -> Option<Result<authz::Explanation, authz::AuthzError>> {
        let snapshot = self.store.load()?;
        Some(authz::explain(&snapshot.engine, view, ids, &self.mapping))
    }

    /// The challenge for an anonymous caller: the scheme a credential could be sent with.
    fn challenge(&self) -> Option<Challenge> {
        let scheme = if self.bearer_configured {
            Scheme::Bearer
        } else if self.api_keys_configured {
            Scheme::ApiKey
        } else {
            return None;
        };
        Some(Challenge { scheme, error: None, description: None })
    }

    /// A request its route's requirements refuse: a 401 in the scheme the route accepts (403
    /// when it accepts only mTLS peers, which no challenge can ask for).
    fn route_denial(&self, route: &RouteRequirements<'_>, refusal: RouteRefusal, rid: &str) -> Deny {
        let d = Deny::new(Status::Unauthorized, refusal.label(), rid);
        if refusal != RouteRefusal::CredentialRequired {
            let desc = refusal.to_string();
            return d.with_challenge(scheme_challenge(Credential::BearerToken, "invalid_token", Some(&desc)));
        }
        let scheme = if self.bearer_configured && route.accepts(CredentialKind::Bearer) {
            Scheme::Bearer
        } else if self.api_keys_configured && route.accepts(CredentialKind::ApiKey) {
            Scheme::ApiKey
        } else {
            return Deny { status: Status::Forbidden, ..d };
        };
        d.with_challenge(Challenge { scheme, error: None, description: None })
    }

    fn authn_denial(&self, e: &AuthnError, rid: &str) -> Deny {
        let d = Deny::new(Status::Unauthorized, e.label(), rid);
        match e {
            AuthnError::InvalidToken(je) => {
                d.with_challenge(scheme_challenge(Credential::BearerToken, "invalid_token", Some(&je.to_string())))
            }
            AuthnError::InvalidApiKey => d.with_challenge(scheme_challenge(Credential::ApiKey, "invalid_key", None)),
            AuthnError::MalformedCredential(kind) => {
                let error = match kind {
                    Credential::BearerToken => "invalid_token",
                    Credential::ApiKey => "invalid_key",
                };
                d.with_challenge(scheme_challenge(*kind, error, Some(&e.to_string())))
            }
            AuthnError::KeysUnavailable | AuthnError::StatusListUnavailable => {
                Deny { status: Status::Unavailable, ..d }.with_retry_after(5)
            }
            // RFC 6750 §3.1: a credential sent twice is an `invalid_request` (400) in its own scheme.
            AuthnError::DuplicateCredential(kind) => Deny {
                status: Status::BadRequest,
                ..d.with_challenge(scheme_challenge(*kind, "invalid_request", None))
            },
            AuthnError::UntrustedPeer(_) => Deny { status: Status::Forbidden, ..d },
        }
    }

    /// Identity headers for the upstream, then the removal list: every spelling of every owned
    /// header except the exact names set here (Envoy applies removals after additions, so
    /// listing a set name would delete our own value; the set ones overwrite client copies).
    ///
    /// For a token alone (no peer, no API client) both depend only on the token's identity, the
    /// principal and this checker's config, so they are computed at its first allow and kept
    /// with the identity, for this checker and principal (when tokens are cached: otherwise
    /// every identity is new and keeping would only cost).
    fn identity_headers_for(&self, ids: &Identities, principal: &str) -> (SetHeaders, RemoveHeaders) {
        if let (true, Some(j), None, None) = (self.keep_upstream, &ids.jwt, &ids.peer, &ids.api_client) {
            let kept = j.upstream.get_or_init(|| {
                let (set, remove_wire) = self.upstream_headers(ids, principal);
                let (set, set_wire) = set.parts();
                UpstreamHeaders {
                    principal: principal.into(),
                    owner: Arc::downgrade(&self.upstream_owner),
                    set: set.clone(),
                    set_wire: set_wire.clone(),
                    remove_wire,
                }
            });
            if &*kept.principal == principal && std::ptr::eq(kept.owner.as_ptr(), Arc::as_ptr(&self.upstream_owner)) {
                let set = SetHeaders::from_parts(kept.set.clone(), kept.set_wire.clone());
                return (set, RemoveHeaders::shared(kept.remove_wire.clone()));
            }
        }
        let (set, remove) = self.upstream_headers(ids, principal);
        (set, RemoveHeaders::shared(remove))
    }

    /// [`Checker::identity_headers_for`], computed: the headers and the removal list's wire form.
    /// The list's key is gathered as the headers are: the identity names' bits were found once
    /// (`IdentityNames`), a claim header's is one hash lookup.
    fn upstream_headers(&self, ids: &Identities, principal: &str) -> (SetHeaders, Bytes) {
        let n = &self.identity_names;
        let text = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        // Claim headers first, identity headers last; config keeps the two sets disjoint.
        let claims = ids.jwt.as_ref().map_or(0, |j| j.headers.len());
        let mut set: Vec<(Bytes, Bytes)> = Vec::with_capacity(claims + 4);
        let mut mask = 0u128;
        // A value that cannot be a header value (control characters) is dropped, never sent.
        let mut add = |name: &Bytes, bit: u128, value: Bytes| {
            if !value.is_empty() && value.iter().all(|&b| b >= 0x20 && b != 0x7f) {
                set.push((name.clone(), value));
                mask |= bit;
            }
        };
        if let Some(j) = &ids.jwt {
            for (name, value) in &j.headers {
                add(name, self.removals.bit(name), value.clone());
            }
        }
        add(&n.principal.0, n.principal.1, text(principal));
        if let Some(j) = &ids.jwt {
            add(&n.subject.0, n.subject.1, j.subject_value.clone());
            add(&n.issuer.0, n.issuer.1, j.issuer_value.clone());
        }
        if let Some(p) = &ids.peer {
            add(&n.peer.0, n.peer.1, text(&p.spiffe_id));
        }
        if let Some(c) = &ids.api_client {
            add(&n.client.0, n.client.1, text(&c.client));
        }
        let remove = if self.removals.keyed() {
            self.removals.keyed_list(mask)
        } else {
            self.removals.without(set.iter().map(|(k, _)| k.as_ref()))
        };
        (SetHeaders::new(set), remove)
    }
}

/// `headers.{principal,subject,issuer,peer,client}`, lower-case, each with its bit in the
/// removal lists' key (0 when not owned).
struct IdentityNames {
    principal: (Bytes, u128),
    subject: (Bytes, u128),
    issuer: (Bytes, u128),
    peer: (Bytes, u128),
    client: (Bytes, u128),
}

impl IdentityNames {
    fn of(h: &HeaderNames, removals: &removals::RemovalLists) -> Self {
        let name = |s: &str| {
            let b = Bytes::from(s.to_ascii_lowercase());
            let bit = removals.bit(&b);
            (b, bit)
        };
        Self {
            principal: name(&h.principal),
            subject: name(&h.subject),
            issuer: name(&h.issuer),
            peer: name(&h.peer),
            client: name(&h.client),
        }
    }
}

/// The audit facts of a request that normalized, before any identity is known.
fn request_audit(view: &RequestView<'_>) -> Audit {
    Audit {
        source_ip: view.source_ip,
        peer: view.source_principal.and_then(loggable_peer).map(str::to_owned),
        request: RequestLine::new(&view.method, &view.host, &view.path),
        ..Audit::default()
    }
}

/// The audit facts of a request and what authentication proved about it.
fn identity_audit(view: &RequestView<'_>, ids: &Identities) -> Audit {
    let mut a = request_audit(view);
    if let Some(j) = &ids.jwt {
        a.issuer = Some(j.issuer.clone());
        a.subject = Some(SharedStr::of(j.clone()));
    }
    a.api_client = ids.api_client.as_ref().map(|c| SharedStr::of(c.clone()));
    a.authn = AuthnMethods { jwt: ids.jwt.is_some(), mtls: ids.peer.is_some(), api_key: ids.api_client.is_some() };
    a
}

/// A verified token's identity (cached, shared by every check that presents the token) holds
/// the subject its audit records.
impl AuditText for JwtIdentity {
    fn audit_text(&self) -> &str {
        &self.subject
    }
}

/// A valid API key's identity holds the client its audit records.
impl AuditText for ApiClientIdentity {
    fn audit_text(&self) -> &str {
        &self.client
    }
}

/// A peer principal as logged: printable ASCII and bounded (a SPIFFE id is at most 2048
/// bytes), else left out rather than written into a log line.
pub(crate) fn loggable_peer(p: &str) -> Option<&str> {
    (p.len() <= 2048 && p.bytes().all(|b| b.is_ascii_graphic())).then_some(p)
}

/// The decision for a request that could not be normalized: a 400 that still echoes its id.
pub fn invalid_request(e: &InvalidRequest) -> Decision {
    Decision::deny(Status::BadRequest, e.label(), bounded(&e.request_id))
}

/// The deny for a check that panicked, still carrying the request's id so it can be found in
/// Envoy's access log.
pub fn panicked(request_id: &str) -> Decision {
    Decision::internal_error(bounded(request_id))
}

/// The answer to a check shed because `limits.max_in_flight` checks are being decided: a 503
/// the proxy can retry after a second.
pub fn overloaded(request_id: &str) -> Decision {
    Deny::new(Status::Unavailable, "overloaded", bounded(request_id)).with_retry_after(1).into()
}

/// A refused credential's challenge, in that credential's scheme.
fn scheme_challenge(kind: Credential, error: &'static str, description: Option<&str>) -> Challenge {
    let scheme = match kind {
        Credential::BearerToken => Scheme::Bearer,
        Credential::ApiKey => Scheme::ApiKey,
    };
    Challenge { scheme, error: Some(error), description: description.map(str::to_owned) }
}

/// Request ids are echoed in logs and bodies: keep them short and printable.
fn bounded(id: &str) -> &str {
    let ok = id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
    if ok { id } else { "" }
}

mod removals;
mod shadow;
#[cfg(test)]
mod tests;
