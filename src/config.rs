//! The typed YAML configuration: one file, validated at start with errors that name the field.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Errors from loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { field: field.into(), message: message.into() }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the sidecar listens.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Log format and filter.
    #[serde(default)]
    pub log: LogConfig,
    /// Where Cedar policies come from.
    pub policy: PolicyConfig,
    /// How callers are authenticated.
    #[serde(default)]
    pub authn: AuthnConfig,
    /// Names of the identity headers injected for the upstream.
    #[serde(default)]
    pub headers: HeaderNames,
    /// How requests are mapped into Cedar.
    #[serde(default)]
    pub cedar: CedarConfig,
    /// Bounds on request input.
    #[serde(default)]
    pub limits: Limits,
    /// How request paths are canonicalized.
    #[serde(default)]
    pub request: RequestConfig,
    /// Per-caller rate limit (429 with `Retry-After`); off when absent.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
}

/// Listeners. Any of them may be disabled with `null`, but at least one of `grpc`/`unix` is needed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// TCP address of the ext_authz gRPC server.
    #[serde(default = "default_grpc")]
    pub grpc: Option<SocketAddr>,
    /// Unix domain socket path of the ext_authz gRPC server.
    #[serde(default)]
    pub unix: Option<PathBuf>,
    /// Admin HTTP address: only the probes (/healthz, /readyz) and /metrics, so it can be
    /// reached from the pod network by kubelet and scrapers.
    #[serde(default = "default_admin")]
    pub admin: Option<SocketAddr>,
    /// Diagnostics HTTP address (/policy and later diagnostics). Must be a loopback address:
    /// what it shows (policy source, reload errors) is for operators on the node, not the mesh.
    #[serde(default = "default_diagnostics")]
    pub diagnostics: Option<SocketAddr>,
    /// How long in-flight checks may take to finish after SIGTERM.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

fn default_grpc() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9191)))
}
fn default_admin() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
}
fn default_diagnostics() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9092)))
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            unix: None,
            admin: default_admin(),
            diagnostics: default_diagnostics(),
            drain_timeout: default_drain(),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `portcullis=debug`. `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: default_level() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Policy sources. Exactly one of `dir` or `kubernetes`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A directory of `*.cedar`, `*.cedarschema` and `*.entities.json` files, or a mounted
    /// ConfigMap volume (kubelet's `..data` symlink swap is followed).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Watch the directory and reload on change.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Quiet period that folds a burst of changes into one rebuild.
    #[serde(default = "default_debounce", with = "humantime_serde")]
    pub debounce: Duration,
    /// What an empty policy set means: `deny_all` (default, logged) or `keep_last` (refuse it).
    #[serde(default)]
    pub on_empty: EmptyPolicy,
    /// Kubernetes API source (ConfigMaps selected by label).
    #[serde(default)]
    pub kubernetes: Option<KubernetesSource>,
}

fn yes() -> bool {
    true
}
fn default_debounce() -> Duration {
    Duration::from_millis(250)
}

/// What to do when a source yields no policies at all.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EmptyPolicy {
    /// Swap in the empty set: every request is denied, and it is logged loudly.
    #[default]
    DenyAll,
    /// Refuse the empty set and keep the last good snapshot.
    KeepLast,
}

/// ConfigMaps watched through the Kubernetes API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSource {
    /// Namespaces to watch; empty means the pod's own namespace (`POD_NAMESPACE`).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Label selector for policy ConfigMaps (Kubernetes syntax: `a=b,c!=d,e in (f,g)`).
    #[serde(default = "default_selector")]
    pub selector: String,
    /// A kubeconfig file to use instead of in-cluster / default discovery (`Config::infer`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Post a Kubernetes Event on a ConfigMap whose update was refused (needs `create` on
    /// `events.k8s.io/events`).
    #[serde(default = "yes")]
    pub events: bool,
}

fn default_selector() -> String {
    "portcullis.dev/policy=true".into()
}

/// Authentication settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthnConfig {
    /// Trusted JWT issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// JWKS cache behaviour, shared by all issuers.
    #[serde(default)]
    pub jwks: JwksConfig,
    /// Verified-token cache.
    #[serde(default)]
    pub token_cache: TokenCacheConfig,
    /// mTLS peer (SPIFFE) identity.
    #[serde(default)]
    pub peer: PeerConfig,
    /// API keys.
    #[serde(default)]
    pub api_keys: ApiKeyConfig,
    /// How token groups map to `Group` entities: `shared` (absent: `Group::"<group>"` for every
    /// issuer) or `per_issuer` (`Group::"<issuer>#<group>"`). Must be chosen when more than one
    /// issuer has non-empty `group_claims`.
    #[serde(default)]
    pub group_namespace: Option<GroupNamespace>,
}

/// The namespace of `Group` entities built from token claims.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GroupNamespace {
    /// `Group::"<group>"`: every trusted issuer can grant every group.
    #[default]
    Shared,
    /// `Group::"<issuer>#<group>"`: a group is only the issuer's own. Issuers may not contain
    /// `#` (OIDC issuers have no fragment), so the first `#` always ends the issuer.
    PerIssuer,
}

impl GroupNamespace {
    /// The `Group` entity id for `group` from a token of `issuer`.
    pub fn group_id(self, issuer: &str, group: &str) -> String {
        match self {
            GroupNamespace::Shared => group.to_owned(),
            GroupNamespace::PerIssuer => format!("{issuer}#{group}"),
        }
    }
}

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
    /// Where the token is read from, tried in order.
    #[serde(default = "default_token_sources")]
    pub from: Vec<TokenSource>,
    /// Claim name → upstream header name, for claims injected as identity headers.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Claims whose values become the user's parent `Group` entities.
    #[serde(default = "default_group_claims")]
    pub group_claims: Vec<String>,
    /// Allow `http://` for every URL fetched for this issuer (discovery, `jwks_uri`, the
    /// discovered `jwks_uri`). Off: plain HTTP lets anyone on the path swap the signing keys.
    #[serde(default)]
    pub allow_insecure_http: bool,
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

/// JWKS cache settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// Lower bound on a key set's freshness lifetime (from `Cache-Control: max-age`).
    #[serde(default = "d_min_ttl", with = "humantime_serde")]
    pub min_ttl: Duration,
    /// Upper bound on a key set's freshness lifetime.
    #[serde(default = "d_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Lifetime when the response has no usable `Cache-Control`.
    #[serde(default = "d_default_ttl", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Minimum time between refreshes triggered by an unknown `kid`.
    #[serde(default = "d_refresh_min", with = "humantime_serde")]
    pub unknown_kid_refresh_interval: Duration,
    /// How long past its freshness lifetime a key set keeps serving while the provider fails.
    #[serde(default = "d_max_stale", with = "humantime_serde")]
    pub max_stale: Duration,
    /// Timeout of one discovery or JWKS fetch.
    #[serde(default = "d_fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Largest accepted discovery or JWKS response body, in bytes.
    #[serde(default = "d_max_jwks_bytes")]
    pub max_response_bytes: usize,
}

fn d_min_ttl() -> Duration {
    Duration::from_secs(60)
}
fn d_max_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn d_default_ttl() -> Duration {
    Duration::from_secs(600)
}
fn d_refresh_min() -> Duration {
    Duration::from_secs(10)
}
fn d_max_stale() -> Duration {
    Duration::from_secs(3600)
}
fn d_fetch_timeout() -> Duration {
    Duration::from_secs(3)
}
fn d_max_jwks_bytes() -> usize {
    256 * 1024
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            min_ttl: d_min_ttl(),
            max_ttl: d_max_ttl(),
            default_ttl: d_default_ttl(),
            unknown_kid_refresh_interval: d_refresh_min(),
            max_stale: d_max_stale(),
            fetch_timeout: d_fetch_timeout(),
            max_response_bytes: d_max_jwks_bytes(),
        }
    }
}

/// Verified-token cache settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// Maximum number of cached verified tokens (0 disables the cache).
    #[serde(default = "d_token_cache")]
    pub max_entries: u64,
    /// Upper bound on how long one verified token stays cached (never past its `exp`).
    #[serde(default = "d_token_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
}

fn d_token_cache() -> u64 {
    10_000
}
fn d_token_ttl() -> Duration {
    Duration::from_secs(300)
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self { max_entries: d_token_cache(), max_ttl: d_token_ttl() }
    }
}

/// mTLS peer identity from `attributes.source.principal`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Use the peer principal at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Accepted SPIFFE trust domains. Empty only together with `any_trust_domain: true`.
    #[serde(default = "default_trust_domains")]
    pub trust_domains: Vec<String>,
    /// Accept a peer of any trust domain (needs `trust_domains: []`, so the choice is explicit).
    #[serde(default)]
    pub any_trust_domain: bool,
}

fn default_trust_domains() -> Vec<String> {
    vec!["cluster.local".into()]
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self { enabled: true, trust_domains: default_trust_domains(), any_trust_domain: false }
    }
}

/// API keys, stored only as SHA-256 digests.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Request header carrying the key.
    #[serde(default = "d_api_key_header")]
    pub header: String,
    /// Known keys.
    #[serde(default)]
    pub keys: Vec<ApiKeyEntry>,
}

fn d_api_key_header() -> String {
    "x-api-key".into()
}

impl Default for ApiKeyConfig {
    fn default() -> Self {
        Self { header: d_api_key_header(), keys: Vec::new() }
    }
}

/// One API client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// Client id: becomes `ApiClient::"<client>"`.
    pub client: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// Groups the client belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Identity headers injected upstream on allow; client copies are always stripped.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderNames {
    /// The Cedar principal, e.g. `User::"alice"`.
    #[serde(default = "h_principal")]
    pub principal: String,
    /// JWT `sub`.
    #[serde(default = "h_subject")]
    pub subject: String,
    /// JWT `iss`.
    #[serde(default = "h_issuer")]
    pub issuer: String,
    /// mTLS peer SPIFFE id.
    #[serde(default = "h_peer")]
    pub peer: String,
    /// API client id.
    #[serde(default = "h_client")]
    pub client: String,
    /// If set, the determining policy ids are sent back to the client in this response header.
    #[serde(default)]
    pub policy_ids: Option<String>,
    /// Remove the credential (`authorization` / API key header) before the request goes upstream.
    #[serde(default)]
    pub remove_credentials: bool,
    /// Remove an `authorization` header holding a scheme no token source reads (e.g. `Basic`)
    /// on allow. Off: such a header is not our credential and is forwarded untouched.
    #[serde(default)]
    pub strip_foreign_credentials: bool,
    /// Headers removed from the upstream request on every allow, in every `-`/`_` spelling:
    /// by default the method-override and URL-override family, which some frameworks act on.
    #[serde(default = "h_strip_on_allow")]
    pub strip_on_allow: Vec<String>,
}

/// Owned header names with more separators than this are refused: every `-`/`_` spelling of
/// an owned header is removed on allow, and there are 2^separators of them.
pub const MAX_HEADER_SEPARATORS: usize = 8;

/// Every spelling of a header name that an upstream could read as the same name once `-` and
/// `_` are treated alike (CGI, WSGI, PHP, Rack): all 2^n combinations, lower case, sorted.
/// Separators beyond [`MAX_HEADER_SEPARATORS`] (refused by config validation) are kept as is.
pub fn separator_spellings(name: &str) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    let pos: Vec<usize> = lower
        .bytes()
        .enumerate()
        .filter(|(_, b)| matches!(b, b'-' | b'_'))
        .map(|(i, _)| i)
        .take(MAX_HEADER_SEPARATORS)
        .collect();
    let mut out: Vec<String> = (0u32..(1 << pos.len()))
        .filter_map(|mask| {
            let mut b = lower.clone().into_bytes();
            for (bit, &p) in pos.iter().enumerate() {
                b[p] = if mask & (1 << bit) == 0 { b'-' } else { b'_' };
            }
            String::from_utf8(b).ok()
        })
        .collect();
    out.sort();
    out
}

/// One spelling per name for comparisons: lower case, `_` read as `-`.
fn header_key(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Headers a claim may never be written to, whatever else is configured: pseudo-headers are
/// refused as invalid names already.
const NEVER_CLAIM_TARGETS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "cookie",
    "authorization",
    "proxy-authorization",
];

fn h_principal() -> String {
    "x-portcullis-principal".into()
}
fn h_subject() -> String {
    "x-portcullis-subject".into()
}
fn h_issuer() -> String {
    "x-portcullis-issuer".into()
}
fn h_peer() -> String {
    "x-portcullis-peer".into()
}
fn h_client() -> String {
    "x-portcullis-client".into()
}
fn h_strip_on_allow() -> Vec<String> {
    ["x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url"]
        .into_iter()
        .map(String::from)
        .collect()
}

impl Default for HeaderNames {
    fn default() -> Self {
        Self {
            principal: h_principal(),
            subject: h_subject(),
            issuer: h_issuer(),
            peer: h_peer(),
            client: h_client(),
            policy_ids: None,
            remove_credentials: false,
            strip_foreign_credentials: false,
            strip_on_allow: h_strip_on_allow(),
        }
    }
}

/// Mapping of requests into Cedar.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CedarConfig {
    /// Request headers exposed to policies as tags on the `Route` resource
    /// (`resource.hasTag("x-tenant")`). Credentials are never exposed.
    #[serde(default)]
    pub context_headers: Vec<String>,
}

/// Bounds on request input; anything larger is refused (400) before any work is done.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Longest accepted path including the query, in bytes.
    #[serde(default = "d_max_path")]
    pub max_path_bytes: usize,
    /// Most headers accepted in one request.
    #[serde(default = "d_max_headers")]
    pub max_headers: usize,
    /// Longest accepted token, checked before parsing.
    #[serde(default = "d_max_token")]
    pub max_token_bytes: usize,
    /// Largest accepted gRPC CheckRequest (it grows with `with_request_body`). A larger one is an
    /// RPC error, which Envoy turns into a deny with `failure_mode_allow: false`.
    #[serde(default = "d_max_message")]
    pub max_message_bytes: usize,
}

fn d_max_path() -> usize {
    8 * 1024
}
fn d_max_headers() -> usize {
    200
}
fn d_max_token() -> usize {
    16 * 1024
}
fn d_max_message() -> usize {
    4 * 1024 * 1024
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_path_bytes: d_max_path(),
            max_headers: d_max_headers(),
            max_token_bytes: d_max_token(),
            max_message_bytes: d_max_message(),
        }
    }
}

/// Request canonicalization choices.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// What a `;` (or `%3B`) in a path segment means: `refuse` (400, default) or `strip`, where
    /// policies see each segment with its `;…` removed, as servlet containers route it.
    #[serde(default)]
    pub matrix_parameters: MatrixParameters,
}

/// Handling of matrix (path) parameters, `/a;jsessionid=1/b`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MatrixParameters {
    /// Refused with 400: upstreams disagree on what `;` means.
    #[default]
    Refuse,
    /// Removed from each segment before policies see the path.
    Strip,
}

/// Rate-limit settings (off unless configured).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second allowed per caller.
    pub requests_per_second: u32,
    /// Burst above the sustained rate.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Most callers tracked at once (bounded memory).
    #[serde(default = "d_max_tracked")]
    pub max_tracked: usize,
}

fn d_max_tracked() -> usize {
    100_000
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it are resolved
    /// against the file's directory, so the example runs from any working directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut cfg =
            Self::from_yaml(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses YAML without validating.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(d) = self.policy.dir.as_mut() {
            fix(d);
        }
        if let Some(k) = self.policy.kubernetes.as_mut()
            && let Some(f) = k.kubeconfig.as_mut()
        {
            fix(f);
        }
        for iss in &mut self.authn.issuers {
            if let Some(f) = iss.jwks_file.as_mut() {
                fix(f);
            }
            if let Some(f) = iss.hmac_secret_file.as_mut() {
                fix(f);
            }
            if let Some(f) = iss.ca_file.as_mut() {
                fix(f);
            }
        }
    }

    /// Checks everything serde cannot: names the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.grpc.is_none() && self.listen.unix.is_none() {
            return Err(ConfigError::invalid("listen", "enable at least one of `grpc` or `unix`"));
        }
        if let Some(a) = self.listen.diagnostics
            && !a.ip().is_loopback()
        {
            return Err(ConfigError::invalid(
                "listen.diagnostics",
                format!("`{a}` is not a loopback address; diagnostics are served on loopback only (or null)"),
            ));
        }
        match (&self.policy.dir, &self.policy.kubernetes) {
            (None, None) => {
                return Err(ConfigError::invalid("policy", "set `dir` or `kubernetes`"));
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid("policy", "set only one of `dir` or `kubernetes`"));
            }
            (None, Some(k)) => {
                if k.selector.trim().is_empty() {
                    // An empty selector would load every ConfigMap in the namespace as policy.
                    return Err(ConfigError::invalid("policy.kubernetes.selector", "must not be empty"));
                }
                if let Some(i) = k.namespaces.iter().position(|n| n.trim().is_empty()) {
                    return Err(ConfigError::invalid(
                        format!("policy.kubernetes.namespaces[{i}]"),
                        "must not be empty",
                    ));
                }
            }
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        for (i, iss) in self.authn.issuers.iter().enumerate() {
            let field = |f: &str| format!("authn.issuers[{i}].{f}");
            if iss.issuer.is_empty() {
                return Err(ConfigError::invalid(field("issuer"), "must not be empty"));
            }
            if !seen.insert(iss.issuer.clone()) {
                return Err(ConfigError::invalid(field("issuer"), "duplicate issuer"));
            }
            if iss.jwks_uri.is_some() && iss.jwks_file.is_some() {
                return Err(ConfigError::invalid(field("jwks_uri"), "set only one of `jwks_uri` or `jwks_file`"));
            }
            if iss.algorithms.is_empty() {
                return Err(ConfigError::invalid(field("algorithms"), "must list at least one algorithm"));
            }
            for a in &iss.algorithms {
                if a.is_hmac() && iss.hmac_secret_file.is_none() {
                    return Err(ConfigError::invalid(
                        field("algorithms"),
                        format!("`{}` needs `hmac_secret_file`; HMAC is never verified with a public key", a.name()),
                    ));
                }
                if !a.is_hmac() && iss.hmac_secret_file.is_some() {
                    return Err(ConfigError::invalid(
                        field("algorithms"),
                        "an issuer with `hmac_secret_file` may only allow HS256/HS384/HS512",
                    ));
                }
            }
            if iss.from.is_empty() {
                return Err(ConfigError::invalid(field("from"), "must list at least one token source"));
            }
            check_issuer_urls(i, iss)?;
            if self.authn.group_namespace == Some(GroupNamespace::PerIssuer) && iss.issuer.contains('#') {
                return Err(ConfigError::invalid(
                    field("issuer"),
                    "must not contain `#` with `group_namespace: per_issuer` (it separates issuer and group)",
                ));
            }
        }
        let mapping_groups = self.authn.issuers.iter().filter(|i| !i.group_claims.is_empty()).count();
        if mapping_groups > 1 && self.authn.group_namespace.is_none() {
            return Err(ConfigError::invalid(
                "authn.group_namespace",
                "more than one issuer maps `group_claims`: choose `shared` (any issuer may grant any group) \
                 or `per_issuer` (groups become `<issuer>#<group>`)",
            ));
        }
        let peer = &self.authn.peer;
        if peer.trust_domains.is_empty() && !peer.any_trust_domain {
            return Err(ConfigError::invalid(
                "authn.peer.trust_domains",
                "must list at least one trust domain (or set `any_trust_domain: true` to accept any)",
            ));
        }
        if !peer.trust_domains.is_empty() && peer.any_trust_domain {
            return Err(ConfigError::invalid(
                "authn.peer.any_trust_domain",
                "accepts every trust domain; set `trust_domains: []` with it, or list the domains instead",
            ));
        }
        if let Some(i) = peer.trust_domains.iter().position(|d| d.trim().is_empty()) {
            return Err(ConfigError::invalid(format!("authn.peer.trust_domains[{i}]"), "must not be empty"));
        }
        self.validate_owned_headers()?;
        for (i, k) in self.authn.api_keys.keys.iter().enumerate() {
            let ok = k.sha256.len() == 64 && k.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(ConfigError::invalid(
                    format!("authn.api_keys.keys[{i}].sha256"),
                    "must be 64 hex characters (the SHA-256 of the key, never the key itself)",
                ));
            }
        }
        if self.authn.jwks.min_ttl > self.authn.jwks.max_ttl {
            return Err(ConfigError::invalid("authn.jwks.min_ttl", "must not exceed `max_ttl`"));
        }
        for (i, hname) in self.cedar.context_headers.iter().enumerate() {
            check_header_name(&format!("cedar.context_headers[{i}]"), hname)?;
        }
        Ok(())
    }

    /// Header names portcullis owns: valid, at most [`MAX_HEADER_SEPARATORS`] separators, and
    /// a claim never written over an identity, credential, framing or stripped header.
    fn validate_owned_headers(&self) -> Result<(), ConfigError> {
        let owned_name = |field: &str, v: &str| -> Result<(), ConfigError> {
            check_header_name(field, v)?;
            if v.bytes().filter(|b| matches!(b, b'-' | b'_')).count() > MAX_HEADER_SEPARATORS {
                return Err(ConfigError::invalid(
                    field,
                    format!("`{v}` has more than {MAX_HEADER_SEPARATORS} `-`/`_` separators"),
                ));
            }
            Ok(())
        };
        let h = &self.headers;
        let identity = [
            ("headers.principal", &h.principal),
            ("headers.subject", &h.subject),
            ("headers.issuer", &h.issuer),
            ("headers.peer", &h.peer),
            ("headers.client", &h.client),
        ];
        for (name, v) in identity {
            owned_name(name, v)?;
        }
        for (i, v) in h.strip_on_allow.iter().enumerate() {
            owned_name(&format!("headers.strip_on_allow[{i}]"), v)?;
        }
        let mut credential: Vec<(String, &str)> =
            vec![("authn.api_keys.header".to_owned(), self.authn.api_keys.header.as_str())];
        for (i, iss) in self.authn.issuers.iter().enumerate() {
            for (j, src) in iss.from.iter().enumerate() {
                if let TokenSource::Header { header, .. } = src {
                    credential.push((format!("authn.issuers[{i}].from[{j}].header"), header.as_str()));
                }
            }
        }
        if h.remove_credentials {
            for (field, v) in &credential {
                owned_name(field, v)?;
            }
        }
        for (i, iss) in self.authn.issuers.iter().enumerate() {
            let mut targets: Vec<String> = Vec::new();
            for (claim, target) in &iss.claims_to_headers {
                let field = format!("authn.issuers[{i}].claims_to_headers.{claim}");
                if target.starts_with(':') {
                    return Err(ConfigError::invalid(field, format!("`{target}` is a pseudo-header")));
                }
                owned_name(&field, target)?;
                let key = header_key(target);
                let refuse = |why: &str| Err(ConfigError::invalid(&field, format!("`{target}` {why}")));
                if NEVER_CLAIM_TARGETS.contains(&key.as_str()) {
                    return refuse("is a request framing, routing or credential header");
                }
                if let Some((f, _)) = identity.iter().find(|(_, v)| header_key(v) == key) {
                    return refuse(&format!("is an identity header (`{f}`)"));
                }
                if let Some((f, _)) = credential.iter().find(|(_, v)| header_key(v) == key) {
                    return refuse(&format!("is a credential header (`{f}`)"));
                }
                if h.strip_on_allow.iter().any(|v| header_key(v) == key) {
                    return refuse("is listed in `headers.strip_on_allow`");
                }
                if targets.contains(&key) {
                    return refuse("is the target of another claim of this issuer");
                }
                targets.push(key);
            }
        }
        Ok(())
    }

    /// Every header name portcullis sets upstream (and therefore strips from clients).
    pub fn identity_header_names(&self) -> Vec<String> {
        let h = &self.headers;
        let mut v = vec![h.principal.clone(), h.subject.clone(), h.issuer.clone(), h.peer.clone(), h.client.clone()];
        for iss in &self.authn.issuers {
            v.extend(iss.claims_to_headers.values().cloned());
        }
        for n in &mut v {
            n.make_ascii_lowercase();
        }
        v.sort();
        v.dedup();
        v
    }
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

fn check_header_name(field: &str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(ConfigError::invalid(field, format!("`{v}` is not a valid header name"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<Config, String> {
        let c = Config::from_yaml(y)?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse("policy: {dir: x}\nlisten: {grcp: '127.0.0.1:1'}\n").unwrap_err();
        assert!(err.contains("grcp"), "{err}");
    }

    #[test]
    fn hmac_without_secret_is_refused() {
        let err = parse("policy: {dir: x}\nauthn:\n  issuers:\n    - issuer: https://i\n      algorithms: [HS256]\n")
            .unwrap_err();
        assert!(err.contains("authn.issuers[0].algorithms"), "{err}");
    }

    #[test]
    fn none_algorithm_is_refused() {
        let err = parse("policy: {dir: x}\nauthn:\n  issuers:\n    - issuer: https://i\n      algorithms: [none]\n")
            .unwrap_err();
        assert!(err.contains("unsupported algorithm"), "{err}");
    }

    #[test]
    fn algorithms_parse_once_into_their_exact_names_and_nothing_else() {
        let algs = |list: &str| {
            parse(&format!(
                "policy: {{dir: x}}\nauthn:\n  issuers:\n    - issuer: https://i\n      algorithms: {list}\n"
            ))
        };
        let c = algs("[RS256, PS512, ES384, EdDSA]").unwrap();
        let want = [JwtAlgorithm::RS256, JwtAlgorithm::PS512, JwtAlgorithm::ES384, JwtAlgorithm::EdDSA];
        assert_eq!(c.authn.issuers[0].algorithms, want);
        for a in JwtAlgorithm::ALL {
            assert_eq!(JwtAlgorithm::from_name(a.name()), Some(a));
        }
        // `none` in any spelling, other cases and unknown names are refused, naming the field.
        for bad in ["none", "None", "NONE", "rs256", "HS257", "'RS256 '", "''"] {
            let err = algs(&format!("[{bad}]")).unwrap_err();
            assert!(err.contains("`algorithms`") && err.contains("unsupported algorithm"), "{bad}: {err}");
        }
        assert!(JwtAlgorithm::from_name("none").is_none());
        let err = algs("[]").unwrap_err();
        assert!(err.contains("authn.issuers[0].algorithms"), "{err}");
    }

    #[test]
    fn policy_source_is_required() {
        let err = parse("policy: {}\n").unwrap_err();
        assert!(err.contains("`policy`"), "{err}");
    }

    #[test]
    fn api_key_must_be_a_digest() {
        let err =
            parse("policy: {dir: x}\nauthn:\n  api_keys:\n    keys: [{client: ci, sha256: hunter2}]\n").unwrap_err();
        assert!(err.contains("sha256"), "{err}");
    }

    #[test]
    fn matrix_parameters_default_to_refuse_and_only_known_modes_parse() {
        let c = parse("policy: {dir: x}\n").unwrap();
        assert_eq!(c.request.matrix_parameters, MatrixParameters::Refuse);
        let c = parse("policy: {dir: x}\nrequest: {matrix_parameters: strip}\n").unwrap();
        assert_eq!(c.request.matrix_parameters, MatrixParameters::Strip);
        let err = parse("policy: {dir: x}\nrequest: {matrix_parameters: keep}\n").unwrap_err();
        assert!(err.contains("keep"), "{err}");
        let err = parse("policy: {dir: x}\nrequest: {matrix: strip}\n").unwrap_err();
        assert!(err.contains("matrix"), "{err}");
    }

    #[test]
    fn defaults_are_sane() {
        let c = parse("policy: {dir: x}\n").unwrap();
        assert_eq!(c.listen.grpc.unwrap().port(), 9191);
        assert_eq!(c.headers.subject, "x-portcullis-subject");
        assert!(c.identity_header_names().contains(&"x-portcullis-principal".to_string()));
    }

    #[test]
    fn a_kubernetes_source_needs_a_selector_and_real_namespaces() {
        let err = parse("policy: {kubernetes: {selector: ' '}}\n").unwrap_err();
        assert!(err.contains("policy.kubernetes.selector"), "{err}");
        let err = parse("policy: {kubernetes: {namespaces: [a, '']}}\n").unwrap_err();
        assert!(err.contains("policy.kubernetes.namespaces[1]"), "{err}");
        let c = parse("policy: {kubernetes: {}}\n").unwrap();
        let k = c.policy.kubernetes.unwrap();
        assert_eq!(k.selector, "portcullis.dev/policy=true");
        assert!(k.events && k.kubeconfig.is_none() && k.namespaces.is_empty());
    }

    #[test]
    fn a_relative_kubeconfig_is_resolved_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "policy: {kubernetes: {kubeconfig: kc}}\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.policy.kubernetes.unwrap().kubeconfig, Some(dir.path().join("kc")));
    }

    #[test]
    fn diagnostics_must_be_loopback() {
        let c = parse("policy: {dir: x}\n").unwrap();
        assert_eq!(c.listen.diagnostics, Some(SocketAddr::from(([127, 0, 0, 1], 9092))));
        for bad in ["0.0.0.0:9092", "10.0.0.7:9092", "'[::]:9092'"] {
            let err = parse(&format!("policy: {{dir: x}}\nlisten: {{diagnostics: {bad}}}\n")).unwrap_err();
            assert!(err.contains("listen.diagnostics"), "{bad}: {err}");
        }
        parse("policy: {dir: x}\nlisten: {diagnostics: '[::1]:9092'}\n").unwrap();
        let c = parse("policy: {dir: x}\nlisten: {diagnostics: null}\n").unwrap();
        assert!(c.listen.diagnostics.is_none());
    }

    #[test]
    fn plain_http_issuer_urls_need_allow_insecure_http() {
        let issuer = |extra: &str| format!("policy: {{dir: x}}\nauthn:\n  issuers:\n    - {extra}\n");
        // Discovery fetches the issuer URL.
        let err = parse(&issuer("issuer: http://idp.example")).unwrap_err();
        assert!(err.contains("authn.issuers[0].issuer") && err.contains("allow_insecure_http"), "{err}");
        let err = parse(&issuer("{issuer: https://idp.example, jwks_uri: 'http://idp.example/jwks'}")).unwrap_err();
        assert!(err.contains("authn.issuers[0].jwks_uri"), "{err}");
        let err = parse(&issuer("{issuer: https://idp.example, jwks_uri: 'ftp://idp.example/jwks'}")).unwrap_err();
        assert!(err.contains("authn.issuers[0].jwks_uri") && err.contains("scheme"), "{err}");
        let err = parse(&issuer("{issuer: https://idp.example, jwks_uri: 'not a url'}")).unwrap_err();
        assert!(err.contains("authn.issuers[0].jwks_uri"), "{err}");
        parse(&issuer("{issuer: http://idp.example, allow_insecure_http: true}")).unwrap();
        parse(&issuer("{issuer: https://idp.example, jwks_uri: 'http://j/k', allow_insecure_http: true}")).unwrap();
        parse(&issuer("issuer: https://idp.example")).unwrap();
        // With an explicit JWKS URL the issuer is only compared, never fetched.
        parse(&issuer("{issuer: http://idp.example, jwks_uri: 'https://idp.example/jwks'}")).unwrap();
    }

    #[test]
    fn peer_trust_domains_default_to_cluster_local_and_any_must_be_explicit() {
        let c = parse("policy: {dir: x}\n").unwrap();
        assert_eq!(c.authn.peer.trust_domains, ["cluster.local"]);
        assert!(!c.authn.peer.any_trust_domain);
        let err = parse("policy: {dir: x}\nauthn: {peer: {trust_domains: []}}\n").unwrap_err();
        assert!(err.contains("authn.peer.trust_domains"), "{err}");
        // `any_trust_domain` alone still has the default list: contradictory, so refused.
        let err = parse("policy: {dir: x}\nauthn: {peer: {any_trust_domain: true}}\n").unwrap_err();
        assert!(err.contains("authn.peer.any_trust_domain"), "{err}");
        let c = parse("policy: {dir: x}\nauthn: {peer: {trust_domains: [], any_trust_domain: true}}\n").unwrap();
        assert!(c.authn.peer.any_trust_domain);
    }

    #[test]
    fn two_issuers_mapping_groups_must_choose_a_group_namespace() {
        let two = |ns: &str, b_claims: &str| {
            format!(
                "policy: {{dir: x}}\nauthn:\n{ns}  issuers:\n    - issuer: https://a.example\n    \
                 - {{issuer: https://b.example{b_claims}}}\n"
            )
        };
        let err = parse(&two("", "")).unwrap_err();
        assert!(err.contains("authn.group_namespace"), "{err}");
        // Only one issuer maps groups: nothing to choose.
        parse(&two("", ", group_claims: []")).unwrap();
        let c = parse(&two("  group_namespace: shared\n", "")).unwrap();
        assert_eq!(c.authn.group_namespace, Some(GroupNamespace::Shared));
        let c = parse(&two("  group_namespace: per_issuer\n", "")).unwrap();
        assert_eq!(c.authn.group_namespace, Some(GroupNamespace::PerIssuer));
        let err = parse(&two("  group_namespace: global\n", "")).unwrap_err();
        assert!(err.contains("global"), "{err}");
    }

    #[test]
    fn per_issuer_group_ids_cannot_collide() {
        let ns = GroupNamespace::PerIssuer;
        assert_eq!(ns.group_id("https://a.example", "admins"), "https://a.example#admins");
        assert_eq!(GroupNamespace::Shared.group_id("https://a.example", "admins"), "admins");
        // An issuer with `#` could make `a#b` + `c` equal `a` + `b#c`: refused.
        let err = parse(
            "policy: {dir: x}\nauthn:\n  group_namespace: per_issuer\n  issuers:\n    - issuer: 'https://a.example#x'\n",
        )
        .unwrap_err();
        assert!(err.contains("authn.issuers[0].issuer") && err.contains('#'), "{err}");
    }

    fn claim_target(target: &str, extra: &str) -> Result<Config, String> {
        parse(&format!(
            "policy: {{dir: x}}\nauthn:\n  issuers:\n    - issuer: https://i\n      \
             from: [{{header: authorization, prefix: 'Bearer '}}, {{header: x-token}}]\n      \
             claims_to_headers: {{email: '{target}'}}\n{extra}"
        ))
    }

    #[test]
    fn claims_never_target_identity_credential_framing_or_stripped_headers() {
        for target in [
            "x-portcullis-subject",
            "X_Portcullis_Principal",
            "x-portcullis_client",
            "authorization",
            "Proxy-Authorization",
            "x-token",
            "x_token",
            "x-api-key",
            "x_api_key",
            ":authority",
            ":path",
            "host",
            "Host",
            "connection",
            "keep-alive",
            "keep_alive",
            "proxy-connection",
            "transfer-encoding",
            "te",
            "trailer",
            "upgrade",
            "content-length",
            "cookie",
            "x-http-method-override",
            "X_Original_URL",
        ] {
            let err = claim_target(target, "").unwrap_err();
            assert!(err.contains("`authn.issuers[0].claims_to_headers.email`"), "{target}: {err}");
        }
        // A renamed identity header and a custom strip entry are covered too.
        let err = claim_target("x-who", "headers: {subject: x_who}\n").unwrap_err();
        assert!(err.contains("claims_to_headers.email") && err.contains("identity header"), "{err}");
        let err = claim_target("x-debug", "headers: {strip_on_allow: [x_debug]}\n").unwrap_err();
        assert!(err.contains("claims_to_headers.email") && err.contains("strip_on_allow"), "{err}");
        // Two claims of one issuer onto one header (in any spelling) would race: refused.
        let err = parse(
            "policy: {dir: x}\nauthn:\n  issuers:\n    - issuer: https://i\n      \
             claims_to_headers: {email: x-mail, mail: x_mail}\n",
        )
        .unwrap_err();
        assert!(err.contains("authn.issuers[0].claims_to_headers.mail"), "{err}");
        // An ordinary target is fine.
        assert!(claim_target("x-user-email", "").is_ok());
    }

    #[test]
    fn owned_header_names_are_bounded_in_separators() {
        let nine = "a-b-c-d-e-f-g-h-i-j";
        let err = parse(&format!("policy: {{dir: x}}\nheaders: {{subject: {nine}}}\n")).unwrap_err();
        assert!(err.contains("`headers.subject`") && err.contains("separators"), "{err}");
        let err = parse(&format!("policy: {{dir: x}}\nheaders: {{strip_on_allow: [x, {nine}]}}\n")).unwrap_err();
        assert!(err.contains("`headers.strip_on_allow[1]`"), "{err}");
        let err = parse(&format!(
            "policy: {{dir: x}}\nauthn:\n  issuers:\n    - issuer: https://i\n      claims_to_headers: {{e: {nine}}}\n"
        ))
        .unwrap_err();
        assert!(err.contains("`authn.issuers[0].claims_to_headers.e`"), "{err}");
        // A credential header is owned only when it is removed.
        let y = format!("policy: {{dir: x}}\nauthn: {{api_keys: {{header: {nine}}}}}\n");
        assert!(parse(&y).is_ok());
        let err = parse(&format!("{y}headers: {{remove_credentials: true}}\n")).unwrap_err();
        assert!(err.contains("`authn.api_keys.header`"), "{err}");
        assert!(parse("policy: {dir: x}\nheaders: {subject: a-b-c-d-e-f-g-h-i}\n").is_ok(), "8 is the limit");
    }

    #[test]
    fn spellings_cover_every_separator_combination() {
        assert_eq!(separator_spellings("X-a_B"), vec!["x-a-b", "x-a_b", "x_a-b", "x_a_b"]);
        assert_eq!(separator_spellings("host"), vec!["host"]);
        assert_eq!(separator_spellings("a-b-c-d-e-f-g-h-i").len(), 256);
        let c = parse("policy: {dir: x}\n").unwrap();
        assert_eq!(
            c.headers.strip_on_allow,
            ["x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url"]
        );
        assert!(!c.headers.strip_foreign_credentials);
    }
}
