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

pub use apikey::ApiClientIdentity;
pub use jwt::{JwtError, JwtIdentity};
pub use peer::PeerIdentity;

/// Everything authentication proved about one request. Several may hold at once (a service
/// calling on behalf of a user); all `None` is an anonymous caller.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    pub jwt: Option<Arc<JwtIdentity>>,
    pub peer: Option<PeerIdentity>,
    pub api_client: Option<Arc<ApiClientIdentity>>,
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

    /// Names of the methods that succeeded, for Cedar's `context.authn`.
    pub fn methods(&self) -> Vec<&'static str> {
        let mut m = Vec::with_capacity(3);
        if self.jwt.is_some() {
            m.push("jwt");
        }
        if self.peer.is_some() {
            m.push("mtls");
        }
        if self.api_client.is_some() {
            m.push("api_key");
        }
        m
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
}

impl Authenticator {
    /// Builds the authenticators from config; each registers its own metrics.
    pub fn new(cfg: &Config, registry: &mut Registry) -> anyhow::Result<Self> {
        Ok(Self {
            jwt: jwt::JwtAuthenticator::new(&cfg.authn, &cfg.limits, registry.sub_registry_with_prefix("jwt"))?,
            peer: peer::PeerAuthenticator::new(&cfg.authn.peer),
            api_keys: apikey::ApiKeyAuthenticator::new(&cfg.authn.api_keys),
        })
    }

    /// Proves what the request's credentials say. Any present-but-invalid credential fails the
    /// whole request: a bad token never degrades to "anonymous".
    pub async fn authenticate(&self, req: &RequestView<'_>) -> Result<Identities, AuthnError> {
        let peer = self.peer.authenticate(req)?;
        let api_client = self.api_keys.authenticate(req)?;
        let jwt = self.jwt.authenticate(req).await?;
        Ok(Identities { jwt, peer, api_client })
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
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::proto::auth::{AttributeContext, CheckRequest, attribute_context};
    use crate::proto::core::{HeaderMap, HeaderValue};
    use proptest::prelude::*;

    #[test]
    fn the_principal_is_user_then_api_client_then_service_then_anonymous() {
        let user = Arc::new(JwtIdentity::for_tests("https://i", "alice", &[], &[]));
        let client = Arc::new(ApiClientIdentity { client: "ci".into(), groups: Vec::new() });
        let peer = PeerIdentity {
            spiffe_id: "spiffe://cluster.local/ns/shop/sa/web".into(),
            trust_domain: "cluster.local".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
        };
        let ids = |j: bool, c: bool, p: bool| Identities {
            jwt: j.then(|| user.clone()),
            api_client: c.then(|| client.clone()),
            peer: p.then(|| peer.clone()),
        };
        // Every combination: the strongest present identity wins, whatever else is present.
        for j in [false, true] {
            for c in [false, true] {
                for p in [false, true] {
                    let ids = ids(j, c, p);
                    // Which identity was chosen, by address: the very one authentication proved.
                    let got = match ids.principal() {
                        PrincipalRef::User(u) => ("user", std::ptr::eq(u, &*user)),
                        PrincipalRef::ApiClient(a) => ("api_client", std::ptr::eq(a, &*client)),
                        PrincipalRef::Service(s) => ("service", ids.peer.as_ref().is_some_and(|p| std::ptr::eq(s, p))),
                        PrincipalRef::Anonymous => ("anonymous", true),
                    };
                    let want = if j {
                        "user"
                    } else if c {
                        "api_client"
                    } else if p {
                        "service"
                    } else {
                        "anonymous"
                    };
                    assert_eq!(got, (want, true), "jwt={j} api_client={c} peer={p}");
                }
            }
        }
    }

    fn authenticator() -> Authenticator {
        let cfg = Config::from_yaml(
            "policy: {dir: x}\nauthn:\n  issuers:\n    - issuer: https://issuer.test\n      \
             jwks_file: /nonexistent/jwks.json\n      from: [{header: authorization, prefix: 'Bearer '}, \
             {cookie: session}]\n  api_keys:\n    keys: [{client: c, sha256: \"\
             b8ce88d57f4916859bcecb01b98b041299a759313987af89f9fc6608d7440537\"}]\n",
        )
        .expect("parses");
        cfg.validate().expect("valid");
        Authenticator::new(&cfg, &mut Registry::default()).expect("authenticator")
    }

    fn request(headers: Vec<(&str, Vec<u8>)>) -> CheckRequest {
        let mut all: Vec<HeaderValue> = vec![
            HeaderValue { key: ":method".into(), value: "GET".into(), raw_value: Vec::new() },
            HeaderValue { key: ":path".into(), value: "/".into(), raw_value: Vec::new() },
        ];
        all.extend(headers.into_iter().map(|(k, v)| HeaderValue { key: k.into(), value: String::new(), raw_value: v }));
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

    /// Independent of the extractor: is this `authorization` value ours (the Bearer scheme in
    /// any case and spacing, empty, or unreadable)?
    fn bearer_is_ours(v: &[u8]) -> bool {
        let Ok(s) = std::str::from_utf8(v) else { return true };
        let t = s.trim_start_matches([' ', '\t']);
        if t.is_empty() {
            return true;
        }
        let word_end = t.bytes().position(|b| !(b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)));
        t[..word_end.unwrap_or(t.len())].eq_ignore_ascii_case("bearer")
    }

    /// Values that sit near the parser's edges: scheme spellings, separators, arbitrary tails.
    fn near_miss() -> impl Strategy<Value = Vec<u8>> {
        let scheme =
            prop::sample::select(vec!["Bearer", "bearer", "BEARER", "Basic", "", "Bearerx", " Bearer", "Bear"]);
        let sep = prop::sample::select(vec!["", " ", "\t", "  ", " \t", "\u{a0}"]);
        let tail = prop::collection::vec(any::<u8>(), 0..24);
        prop_oneof![
            (scheme, sep, tail).prop_map(|(a, b, c)| [a.as_bytes(), b.as_bytes(), &c].concat()),
            prop::collection::vec(any::<u8>(), 0..40),
        ]
    }

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        /// Arbitrary bytes in `authorization`, `cookie` and the API-key header never panic, and
        /// a value that is ours never authenticates as anonymous.
        #[test]
        fn arbitrary_credential_bytes_never_become_anonymous(
            auth in prop::option::of(near_miss()),
            cookie in prop::option::of(prop_oneof![
                near_miss().prop_map(|v| [b"session=".as_slice(), &v].concat()),
                near_miss(),
            ]),
            key in prop::option::of(near_miss()),
        ) {
            let ours = auth.as_deref().is_some_and(bearer_is_ours)
                || key.is_some()
                || cookie.as_deref().is_some_and(|c| match std::str::from_utf8(c) {
                    Ok(s) => s.split(';').any(|p| p.split_once('=').is_some_and(|(n, _)| n.trim() == "session")),
                    Err(_) => true,
                });
            let mut headers = Vec::new();
            if let Some(v) = auth { headers.push(("authorization", v)); }
            if let Some(v) = cookie { headers.push(("cookie", v)); }
            if let Some(v) = key { headers.push(("x-api-key", v)); }
            let req = request(headers);
            let view = RequestView::from_check(&req, &crate::config::Limits::default()).expect("valid request");
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let res = rt.block_on(authenticator_once().authenticate(&view));
            if ours {
                prop_assert!(res.as_ref().map_or(true, |ids| !ids.is_anonymous()), "ours but anonymous: {res:?}");
            }
        }
    }

    fn authenticator_once() -> &'static Authenticator {
        static A: std::sync::OnceLock<Authenticator> = std::sync::OnceLock::new();
        A.get_or_init(authenticator)
    }
}
