//! Per-route authentication requirements, declared by the operator in Envoy's per-route
//! `context_extensions` (`ExtAuthzPerRoute.check_settings`) under the reserved `portcullis.`
//! keys. They are read only from the CheckRequest fields Envoy fills from its route config
//! (never from request headers) and only narrow what the global `authn` config accepts.
//!
//! | key | value |
//! |---|---|
//! | `portcullis.require` | `credential`: an anonymous caller is refused (401) before any policy |
//! | `portcullis.issuers` | space-separated configured issuers; a token of another is refused |
//! | `portcullis.audiences` | space-separated; a token whose `aud` has none of them is refused |
//! | `portcullis.credentials` | space-separated subset of `bearer api_key peer`: the others are ignored |
//!
//! Any other key in the `portcullis.` namespace (in any case), an empty list, an unknown value or
//! an issuer that `authn.issuers` does not configure is a route misconfiguration: the request is
//! denied, never judged as if the requirement were absent.
use crate::request::{RouteFact, RouteFactSource};

use super::Identities;

/// The reserved key prefix, compared ASCII case-insensitively so a miscased key is refused
/// rather than silently ignored.
pub const PREFIX: &str = "portcullis.";
pub const KEY_REQUIRE: &str = "portcullis.require";
pub const KEY_ISSUERS: &str = "portcullis.issuers";
pub const KEY_AUDIENCES: &str = "portcullis.audiences";
pub const KEY_CREDENTIALS: &str = "portcullis.credentials";

/// A kind of credential a route may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A verified JWT (`bearer`), from any configured token source.
    Bearer,
    /// A known API key (`api_key`).
    ApiKey,
    /// A trusted mTLS peer (`peer`).
    Peer,
}

impl CredentialKind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "bearer" => Some(Self::Bearer),
            "api_key" => Some(Self::ApiKey),
            "peer" => Some(Self::Peer),
            _ => None,
        }
    }
}

/// What one route requires; the default (no `portcullis.` key) requires nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRequirements<'a> {
    /// `portcullis.require: credential`.
    pub credential_required: bool,
    /// `portcullis.issuers`; `None` accepts every configured issuer.
    pub issuers: Option<Vec<&'a str>>,
    /// `portcullis.audiences`; `None` leaves audiences to the issuer's config.
    pub audiences: Option<Vec<&'a str>>,
    /// `portcullis.credentials`; `None` accepts every kind.
    pub credentials: Option<Vec<CredentialKind>>,
}

/// A route's requirement that cannot be applied: the route is misconfigured (deny, reason
/// `invalid_route_requirement`). `key` is the operator's extension key, bounded by the request
/// limits on route facts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route requirement {key:?}: {why}")]
pub struct RouteRequirementError {
    pub key: String,
    pub why: &'static str,
}

/// Why a request does not meet its route's requirements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteRefusal {
    /// No accepted credential proved anything (401 with the challenge).
    #[error("this route requires a credential")]
    CredentialRequired,
    /// A verified token of an issuer this route does not list (401 `invalid_token`).
    #[error("token issuer is not accepted on this route")]
    IssuerNotAccepted,
    /// A verified token whose `aud` names none of the route's audiences (401 `invalid_token`).
    #[error("token audience is not accepted on this route")]
    AudienceNotAccepted,
}

impl RouteRefusal {
    /// Bounded label: the machine-readable deny reason.
    pub fn label(&self) -> &'static str {
        match self {
            RouteRefusal::CredentialRequired => "credential_required",
            RouteRefusal::IssuerNotAccepted => "issuer_not_accepted",
            RouteRefusal::AudienceNotAccepted => "audience_not_accepted",
        }
    }
}

impl<'a> RouteRequirements<'a> {
    /// Reads the `portcullis.` context extensions of a request. `is_issuer` says whether
    /// `authn.issuers` configures an issuer: a route may only narrow that set.
    pub fn parse(facts: &[RouteFact<'a>], is_issuer: impl Fn(&str) -> bool) -> Result<Self, RouteRequirementError> {
        let mut out = Self::default();
        for f in facts.iter().filter(|f| f.source == RouteFactSource::Extension) {
            let reserved = f.key.get(..PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(PREFIX));
            if !reserved {
                continue;
            }
            let err = |why| RouteRequirementError { key: f.key.to_owned(), why };
            match f.key {
                KEY_REQUIRE => match f.value {
                    "credential" => out.credential_required = true,
                    _ => return Err(err("value must be `credential`")),
                },
                KEY_ISSUERS => {
                    let list = list(f.value).ok_or_else(|| err("must be a space-separated, non-empty list"))?;
                    if !list.iter().all(|i| is_issuer(i)) {
                        return Err(err("names an issuer that authn.issuers does not configure"));
                    }
                    out.issuers = Some(list);
                }
                KEY_AUDIENCES => {
                    out.audiences =
                        Some(list(f.value).ok_or_else(|| err("must be a space-separated, non-empty list"))?);
                }
                KEY_CREDENTIALS => {
                    let list = list(f.value).ok_or_else(|| err("must be a space-separated, non-empty list"))?;
                    let kinds: Option<Vec<CredentialKind>> = list.iter().map(|k| CredentialKind::parse(k)).collect();
                    out.credentials = Some(kinds.ok_or_else(|| err("kinds are `bearer`, `api_key` and `peer`"))?);
                }
                _ => return Err(err("is not a known key (portcullis.require, .issuers, .audiences, .credentials)")),
            }
        }
        // Token requirements on a route that ignores tokens can never hold: a mistake.
        if !out.accepts(CredentialKind::Bearer) {
            for (key, set) in [(KEY_ISSUERS, out.issuers.is_some()), (KEY_AUDIENCES, out.audiences.is_some())] {
                if set {
                    return Err(RouteRequirementError {
                        key: key.to_owned(),
                        why: "is set but portcullis.credentials does not accept `bearer`",
                    });
                }
            }
        }
        Ok(out)
    }

    /// Whether this route accepts a kind of credential.
    pub fn accepts(&self, kind: CredentialKind) -> bool {
        self.credentials.as_ref().is_none_or(|c| c.contains(&kind))
    }

    /// What authentication proved, narrowed to this route: identities of kinds the route does
    /// not accept are dropped (as if not sent), a token of another issuer or audience is
    /// refused, and a route that requires a credential refuses a caller left anonymous.
    pub fn apply(&self, mut ids: Identities) -> Result<Identities, RouteRefusal> {
        if !self.accepts(CredentialKind::Bearer) {
            ids.jwt = None;
        }
        if !self.accepts(CredentialKind::ApiKey) {
            ids.api_client = None;
        }
        if !self.accepts(CredentialKind::Peer) {
            ids.peer = None;
        }
        if let Some(jwt) = &ids.jwt {
            if let Some(issuers) = &self.issuers
                && !issuers.contains(&&*jwt.issuer)
            {
                return Err(RouteRefusal::IssuerNotAccepted);
            }
            if let Some(auds) = &self.audiences
                && !jwt.audiences.iter().any(|a| auds.contains(&a.as_str()))
            {
                return Err(RouteRefusal::AudienceNotAccepted);
            }
        }
        if self.credential_required && ids.is_anonymous() {
            return Err(RouteRefusal::CredentialRequired);
        }
        Ok(ids)
    }
}

/// A space-separated list (spaces only, as Envoy's YAML writes them); `None` when it is empty or
/// uses another separator (a comma or a control character), which an operator did not mean.
fn list(value: &str) -> Option<Vec<&str>> {
    let items: Vec<&str> = value.split(' ').filter(|s| !s.is_empty()).collect();
    let clean = items.iter().all(|s| s.bytes().all(|b| b.is_ascii_graphic() && b != b','));
    (!items.is_empty() && clean).then_some(items)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::authn::{ApiClientIdentity, JwtIdentity, PeerIdentity};

    fn ext<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<RouteFact<'a>> {
        pairs.iter().map(|(key, value)| RouteFact { source: RouteFactSource::Extension, key, value }).collect()
    }

    fn parse<'a>(pairs: &'a [(&'a str, &'a str)]) -> Result<RouteRequirements<'a>, RouteRequirementError> {
        RouteRequirements::parse(&ext(pairs), |i| ["https://a", "https://b"].contains(&i))
    }

    fn jwt(iss: &str, aud: &[&str]) -> Identities {
        let mut j = JwtIdentity::for_tests(iss, "alice", &[], &[]);
        j.audiences = aud.iter().map(|a| (*a).to_owned()).collect();
        Identities { jwt: Some(Arc::new(j)), ..Default::default() }
    }

    fn peer() -> PeerIdentity {
        PeerIdentity {
            spiffe_id: "spiffe://cluster.local/ns/a/sa/b".into(),
            trust_domain: "cluster.local".into(),
            namespace: "a".into(),
            service_account: "b".into(),
        }
    }

    #[test]
    fn misconfigured_requirements_name_their_key() {
        let bad: &[&[(&str, &str)]] = &[
            &[("portcullis.require", "yes")],
            &[("portcullis.require", "")],
            &[("portcullis.issuers", "https://c")],
            &[("portcullis.issuers", "https://a https://c")],
            &[("portcullis.issuers", "https://a,https://b")],
            &[("portcullis.issuers", "  ")],
            &[("portcullis.audiences", "")],
            &[("portcullis.audiences", "a\tb")],
            &[("portcullis.credentials", "bearer mtls")],
            &[("portcullis.credentials", "")],
            &[("portcullis.credentials", "peer"), ("portcullis.issuers", "https://a")],
            &[("portcullis.credentials", "api_key"), ("portcullis.audiences", "x")],
            &[("portcullis.requires", "credential")],
            &[("Portcullis.Require", "credential")],
            &[("PORTCULLIS.issuers", "https://a")],
            &[("portcullis.", "x")],
        ];
        for pairs in bad {
            let e = parse(pairs).expect_err(&format!("{pairs:?}"));
            assert!(pairs.iter().any(|(k, _)| *k == e.key), "{e} names one of {pairs:?}");
        }
    }

    #[test]
    fn requirements_parse_and_other_extensions_are_not_ours() {
        let r = parse(&[
            ("portcullis.require", "credential"),
            ("portcullis.issuers", "https://a  https://b"),
            ("portcullis.audiences", "api"),
            ("portcullis.credentials", "bearer peer"),
            ("tenant", "a"),
            ("portcullisx", "y"),
        ])
        .expect("valid");
        assert!(r.credential_required);
        assert_eq!(r.issuers, Some(vec!["https://a", "https://b"]));
        assert_eq!(r.audiences, Some(vec!["api"]));
        assert_eq!(r.credentials, Some(vec![CredentialKind::Bearer, CredentialKind::Peer]));
        assert_eq!(parse(&[("tenant", "a")]).expect("valid"), RouteRequirements::default());
        // Metadata strings are never requirements, whatever their key.
        let md = [RouteFact { source: RouteFactSource::RouteMetadata("ns"), key: "portcullis.require", value: "x" }];
        assert_eq!(RouteRequirements::parse(&md, |_| false), Ok(RouteRequirements::default()));
    }

    #[test]
    fn tokens_of_other_issuers_or_audiences_are_refused() {
        let r = parse(&[("portcullis.issuers", "https://a"), ("portcullis.audiences", "api other")]).expect("valid");
        assert!(r.apply(jwt("https://a", &["x", "other"])).is_ok());
        assert_eq!(r.apply(jwt("https://b", &["api"])).err(), Some(RouteRefusal::IssuerNotAccepted));
        assert_eq!(r.apply(jwt("https://a", &["x"])).err(), Some(RouteRefusal::AudienceNotAccepted));
        assert_eq!(r.apply(jwt("https://a", &[])).err(), Some(RouteRefusal::AudienceNotAccepted));
        // Without a token the issuer list does not make a credential mandatory...
        assert!(r.apply(Identities::default()).is_ok());
        // ...`require` does.
        let r = parse(&[("portcullis.require", "credential"), ("portcullis.issuers", "https://a")]).expect("valid");
        assert_eq!(r.apply(Identities::default()).err(), Some(RouteRefusal::CredentialRequired));
    }

    #[test]
    fn kinds_the_route_does_not_accept_are_ignored_and_do_not_satisfy_require() {
        let r = parse(&[("portcullis.require", "credential"), ("portcullis.credentials", "bearer")]).expect("valid");
        let mut ids = Identities {
            peer: Some(peer()),
            api_client: Some(Arc::new(ApiClientIdentity { client: "ci".into(), groups: Vec::new(), rate_limit: None })),
            ..Default::default()
        };
        assert_eq!(r.apply(ids.clone()).err(), Some(RouteRefusal::CredentialRequired));
        ids.jwt = jwt("https://b", &[]).jwt;
        let kept = r.apply(ids).expect("a token is accepted");
        assert!(kept.jwt.is_some() && kept.peer.is_none() && kept.api_client.is_none());
        // A peer-only route drops the token before the issuer list could be consulted.
        let r = parse(&[("portcullis.credentials", "peer")]).expect("valid");
        let kept = r.apply(jwt("https://b", &[])).expect("ignored, not refused");
        assert!(kept.is_anonymous());
    }
}
