//! OAuth Token Status List (draft-ietf-oauth-status-list): a token carrying
//! `status.status_list {idx, uri}` is checked against the status list token at `uri`.
//!
//! - `uri` comes from a (verified) token, so it is fetched only when it lies under one of its
//!   issuer's `status_list_uris` prefixes (same origin, path under the prefix); any other is a
//!   401. The fetch is the JWKS fetch (scheme, same-origin redirects, size and time caps).
//! - The status list token must be a `statuslist+jwt` signed with the issuer's own keys and
//!   algorithms, its `sub` equal to `uri`; its list is inflated with an output cap.
//! - Lists are cached for the token's `ttl` (or until `exp`, or `default_ttl`), capped by
//!   `max_ttl`; one fetch per URI at a time; after a failure the URI is not fetched again for
//!   `retry_interval`, and the last good list answers for up to `max_stale` (never past its
//!   `exp`); then `on_unavailable` decides (default: 503).
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Validation;
use moka::Expiry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;
use serde_json::Value;

use super::JwtError;
use super::members::Members;
use super::revocation::unix_now;
use super::verify::Issuer;
use crate::authn::AuthnError;
use crate::config::{IssuerConfig, OnUnavailable, StatusListConfig};

/// A token's reference into a status list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StatusRef {
    pub(super) idx: u64,
    pub(super) uri: String,
}

/// `status.status_list` of verified claims: `None` without one; a present but malformed
/// reference is a malformed token (never ignored).
pub(super) fn status_ref(claims: &Members) -> Result<Option<StatusRef>, JwtError> {
    // A non-object `status` is some other (pre-draft) claim of the issuer's, not a reference;
    // other status mechanisms may be listed beside `status_list`: we implement only this one.
    let Some(sl) = claims.get("status").and_then(Value::as_object).and_then(|s| s.get("status_list")) else {
        return Ok(None);
    };
    let idx = sl.get("idx").and_then(Value::as_u64).ok_or(JwtError::Malformed)?;
    let uri = sl.get("uri").and_then(Value::as_str).ok_or(JwtError::Malformed)?;
    Ok(Some(StatusRef { idx, uri: uri.to_owned() }))
}

/// One fetched and verified list.
struct List {
    bits: u8,
    bytes: Vec<u8>,
    fresh_for: Duration,
    serve_for: Duration,
}

impl List {
    /// The status at `idx` (bits are packed least significant first); `None` past the end.
    fn status(&self, idx: u64) -> Option<u8> {
        let bit = idx.checked_mul(u64::from(self.bits))?;
        let byte = *self.bytes.get(usize::try_from(bit / 8).ok()?)?;
        let mask = if self.bits == 8 { 0xff } else { (1u8 << self.bits) - 1 };
        Some((byte >> (bit % 8)) & mask)
    }
}

struct FreshFor;
impl Expiry<String, Arc<List>> for FreshFor {
    fn expire_after_create(&self, _: &String, v: &Arc<List>, _: Instant) -> Option<Duration> {
        Some(v.fresh_for)
    }
}

struct ServeFor;
impl Expiry<String, Arc<List>> for ServeFor {
    fn expire_after_create(&self, _: &String, v: &Arc<List>, _: Instant) -> Option<Duration> {
        Some(v.serve_for)
    }
    fn expire_after_update(&self, _: &String, v: &Arc<List>, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(v.serve_for)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Status lists of every issuer.
pub(super) struct StatusLists {
    settings: StatusListConfig,
    /// Per issuer (same order as the authenticator's), the allowed URI prefixes.
    prefixes: Vec<Vec<reqwest::Url>>,
    fresh: moka::future::Cache<String, Arc<List>>,
    stale: moka::future::Cache<String, Arc<List>>,
    failed: moka::future::Cache<String, ()>,
    fetches: Family<ResultLabel, Counter>,
    checks: Family<ResultLabel, Counter>,
}

impl StatusLists {
    pub(super) fn new(settings: &StatusListConfig, issuers: &[IssuerConfig], registry: &mut Registry) -> Self {
        let fetches = Family::<ResultLabel, Counter>::default();
        registry.register("status_list_fetches", "Status list token fetches by result (ok, error)", fetches.clone());
        let checks = Family::<ResultLabel, Counter>::default();
        registry.register(
            "status_list_checks",
            "Token status checks by result (valid, revoked, uri_not_allowed, unavailable_denied, unavailable_allowed)",
            checks.clone(),
        );
        let cap = settings.max_lists;
        Self {
            settings: settings.clone(),
            // Validated in config; an unparsable prefix simply matches nothing.
            prefixes: issuers
                .iter()
                .map(|i| i.status_list_uris.iter().filter_map(|p| reqwest::Url::parse(p).ok()).collect())
                .collect(),
            fresh: moka::future::Cache::builder().max_capacity(cap).expire_after(FreshFor).build(),
            stale: moka::future::Cache::builder().max_capacity(cap).expire_after(ServeFor).build(),
            failed: moka::future::Cache::builder().max_capacity(cap).time_to_live(settings.retry_interval).build(),
            fetches,
            checks,
        }
    }

    fn count(&self, result: &'static str) {
        self.checks.get_or_create(&ResultLabel { result }).inc();
    }

    /// Whether `uri` lies under one of issuer `idx`'s prefixes (compared parsed, so `..` and
    /// percent-encoding cannot climb out of the prefix).
    fn allowed(&self, idx: usize, uri: &str) -> Option<reqwest::Url> {
        let url = reqwest::Url::parse(uri).ok()?;
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return None;
        }
        let ok = self.prefixes.get(idx)?.iter().any(|p| p.origin() == url.origin() && url.path().starts_with(p.path()));
        ok.then_some(url)
    }

    /// Refuses a token whose status is anything but 0 (valid).
    pub(super) async fn check(&self, idx: usize, issuer: &Issuer, r: &StatusRef) -> Result<(), AuthnError> {
        let Some(url) = self.allowed(idx, &r.uri) else {
            self.count("uri_not_allowed");
            return Err(JwtError::StatusUriNotAllowed.into());
        };
        let list = match self.fresh.get(&r.uri).await {
            Some(l) => Some(l),
            None if self.failed.contains_key(&r.uri) => self.stale.get(&r.uri).await,
            None => {
                let fetched = self
                    .fresh
                    .try_get_with(r.uri.clone(), async {
                        let res = fetch(issuer, &url, &r.uri, &self.settings).await;
                        let result = if res.is_ok() { "ok" } else { "error" };
                        self.fetches.get_or_create(&ResultLabel { result }).inc();
                        let list = Arc::new(res?);
                        self.stale.insert(r.uri.clone(), list.clone()).await;
                        Ok::<_, String>(list)
                    })
                    .await;
                match fetched {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(issuer = %issuer.name, uri = %r.uri, error = %e, "status list unavailable");
                        self.failed.insert(r.uri.clone(), ()).await;
                        self.stale.get(&r.uri).await
                    }
                }
            }
        };
        let Some(list) = list else {
            return match self.settings.on_unavailable {
                OnUnavailable::Deny => {
                    self.count("unavailable_denied");
                    Err(AuthnError::StatusListUnavailable)
                }
                OnUnavailable::Allow => {
                    self.count("unavailable_allowed");
                    Ok(())
                }
            };
        };
        // An index past the end of the list cannot be shown valid: refused.
        if list.status(r.idx) == Some(0) {
            self.count("valid");
            Ok(())
        } else {
            self.count("revoked");
            Err(JwtError::Revoked.into())
        }
    }
}

#[derive(serde::Deserialize)]
struct StatusClaims {
    status_list: RawList,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    ttl: Option<u64>,
}

#[derive(serde::Deserialize)]
struct RawList {
    bits: u8,
    lst: String,
}

/// Fetches, verifies and inflates one status list token.
async fn fetch(issuer: &Issuer, url: &reqwest::Url, uri: &str, s: &StatusListConfig) -> Result<List, String> {
    let (body, _) = issuer.keys.get_bounded(url.as_str()).await.map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(&body).map_err(|_| "response is not text".to_owned())?.trim();
    let header = jsonwebtoken::decode_header(text).map_err(|e| format!("not a JWT: {e}"))?;
    if header.typ.as_deref() != Some("statuslist+jwt") {
        return Err("`typ` is not `statuslist+jwt`".into());
    }
    if header.jwk.is_some() || header.jku.is_some() || header.x5u.is_some() || header.x5c.is_some() {
        return Err("token carries its own key or key URL".into());
    }
    if header.crit.is_some() {
        return Err("unsupported critical header".into());
    }
    let base = issuer.validation(header.alg).ok_or("algorithm not allowed for this issuer")?;
    let key = issuer.keys.key_for(header.kid.as_deref()).await.map_err(|e| format!("signing key: {e:?}"))?;
    if key.family != header.alg.family() || key.alg.is_some_and(|a| a != header.alg) {
        return Err("key does not match the algorithm".into());
    }
    let mut v: Validation = base.clone();
    // The status list token is the issuer's, but it has no audience and may omit `iss`.
    v.iss = None;
    v.aud = None;
    v.validate_aud = false;
    v.sub = Some(uri.to_owned());
    v.set_required_spec_claims(&["sub"]);
    let claims = jsonwebtoken::decode::<StatusClaims>(text, &key.key, &v).map_err(|e| format!("invalid: {e}"))?.claims;
    let bits = claims.status_list.bits;
    if ![1, 2, 4, 8].contains(&bits) {
        return Err(format!("`bits` is {bits}, not 1, 2, 4 or 8"));
    }
    let compressed =
        URL_SAFE_NO_PAD.decode(claims.status_list.lst.trim_end_matches('=')).map_err(|_| "`lst` is not base64url")?;
    let bytes = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&compressed, s.max_list_bytes)
        .map_err(|_| format!("`lst` is not zlib data of at most {} bytes", s.max_list_bytes))?;
    let now = unix_now();
    let until_exp = claims.exp.map(|e| Duration::from_secs(e.saturating_sub(now)));
    let mut fresh_for = claims.ttl.map(Duration::from_secs).or(until_exp).unwrap_or(s.default_ttl).min(s.max_ttl);
    let mut serve_for = fresh_for.saturating_add(s.max_stale);
    if let Some(left) = until_exp {
        fresh_for = fresh_for.min(left);
        serve_for = serve_for.min(left);
    }
    Ok(List { bits, bytes, fresh_for, serve_for })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_read_least_significant_bits_first() {
        // The draft's 1-bit example: statuses 1,0,0,1,1,1,0,1 | 1,1,1,0,0,1,0,1 → b9 a3.
        let l = List { bits: 1, bytes: vec![0xb9, 0xa3], fresh_for: Duration::ZERO, serve_for: Duration::ZERO };
        let got: Vec<u8> = (0..16).map(|i| l.status(i).unwrap()).collect();
        assert_eq!(got, [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]);
        assert_eq!(l.status(16), None, "past the end");
        assert_eq!(l.status(u64::MAX), None, "no overflow");
        // 2 bits: the draft's example byte 0xc9 = statuses 1, 2, 0, 3.
        let l = List { bits: 2, bytes: vec![0xc9], fresh_for: Duration::ZERO, serve_for: Duration::ZERO };
        assert_eq!((0..4).map(|i| l.status(i).unwrap()).collect::<Vec<_>>(), [1, 2, 0, 3]);
        let l = List { bits: 8, bytes: vec![0, 7], fresh_for: Duration::ZERO, serve_for: Duration::ZERO };
        assert_eq!((l.status(0), l.status(1)), (Some(0), Some(7)));
    }

    #[test]
    fn a_status_reference_is_read_or_refused_as_malformed() {
        let c = |j: &str| Members::from(serde_json::from_str::<serde_json::Map<String, Value>>(j).unwrap());
        assert_eq!(status_ref(&c(r#"{"sub":"a"}"#)), Ok(None));
        assert_eq!(status_ref(&c(r#"{"status":{"other":{}}}"#)), Ok(None));
        assert_eq!(status_ref(&c(r#"{"status":"active"}"#)), Ok(None), "an unrelated claim of that name");
        assert_eq!(
            status_ref(&c(r#"{"status":{"status_list":{"idx":3,"uri":"https://i/s/1"}}}"#)),
            Ok(Some(StatusRef { idx: 3, uri: "https://i/s/1".into() }))
        );
        for bad in [
            r#"{"status":{"status_list":"https://i/s/1"}}"#,
            r#"{"status":{"status_list":{"idx":-1,"uri":"https://i/s/1"}}}"#,
            r#"{"status":{"status_list":{"idx":"3","uri":"https://i/s/1"}}}"#,
            r#"{"status":{"status_list":{"idx":3}}}"#,
        ] {
            assert_eq!(status_ref(&c(bad)), Err(JwtError::Malformed), "{bad}");
        }
    }

    #[test]
    fn only_uris_under_the_issuers_prefixes_are_allowed() {
        let mut ic: IssuerConfig = serde_json::from_value(serde_json::json!({
            "issuer": "https://idp",
            "status_list_uris": ["https://idp/statuslists/"],
        }))
        .unwrap();
        ic.status_list_uris.push("https://other:8443/s/".into());
        let s = StatusLists::new(&StatusListConfig::default(), &[ic], &mut Registry::default());
        assert!(s.allowed(0, "https://idp/statuslists/1").is_some());
        assert!(s.allowed(0, "https://other:8443/s/x?y=1").is_some());
        for bad in [
            "https://idp/statuslists",
            "https://idp/statuslists/../admin",
            "https://idp/statuslists/%2e%2e/admin",
            "http://idp/statuslists/1",
            "https://idp.evil/statuslists/1",
            "https://idp:444/statuslists/1",
            "https://u:p@idp/statuslists/1",
            "https://idp/statuslists/1#f",
            "https://other/s/x",
            "not a url",
        ] {
            assert!(s.allowed(0, bad).is_none(), "{bad}");
        }
        assert!(s.allowed(1, "https://idp/statuslists/1").is_none(), "another issuer's prefixes");
    }
}
