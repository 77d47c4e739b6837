//! JWT bearer tokens (RFC 7519) verified per RFC 8725: the token's `iss` selects a configured
//! issuer; only that issuer's algorithms and keys are tried; nothing the token says about keys
//! (`jwk`, `jku`, `x5u`, `x5c`) is trusted. Verified tokens are cached by digest until (at most)
//! their `exp`, and a cached token is dropped as soon as its key leaves the JWKS.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use moka::Expiry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::AuthnError;
use super::jwks::{IssuerKeys, JwksMetrics, KeyLookupError, KeySource, VerifyKey};
use crate::config::{AuthnConfig, GroupNamespace, IssuerConfig, JwtAlgorithm, Limits, TokenSource};
use crate::request::RequestView;

/// What a verified token proved.
#[derive(Debug, Clone)]
pub struct JwtIdentity {
    pub issuer: Arc<str>,
    pub subject: String,
    /// Values of the issuer's group claims, as `Group` entity ids (`<issuer>#<group>` under
    /// `group_namespace: per_issuer`): become parent `Group` entities.
    pub groups: Vec<String>,
    /// Scalar claims not mapped elsewhere, as strings: become tags on the `User` entity.
    pub claims: Vec<(String, String)>,
    /// `(header, value)` pairs from the issuer's `claims_to_headers`.
    pub headers: Vec<(String, String)>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    kid: Option<String>,
    key_fingerprint: [u8; 16],
}

/// Why a token was refused. Each maps to a 401 `invalid_token` whose description names only the
/// class of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is larger than allowed")]
    TooLarge,
    #[error("token is malformed")]
    Malformed,
    #[error("encrypted tokens (JWE) are not accepted")]
    Encrypted,
    #[error("unsigned tokens are not accepted")]
    AlgNone,
    #[error("token algorithm is not supported")]
    UnsupportedAlgorithm,
    #[error("token algorithm is not allowed for this issuer")]
    AlgorithmNotAllowed,
    #[error("token carries its own key or key URL")]
    EmbeddedKey,
    #[error("token has an unsupported critical header")]
    UnknownCritical,
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    #[error("token key is not known")]
    UnknownKey,
    #[error("token does not match its key")]
    KeyMismatch,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token audience is not accepted")]
    BadAudience,
    #[error("token lacks a required claim")]
    MissingClaim,
    #[error("more than one token in the request")]
    Duplicate,
    #[error("token was sent where its issuer does not accept it")]
    WrongSource,
}

impl JwtError {
    /// Bounded label for metrics and deny reasons.
    pub fn label(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "token_too_large",
            JwtError::Malformed => "token_malformed",
            JwtError::Encrypted => "token_encrypted",
            JwtError::AlgNone => "alg_none",
            JwtError::UnsupportedAlgorithm => "alg_unsupported",
            JwtError::AlgorithmNotAllowed => "alg_not_allowed",
            JwtError::EmbeddedKey => "embedded_key",
            JwtError::UnknownCritical => "unknown_crit",
            JwtError::UnknownIssuer => "unknown_issuer",
            JwtError::UnknownKey => "unknown_kid",
            JwtError::KeyMismatch => "key_mismatch",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "token_expired",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::BadAudience => "bad_audience",
            JwtError::MissingClaim => "missing_claim",
            JwtError::Duplicate => "duplicate_token",
            JwtError::WrongSource => "wrong_token_source",
        }
    }
}

/// What a configured token header holds.
#[derive(Debug, PartialEq, Eq)]
enum HeaderToken<'a> {
    Token(&'a str),
    /// Another authorization scheme: not a credential of this source.
    NotOurs,
    /// Our scheme (or a prefix-less token header) that does not parse: refused, never anonymous.
    Malformed,
}

/// RFC 9110 `tchar`: what an auth-scheme name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 `token68`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// Reads one header value under a source's scheme prefix. With a prefix, the value is ours when
/// its first word is the scheme in any case (after any leading whitespace), and then it must be
/// exactly `<scheme> SP token68`: a tab, two spaces, a bare scheme, a second word or trailing
/// whitespace is malformed, because upstreams disagree on how to read it. Without a prefix the
/// whole value is the token and must be non-empty with no surrounding whitespace.
fn parse_header_token<'a>(v: &'a str, prefix: Option<&str>) -> HeaderToken<'a> {
    if v.trim_matches([' ', '\t']).is_empty() {
        return HeaderToken::Malformed;
    }
    let scheme = prefix.map(|p| p.trim_matches([' ', '\t'])).unwrap_or("");
    if scheme.is_empty() {
        return if v.trim_matches([' ', '\t']) == v { HeaderToken::Token(v) } else { HeaderToken::Malformed };
    }
    let lead = v.trim_start_matches([' ', '\t']);
    let ours = lead.get(..scheme.len()).is_some_and(|h| h.eq_ignore_ascii_case(scheme))
        && lead.as_bytes().get(scheme.len()).is_none_or(|b| !is_tchar(*b));
    if !ours {
        return HeaderToken::NotOurs;
    }
    if lead.len() != v.len() {
        return HeaderToken::Malformed;
    }
    match v.get(scheme.len()..).and_then(|rest| rest.strip_prefix(' ')) {
        Some(t) if is_token68(t) => HeaderToken::Token(t),
        _ => HeaderToken::Malformed,
    }
}

/// The jsonwebtoken algorithm for a configured one (the names are the same RFC 7518 names).
pub fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
    }
}

struct Issuer {
    name: Arc<str>,
    /// Indices into `JwtAuthenticator::sources` this issuer's tokens may arrive from.
    sources: Vec<usize>,
    keys: Arc<IssuerKeys>,
    validations: HashMap<Algorithm, Validation>,
    required_claims: Vec<String>,
    group_claims: Vec<String>,
    group_namespace: GroupNamespace,
    claims_to_headers: Vec<(String, String)>,
}

#[derive(Clone)]
struct CachedToken {
    identity: Arc<JwtIdentity>,
    issuer: usize,
}

struct UntilExp {
    max_ttl: Duration,
}

impl Expiry<[u8; 32], CachedToken> for UntilExp {
    fn expire_after_create(&self, _: &[u8; 32], v: &CachedToken, _: Instant) -> Option<Duration> {
        let left = v.identity.expires_at.saturating_sub(unix_now());
        Some(Duration::from_secs(left).min(self.max_ttl))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    result: &'static str,
}

/// Verifies bearer tokens against the configured issuers.
pub struct JwtAuthenticator {
    issuers: Vec<Issuer>,
    by_name: HashMap<String, usize>,
    sources: Vec<TokenSource>,
    max_token_bytes: usize,
    cache: Option<moka::future::Cache<[u8; 32], CachedToken>>,
    rejections: Family<ReasonLabel, Counter>,
    cache_lookups: Family<CacheLabel, Counter>,
}

impl JwtAuthenticator {
    pub fn new(cfg: &AuthnConfig, limits: &Limits, registry: &mut Registry) -> anyhow::Result<Self> {
        let client = http_client(cfg, None)?;
        let jwks_metrics = JwksMetrics::register(registry);
        let mut issuers = Vec::new();
        let mut by_name = HashMap::new();
        let mut sources: Vec<TokenSource> = Vec::new();
        for ic in &cfg.issuers {
            let mut issuer = build_issuer(ic, cfg, client.clone(), jwks_metrics.clone())?;
            for s in &ic.from {
                let idx = match sources.iter().position(|x| x == s) {
                    Some(i) => i,
                    None => {
                        sources.push(s.clone());
                        sources.len() - 1
                    }
                };
                issuer.sources.push(idx);
            }
            by_name.insert(ic.issuer.clone(), issuers.len());
            issuers.push(issuer);
        }
        let cache = (cfg.token_cache.max_entries > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(cfg.token_cache.max_entries)
                .expire_after(UntilExp { max_ttl: cfg.token_cache.max_ttl })
                .build()
        });
        let rejections = Family::<ReasonLabel, Counter>::default();
        registry.register("token_rejections", "Rejected bearer tokens by reason", rejections.clone());
        let cache_lookups = Family::<CacheLabel, Counter>::default();
        registry.register("token_cache_lookups", "Verified-token cache lookups by result", cache_lookups.clone());
        Ok(Self {
            issuers,
            by_name,
            sources,
            max_token_bytes: limits.max_token_bytes,
            cache,
            rejections,
            cache_lookups,
        })
    }

    /// Header names tokens are read from.
    pub fn token_headers(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter_map(|s| match s {
                TokenSource::Header { header, .. } => Some(header.to_ascii_lowercase()),
                TokenSource::Cookie { .. } => None,
            })
            .collect()
    }

    /// Fetches every issuer's keys once, so the first request does not pay for it.
    pub async fn warm_up(&self) {
        for iss in &self.issuers {
            if !iss.keys.warm().await {
                tracing::warn!(issuer = %iss.name, "signing keys not available at start-up");
            }
        }
    }

    /// Number of tokens in the verified-token cache, after pending evictions have run.
    pub async fn cached_tokens(&self) -> u64 {
        match &self.cache {
            Some(c) => {
                c.run_pending_tasks().await;
                c.entry_count()
            }
            None => 0,
        }
    }

    /// `Ok(None)` when the request carries no token; an error for a present-but-bad one.
    pub async fn authenticate(&self, req: &RequestView<'_>) -> Result<Option<Arc<JwtIdentity>>, AuthnError> {
        if self.issuers.is_empty() {
            return Ok(None);
        }
        let res = match self.extract(req) {
            Ok(None) => return Ok(None),
            Ok(Some((token, source))) => self.verify_from(token, Some(source)).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(id) => Ok(Some(id)),
            Err(e) => {
                self.rejections.get_or_create(&ReasonLabel { reason: e.label() }).inc();
                // RFC 6750 §3.1: more than one token is `invalid_request` (400), not a bad token.
                Err(match e {
                    AuthnError::InvalidToken(JwtError::Duplicate) => {
                        AuthnError::DuplicateCredential(super::Credential::BearerToken)
                    }
                    e => e,
                })
            }
        }
    }

    /// The token and the index of the source it came from. Every configured source is read,
    /// and any that is present but does not parse (bad scheme spacing, empty, not UTF-8) fails
    /// the request: a credential we cannot read is never taken for "no credential". The first
    /// source that holds a token supplies it.
    fn extract<'a>(&self, req: &RequestView<'a>) -> Result<Option<(&'a str, usize)>, AuthnError> {
        let malformed = || AuthnError::MalformedCredential(super::Credential::BearerToken);
        let mut found: Option<(&'a str, usize)> = None;
        for (idx, src) in self.sources.iter().enumerate() {
            let token = match src {
                TokenSource::Header { header, prefix } => {
                    match req.header_count(header) {
                        0 => continue,
                        1 => {}
                        _ => return Err(JwtError::Duplicate.into()),
                    }
                    if req.has_invalid_value(header) {
                        return Err(malformed());
                    }
                    let v = req.header(header).unwrap_or("");
                    match parse_header_token(v, prefix.as_deref()) {
                        HeaderToken::Token(t) => t,
                        // Another scheme (e.g. Basic) is not our credential.
                        HeaderToken::NotOurs => continue,
                        // Size is judged first, as for a well-formed token.
                        HeaderToken::Malformed if v.len() > self.max_token_bytes => {
                            return Err(JwtError::TooLarge.into());
                        }
                        HeaderToken::Malformed => return Err(malformed()),
                    }
                }
                TokenSource::Cookie { cookie } => {
                    if req.has_invalid_value("cookie") {
                        return Err(malformed());
                    }
                    let mut value = None;
                    for (k, v) in req.headers() {
                        if !k.eq_ignore_ascii_case("cookie") {
                            continue;
                        }
                        for pair in v.split(';') {
                            if let Some((name, val)) = pair.split_once('=')
                                && name.trim() == cookie
                            {
                                if value.is_some() {
                                    return Err(JwtError::Duplicate.into());
                                }
                                value = Some(val.trim());
                            }
                        }
                    }
                    match value {
                        None => continue,
                        Some("") => return Err(malformed()),
                        Some(t) => t,
                    }
                }
            };
            if found.is_none() {
                found = Some((token, idx));
            }
        }
        Ok(found)
    }

    /// Names of the request's authorization-style headers (`authorization`, and every token
    /// header configured with a scheme prefix) that carry a scheme no source here reads, e.g.
    /// `Basic`. They are not our credentials: forwarded unless configured to be stripped.
    pub fn foreign_credential_headers(&self, req: &RequestView<'_>) -> Vec<String> {
        let mut names: Vec<&str> = vec!["authorization"];
        for s in &self.sources {
            if let TokenSource::Header { header, prefix: Some(_) } = s
                && !names.iter().any(|n| n.eq_ignore_ascii_case(header))
            {
                names.push(header);
            }
        }
        let mut out = Vec::new();
        for name in names {
            let claimed = |v: &str| {
                self.sources.iter().any(|s| match s {
                    TokenSource::Header { header, prefix } if header.eq_ignore_ascii_case(name) => {
                        !matches!(parse_header_token(v, prefix.as_deref()), HeaderToken::NotOurs)
                    }
                    _ => false,
                })
            };
            // A value that is not UTF-8 reads as "": claimed (and refused) where a source reads it.
            if req.headers().iter().any(|(k, v)| k.eq_ignore_ascii_case(name) && !claimed(v)) {
                out.push(name.to_ascii_lowercase());
            }
        }
        out
    }

    /// Verifies one token from any source (or answers from the verified-token cache).
    pub async fn verify(&self, token: &str) -> Result<Arc<JwtIdentity>, AuthnError> {
        self.verify_from(token, None).await
    }

    /// Verifies one token; with `source`, its issuer must accept tokens from that source.
    async fn verify_from(&self, token: &str, source: Option<usize>) -> Result<Arc<JwtIdentity>, AuthnError> {
        // Size first: nothing is parsed from an oversized token.
        if token.len() > self.max_token_bytes {
            return Err(JwtError::TooLarge.into());
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(&digest).await {
                if self.still_valid(&hit).await {
                    self.cache_lookups.get_or_create(&CacheLabel { result: "hit" }).inc();
                    self.check_source(hit.issuer, source)?;
                    return Ok(hit.identity);
                }
                cache.invalidate(&digest).await;
            }
            self.cache_lookups.get_or_create(&CacheLabel { result: "miss" }).inc();
        }
        let (identity, issuer) = self.verify_uncached(token, source).await?;
        if let Some(cache) = &self.cache {
            cache.insert(digest, CachedToken { identity: identity.clone(), issuer }).await;
        }
        Ok(identity)
    }

    /// A cached token stays good only while unexpired and while its exact key is still served.
    async fn still_valid(&self, hit: &CachedToken) -> bool {
        if unix_now() >= hit.identity.expires_at {
            return false;
        }
        let Some(iss) = self.issuers.get(hit.issuer) else { return false };
        match iss.keys.serving().await {
            Some(set) => {
                set.find(hit.identity.kid.as_deref()).is_some_and(|k| k.fingerprint == hit.identity.key_fingerprint)
            }
            None => false,
        }
    }

    /// A token from a source its issuer does not list is refused: a cookie-borne token for an
    /// issuer configured for bearer headers only would otherwise open it to CSRF.
    fn check_source(&self, issuer: usize, source: Option<usize>) -> Result<(), JwtError> {
        match (source, self.issuers.get(issuer)) {
            (None, Some(_)) => Ok(()),
            (Some(s), Some(iss)) if iss.sources.contains(&s) => Ok(()),
            _ => Err(JwtError::WrongSource),
        }
    }

    async fn verify_uncached(
        &self,
        token: &str,
        source: Option<usize>,
    ) -> Result<(Arc<JwtIdentity>, usize), AuthnError> {
        let parts: Vec<&str> = token.split('.').collect();
        match parts.len() {
            3 => {}
            5 => return Err(JwtError::Encrypted.into()),
            _ => return Err(JwtError::Malformed.into()),
        }
        let header = decode_segment(parts[0])?;
        let alg = check_header(&header)?;
        let kid = header.get("kid").and_then(Value::as_str);
        // The payload is read unverified only to pick the issuer; nothing else is trusted yet.
        let unverified = decode_segment(parts[1])?;
        let iss_name = unverified.get("iss").and_then(Value::as_str).ok_or(JwtError::UnknownIssuer)?;
        let idx = *self.by_name.get(iss_name).ok_or(JwtError::UnknownIssuer)?;
        self.check_source(idx, source)?;
        let issuer = &self.issuers[idx];
        let validation = issuer.validations.get(&alg).ok_or(JwtError::AlgorithmNotAllowed)?;

        let key = issuer.keys.key_for(kid).await.map_err(|e| match e {
            KeyLookupError::Unavailable => AuthnError::KeysUnavailable,
            KeyLookupError::UnknownKid => AuthnError::InvalidToken(JwtError::UnknownKey),
        })?;
        check_key_matches(&key, alg)?;

        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation).map_err(map_jwt_error)?;
        let claims = data.claims;
        for c in &issuer.required_claims {
            if !claims.contains_key(c) {
                return Err(JwtError::MissingClaim.into());
            }
        }
        let subject = claims.get("sub").and_then(Value::as_str).ok_or(JwtError::MissingClaim)?.to_owned();
        let expires_at = claims.get("exp").and_then(Value::as_u64).ok_or(JwtError::MissingClaim)?;
        let identity = JwtIdentity {
            issuer: issuer.name.clone(),
            subject,
            groups: collect_groups(&claims, &issuer.group_claims)
                .into_iter()
                .map(|g| issuer.group_namespace.group_id(&issuer.name, &g))
                .collect(),
            headers: issuer
                .claims_to_headers
                .iter()
                .filter_map(|(claim, header)| claims.get(claim).and_then(scalar_string).map(|v| (header.clone(), v)))
                .filter(|(_, v)| v.bytes().all(|b| b >= 0x20 && b != 0x7f))
                .collect(),
            claims: claims
                .iter()
                .filter(|(k, _)| !RESERVED.contains(&k.as_str()) && !issuer.group_claims.contains(k))
                .filter_map(|(k, v)| scalar_string(v).map(|s| (k.clone(), s)))
                .collect(),
            expires_at,
            kid: key.kid.clone(),
            key_fingerprint: key.fingerprint,
        };
        Ok((Arc::new(identity), idx))
    }
}

#[cfg(test)]
impl JwtIdentity {
    /// An identity as if a token had verified (for authorization tests).
    pub(crate) fn for_tests(issuer: &str, subject: &str, groups: &[&str], claims: &[(&str, &str)]) -> Self {
        JwtIdentity {
            issuer: issuer.into(),
            subject: subject.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            claims: claims.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            headers: Vec::new(),
            expires_at: u64::MAX,
            kid: None,
            key_fingerprint: [0; 16],
        }
    }
}

const RESERVED: &[&str] = &["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// The HTTP client for discovery and JWKS fetches; `ca_file` adds trusted roots for one issuer.
fn http_client(cfg: &AuthnConfig, ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(cfg.jwks.fetch_timeout)
        .timeout(cfg.jwks.fetch_timeout)
        .redirect(super::jwks::same_origin_redirects());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading ca_file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("ca_file {} holds no PEM certificate", path.display());
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    Ok(b.build()?)
}

fn build_issuer(
    ic: &IssuerConfig,
    cfg: &AuthnConfig,
    client: reqwest::Client,
    metrics: JwksMetrics,
) -> anyhow::Result<Issuer> {
    let client = match &ic.ca_file {
        Some(path) => http_client(cfg, Some(path)).map_err(|e| anyhow::anyhow!("issuer {}: {e}", ic.issuer))?,
        None => client,
    };
    let source = if let Some(path) = &ic.hmac_secret_file {
        let secret =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("issuer {}: reading hmac_secret_file: {e}", ic.issuer))?;
        let secret: Vec<u8> = secret.trim_ascii().to_vec();
        if secret.len() < 32 {
            anyhow::bail!("issuer {}: HMAC secret must be at least 32 bytes", ic.issuer);
        }
        KeySource::Hmac(Arc::new(secret))
    } else if let Some(f) = &ic.jwks_file {
        KeySource::File(f.clone())
    } else if let Some(u) = &ic.jwks_uri {
        KeySource::Uri(u.clone())
    } else {
        KeySource::Discovery { issuer: ic.issuer.clone() }
    };
    let mut validations = HashMap::new();
    for a in &ic.algorithms {
        let alg = algorithm(*a);
        let mut v = Validation::new(alg);
        v.set_issuer(&[ic.issuer.as_str()]);
        if ic.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&ic.audiences);
        }
        v.leeway = ic.leeway.as_secs();
        v.validate_nbf = true;
        // jsonwebtoken checks `aud` only when the token has one: with audiences configured, a
        // token without `aud` must not slip through, so make it required.
        if ic.audiences.is_empty() {
            v.set_required_spec_claims(&["exp", "sub", "iss"]);
        } else {
            v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        }
        validations.insert(alg, v);
    }
    Ok(Issuer {
        name: Arc::from(ic.issuer.as_str()),
        sources: Vec::new(),
        keys: IssuerKeys::new(ic.issuer.clone(), source, cfg.jwks.clone(), client, ic.allow_insecure_http, metrics),
        validations,
        required_claims: ic.required_claims.clone(),
        group_claims: ic.group_claims.clone(),
        group_namespace: cfg.group_namespace.unwrap_or_default(),
        claims_to_headers: ic.claims_to_headers.iter().map(|(c, h)| (c.clone(), h.to_ascii_lowercase())).collect(),
    })
}

fn decode_segment(seg: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(seg).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// RFC 8725 header checks, before any key is looked up.
fn check_header(h: &Map<String, Value>) -> Result<Algorithm, JwtError> {
    let alg = h.get("alg").and_then(Value::as_str).ok_or(JwtError::Malformed)?;
    if alg.trim().eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    if h.contains_key("enc") {
        return Err(JwtError::Encrypted);
    }
    if ["jwk", "jku", "x5u", "x5c"].iter().any(|k| h.contains_key(*k)) {
        return Err(JwtError::EmbeddedKey);
    }
    // We implement no JWS extensions, so any `crit` entry is one we do not understand.
    if h.contains_key("crit") {
        return Err(JwtError::UnknownCritical);
    }
    if h.get("kid").is_some_and(|k| !k.is_string()) {
        return Err(JwtError::Malformed);
    }
    JwtAlgorithm::from_name(alg).map(algorithm).ok_or(JwtError::UnsupportedAlgorithm)
}

/// The key must be of the token's family and, if the JWK pins an `alg`, that exact alg.
fn check_key_matches(key: &VerifyKey, alg: Algorithm) -> Result<(), JwtError> {
    if key.family != alg.family() {
        return Err(JwtError::KeyMismatch);
    }
    if key.alg.is_some_and(|a| a != alg) {
        return Err(JwtError::KeyMismatch);
    }
    if key.family == AlgorithmFamily::Hmac && !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(JwtError::KeyMismatch);
    }
    Ok(())
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => JwtError::BadSignature,
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidAudience => JwtError::BadAudience,
        K::InvalidIssuer => JwtError::UnknownIssuer,
        K::MissingRequiredClaim(c) if c == "aud" => JwtError::BadAudience,
        K::MissingRequiredClaim(_) => JwtError::MissingClaim,
        K::InvalidAlgorithm => JwtError::AlgorithmNotAllowed,
        K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => JwtError::KeyMismatch,
        _ => JwtError::Malformed,
    }
}

fn collect_groups(claims: &Map<String, Value>, names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for n in names {
        match claims.get(n) {
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned)),
            // OAuth `scope`-style space-separated lists.
            Some(Value::String(s)) => out.extend(s.split_whitespace().map(str::to_owned)),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn none_in_any_spelling_is_refused() {
        for a in ["none", "None", "NONE", "nOnE", " none"] {
            assert_eq!(check_header(&hdr(&format!(r#"{{"alg":"{a}"}}"#))), Err(JwtError::AlgNone), "{a}");
        }
    }

    #[test]
    fn embedded_keys_and_crit_are_refused() {
        assert_eq!(check_header(&hdr(r#"{"alg":"RS256","jku":"http://x"}"#)), Err(JwtError::EmbeddedKey));
        assert_eq!(check_header(&hdr(r#"{"alg":"RS256","jwk":{}}"#)), Err(JwtError::EmbeddedKey));
        assert_eq!(check_header(&hdr(r#"{"alg":"RS256","x5u":"http://x"}"#)), Err(JwtError::EmbeddedKey));
        assert_eq!(check_header(&hdr(r#"{"alg":"RS256","x5c":["x"]}"#)), Err(JwtError::EmbeddedKey));
        assert_eq!(check_header(&hdr(r#"{"alg":"RS256","crit":["exp"]}"#)), Err(JwtError::UnknownCritical));
        assert_eq!(check_header(&hdr(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)), Err(JwtError::Encrypted));
        assert_eq!(check_header(&hdr(r#"{"alg":"RS256"}"#)), Ok(Algorithm::RS256));
    }

    #[test]
    fn every_configured_algorithm_maps_to_the_jsonwebtoken_one_of_the_same_name() {
        for a in JwtAlgorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>().ok(), Some(algorithm(a)), "{a:?}");
            assert_eq!(a.is_hmac(), algorithm(a).family() == AlgorithmFamily::Hmac, "{a:?}");
        }
        // A token's `alg` goes through the same exact-name table.
        assert_eq!(check_header(&hdr(r#"{"alg":"rs256"}"#)), Err(JwtError::UnsupportedAlgorithm));
        assert_eq!(check_header(&hdr(r#"{"alg":"EdDSA"}"#)), Ok(Algorithm::EdDSA));
    }

    #[test]
    fn groups_come_from_arrays_and_space_lists() {
        let c: Map<String, Value> = serde_json::from_str(r#"{"groups":["b","a"],"roles":"x y"}"#).unwrap();
        assert_eq!(collect_groups(&c, &["groups".into(), "roles".into()]), vec!["a", "b", "x", "y"]);
    }

    #[test]
    fn header_tokens_parse_only_as_scheme_space_token68() {
        use HeaderToken::*;
        let b = Some("Bearer ");
        assert_eq!(parse_header_token("Bearer abc.def-_~+/==", b), Token("abc.def-_~+/=="));
        assert_eq!(parse_header_token("bEARER abc", b), Token("abc"));
        for v in ["Bearer\tabc", "Bearer", "bearer  abc", "Bearer abc def", "Bearer abc ", " Bearer abc", "Bearer ="] {
            assert_eq!(parse_header_token(v, b), Malformed, "{v:?}");
        }
        for v in ["", " ", "\t"] {
            assert_eq!(parse_header_token(v, b), Malformed, "{v:?}");
            assert_eq!(parse_header_token(v, None), Malformed, "{v:?}");
        }
        for v in ["Basic abc", "Digest a=b", "Bearerx abc", "Bearer-x abc", "DPoP abc"] {
            assert_eq!(parse_header_token(v, b), NotOurs, "{v:?}");
        }
        // A scheme configured without its trailing space reads the same.
        assert_eq!(parse_header_token("DPoP abc", Some("DPoP")), Token("abc"));
        assert_eq!(parse_header_token("abc", None), Token("abc"));
        assert_eq!(parse_header_token("abc ", None), Malformed);
    }
}
