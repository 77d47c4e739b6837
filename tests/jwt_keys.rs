//! The JWKS and verified-token caches against a real identity provider on 127.0.0.1 whose keys,
//! failures and latency change while the authenticator runs: rotation, outage with stale keys and
//! then fail-closed, single-flight refresh, timeouts, size bounds, cache bounds and metrics.
//! Durations are tiny in config; waits are polling loops with an overall limit.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::eventually;
use common::idp::{self, Idp, Mode, TestKey, authn, bearer, claims, config, sign_raw};
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::authn::{Authenticator, AuthnError};
use prometheus_client::registry::Registry;
use serde_json::json;

const AUD: &str = "orders-api";
const WAIT: Duration = Duration::from_secs(20);

fn authenticator(idp: &Idp, issuer_extra: &str, jwks_yaml: &str) -> (Arc<Authenticator>, Registry) {
    let cfg = config(&format!(
        "  issuers:
    - issuer: {iss}
      allow_insecure_http: true
      audiences: [{AUD}]
      algorithms: [RS256, ES256, EdDSA]
{issuer_extra}  jwks:
{jwks_yaml}",
        iss = idp.issuer
    ));
    let mut registry = Registry::default();
    let a = Authenticator::new(&cfg, &mut registry).expect("authenticator");
    (Arc::new(a), registry)
}

/// A distinct token each call, so the verified-token cache never answers for it.
fn fresh(key: &TestKey, idp: &Idp) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let sub = format!("user-{}", N.fetch_add(1, Ordering::Relaxed));
    key.token(&claims(&idp.issuer, AUD, &sub))
}

async fn check(a: &Authenticator, token: &str) -> Result<String, AuthnError> {
    authn(a, &bearer(token)).await.map(|ids| ids.jwt.expect("jwt identity").subject.clone())
}

#[tokio::test]
async fn rotated_in_kid_is_picked_up_and_removed_kid_is_refused_even_when_cached() {
    let (rsa1, rsa2) = (TestKey::rsa1(), TestKey::rsa2());
    let idp = Idp::start(vec![rsa1.jwk.clone()]).await;
    // Long lifetime: only the unknown kid can cause the refresh.
    let (a, registry) = authenticator(
        &idp,
        "",
        "    default_ttl: 1h\n    min_ttl: 1h\n    max_stale: 1h\n    unknown_kid_refresh_interval: 100ms\n",
    );
    let old = rsa1.token(&claims(&idp.issuer, AUD, "alice"));
    assert_eq!(check(&a, &old).await.unwrap(), "alice");
    assert_eq!(check(&a, &old).await.unwrap(), "alice");
    assert_eq!(a.jwt().cached_tokens().await, 1, "the old token is in the verified-token cache");
    check(&a, &fresh(&rsa1, &idp)).await.unwrap();

    idp.set_keys(vec![rsa2.jwk.clone()]);
    let new = rsa2.token(&claims(&idp.issuer, AUD, "bob"));
    // Refused only until the rate limit allows the refresh that finds the new kid.
    eventually(WAIT, "new kid accepted", async || match check(&a, &new).await {
        Ok(s) => s == "bob",
        Err(e) => {
            assert_eq!(e.label(), "unknown_kid");
            false
        }
    })
    .await;
    assert_eq!(check(&a, &old).await.unwrap_err().label(), "unknown_kid", "cached token of a removed key");
    assert_eq!(check(&a, &fresh(&rsa1, &idp)).await.unwrap_err().label(), "unknown_kid");
    assert_eq!(idp.discovery_fetches(), 1);

    let text = portcullis::metrics::encode(&registry);
    assert!(text.contains(r#"token_cache_lookups_total{result="hit"} 1"#), "{text}");
    let hit = format!(r#"jwks_key_lookups_total{{issuer="{}",result="hit"}}"#, idp.issuer);
    let miss = format!(r#"jwks_key_lookups_total{{issuer="{}",result="miss"}}"#, idp.issuer);
    assert!(text.contains(&hit) && text.contains(&miss), "{text}");
    assert!(text.contains(&format!(r#"jwks_keys{{issuer="{}"}} 1"#, idp.issuer)), "{text}");
}

#[tokio::test]
async fn token_cache_hits_alone_keep_keys_fresh_and_notice_a_removed_key() {
    let (rsa1, rsa2) = (TestKey::rsa1(), TestKey::rsa2());
    let idp = Idp::start(vec![rsa1.jwk.clone(), rsa2.jwk.clone()]).await;
    // The provider asks for an hour; max_ttl bounds it to 1 s. Stale keys would serve for an
    // hour, so only the background refresh can make the old token fail within the wait.
    idp.set_cache_control(Some("public, max-age=3600"));
    let (a, _) = authenticator(
        &idp,
        "",
        "    min_ttl: 1s\n    default_ttl: 1s\n    max_ttl: 1s\n    max_stale: 1h\n    unknown_kid_refresh_interval: 100ms\n",
    );
    let token = rsa1.token(&claims(&idp.issuer, AUD, "alice"));
    check(&a, &token).await.unwrap();
    idp.set_keys(vec![rsa2.jwk.clone()]);
    eventually(WAIT, "cached token of the removed key refused", async || match check(&a, &token).await {
        Ok(_) => false,
        Err(e) => {
            assert_eq!(e.label(), "unknown_kid");
            true
        }
    })
    .await;
    assert!(idp.jwks_fetches() >= 2, "refreshed in the background");
    check(&a, &fresh(&rsa2, &idp)).await.unwrap();
}

#[tokio::test]
async fn provider_outage_serves_last_good_keys_then_fails_closed_then_recovers() {
    let rsa = TestKey::rsa1();
    let idp = Idp::start(vec![rsa.jwk.clone()]).await;
    let (a, registry) = authenticator(
        &idp,
        "",
        "    min_ttl: 1s\n    default_ttl: 1s\n    max_ttl: 1s\n    max_stale: 5s\n    unknown_kid_refresh_interval: 100ms\n    fetch_timeout: 1s\n",
    );
    check(&a, &fresh(&rsa, &idp)).await.unwrap();
    let good_fetches = idp.jwks_fetches();

    // Garbage first: refreshes fail, the last good keys keep serving.
    idp.set_mode(Mode::Garbage);
    eventually(WAIT, "two failed refreshes while keys keep serving", async || {
        check(&a, &fresh(&rsa, &idp)).await.expect("stale keys still serve");
        idp.jwks_fetches() >= good_fetches + 2
    })
    .await;

    // Then 500s until past max_stale: unavailable (503), never a 401.
    idp.set_mode(Mode::Fail500);
    let cached = rsa.token(&claims(&idp.issuer, AUD, "cached"));
    check(&a, &cached).await.unwrap();
    eventually(WAIT, "fails closed once keys are too stale", async || match check(&a, &fresh(&rsa, &idp)).await {
        Ok(_) => false,
        Err(AuthnError::KeysUnavailable) => true,
        Err(e) => panic!("expected KeysUnavailable, got {e}"),
    })
    .await;
    // A token verified earlier is not served from the token cache either.
    assert!(matches!(check(&a, &cached).await, Err(AuthnError::KeysUnavailable)));

    idp.set_mode(Mode::Normal);
    eventually(WAIT, "recovers when the provider is back", async || check(&a, &fresh(&rsa, &idp)).await.is_ok()).await;

    let text = portcullis::metrics::encode(&registry);
    for result in ["ok", "invalid", "bad_status"] {
        let m = format!(r#"jwks_fetches_total{{issuer="{}",result="{result}"}}"#, idp.issuer);
        assert!(text.contains(&m), "missing {m}\n{text}");
    }
}

#[tokio::test]
async fn provider_down_from_the_start_is_unavailable_and_not_hammered() {
    let rsa = TestKey::rsa1();
    let idp = Idp::start(vec![rsa.jwk.clone()]).await;
    idp.set_mode(Mode::Fail500);
    let (a, _) = authenticator(&idp, "", "    unknown_kid_refresh_interval: 1h\n");
    for _ in 0..5 {
        assert!(matches!(check(&a, &fresh(&rsa, &idp)).await, Err(AuthnError::KeysUnavailable)));
    }
    // Discovery answered; the JWKS was asked once, and later callers were failed fast.
    assert_eq!(idp.jwks_fetches(), 1);

    // Nothing listening at all.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = config(&format!(
        "  issuers:\n    - issuer: https://down.example\n      jwks_uri: http://{closed}/jwks\n      allow_insecure_http: true\n      audiences: [{AUD}]\n"
    ));
    let a = Authenticator::new(&cfg, &mut Registry::default()).unwrap();
    let t = rsa.token(&claims("https://down.example", AUD, "alice"));
    assert!(matches!(check(&a, &t).await, Err(AuthnError::KeysUnavailable)));
}

#[tokio::test]
async fn hundred_concurrent_requests_with_an_unknown_kid_cause_one_fetch() {
    let rsa = TestKey::rsa1();
    let idp = Idp::start(vec![rsa.jwk.clone()]).await;
    idp.set_delay(Duration::from_millis(300));
    let (a, _) = authenticator(&idp, "", "    unknown_kid_refresh_interval: 1h\n");
    let header = json!({"alg": "RS256", "kid": "forged", "typ": "JWT"});
    let forged = rsa.sign(&header, &claims(&idp.issuer, AUD, "mallory"));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (a, t) = (a.clone(), forged.clone());
            tokio::spawn(async move { check(&a, &t).await.map_err(|e| e.label()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Err("unknown_kid"));
    }
    assert_eq!(idp.jwks_fetches(), 1, "cold load shared, forged kid refresh rate-limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_for_a_rotated_in_kid_share_one_refresh() {
    let (rsa1, rsa2) = (TestKey::rsa1(), TestKey::rsa2());
    let idp = Idp::start(vec![rsa1.jwk.clone()]).await;
    // Callers that find the refresh in flight wait for it up to `unknown_kid_wait` (then 503):
    // long enough here for the slow provider, so all of them share its answer.
    let (a, _) = authenticator(
        &idp,
        "",
        "    default_ttl: 1h\n    min_ttl: 1h\n    unknown_kid_refresh_interval: 50ms\n  unknown_kid_wait: 2s\n",
    );
    check(&a, &fresh(&rsa1, &idp)).await.unwrap();
    assert_eq!(idp.jwks_fetches(), 1);
    // Let the rate limit open; the slow provider makes the 100 callers overlap on one fetch.
    tokio::time::sleep(Duration::from_millis(100)).await;
    idp.set_keys(vec![rsa1.jwk.clone(), rsa2.jwk.clone()]);
    idp.set_delay(Duration::from_millis(300));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (a, t) = (a.clone(), fresh(&rsa2, &idp));
            tokio::spawn(async move { check(&a, &t).await.map_err(|e| e.label()) })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    assert_eq!(idp.jwks_fetches(), 2, "exactly one refresh for the new kid");
}

#[tokio::test]
async fn slow_provider_times_out_as_unavailable() {
    let rsa = TestKey::rsa1();
    let idp = Idp::start(vec![rsa.jwk.clone()]).await;
    idp.set_mode(Mode::Slow(Duration::from_secs(30)));
    let (a, registry) = authenticator(&idp, "", "    fetch_timeout: 300ms\n");
    let res = tokio::time::timeout(WAIT, check(&a, &fresh(&rsa, &idp))).await.expect("bounded by fetch_timeout");
    assert!(matches!(res, Err(AuthnError::KeysUnavailable)), "{res:?}");
    let text = portcullis::metrics::encode(&registry);
    assert!(text.contains(&format!(r#"jwks_fetches_total{{issuer="{}",result="timeout"}} 1"#, idp.issuer)), "{text}");
}

#[tokio::test]
async fn oversized_jwks_is_refused_with_or_without_content_length() {
    let rsa = TestKey::rsa1();
    let idp = Idp::start(vec![rsa.jwk.clone()]).await;
    let jwks = "    max_response_bytes: 65536\n";
    // Control: the same padded document under the limit is fine, so only size is at fault below.
    idp.set_mode(Mode::Oversized(1_000));
    let (a, _) = authenticator(&idp, "", jwks);
    check(&a, &fresh(&rsa, &idp)).await.unwrap();

    for mode in [Mode::Oversized(100_000), Mode::OversizedChunked(100_000)] {
        idp.set_mode(mode.clone());
        let (a, registry) = authenticator(&idp, "", jwks);
        let res = check(&a, &fresh(&rsa, &idp)).await;
        assert!(matches!(res, Err(AuthnError::KeysUnavailable)), "{mode:?}: {res:?}");
        let text = portcullis::metrics::encode(&registry);
        assert!(text.contains(r#"result="too_large"} 1"#), "{mode:?}\n{text}");
    }
}

#[tokio::test]
async fn explicit_jwks_uri_skips_discovery() {
    let rsa = TestKey::rsa1();
    let idp = Idp::start(vec![rsa.jwk.clone()]).await;
    let (a, _) = authenticator(&idp, &format!("      jwks_uri: {}\n", idp.jwks_uri()), "    max_stale: 1h\n");
    check(&a, &fresh(&rsa, &idp)).await.unwrap();
    assert_eq!(idp.discovery_fetches(), 0);
    assert_eq!(idp.jwks_fetches(), 1);
}

fn hmac_authenticator(dir: &std::path::Path, secret: &[u8], token_cache: &str) -> Authenticator {
    std::fs::write(dir.join("hmac.key"), secret).unwrap();
    let cfg = config(&format!(
        "  issuers:
    - issuer: https://hmac.example
      hmac_secret_file: {}
      audiences: [{AUD}]
      algorithms: [HS256]
      leeway: 0s
  token_cache:
{token_cache}",
        dir.join("hmac.key").display()
    ));
    Authenticator::new(&cfg, &mut Registry::default()).unwrap()
}

#[tokio::test]
async fn verified_token_cache_stays_bounded_under_many_distinct_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"0123456789abcdef0123456789abcdef-secret";
    let a = hmac_authenticator(dir.path(), secret, "    max_entries: 1000\n");
    let key = EncodingKey::from_secret(secret);
    let header = json!({"alg": "HS256", "typ": "JWT"});
    // 25x the capacity (100k takes about a minute in a debug build for no extra insight).
    for i in 0..25_000u32 {
        let t = sign_raw(&header, &claims("https://hmac.example", AUD, &format!("u{i}")), &key, Algorithm::HS256);
        a.jwt().verify(&t).await.expect("valid token");
    }
    let n = a.jwt().cached_tokens().await;
    assert!(n <= 1000, "cache holds {n} entries");
    assert!(n > 0, "cache is in use");
}

#[tokio::test]
async fn cached_token_is_dropped_at_its_exp() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"0123456789abcdef0123456789abcdef-secret";
    let a = hmac_authenticator(dir.path(), secret, "    max_entries: 100\n    max_ttl: 1h\n");
    let mut c = claims("https://hmac.example", AUD, "short");
    c["exp"] = json!(idp::now() + 2);
    let t = sign_raw(&json!({"alg": "HS256"}), &c, &EncodingKey::from_secret(secret), Algorithm::HS256);
    a.jwt().verify(&t).await.unwrap();
    assert_eq!(a.jwt().cached_tokens().await, 1);
    eventually(WAIT, "cache entry expired", async || a.jwt().cached_tokens().await == 0).await;
    // Past `exp` (with zero leeway) the token is verified again, and refused.
    eventually(WAIT, "expired token refused", async || {
        a.jwt().verify(&t).await.is_err_and(|e| e.label() == "token_expired")
    })
    .await;
}

#[tokio::test]
async fn warm_up_fetches_once_and_the_first_request_hits_the_cache() {
    let rsa = TestKey::rsa1();
    let idp = Idp::start(vec![rsa.jwk.clone()]).await;
    let (a, registry) = authenticator(&idp, "", "    max_stale: 1h\n");
    a.jwt().warm_up().await;
    a.jwt().warm_up().await;
    assert_eq!(idp.jwks_fetches(), 1);
    check(&a, &fresh(&rsa, &idp)).await.unwrap();
    assert_eq!(idp.jwks_fetches(), 1);
    let text = portcullis::metrics::encode(&registry);
    assert!(text.contains(&format!(r#"jwks_key_lookups_total{{issuer="{}",result="hit"}} 1"#, idp.issuer)), "{text}");
    let miss = format!(r#"jwks_key_lookups_total{{issuer="{}",result="miss"}}"#, idp.issuer);
    assert!(!text.contains(&miss), "warm-up is not a key-cache miss\n{text}");
}

#[tokio::test]
async fn discovery_document_naming_another_issuer_is_not_trusted() {
    let rsa = TestKey::rsa1();
    let idp = Idp::start(vec![rsa.jwk.clone()]).await;
    // Same discovery URL, but the document names the issuer without the trailing slash.
    let iss = format!("{}/", idp.issuer);
    let cfg = config(&format!(
        "  issuers:\n    - issuer: {iss}\n      allow_insecure_http: true\n      audiences: [{AUD}]\n"
    ));
    let mut registry = Registry::default();
    let a = Authenticator::new(&cfg, &mut registry).unwrap();
    let t = rsa.token(&claims(&iss, AUD, "alice"));
    assert!(matches!(check(&a, &t).await, Err(AuthnError::KeysUnavailable)));
    assert_eq!(idp.discovery_fetches(), 1);
    assert_eq!(idp.jwks_fetches(), 0, "the JWKS of a mismatched issuer is never fetched");
    let text = portcullis::metrics::encode(&registry);
    assert!(text.contains(r#"result="invalid"} 1"#), "{text}");
}

#[tokio::test]
async fn cache_control_shorter_than_min_ttl_does_not_cause_refetches() {
    let rsa = TestKey::rsa1();
    let idp = Idp::start(vec![rsa.jwk.clone()]).await;
    idp.set_cache_control(Some("no-store"));
    let (a, _) = authenticator(
        &idp,
        "",
        "    min_ttl: 1h\n    max_ttl: 2h\n    max_stale: 1h\n    unknown_kid_refresh_interval: 10ms\n",
    );
    for _ in 0..5 {
        check(&a, &fresh(&rsa, &idp)).await.unwrap();
        // Give any (wrongly) due background refresh time to happen.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(idp.jwks_fetches(), 1, "no-store is raised to min_ttl");
}

/// Plain settings; a failed fetch is not retried within a test.
const JWKS: &str = "    unknown_kid_refresh_interval: 1h\n";

fn fetch_results(registry: &Registry, issuer: &str, result: &str) -> bool {
    let text = portcullis::metrics::encode(registry);
    text.contains(&format!(r#"jwks_fetches_total{{issuer="{issuer}",result="{result}"}}"#))
}

#[tokio::test]
async fn jwks_redirect_to_another_origin_is_not_followed() {
    let rsa = TestKey::rsa1();
    // The real keys live on another port; the configured URL redirects there.
    let elsewhere = Idp::start(vec![rsa.jwk.clone()]).await;
    let idp = Idp::start(vec![rsa.jwk.clone()]).await;
    idp.set_redirect(&elsewhere.jwks_uri());
    let (a, registry) = authenticator(&idp, &format!("      jwks_uri: {}/redirect\n", idp.issuer), JWKS);
    let t = rsa.token(&claims(&idp.issuer, AUD, "alice"));
    assert!(matches!(check(&a, &t).await, Err(AuthnError::KeysUnavailable)));
    assert_eq!(elsewhere.jwks_fetches(), 0, "the other origin is never asked");
    assert!(fetch_results(&registry, &idp.issuer, "redirect_refused"), "{}", portcullis::metrics::encode(&registry));

    // Same host and port but another scheme is another origin too (no https→http downgrade
    // either): the redirect target is refused before any connection.
    let other_scheme = idp.jwks_uri().replacen("http://", "https://", 1);
    idp.set_redirect(&other_scheme);
    let (a, registry) = authenticator(&idp, &format!("      jwks_uri: {}/redirect\n", idp.issuer), JWKS);
    assert!(matches!(check(&a, &t).await, Err(AuthnError::KeysUnavailable)));
    assert!(fetch_results(&registry, &idp.issuer, "redirect_refused"));
    assert_eq!(idp.jwks_fetches(), 0);
}

#[tokio::test]
async fn same_origin_redirects_are_followed_up_to_three_hops() {
    let rsa = TestKey::rsa1();
    let idp = Idp::start(vec![rsa.jwk.clone()]).await;
    let t = rsa.token(&claims(&idp.issuer, AUD, "alice"));
    // An absolute same-origin Location, and a chain of three relative ones.
    idp.set_redirect(&idp.jwks_uri());
    let (a, _) = authenticator(&idp, &format!("      jwks_uri: {}/redirect\n", idp.issuer), JWKS);
    assert_eq!(check(&a, &t).await.unwrap(), "alice");
    let (a, _) = authenticator(&idp, &format!("      jwks_uri: {}\n", idp.jwks_after_hops(3)), JWKS);
    assert_eq!(check(&a, &t).await.unwrap(), "alice");
    assert_eq!(idp.jwks_fetches(), 2);
    // A fourth hop is refused.
    let (a, registry) = authenticator(&idp, &format!("      jwks_uri: {}\n", idp.jwks_after_hops(4)), JWKS);
    assert!(matches!(check(&a, &t).await, Err(AuthnError::KeysUnavailable)));
    assert!(fetch_results(&registry, &idp.issuer, "redirect_refused"));
    assert_eq!(idp.jwks_fetches(), 2, "the JWKS was not reached on the fourth hop");
}

#[tokio::test]
async fn discovered_jwks_uri_must_be_https_unless_the_issuer_allows_http() {
    use portcullis::authn::jwks::{IssuerKeys, JwksError, JwksMetrics, KeySource};
    let rsa = TestKey::rsa1();
    let idp = Idp::start(vec![rsa.jwk.clone()]).await;
    let fetcher = |source: KeySource, allow_http: bool| {
        let cfg = portcullis::config::JwksConfig::default();
        IssuerKeys::new(idp.issuer.clone(), source, cfg, reqwest::Client::new(), allow_http, JwksMetrics::default())
    };
    // Without allow_insecure_http an http URL is never contacted, wherever it came from.
    let keys = fetcher(KeySource::Uri(idp.jwks_uri()), false);
    assert!(matches!(keys.fetch().await, Err(JwksError::InsecureUrl { .. })));
    let keys = fetcher(KeySource::Discovery { issuer: idp.issuer.clone() }, false);
    assert!(matches!(keys.fetch().await, Err(JwksError::InsecureUrl { .. })));
    assert_eq!((idp.discovery_fetches(), idp.jwks_fetches()), (0, 0));
    // Allowed for this issuer: works; but a discovered URL of another scheme is still refused.
    let keys = fetcher(KeySource::Discovery { issuer: idp.issuer.clone() }, true);
    assert_eq!(keys.fetch().await.expect("keys").len(), 1);
    idp.set_discovered_jwks_uri("file:///etc/passwd");
    let keys = fetcher(KeySource::Discovery { issuer: idp.issuer.clone() }, true);
    assert!(matches!(keys.fetch().await, Err(JwksError::InsecureUrl { .. })));
}
