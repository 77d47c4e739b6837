//! `authn`: issuers (in `issuer.rs`), JWKS and token caches, mTLS peers, API keys.
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, IssuerConfig, yes};

/// Authentication settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// How long a token refused for its signature, format or algorithm (or as expired) is
    /// refused again from memory, without parsing or verifying it (0 disables).
    #[serde(default = "d_negative_ttl", with = "humantime_serde")]
    pub negative_cache_ttl: Duration,
    /// Most refused-token digests remembered (0 disables).
    #[serde(default = "d_negative_capacity")]
    pub negative_cache_capacity: u64,
    /// How long an unknown-`kid` request waits for a key refresh already in flight for its
    /// issuer before it is answered 503 + Retry-After (keep well under the proxy's timeout).
    #[serde(default = "d_unknown_kid_wait", with = "humantime_serde")]
    pub unknown_kid_wait: Duration,
    /// Failed-authentication tracking (`/anomalies`, metrics, WARN lines) and the optional
    /// pre-authentication throttle.
    #[serde(default)]
    pub throttle: ThrottleConfig,
    /// Deny-lists of revoked tokens (`jti`) and subjects ("revoked before"), from a watched dir.
    #[serde(default)]
    pub revocation: RevocationConfig,
    /// OAuth Token Status List checks for tokens carrying `status.status_list`.
    #[serde(default)]
    pub status_list: StatusListConfig,
}

fn d_negative_ttl() -> Duration {
    Duration::from_secs(10)
}
fn d_negative_capacity() -> u64 {
    10_000
}
fn d_unknown_kid_wait() -> Duration {
    Duration::from_millis(100)
}

impl Default for AuthnConfig {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            jwks: JwksConfig::default(),
            token_cache: TokenCacheConfig::default(),
            peer: PeerConfig::default(),
            api_keys: ApiKeyConfig::default(),
            group_namespace: None,
            negative_cache_ttl: d_negative_ttl(),
            negative_cache_capacity: d_negative_capacity(),
            unknown_kid_wait: d_unknown_kid_wait(),
            throttle: ThrottleConfig::default(),
            revocation: RevocationConfig::default(),
            status_list: StatusListConfig::default(),
        }
    }
}

/// Token deny-lists: every non-hidden file of `dir` (a mounted ConfigMap works) is a YAML
/// document `{jti: [{id, forget_after, issuer?}], subjects: [{issuer, subject, revoked_before}]}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// Directory watched and reloaded; absent: no deny-list.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Most entries (`jti` plus `subjects`, after forgotten ones are dropped): a larger set is refused.
    #[serde(default = "d_revocation_max_entries")]
    pub max_entries: usize,
    /// Quiet period that folds a burst of changes to `dir` into one reload.
    #[serde(default = "d_api_key_debounce", with = "humantime_serde")]
    pub debounce: Duration,
}

fn d_revocation_max_entries() -> usize {
    100_000
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self { dir: None, max_entries: d_revocation_max_entries(), debounce: d_api_key_debounce() }
    }
}

/// What a token whose status list cannot be had (and has no usable stale copy) gets.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// 503 + Retry-After, reason `status_list_unavailable`.
    #[default]
    Deny,
    /// Accepted as if valid (logged and counted).
    Allow,
}

/// Status list fetching and caching (fetches follow the JWKS rules: scheme, redirects, caps).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatusListConfig {
    /// Outcome when the list cannot be fetched or verified and no stale copy may be used.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Freshness lifetime when the status list token has neither `ttl` nor `exp`.
    #[serde(default = "d_status_default_ttl", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Upper bound on a list's freshness lifetime (`ttl`/`exp` from the token are capped by it).
    #[serde(default = "d_status_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// How long past its freshness a list keeps answering while refreshes fail.
    #[serde(default = "d_status_max_stale", with = "humantime_serde")]
    pub max_stale: Duration,
    /// After a failed fetch, the same URI is not fetched again for this long.
    #[serde(default = "d_status_retry", with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Most status lists cached.
    #[serde(default = "d_status_max_lists")]
    pub max_lists: u64,
    /// Largest decompressed status list, in bytes.
    #[serde(default = "d_status_max_bytes")]
    pub max_list_bytes: usize,
}

fn d_status_default_ttl() -> Duration {
    Duration::from_secs(300)
}
fn d_status_max_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn d_status_max_stale() -> Duration {
    Duration::from_secs(600)
}
fn d_status_retry() -> Duration {
    Duration::from_secs(10)
}
fn d_status_max_lists() -> u64 {
    100
}
fn d_status_max_bytes() -> usize {
    1024 * 1024
}

impl Default for StatusListConfig {
    fn default() -> Self {
        Self {
            on_unavailable: OnUnavailable::Deny,
            default_ttl: d_status_default_ttl(),
            max_ttl: d_status_max_ttl(),
            max_stale: d_status_max_stale(),
            retry_interval: d_status_retry(),
            max_lists: d_status_max_lists(),
            max_list_bytes: d_status_max_bytes(),
        }
    }
}

/// What identifies a source for the throttle and the source tracker.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleKey {
    /// The mTLS peer principal (the source address when there is none).
    Peer,
    /// The connecting address Envoy reports (IPv6 by /64).
    #[default]
    SourceIp,
    /// `x-forwarded-for`, the `trusted_hops`-th address from the right (the connecting address
    /// when the header has fewer entries or that one is not an address).
    ForwardedFor,
}

/// `authn.throttle`: failed authentications are always tracked (bounded); throttling is opt-in,
/// because behind a gateway the wrong key would lock out every user behind it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Answer 429 + Retry-After, before any verification, to a source over `max_failures`.
    #[serde(default)]
    pub enabled: bool,
    /// `peer`, `source_ip` or `forwarded_for`.
    #[serde(default)]
    pub key: ThrottleKey,
    /// Proxies in front of Envoy that append to `x-forwarded-for` (only with `forwarded_for`).
    #[serde(default = "d_trusted_hops")]
    pub trusted_hops: u32,
    /// Counting window (fixed windows; a throttled source waits for the window's end).
    #[serde(default = "d_throttle_window", with = "humantime_serde")]
    pub window: Duration,
    /// Failed authentications per window at which a key is over the threshold (WARN, gauge,
    /// and, when enabled, 429 for sources).
    #[serde(default = "d_max_failures")]
    pub max_failures: u32,
    /// Entries per tracker (sources and claimed identities each): fixed memory.
    #[serde(default = "d_track")]
    pub track: usize,
}

fn d_trusted_hops() -> u32 {
    1
}
fn d_throttle_window() -> Duration {
    Duration::from_secs(60)
}
fn d_max_failures() -> u32 {
    20
}
fn d_track() -> usize {
    10_000
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            key: ThrottleKey::default(),
            trusted_hops: d_trusted_hops(),
            window: d_throttle_window(),
            max_failures: d_max_failures(),
            track: d_track(),
        }
    }
}

impl ThrottleConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=16).contains(&self.trusted_hops) {
            return Err(ConfigError::invalid("authn.throttle.trusted_hops", "must be between 1 and 16"));
        }
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::invalid("authn.throttle.window", "must be between 1s and 24h"));
        }
        if self.max_failures == 0 {
            return Err(ConfigError::invalid("authn.throttle.max_failures", "must be at least 1"));
        }
        if !(1..=1_000_000).contains(&self.track) {
            return Err(ConfigError::invalid("authn.throttle.track", "must be between 1 and 1000000"));
        }
        Ok(())
    }
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
    /// Most keys accepted in one JWKS: a larger set is refused whole (the last good one stays).
    #[serde(default = "d_max_keys")]
    pub max_keys: usize,
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
fn d_max_keys() -> usize {
    100
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
            max_keys: d_max_keys(),
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
    /// Known keys (inline, for local use; production keys belong in a Secret: `dir`).
    #[serde(default)]
    pub keys: Vec<ApiKeyEntry>,
    /// A mounted Secret volume: each file (data key) holds one entry document
    /// (`client`, `key` or `sha256`, optional `groups`, `expires`). Watched and reloaded.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Labelled Secrets read through the Kubernetes API: each data key of each selected Secret
    /// holds one entry document (as in `dir`). Needs `get/list/watch` on Secrets.
    #[serde(default)]
    pub kubernetes: Option<ApiKeyKubernetes>,
    /// Quiet period that folds a burst of changes to `dir` or the Secrets into one reload.
    #[serde(default = "d_api_key_debounce", with = "humantime_serde")]
    pub debounce: Duration,
}

/// API key Secrets watched through the Kubernetes API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyKubernetes {
    /// Namespaces to watch; empty means the pod's own namespace (`POD_NAMESPACE`).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Label selector for API key Secrets (Kubernetes syntax).
    #[serde(default = "d_api_key_selector")]
    pub selector: String,
    /// A kubeconfig file to use instead of in-cluster / default discovery.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Post a Warning Event (`ApiKeyRejected`) on a Secret whose update was refused (needs
    /// `create` on `events.k8s.io/events`).
    #[serde(default = "yes")]
    pub events: bool,
}

fn d_api_key_selector() -> String {
    "portcullis.dev/api-key=true".into()
}

fn d_api_key_debounce() -> Duration {
    Duration::from_millis(250)
}

fn d_api_key_header() -> String {
    "x-api-key".into()
}

impl Default for ApiKeyConfig {
    fn default() -> Self {
        Self {
            header: d_api_key_header(),
            keys: Vec::new(),
            dir: None,
            kubernetes: None,
            debounce: d_api_key_debounce(),
        }
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

impl AuthnConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, iss) in self.issuers.iter().enumerate() {
            // Empty first, then duplicates, then the issuer's own checks: the order of old.
            if !iss.issuer.is_empty() && !seen.insert(iss.issuer.as_str()) {
                return Err(ConfigError::invalid(format!("authn.issuers[{i}].issuer"), "duplicate issuer"));
            }
            iss.validate(i, self.group_namespace)?;
        }
        let mapping_groups = self.issuers.iter().filter(|i| !i.group_claims.is_empty()).count();
        if mapping_groups > 1 && self.group_namespace.is_none() {
            return Err(ConfigError::invalid(
                "authn.group_namespace",
                "more than one issuer maps `group_claims`: choose `shared` (any issuer may grant any group) \
                 or `per_issuer` (groups become `<issuer>#<group>`)",
            ));
        }
        let peer = &self.peer;
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
        for (i, k) in self.api_keys.keys.iter().enumerate() {
            let ok = k.sha256.len() == 64 && k.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(ConfigError::invalid(
                    format!("authn.api_keys.keys[{i}].sha256"),
                    "must be 64 hex characters (the SHA-256 of the key, never the key itself)",
                ));
            }
        }
        if let Some(k) = &self.api_keys.kubernetes {
            if self.api_keys.dir.is_some() {
                // Both would replace the same key set; one source of Secrets is enough.
                return Err(ConfigError::invalid(
                    "authn.api_keys.kubernetes",
                    "set only one of `dir` (a mounted Secret) or `kubernetes` (Secrets through the API)",
                ));
            }
            if k.selector.trim().is_empty() {
                // An empty selector would read every Secret in the namespace as an API key.
                return Err(ConfigError::invalid("authn.api_keys.kubernetes.selector", "must not be empty"));
            }
            if let Some(i) = k.namespaces.iter().position(|n| n.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    format!("authn.api_keys.kubernetes.namespaces[{i}]"),
                    "must not be empty",
                ));
            }
        }
        if self.jwks.max_keys == 0 {
            return Err(ConfigError::invalid("authn.jwks.max_keys", "must be at least 1"));
        }
        if self.unknown_kid_wait > self.jwks.fetch_timeout {
            return Err(ConfigError::invalid(
                "authn.unknown_kid_wait",
                "must not exceed `authn.jwks.fetch_timeout` (it bounds a wait for that fetch)",
            ));
        }
        if self.jwks.min_ttl > self.jwks.max_ttl {
            return Err(ConfigError::invalid("authn.jwks.min_ttl", "must not exceed `max_ttl`"));
        }
        if self.revocation.max_entries == 0 {
            return Err(ConfigError::invalid("authn.revocation.max_entries", "must be at least 1"));
        }
        let sl = &self.status_list;
        if sl.max_lists == 0 {
            return Err(ConfigError::invalid("authn.status_list.max_lists", "must be at least 1"));
        }
        if sl.max_list_bytes == 0 {
            return Err(ConfigError::invalid("authn.status_list.max_list_bytes", "must be at least 1"));
        }
        if sl.default_ttl > sl.max_ttl {
            return Err(ConfigError::invalid("authn.status_list.default_ttl", "must not exceed `max_ttl`"));
        }
        self.throttle.validate()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn authn(yaml: &str) -> Result<Config, String> {
        let cfg = Config::from_yaml(&format!("policy: {{dir: /p}}\nauthn:\n{yaml}")).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn negative_cache_and_unknown_kid_wait_defaults_and_bounds() {
        let cfg = authn("  issuers: []\n").expect("defaults are valid");
        assert_eq!(cfg.authn.negative_cache_ttl, std::time::Duration::from_secs(10));
        assert_eq!(cfg.authn.negative_cache_capacity, 10_000);
        assert_eq!(cfg.authn.unknown_kid_wait, std::time::Duration::from_millis(100));
        assert_eq!(cfg.authn.jwks.max_keys, 100);
        let err = authn("  unknown_kid_wait: 5s\n  jwks: {fetch_timeout: 1s}\n").unwrap_err();
        assert!(err.contains("authn.unknown_kid_wait"), "{err}");
        let err = authn("  jwks: {max_keys: 0}\n").unwrap_err();
        assert!(err.contains("authn.jwks.max_keys"), "{err}");
        assert!(authn("  negative_cache_ttl: 0s\n").is_ok(), "0 disables");
    }

    #[test]
    fn throttle_is_off_by_default_and_its_bounds_name_the_field() {
        let cfg = authn("  issuers: []\n").expect("defaults are valid");
        let t = &cfg.authn.throttle;
        assert!(!t.enabled);
        assert_eq!(t.key, super::ThrottleKey::SourceIp);
        assert_eq!((t.trusted_hops, t.max_failures, t.track), (1, 20, 10_000));
        assert_eq!(t.window, std::time::Duration::from_secs(60));
        let cfg = authn("  throttle: {enabled: true, key: forwarded_for, trusted_hops: 2}\n").expect("valid");
        assert_eq!(cfg.authn.throttle.key, super::ThrottleKey::ForwardedFor);
        for (yaml, field) in [
            ("  throttle: {trusted_hops: 0}\n", "authn.throttle.trusted_hops"),
            ("  throttle: {window: 0s}\n", "authn.throttle.window"),
            ("  throttle: {max_failures: 0}\n", "authn.throttle.max_failures"),
            ("  throttle: {track: 0}\n", "authn.throttle.track"),
        ] {
            let err = authn(yaml).unwrap_err();
            assert!(err.contains(field), "{yaml}: {err}");
        }
        assert!(authn("  throttle: {key: claimed_subject}\n").is_err(), "never an unverified claim");
    }

    #[test]
    fn revocation_and_status_list_defaults_and_bounds() {
        let cfg = authn("  issuers: []\n").expect("defaults are valid");
        assert_eq!(cfg.authn.revocation.dir, None);
        assert_eq!(cfg.authn.revocation.max_entries, 100_000);
        assert_eq!(cfg.authn.status_list.on_unavailable, crate::config::OnUnavailable::Deny);
        let err = authn("  revocation: {max_entries: 0}\n").unwrap_err();
        assert!(err.contains("authn.revocation.max_entries"), "{err}");
        let err = authn("  status_list: {default_ttl: 2h, max_ttl: 1h}\n").unwrap_err();
        assert!(err.contains("authn.status_list.default_ttl"), "{err}");
        assert!(authn("  status_list: {on_unavailable: sometimes}\n").is_err());
        let iss = |uris: &str| authn(&format!("  issuers: [{{issuer: https://i, status_list_uris: [{uris}]}}]\n"));
        assert!(iss("'https://i/statuslists/'").is_ok());
        for (bad, why) in [
            ("'https://i/statuslists'", "must end with"),
            ("'http://i/statuslists/'", "must be https"),
            ("'https://i/s/?x=1'", "no query"),
            ("'https://u:p@i/s/'", "credentials"),
            ("'ftp://i/s/'", "must be https"),
            ("'/s/'", "status_list_uris[0]"),
        ] {
            let err = iss(bad).unwrap_err();
            assert!(err.contains("authn.issuers[0].status_list_uris[0]") && err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn api_key_secrets_through_the_api_default_and_are_checked() {
        let cfg = authn("  api_keys: {kubernetes: {}}\n").expect("defaults are valid");
        let k = cfg.authn.api_keys.kubernetes.expect("set");
        assert_eq!(k.selector, "portcullis.dev/api-key=true");
        assert!(k.events && k.namespaces.is_empty() && k.kubeconfig.is_none());
        for (yaml, field) in [
            ("  api_keys: {dir: /k, kubernetes: {}}\n", "authn.api_keys.kubernetes"),
            ("  api_keys: {kubernetes: {selector: ' '}}\n", "authn.api_keys.kubernetes.selector"),
            ("  api_keys: {kubernetes: {namespaces: [a, '']}}\n", "authn.api_keys.kubernetes.namespaces[1]"),
        ] {
            let err = authn(yaml).unwrap_err();
            assert!(err.contains(field), "{yaml}: {err}");
        }
        assert!(authn("  api_keys: {kubernetes: {selectr: a}}\n").is_err(), "unknown fields refused");
    }
}
