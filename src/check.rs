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
    /// Every spelling of every owned header, sorted: removed on allow unless set exactly.
    owned_spellings: Vec<String>,
    bearer_configured: bool,
    api_keys_configured: bool,
    rate_limiter: Option<RateLimiter>,
}

impl Checker {
    pub fn new(cfg: &Config, store: Arc<PolicyStore>, registry: &mut Registry) -> anyhow::Result<Self> {
        let authn = Authenticator::new(cfg, registry.sub_registry_with_prefix("authn"))?;
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
        Ok(Self {
            // Policies never see credentials, nor identity headers a client could have spoofed.
            mapping: CedarMapping::new(&cfg.cedar.context_headers, &[credential_headers, identity_spellings].concat()),
            authn,
            store,
            limits: cfg.limits.clone(),
            matrix: cfg.request.matrix_parameters,
            names: cfg.headers.clone(),
            owned_spellings,
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
        let outcome = match authz::authorize(&snapshot.engine, view, &ids, &self.mapping) {
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
            if self.names.strip_foreign_credentials || self.names.remove_credentials {
                for h in self.authn.foreign_credential_headers(view) {
                    if !d.remove_headers.contains(&h) {
                        d.remove_headers.push(h);
                    }
                }
            }
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
            AuthnError::MalformedCredential(kind) => {
                let error = match kind {
                    Credential::BearerToken => "invalid_token",
                    Credential::ApiKey => "invalid_key",
                };
                d.with_challenge(scheme_challenge(*kind, error, Some(&e.to_string())))
            }
            AuthnError::KeysUnavailable => Decision { status: Status::Unavailable, ..d }.with_retry_after(5),
            // RFC 6750 §3.1: a credential sent twice is an `invalid_request` (400) in its own scheme.
            AuthnError::DuplicateCredential(kind) => Decision {
                status: Status::BadRequest,
                ..d.with_challenge(scheme_challenge(*kind, "invalid_request", None))
            },
            AuthnError::UntrustedPeer(_) => Decision { status: Status::Forbidden, ..d },
        }
    }

    /// Identity headers for the upstream, then the removal list: every spelling of every owned
    /// header except the exact names set here (Envoy applies removals after additions, so
    /// listing a set name would delete our own value; the set ones overwrite client copies).
    fn identity_headers_for(&self, ids: &Identities, d: &mut Decision) {
        let n = &self.names;
        // Claim headers first, identity headers last; config keeps the two sets disjoint.
        let mut set: Vec<(String, String)> = Vec::new();
        if let Some(j) = &ids.jwt {
            set.extend(j.headers.iter().cloned());
        }
        set.push((n.principal.to_ascii_lowercase(), d.principal.clone()));
        if let Some(j) = &ids.jwt {
            set.push((n.subject.to_ascii_lowercase(), j.subject.clone()));
            set.push((n.issuer.to_ascii_lowercase(), j.issuer.to_string()));
        }
        if let Some(p) = &ids.peer {
            set.push((n.peer.to_ascii_lowercase(), p.spiffe_id.clone()));
        }
        if let Some(c) = &ids.api_client {
            set.push((n.client.to_ascii_lowercase(), c.client.clone()));
        }
        // A value that cannot be a header value (control characters) is dropped, never sent.
        set.retain(|(_, v)| !v.is_empty() && v.bytes().all(|b| b >= 0x20 && b != 0x7f));
        d.remove_headers = self.owned_spellings.iter().filter(|h| !set.iter().any(|(k, _)| k == *h)).cloned().collect();
        d.upstream_headers = set;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{DocKind, PolicyDocument};
    use crate::proto::auth::{AttributeContext, attribute_context};
    use crate::proto::core::{HeaderMap, HeaderValue};

    const SCHEMA: &str = include_str!("../examples/demo/policies/portcullis.cedarschema");
    /// sha256("good-key").
    const KEY_SHA: &str = "b8ce88d57f4916859bcecb01b98b041299a759313987af89f9fc6608d7440537";
    const BEARER_MALFORMED: &str =
        r#"Bearer realm="portcullis", error="invalid_token", error_description="bearer token is malformed""#;
    const APIKEY_MALFORMED: &str =
        r#"ApiKey realm="portcullis", error="invalid_key", error_description="API key is malformed""#;

    /// Anyone may do anything: every denial below comes from authentication alone.
    fn checker(headers_yaml: &str, from_yaml: &str) -> Checker {
        let yaml = format!(
            "policy: {{dir: x}}\nauthn:\n  issuers:\n    - issuer: https://issuer.test\n      \
             jwks_file: /nonexistent/jwks.json\n      from: {from_yaml}\n  api_keys:\n    \
             keys: [{{client: batch, sha256: \"{KEY_SHA}\"}}]\nheaders: {headers_yaml}\n"
        );
        let cfg = Config::from_yaml(&yaml).expect("parses");
        cfg.validate().expect("valid");
        let mut registry = Registry::default();
        let store = Arc::new(PolicyStore::new(cfg.policy.on_empty, &mut registry));
        let docs = [
            PolicyDocument { origin: "s.cedarschema".into(), kind: DocKind::Schema, text: SCHEMA.into() },
            PolicyDocument {
                origin: "p.cedar".into(),
                kind: DocKind::Policies,
                text: "@id(\"all\") permit (principal, action, resource);".into(),
            },
        ];
        store.apply(&docs, "test").expect("policies build");
        Checker::new(&cfg, store, &mut registry).expect("checker")
    }

    fn default_checker() -> Checker {
        checker("{}", r#"[{header: authorization, prefix: "Bearer "}]"#)
    }

    /// A GET with these headers, every value in `raw_value` as Envoy's `encode_raw_headers` sends.
    fn request(headers: &[(&str, &[u8])]) -> CheckRequest {
        let mut all: Vec<HeaderValue> = [(":method", "GET"), (":path", "/x"), (":authority", "shop")]
            .iter()
            .map(|(k, v)| HeaderValue { key: (*k).into(), value: String::new(), raw_value: v.as_bytes().to_vec() })
            .collect();
        all.extend(headers.iter().map(|(k, v)| HeaderValue {
            key: (*k).into(),
            value: String::new(),
            raw_value: v.to_vec(),
        }));
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    time: None,
                    http: Some(attribute_context::HttpRequest {
                        header_map: Some(HeaderMap { headers: all }),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        }
    }

    fn assert_malformed(d: &Decision, challenge: &str, what: &str) {
        assert!(!d.allowed, "{what}: {d:?}");
        assert_eq!(d.status, Status::Unauthorized, "{what}");
        assert_eq!(d.reason, "malformed_credential", "{what}");
        assert_eq!(d.www_authenticate.as_deref(), Some(challenge), "{what}");
    }

    #[tokio::test]
    async fn our_scheme_that_does_not_parse_is_401_never_anonymous() {
        let c = default_checker();
        for v in [
            "Bearer\tabc",
            "Bearer",
            "Bearer ",
            "bearer  abc",
            "Bearer abc def",
            "Bearer abc ",
            "Bearer abc\t",
            " Bearer abc",
            "BEARER\tabc",
            "bEaReR  abc",
            "Bearer,abc",
            "Bearer abc,def",
            "Bearer\u{a0}abc",
            "",
            "   ",
        ] {
            let d = c.check(&request(&[("authorization", v.as_bytes())])).await;
            assert_malformed(&d, BEARER_MALFORMED, &format!("{v:?}"));
        }
        // Not UTF-8 at all (Envoy `raw_value`): unreadable, so refused.
        let d = c.check(&request(&[("authorization", b"Bearer \xff\xfe")])).await;
        assert_malformed(&d, BEARER_MALFORMED, "non-UTF-8");
        let d = c.check(&request(&[("Authorization", b"\xc3\x28")])).await;
        assert_malformed(&d, BEARER_MALFORMED, "non-UTF-8, other case");
        // Well-formed but not a JWT: still a 401, from verification (not a new behaviour).
        let d = c.check(&request(&[("authorization", b"bearer abc")])).await;
        assert_eq!((d.status, d.reason), (Status::Unauthorized, "token_malformed"));
        // Twice stays a 400.
        let d = c.check(&request(&[("authorization", b"Bearer a"), ("authorization", b"Basic b")])).await;
        assert_eq!((d.status, d.reason), (Status::BadRequest, "duplicate_credential"));
    }

    #[tokio::test]
    async fn a_foreign_scheme_is_anonymous_and_forwarded_unless_stripping_is_configured() {
        for v in ["Basic dXNlcjpwYXNz", "Digest username=\"u\"", "Bearerx abc", "Negotiate abc"] {
            let d = default_checker().check(&request(&[("authorization", v.as_bytes())])).await;
            assert!(d.allowed, "{v}: {d:?}");
            assert_eq!(d.principal, r#"Anonymous::"anonymous""#, "{v}");
            assert!(!d.remove_headers.contains(&"authorization".to_owned()), "{v}: forwarded untouched");

            for flag in ["{strip_foreign_credentials: true}", "{remove_credentials: true}"] {
                let c = checker(flag, r#"[{header: authorization, prefix: "Bearer "}]"#);
                let d = c.check(&request(&[("authorization", v.as_bytes())])).await;
                assert!(d.allowed, "{v} {flag}: {d:?}");
                assert!(d.remove_headers.contains(&"authorization".to_owned()), "{v} {flag}: {:?}", d.remove_headers);
            }
        }
        // Even where no source reads `authorization` at all, remove_credentials strips a foreign one.
        let c = checker("{remove_credentials: true}", "[{cookie: session}]");
        let d = c.check(&request(&[("authorization", b"Basic dXNlcjpwYXNz")])).await;
        assert!(d.allowed && d.remove_headers.contains(&"authorization".to_owned()), "{d:?}");
        // The strip flag does not touch an allowed request without any authorization header.
        let c = checker("{strip_foreign_credentials: true}", r#"[{header: authorization, prefix: "Bearer "}]"#);
        let d = c.check(&request(&[])).await;
        assert!(d.allowed && !d.remove_headers.contains(&"authorization".to_owned()), "{d:?}");
    }

    #[tokio::test]
    async fn empty_or_unreadable_cookie_token_and_api_key_are_401() {
        let c = checker("{}", "[{cookie: session}]");
        for v in [&b"session="[..], b"a=1; session= ; b=2", b"session=  "] {
            let d = c.check(&request(&[("cookie", v)])).await;
            assert_malformed(&d, BEARER_MALFORMED, &String::from_utf8_lossy(v));
        }
        let d = c.check(&request(&[("cookie", b"session=\xff")])).await;
        assert_malformed(&d, BEARER_MALFORMED, "non-UTF-8 cookie");
        // Another cookie is not a credential.
        assert!(c.check(&request(&[("cookie", b"theme=dark")])).await.allowed);
        // A prefix-less token header: empty or padded is malformed.
        let c = checker("{}", "[{header: x-token}]");
        for v in [&b""[..], b" abc", b"abc "] {
            let d = c.check(&request(&[("x-token", v)])).await;
            assert_malformed(&d, BEARER_MALFORMED, &String::from_utf8_lossy(v));
        }

        let c = default_checker();
        for v in [&b""[..], b"  ", b"\xff\xfe"] {
            let d = c.check(&request(&[("x-api-key", v)])).await;
            assert_malformed(&d, APIKEY_MALFORMED, &String::from_utf8_lossy(v));
        }
        let d = c.check(&request(&[("x-api-key", b"wrong")])).await;
        assert_eq!(d.reason, "invalid_api_key");
    }

    #[tokio::test]
    async fn owned_headers_are_removed_in_every_spelling_except_the_names_set() {
        let c = checker(
            "{principal: x-p, subject: x-s, issuer: x-i, peer: x-e, client: x-c, strip_on_allow: [m-o]}",
            r#"[{header: authorization, prefix: "Bearer "}]"#,
        );
        let d = c.check(&request(&[])).await;
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.upstream_headers, vec![("x-p".to_owned(), r#"Anonymous::"anonymous""#.to_owned())]);
        let want = ["m-o", "m_o", "x-c", "x-e", "x-i", "x-s", "x_c", "x_e", "x_i", "x_p", "x_s"];
        assert_eq!(d.remove_headers, want);

        // With remove_credentials the API-key header goes too, in every spelling.
        let c = checker(
            "{principal: x-p, subject: x-s, issuer: x-i, peer: x-e, client: x-c, strip_on_allow: [], \
             remove_credentials: true}",
            r#"[{header: authorization, prefix: "Bearer "}]"#,
        );
        let d = c.check(&request(&[])).await;
        let want = [
            "authorization",
            "x-api-key",
            "x-api_key",
            "x-c",
            "x-e",
            "x-i",
            "x-s",
            "x_api-key",
            "x_api_key",
            "x_c",
            "x_e",
            "x_i",
            "x_p",
            "x_s",
        ];
        assert_eq!(d.remove_headers, want);

        // The default strip list: the method- and URL-override family, in every spelling.
        let d = default_checker().check(&request(&[])).await;
        for h in ["x-http-method-override", "x_http_method_override", "x-http_method-override", "x-original-url"] {
            assert!(d.remove_headers.contains(&h.to_owned()), "{h}: {:?}", d.remove_headers);
        }
        for h in ["x_rewrite_url", "x-method_override", "x_http_method", "x_portcullis_subject"] {
            assert!(d.remove_headers.contains(&h.to_owned()), "{h}");
        }
        assert!(!d.remove_headers.contains(&"x-portcullis-principal".to_owned()), "set, so not removed");
        assert!(d.remove_headers.contains(&"x_portcullis_principal".to_owned()));
    }

    #[tokio::test]
    async fn a_deny_removes_nothing() {
        let c = default_checker();
        let d = c.check(&request(&[("authorization", b"Bearer\tx")])).await;
        assert!(d.remove_headers.is_empty() && d.upstream_headers.is_empty());
    }
}
