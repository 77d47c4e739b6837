//! `authn.issuers[]`: one trusted JWT issuer, its token sources and its algorithms.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ConfigError, GroupNamespace};

/// One trusted JWT issuer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` value; also the base URL for OIDC discovery.
    pub issuer: String,
    /// JWKS URL. Without it (and without `jwks_file`), OIDC discovery finds it.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// JWKS read from a file (re-read on refresh).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// PEM file of CA certificates trusted, besides the system roots, for this issuer's
    /// discovery and JWKS fetches (e.g. the Kubernetes service-account `ca.crt`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// File holding an HMAC secret; only then are HS256/384/512 accepted for this issuer.
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// Accepted `aud` values; empty means the token's audience is not checked (not recommended).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allowed algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Clock skew allowed on `exp`/`nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Claims that must be present besides `exp`.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// The JOSE header `typ` a token must carry (RFC 8725 §3.11, e.g. `at+jwt` per RFC 9068),
    /// compared case-insensitively with an optional `application/` prefix; unset: not checked.
    #[serde(default)]
    pub required_typ: Option<String>,
    /// Longest accepted time since `iat` (plus `leeway`); a token without `iat` is then refused.
    #[serde(default, with = "humantime_serde")]
    pub max_token_age: Option<Duration>,
    /// Where the token is read from, tried in order.
    #[serde(default = "default_token_sources")]
    pub from: Vec<TokenSource>,
    /// Claim (name, dotted path or JSON pointer: [`ClaimPath`]) → upstream header name, for
    /// claims injected as identity headers.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Claim (name, dotted path or JSON pointer: [`ClaimPath`]) → `User` tag name, for nested
    /// claims (top-level scalar claims are tags under their own names anyway).
    #[serde(default)]
    pub claims_to_tags: BTreeMap<String, String>,
    /// Claims (names, dotted paths or JSON pointers: [`ClaimPath`]) whose values become the
    /// user's parent `Group` entities.
    #[serde(default = "default_group_claims")]
    pub group_claims: Vec<String>,
    /// Allow `http://` for every URL fetched for this issuer (discovery, `jwks_uri`, the
    /// discovered `jwks_uri`). Off: plain HTTP lets anyone on the path swap the signing keys.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// URL prefixes (each ending in `/`) under which this issuer's tokens may name a status list
    /// (`status.status_list.uri`); a token naming any other URI is refused (401).
    #[serde(default)]
    pub status_list_uris: Vec<String>,
}

fn default_algorithms() -> Vec<JwtAlgorithm> {
    vec![JwtAlgorithm::RS256]
}

/// A JWS signature algorithm an issuer may allow (RFC 7518 names). `none` is not one: an
/// unsigned token is never accepted, so there is no way to configure it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl JwtAlgorithm {
    /// Every algorithm, in the order they are documented.
    pub const ALL: [JwtAlgorithm; 12] = [
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
        JwtAlgorithm::EdDSA,
        JwtAlgorithm::HS256,
        JwtAlgorithm::HS384,
        JwtAlgorithm::HS512,
    ];

    /// The RFC 7518 name, exactly as written in config and in a token's `alg`.
    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::HS384 => "HS384",
            JwtAlgorithm::HS512 => "HS512",
        }
    }

    /// Parses an exact (case-sensitive) name; `none` and unknown names are `None`.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == s)
    }

    /// HMAC algorithms verify with a shared secret, never with a public key.
    pub fn is_hmac(self) -> bool {
        matches!(self, JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512)
    }
}

impl<'de> Deserialize<'de> for JwtAlgorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_name(&s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
            serde::de::Error::custom(format!(
                "`algorithms`: unsupported algorithm `{s}` (expected one of {})",
                names.join(", ")
            ))
        })
    }
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_group_claims() -> Vec<String> {
    vec!["groups".into(), "roles".into()]
}
fn default_token_sources() -> Vec<TokenSource> {
    vec![TokenSource::Header { header: "authorization".into(), prefix: Some("Bearer ".into()) }]
}

/// Where a bearer token is read from.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(untagged, deny_unknown_fields)]
pub enum TokenSource {
    /// A request header, with an optional scheme prefix (matched case-insensitively).
    Header { header: String, prefix: Option<String> },
    /// A cookie.
    Cookie { cookie: String },
}

/// The URLs fetched for an issuer must be `https://` (or `http://` with `allow_insecure_http`).
/// The issuer itself is fetched only when discovery is used (no `jwks_uri`/`jwks_file`/HMAC).
fn check_issuer_urls(i: usize, iss: &IssuerConfig) -> Result<(), ConfigError> {
    let fetched = if iss.hmac_secret_file.is_some() || iss.jwks_file.is_some() {
        None
    } else if let Some(u) = &iss.jwks_uri {
        Some(("jwks_uri", u.as_str()))
    } else {
        Some(("issuer", iss.issuer.as_str()))
    };
    let Some((name, url)) = fetched else { return Ok(()) };
    let field = format!("authn.issuers[{i}].{name}");
    let parsed = reqwest::Url::parse(url).map_err(|e| ConfigError::invalid(&field, format!("`{url}`: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if iss.allow_insecure_http => Ok(()),
        "http" => Err(ConfigError::invalid(
            field,
            format!("`{url}` is plain HTTP; use https, or set `allow_insecure_http: true` on this issuer"),
        )),
        other => Err(ConfigError::invalid(field, format!("unsupported scheme `{other}`; use https"))),
    }
}

/// True when `url` may be fetched for an issuer: https, or http when allowed.
pub fn fetchable_url(url: &reqwest::Url, allow_insecure_http: bool) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => allow_insecure_http,
        _ => false,
    }
}

/// Most segments a claim path may have: deeper than any IdP nests its claims.
pub const MAX_CLAIM_PATH_SEGMENTS: usize = 16;

/// Where a claim is read from, as `group_claims` and `claims_to_headers` name it.
///
/// - A name starting with `/` is an RFC 6901 JSON pointer (`/realm_access/roles`; `~1` is `/`,
///   `~0` is `~`; a segment of digits indexes an array).
/// - Any other name is first an exact top-level claim (so `https://example.com/claims/tenant`
///   and other names containing dots work as they are); only if the token has no such claim is
///   it a dotted path through nested objects (`resource_access.orders-api.roles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimPath {
    /// The unescaped segments of a JSON pointer.
    Pointer(Vec<String>),
    /// An exact top-level name, and its dot-separated segments (one when it has no dot).
    Name { name: String, segments: Vec<String> },
}

impl ClaimPath {
    /// Parses a configured claim name; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<ClaimPath, String> {
        if s.is_empty() {
            return Err("a claim name must not be empty".into());
        }
        let path = match s.strip_prefix('/') {
            Some(rest) => {
                let segments = rest.split('/').map(unescape_pointer).collect::<Result<Vec<_>, _>>()?;
                ClaimPath::Pointer(segments)
            }
            None => ClaimPath::Name { name: s.to_owned(), segments: s.split('.').map(str::to_owned).collect() },
        };
        let depth = match &path {
            ClaimPath::Pointer(s) | ClaimPath::Name { segments: s, .. } => s.len(),
        };
        if depth > MAX_CLAIM_PATH_SEGMENTS {
            return Err(format!("`{s}` has {depth} segments; at most {MAX_CLAIM_PATH_SEGMENTS}"));
        }
        Ok(path)
    }
}

/// One JSON pointer segment: `~1` is `/`, `~0` is `~` (in that order, RFC 6901 §4); any other
/// `~` is an error.
fn unescape_pointer(seg: &str) -> Result<String, String> {
    let mut out = String::with_capacity(seg.len());
    let mut chars = seg.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => return Err(format!("`{seg}`: in a JSON pointer `~` must be followed by `0` or `1`")),
        }
    }
    Ok(out)
}

impl IssuerConfig {
    /// Checks one issuer (`authn.issuers[i]`); uniqueness is checked by the caller.
    pub(super) fn validate(&self, i: usize, group_namespace: Option<GroupNamespace>) -> Result<(), ConfigError> {
        let field = |f: &str| format!("authn.issuers[{i}].{f}");
        if self.issuer.is_empty() {
            return Err(ConfigError::invalid(field("issuer"), "must not be empty"));
        }
        if self.jwks_uri.is_some() && self.jwks_file.is_some() {
            return Err(ConfigError::invalid(field("jwks_uri"), "set only one of `jwks_uri` or `jwks_file`"));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::invalid(field("algorithms"), "must list at least one algorithm"));
        }
        for a in &self.algorithms {
            if a.is_hmac() && self.hmac_secret_file.is_none() {
                return Err(ConfigError::invalid(
                    field("algorithms"),
                    format!("`{}` needs `hmac_secret_file`; HMAC is never verified with a public key", a.name()),
                ));
            }
            if !a.is_hmac() && self.hmac_secret_file.is_some() {
                return Err(ConfigError::invalid(
                    field("algorithms"),
                    "an issuer with `hmac_secret_file` may only allow HS256/HS384/HS512",
                ));
            }
        }
        if self.from.is_empty() {
            return Err(ConfigError::invalid(field("from"), "must list at least one token source"));
        }
        check_issuer_urls(i, self)?;
        for (j, c) in self.group_claims.iter().enumerate() {
            ClaimPath::parse(c).map_err(|e| ConfigError::invalid(field(&format!("group_claims[{j}]")), e))?;
        }
        for c in self.claims_to_headers.keys() {
            ClaimPath::parse(c).map_err(|e| ConfigError::invalid(field(&format!("claims_to_headers.{c}")), e))?;
        }
        for (c, tag) in &self.claims_to_tags {
            let f = field(&format!("claims_to_tags.{c}"));
            ClaimPath::parse(c).map_err(|e| ConfigError::invalid(&f, e))?;
            if tag.is_empty() {
                return Err(ConfigError::invalid(f, "the tag name must not be empty"));
            }
            if self.claims_to_tags.values().filter(|t| *t == tag).count() > 1 {
                return Err(ConfigError::invalid(f, format!("`{tag}` is the target of another claim")));
            }
        }
        if let Some(t) = &self.required_typ
            && (t.trim().is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::invalid(field("required_typ"), "must be a media type such as `at+jwt`"));
        }
        if self.max_token_age.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::invalid(field("max_token_age"), "must be more than zero (or unset)"));
        }
        for (j, prefix) in self.status_list_uris.iter().enumerate() {
            let f = field(&format!("status_list_uris[{j}]"));
            let url = reqwest::Url::parse(prefix).map_err(|e| ConfigError::invalid(&f, format!("`{prefix}`: {e}")))?;
            if !fetchable_url(&url, self.allow_insecure_http) {
                return Err(ConfigError::invalid(f, "must be https (or http with `allow_insecure_http: true`)"));
            }
            // A prefix that does not end a path segment would also match `…/lists-evil`.
            if !url.path().ends_with('/') || url.query().is_some() || url.fragment().is_some() {
                return Err(ConfigError::invalid(f, "must end with `/` and have no query or fragment"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(ConfigError::invalid(f, "must not carry credentials"));
            }
        }
        if group_namespace == Some(GroupNamespace::PerIssuer) && self.issuer.contains('#') {
            return Err(ConfigError::invalid(
                field("issuer"),
                "must not contain `#` with `group_namespace: per_issuer` (it separates issuer and group)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str, segs: &[&str]) -> ClaimPath {
        ClaimPath::Name { name: s.to_owned(), segments: segs.iter().map(|s| (*s).to_owned()).collect() }
    }

    #[test]
    fn claim_paths_parse_as_pointers_or_names() {
        assert_eq!(ClaimPath::parse("groups"), Ok(name("groups", &["groups"])));
        assert_eq!(ClaimPath::parse("realm_access.roles"), Ok(name("realm_access.roles", &["realm_access", "roles"])));
        assert_eq!(
            ClaimPath::parse("/realm_access/roles"),
            Ok(ClaimPath::Pointer(vec!["realm_access".into(), "roles".into()]))
        );
        // RFC 6901 escapes, `~01` is `~1` (not `/`).
        assert_eq!(
            ClaimPath::parse("/a~1b/c~0d/~01"),
            Ok(ClaimPath::Pointer(vec!["a/b".into(), "c~d".into(), "~1".into()]))
        );
        assert_eq!(ClaimPath::parse("/"), Ok(ClaimPath::Pointer(vec![String::new()])));
    }

    fn config_error(issuer_yaml: &str) -> String {
        let text = format!("policy: {{dir: x}}\nauthn:\n  issuers:\n    - issuer: https://i\n{issuer_yaml}");
        match crate::config::Config::from_yaml(&text).map(|c| c.validate()) {
            Ok(Ok(())) => String::new(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn config_errors_name_the_claim_field() {
        let e = config_error("      group_claims: [groups, '/a~2']\n");
        assert!(e.contains("authn.issuers[0].group_claims[1]"), "{e}");
        let e = config_error("      claims_to_headers: {'/x~': x-y}\n");
        assert!(e.contains("authn.issuers[0].claims_to_headers./x~"), "{e}");
        let e = config_error("      claims_to_tags: {a.b: t, /c: t}\n");
        assert!(e.contains("authn.issuers[0].claims_to_tags.") && e.contains("another claim"), "{e}");
        let e = config_error("      claims_to_tags: {a.b: ''}\n");
        assert!(e.contains("authn.issuers[0].claims_to_tags.a.b"), "{e}");
        let e = config_error("      required_typ: 'at jwt'\n");
        assert!(e.contains("authn.issuers[0].required_typ"), "{e}");
        let e = config_error("      max_token_age: 0s\n");
        assert!(e.contains("authn.issuers[0].max_token_age"), "{e}");
        let ok = "      required_typ: at+jwt\n      max_token_age: 1h\n      claims_to_tags: {/org/id: org}\n      group_claims: [realm_access.roles]\n";
        assert_eq!(config_error(ok), "");
    }

    #[test]
    fn bad_claim_paths_are_refused() {
        for bad in ["", "/a~2", "/a~", "/~x/b"] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad:?}");
        }
        let deep = "/a".repeat(MAX_CLAIM_PATH_SEGMENTS + 1);
        assert!(ClaimPath::parse(&deep).unwrap_err().contains("segments"));
        assert!(ClaimPath::parse(&"/a".repeat(MAX_CLAIM_PATH_SEGMENTS)).is_ok());
        assert!(ClaimPath::parse(&vec!["a"; MAX_CLAIM_PATH_SEGMENTS + 1].join(".")).is_err());
    }
}
