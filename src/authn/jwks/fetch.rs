//! Fetching keys: the HTTP client (timeouts, extra CA roots, same-origin redirects), OIDC
//! discovery, bounded JWKS downloads and files, and JWKS parsing.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use sha2::{Digest, Sha256};

use super::{IssuerKeys, JwksError, KeySet, KeySource, VerifyKey};
use crate::config::AuthnConfig;

/// The HTTP client for discovery and JWKS fetches; `ca_file` adds trusted roots for one issuer.
pub(crate) fn http_client(cfg: &AuthnConfig, ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(cfg.jwks.fetch_timeout)
        .timeout(cfg.jwks.fetch_timeout)
        .redirect(same_origin_redirects());
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

impl IssuerKeys {
    pub(super) async fn fetch_inner(&self) -> Result<KeySet, JwksError> {
        let ignore_kid = matches!(self.source, KeySource::Hmac(_));
        let (keys, ttl) = match &self.source {
            KeySource::Hmac(secret) => {
                let key = VerifyKey::new(
                    None,
                    DecodingKey::from_secret(secret),
                    AlgorithmFamily::Hmac,
                    None,
                    digest16(secret),
                );
                (vec![Arc::new(key)], self.settings.max_ttl)
            }
            KeySource::File(path) => {
                let body = read_bounded(path, self.settings.max_response_bytes).await?;
                (parse_jwks(&body, &path.display().to_string(), self.settings.max_keys)?, self.settings.default_ttl)
            }
            KeySource::Uri(uri) => self.fetch_jwks(uri).await?,
            KeySource::Discovery { issuer } => {
                let known = self.discovered_uri.lock().ok().and_then(|g| g.clone());
                let uri = match known {
                    Some(u) => u,
                    None => {
                        let u = self.discover(issuer).await?;
                        if let Ok(mut g) = self.discovered_uri.lock() {
                            *g = Some(u.clone());
                        }
                        u
                    }
                };
                self.fetch_jwks(&uri).await?
            }
        };
        let now = Instant::now();
        let fresh_until = now + ttl;
        Ok(KeySet {
            keys,
            ignore_kid,
            generation: self.generation.fetch_add(1, Ordering::AcqRel) + 1,
            fetched_at: now,
            fresh_until,
            serve_until: fresh_until + self.settings.max_stale,
        })
    }

    async fn discover(&self, issuer: &str) -> Result<String, JwksError> {
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let (body, _) = self.get_bounded(&url).await?;
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let d: Discovery = serde_json::from_slice(&body).map_err(|e| JwksError::Parse {
            origin: url.clone(),
            what: "discovery document",
            message: e.to_string(),
        })?;
        // OIDC Discovery §4.3: the document must name exactly the issuer we asked about.
        if d.issuer != issuer {
            return Err(JwksError::IssuerMismatch { expected: issuer.to_owned(), found: d.issuer });
        }
        Ok(d.jwks_uri)
    }

    async fn fetch_jwks(&self, uri: &str) -> Result<(Vec<Arc<VerifyKey>>, Duration), JwksError> {
        let (body, max_age) = self.get_bounded(uri).await?;
        let keys = parse_jwks(&body, uri, self.settings.max_keys)?;
        let s = &self.settings;
        let ttl = max_age.unwrap_or(s.default_ttl).clamp(s.min_ttl, s.max_ttl);
        Ok((keys, ttl))
    }

    /// One GET to the key server (also used for status lists: the same rules), in its own span when traces are on (a root span: a fetch is
    /// not caused by one check). Only the URL's scheme and host are recorded, never its path.
    pub(crate) async fn get_bounded(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), JwksError> {
        use opentelemetry::trace::{Span as _, Tracer as _};
        let tracer = opentelemetry::global::tracer("portcullis");
        let mut span = tracer
            .span_builder("portcullis.jwks.fetch")
            .with_kind(opentelemetry::trace::SpanKind::Client)
            .with_attributes([
                opentelemetry::KeyValue::new("http.request.method", "GET"),
                opentelemetry::KeyValue::new("server.address", host_of(url).to_owned()),
            ])
            .start(&tracer);
        let res = self.get_bounded_untraced(url).await;
        if let Err(e) = &res {
            span.set_status(opentelemetry::trace::Status::error(e.to_string()));
        }
        span.end();
        res
    }

    async fn get_bounded_untraced(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), JwksError> {
        // Checked here, not only in config: a discovered `jwks_uri` comes from the network.
        let parsed =
            reqwest::Url::parse(url).map_err(|e| JwksError::Fetch { url: url.to_owned(), message: e.to_string() })?;
        if !crate::config::fetchable_url(&parsed, self.allow_insecure_http) {
            return Err(JwksError::InsecureUrl { url: url.to_owned() });
        }
        let limit = self.settings.max_response_bytes;
        let fetch_err = |e: reqwest::Error| {
            if e.is_timeout() {
                JwksError::Timeout { url: url.to_owned() }
            } else if e.is_redirect() {
                JwksError::Redirect { url: url.to_owned(), message: error_chain(&e) }
            } else {
                JwksError::Fetch { url: url.to_owned(), message: e.to_string() }
            }
        };
        let fut = async {
            let mut resp = self.client.get(parsed).send().await.map_err(fetch_err)?;
            if !resp.status().is_success() {
                return Err(JwksError::Status { url: url.to_owned(), status: resp.status().as_u16() });
            }
            if resp.content_length().is_some_and(|n| n as usize > limit) {
                return Err(JwksError::TooLarge { url: url.to_owned(), limit });
            }
            let max_age = resp
                .headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_max_age);
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(fetch_err)? {
                if body.len() + chunk.len() > limit {
                    return Err(JwksError::TooLarge { url: url.to_owned(), limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok((body, max_age))
        };
        // The timeout covers the whole exchange, body included, so a trickling server cannot stall us.
        tokio::time::timeout(self.settings.fetch_timeout, fut)
            .await
            .unwrap_or_else(|_| Err(JwksError::Timeout { url: url.to_owned() }))
    }
}

/// The redirect policy for discovery and JWKS fetches: same origin as the first URL only, at most
/// `MAX_REDIRECTS` hops. Anything else is an error, so the fetch fails closed.
/// The host (and port) of a URL, for a span attribute; empty if there is none.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.error("redirect without an initial URL");
        };
        if attempt.url().origin() != first.origin() {
            let msg = format!("cross-origin redirect to {}", attempt.url().origin().ascii_serialization());
            return attempt.error(msg);
        }
        // `previous` holds the initial URL plus every hop already followed.
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        attempt.follow()
    })
}

/// Most same-origin redirects followed in one discovery or JWKS fetch.
pub const MAX_REDIRECTS: usize = 3;

/// An error with its sources, so "cross-origin redirect" is visible in the log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn read_bounded(path: &PathBuf, limit: usize) -> Result<Vec<u8>, JwksError> {
    let read_err = |e: std::io::Error| JwksError::Read { path: path.clone(), message: e.to_string() };
    let meta = tokio::fs::metadata(path).await.map_err(read_err)?;
    if meta.len() as usize > limit {
        return Err(JwksError::TooLarge { url: path.display().to_string(), limit });
    }
    tokio::fs::read(path).await.map_err(read_err)
}

/// `max-age` from a `Cache-Control` value; `no-store`/`no-cache` mean "as short as allowed".
pub fn parse_max_age(v: &str) -> Option<Duration> {
    let mut out = None;
    for d in v.split(',') {
        let d = d.trim().to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = d.strip_prefix("max-age=") {
            out = n.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    out
}

/// Parses a JWKS, keeping only asymmetric signature keys; a bad key is skipped, not fatal. A set
/// of more than `max_keys` entries is refused whole before any key is built (each costs work,
/// and memory for as long as the set is served).
pub fn parse_jwks(body: &[u8], origin: &str, max_keys: usize) -> Result<Vec<Arc<VerifyKey>>, JwksError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| JwksError::Parse {
        origin: origin.to_owned(),
        what: "JWKS",
        message: e.to_string(),
    })?;
    if raw.keys.len() > max_keys {
        return Err(JwksError::TooManyKeys { origin: origin.to_owned(), count: raw.keys.len(), limit: max_keys });
    }
    let mut keys = Vec::with_capacity(raw.keys.len());
    for v in raw.keys {
        let fp = digest16(v.to_string().as_bytes());
        let jwk: Jwk = match serde_json::from_value(v) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(origin, error = %e, "skipping unparseable JWK");
                continue;
            }
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            // Symmetric keys never come from a JWKS: that is how HMAC-with-a-public-key attacks work.
            _ => continue,
        };
        let alg = match jwk.common.key_algorithm.map(Algorithm::try_from) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            tracing::warn!(origin, kid = ?jwk.common.key_id, "skipping JWK with unusable key material");
            continue;
        };
        keys.push(Arc::new(VerifyKey::new(jwk.common.key_id.clone(), key, family, alg, fp)));
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys { origin: origin.to_owned() });
    }
    Ok(keys)
}

fn digest16(b: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(b);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read() {
        assert_eq!(parse_max_age("public, max-age=300"), Some(Duration::from_secs(300)));
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
    }

    #[test]
    fn symmetric_and_encryption_keys_are_dropped() {
        let body = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"e","use":"enc"}]}"#;
        assert!(matches!(parse_jwks(body, "t", 10), Err(JwksError::NoUsableKeys { .. })));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_jwks(b"<html>", "t", 10).is_err());
    }

    #[test]
    fn more_keys_than_allowed_is_refused_whole() {
        let key = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"e"}"#;
        let body = format!(r#"{{"keys":[{}]}}"#, [key; 3].join(","));
        assert_eq!(parse_jwks(body.as_bytes(), "t", 3).map(|k| k.len()).ok(), Some(3));
        let err = parse_jwks(body.as_bytes(), "t", 2).unwrap_err();
        assert!(matches!(err, JwksError::TooManyKeys { count: 3, limit: 2, .. }), "{err}");
        assert_eq!(err.label(), "too_many_keys");
    }
}
