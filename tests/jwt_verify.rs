//! Token verification against a real identity provider (OIDC discovery + JWKS over HTTP on
//! 127.0.0.1): accepted algorithms, claim checks, token sources, and every RFC 8725 hardening
//! check, each with a token that would pass if that one check were missing.
mod common;

use common::decide;
use common::idp::{self, Idp, TestKey, authn, b64, bearer, check_request, claims, config, now, sign_raw};
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::authn::{Authenticator, AuthnError, Identities};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

const AUD: &str = "orders-api";

struct Fixture {
    idp: Idp,
    rsa: TestKey,
    ec: TestKey,
    ed: TestKey,
    authn: Authenticator,
    registry: Registry,
}

/// One issuer found by discovery, serving RSA, EC and Ed25519 keys; `extra_issuer_yaml` goes into
/// the issuer entry, `extra_yaml` after the issuer list.
async fn fixture_with(extra_issuer_yaml: &str, extra_yaml: &str) -> Fixture {
    let (rsa, ec, ed) = (TestKey::rsa1(), TestKey::ec256(), TestKey::ed25519());
    let idp = Idp::start(vec![rsa.jwk.clone(), ec.jwk.clone(), ed.jwk.clone()]).await;
    let cfg = config(&format!(
        "  issuers:
    - issuer: {iss}
      allow_insecure_http: true
      audiences: [{AUD}, other-api]
      algorithms: [RS256, PS256, ES256, EdDSA]
      leeway: 5s
      claims_to_headers: {{email: x-user-email}}
{extra_issuer_yaml}{extra_yaml}",
        iss = idp.issuer
    ));
    let mut registry = Registry::default();
    let authn = Authenticator::new(&cfg, &mut registry).expect("authenticator");
    Fixture { idp, rsa, ec, ed, authn, registry }
}

async fn fixture() -> Fixture {
    fixture_with("", "").await
}

impl Fixture {
    fn claims(&self) -> Value {
        claims(&self.idp.issuer, AUD, "alice")
    }

    async fn accept(&self, token: &str) -> Identities {
        match authn(&self.authn, &bearer(token)).await {
            Ok(ids) if ids.jwt.is_some() => ids,
            Ok(_) => panic!("token was ignored"),
            Err(e) => panic!("token refused: {e}"),
        }
    }

    async fn reject(&self, token: &str) -> AuthnError {
        self.reject_req(&bearer(token)).await
    }

    async fn reject_req(&self, req: &portcullis::proto::auth::CheckRequest) -> AuthnError {
        match authn(&self.authn, req).await {
            Ok(ids) => panic!("accepted: {:?}", ids.jwt.map(|j| j.subject.clone())),
            Err(e) => e,
        }
    }
}

fn with(mut v: Value, key: &str, val: Value) -> Value {
    v[key] = val;
    v
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_from_a_discovered_issuer_are_accepted() {
    let f = fixture().await;
    for key in [&f.rsa, &f.ec, &f.ed] {
        let c = with(f.claims(), "email", json!("alice@example.com"));
        let ids = f.accept(&key.token(&c)).await;
        let jwt = ids.jwt.expect("jwt identity");
        assert_eq!(jwt.subject, "alice");
        assert_eq!(&*jwt.issuer, f.idp.issuer.as_str());
        assert!(jwt.headers.contains(&("x-user-email".into(), "alice@example.com".into())), "{:?}", jwt.headers);
        assert!(jwt.claims.contains(&("email".into(), "alice@example.com".into())), "{:?}", jwt.claims);
    }
    assert_eq!(f.idp.discovery_fetches(), 1, "discovery is done once");
    assert_eq!(f.idp.jwks_fetches(), 1, "one key set serves all three tokens");
}

#[tokio::test]
async fn groups_claim_becomes_groups_and_array_audience_matches_any_configured_one() {
    let f = fixture().await;
    let c = with(with(f.claims(), "aud", json!(["unrelated", "other-api"])), "groups", json!(["admins", "ops"]));
    let jwt = f.accept(&f.ed.token(&c)).await.jwt.unwrap();
    assert_eq!(jwt.groups, vec!["admins", "ops"]);
}

#[tokio::test]
async fn tampered_payload_fails_the_signature() {
    let f = fixture().await;
    let token = f.rsa.token(&f.claims());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = with(f.claims(), "sub", json!("root"));
    let tampered = format!("{}.{}.{}", parts[0], b64(&forged), parts[2]);
    assert_eq!(f.reject(&tampered).await.label(), "bad_signature");
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused_beyond_the_leeway() {
    let f = fixture().await;
    let n = now();
    let expired = with(with(f.claims(), "exp", json!(n - 60)), "iat", json!(n - 600));
    assert_eq!(f.reject(&f.rsa.token(&expired)).await.label(), "token_expired");
    let early = with(f.claims(), "nbf", json!(n + 120));
    assert_eq!(f.reject(&f.rsa.token(&early)).await.label(), "token_not_yet_valid");
    // Within the configured 5 s leeway both are fine: the leeway is applied, not ignored.
    let just_expired = with(f.claims(), "exp", json!(n - 2));
    f.accept(&f.rsa.token(&just_expired)).await;
}

/// A NumericDate may have a fraction (RFC 7519 §2): such an `exp` is honoured, not refused as
/// missing, and a fractional `exp` in the past is still expired.
#[tokio::test]
async fn fractional_exp_is_a_numeric_date() {
    let f = fixture().await;
    let n = now() as f64;
    let fractional = with(with(f.claims(), "exp", json!(n + 600.5)), "iat", json!(n - 0.25));
    let jwt = f.accept(&f.rsa.token(&fractional)).await.jwt.expect("jwt identity");
    // Cached no longer than the token lives: the fraction is dropped, never rounded up.
    assert_eq!(jwt.expires_at, (n + 600.5).floor() as u64);
    let expired = with(f.claims(), "exp", json!(n - 60.5));
    assert_eq!(f.reject(&f.rsa.token(&expired)).await.label(), "token_expired");
}

#[tokio::test]
async fn wrong_or_missing_audience_is_refused() {
    let f = fixture().await;
    let wrong = with(f.claims(), "aud", json!("billing-api"));
    assert_eq!(f.reject(&f.rsa.token(&wrong)).await.label(), "bad_audience");
    let mut missing = f.claims();
    missing.as_object_mut().unwrap().remove("aud");
    // jsonwebtoken only checks `aud` when present: this one must still be refused.
    assert_eq!(f.reject(&f.rsa.token(&missing)).await.label(), "bad_audience");
}

#[tokio::test]
async fn unknown_or_missing_issuer_is_refused_even_when_signed_by_a_trusted_key() {
    let f = fixture().await;
    let other = with(f.claims(), "iss", json!("https://evil.example"));
    assert_eq!(f.reject(&f.rsa.token(&other)).await.label(), "unknown_issuer");
    let trailing = with(f.claims(), "iss", json!(format!("{}/", f.idp.issuer)));
    assert_eq!(f.reject(&f.rsa.token(&trailing)).await.label(), "unknown_issuer");
    let mut none = f.claims();
    none.as_object_mut().unwrap().remove("iss");
    assert_eq!(f.reject(&f.rsa.token(&none)).await.label(), "unknown_issuer");
}

#[tokio::test]
async fn token_of_one_issuer_cannot_use_the_keys_of_another() {
    // Two issuers; a token claiming the second but signed with the first one's key and kid.
    let (rsa1, rsa2) = (TestKey::rsa1(), TestKey::rsa2());
    let a = Idp::start(vec![rsa1.jwk.clone()]).await;
    let b = Idp::start(vec![rsa2.jwk.clone()]).await;
    let cfg = config(&format!(
        "  group_namespace: shared
  issuers:
    - issuer: {}
      allow_insecure_http: true
      audiences: [{AUD}]
    - issuer: {}
      allow_insecure_http: true
      audiences: [{AUD}]
",
        a.issuer, b.issuer
    ));
    let authn_ = Authenticator::new(&cfg, &mut Registry::default()).unwrap();
    let ok = authn(&authn_, &bearer(&rsa2.token(&claims(&b.issuer, AUD, "bob")))).await.unwrap();
    assert_eq!(&*ok.jwt.unwrap().issuer, b.issuer.as_str());
    let confused = rsa1.token(&claims(&b.issuer, AUD, "mallory"));
    let err = authn(&authn_, &bearer(&confused)).await.unwrap_err();
    assert_eq!(err.label(), "unknown_kid");
}

#[tokio::test]
async fn required_claims_are_enforced() {
    let f = fixture_with("      required_claims: [tenant]\n", "").await;
    assert_eq!(f.reject(&f.rsa.token(&f.claims())).await.label(), "missing_claim");
    f.accept(&f.rsa.token(&with(f.claims(), "tenant", json!("t1")))).await;
}

// --- RFC 8725 hardening ------------------------------------------------------------------------

#[tokio::test]
async fn alg_none_is_refused_in_every_spelling() {
    let f = fixture().await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "kid": f.rsa.kid, "typ": "JWT"});
        let token = format!("{}.{}.", b64(&header), b64(&f.claims()));
        assert_eq!(f.reject(&token).await.label(), "alg_none", "{alg}");
        // Even with a (meaningless) signature attached.
        let signed = f.rsa.sign(&header, &f.claims());
        assert_eq!(f.reject(&signed).await.label(), "alg_none", "{alg} signed");
    }
}

#[tokio::test]
async fn hmac_tokens_signed_with_the_public_key_are_refused() {
    let f = fixture().await;
    let jwk = &f.rsa.jwk;
    let public_pem = rsa_public_pem(&f.rsa);
    // The classic key-confusion secrets: the public key PEM, the JWK's `n`, the JWK itself.
    let secrets: Vec<Vec<u8>> =
        vec![public_pem.into_bytes(), jwk["n"].as_str().unwrap().as_bytes().to_vec(), serde_json::to_vec(jwk).unwrap()];
    for secret in secrets {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let header = json!({"alg": idp::alg_name(alg), "kid": f.rsa.kid, "typ": "JWT"});
            let token = sign_raw(&header, &f.claims(), &EncodingKey::from_secret(&secret), alg);
            assert_eq!(f.reject(&token).await.label(), "alg_not_allowed");
        }
    }
}

/// SubjectPublicKeyInfo PEM of a fixture RSA key, via the JWK (n, e) so no extra crate is needed.
fn rsa_public_pem(key: &TestKey) -> String {
    let n = base64_url(key.jwk["n"].as_str().unwrap());
    let e = base64_url(key.jwk["e"].as_str().unwrap());
    fn int(b: &[u8]) -> Vec<u8> {
        let mut v = b.to_vec();
        if v[0] & 0x80 != 0 {
            v.insert(0, 0);
        }
        der(0x02, &v)
    }
    fn der(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = body.len();
        if n < 128 {
            out.push(n as u8);
        } else if n < 256 {
            out.extend([0x81, n as u8]);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(body);
        out
    }
    let rsa_key = der(0x30, &[int(&n), int(&e)].concat());
    let mut bits = vec![0u8];
    bits.extend(rsa_key);
    let alg_id = [0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let spki = der(0x30, &[alg_id.to_vec(), der(0x03, &bits)].concat());
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(spki);
    let lines: Vec<&str> = b.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
}

fn base64_url(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

#[tokio::test]
async fn correctly_signed_tokens_carrying_key_headers_are_refused() {
    let f = fixture().await;
    let embedded: [(&str, Value); 4] = [
        ("jku", json!(format!("{}/jwks", f.idp.issuer))),
        ("x5u", json!("https://keys.example/cert.pem")),
        ("jwk", f.rsa.jwk.clone()),
        ("x5c", json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"])),
    ];
    // Control: the same token without the extra header is fine.
    f.accept(&f.rsa.token(&f.claims())).await;
    for (name, value) in embedded {
        let header = with(f.rsa.header(), name, value);
        assert_eq!(f.reject(&f.rsa.sign(&header, &f.claims())).await.label(), "embedded_key", "{name}");
    }
}

#[tokio::test]
async fn unknown_critical_header_is_refused() {
    let f = fixture().await;
    let header = with(with(f.rsa.header(), "crit", json!(["urn:example:policy"])), "urn:example:policy", json!(1));
    assert_eq!(f.reject(&f.rsa.sign(&header, &f.claims())).await.label(), "unknown_crit");
    let b64_false = with(with(f.ed.header(), "crit", json!(["b64"])), "b64", json!(false));
    assert_eq!(f.reject(&f.ed.sign(&b64_false, &f.claims())).await.label(), "unknown_crit");
}

#[tokio::test]
async fn oversized_token_is_refused_before_parsing() {
    let f = fixture_with("", "").await;
    // Default limit is 16 KiB: a valid, correctly signed token just over it.
    let big = with(f.claims(), "padding", json!("p".repeat(17 * 1024)));
    let token = f.ed.token(&big);
    assert!(token.len() > 16 * 1024);
    assert_eq!(f.reject(&token).await.label(), "token_too_large");
    // And size comes first: an oversized blob of garbage is the same class, not "malformed".
    assert_eq!(f.reject(&"!".repeat(20_000)).await.label(), "token_too_large");
    assert_eq!(f.idp.jwks_fetches(), 0, "nothing was fetched for an oversized token");
}

#[tokio::test]
async fn encrypted_tokens_are_refused() {
    let f = fixture().await;
    let jwe_header = json!({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": f.rsa.kid});
    let jwe = format!("{}.a2V5.aXY.Y2lwaGVy.dGFn", b64(&jwe_header));
    assert_eq!(f.reject(&jwe).await.label(), "token_encrypted");
    // A JWS whose header claims encryption.
    let header = with(f.rsa.header(), "enc", json!("A256GCM"));
    assert_eq!(f.reject(&f.rsa.sign(&header, &f.claims())).await.label(), "token_encrypted");
}

#[tokio::test]
async fn unknown_kid_is_refused_even_when_a_served_key_would_verify_it() {
    let f = fixture().await;
    let header = with(f.rsa.header(), "kid", json!("not-in-jwks"));
    assert_eq!(f.reject(&f.rsa.sign(&header, &f.claims())).await.label(), "unknown_kid");
    // Without a kid, a key set with several keys is ambiguous: refused, not tried key by key.
    let mut no_kid = f.rsa.header();
    no_kid.as_object_mut().unwrap().remove("kid");
    assert_eq!(f.reject(&f.rsa.sign(&no_kid, &f.claims())).await.label(), "unknown_kid");
}

#[tokio::test]
async fn token_alg_must_match_the_alg_and_kty_pinned_by_the_jwk() {
    let f = fixture().await;
    // PS256 is allowed for the issuer and rsa1 could verify it, but its JWK pins RS256.
    let ps = with(f.rsa.header(), "alg", json!("PS256"));
    assert_eq!(f.reject(&f.rsa.sign(&ps, &f.claims())).await.label(), "key_mismatch");
    // An EC-signed token naming the RSA key's kid.
    let ec_as_rsa = with(f.ec.header(), "kid", json!(f.rsa.kid));
    assert_eq!(f.reject(&f.ec.sign(&ec_as_rsa, &f.claims())).await.label(), "key_mismatch");
}

#[tokio::test]
async fn keys_not_marked_for_signatures_are_not_used() {
    let rsa = TestKey::rsa1();
    let mut enc = rsa.jwk.clone();
    enc["use"] = json!("enc");
    enc["kid"] = json!("rsa1-enc");
    let idp = Idp::start(vec![enc, TestKey::ed25519().jwk]).await;
    let cfg = config(&format!(
        "  issuers:\n    - issuer: {}\n      allow_insecure_http: true\n      audiences: [{AUD}]\n",
        idp.issuer
    ));
    let a = Authenticator::new(&cfg, &mut Registry::default()).unwrap();
    let header = with(rsa.header(), "kid", json!("rsa1-enc"));
    let token = rsa.sign(&header, &claims(&idp.issuer, AUD, "alice"));
    assert_eq!(authn(&a, &bearer(&token)).await.unwrap_err().label(), "unknown_kid");
}

#[tokio::test]
async fn algorithm_outside_the_issuer_allow_list_is_refused() {
    let rsa = TestKey::rsa1();
    let ec = TestKey::ec256();
    let idp = Idp::start(vec![rsa.jwk.clone(), ec.jwk.clone()]).await;
    // Default allow list: RS256 only.
    let cfg = config(&format!(
        "  issuers:\n    - issuer: {}\n      allow_insecure_http: true\n      audiences: [{AUD}]\n",
        idp.issuer
    ));
    let a = Authenticator::new(&cfg, &mut Registry::default()).unwrap();
    let c = claims(&idp.issuer, AUD, "alice");
    authn(&a, &bearer(&rsa.token(&c))).await.unwrap();
    assert_eq!(authn(&a, &bearer(&ec.token(&c))).await.unwrap_err().label(), "alg_not_allowed");
}

#[tokio::test]
async fn malformed_tokens_are_refused_with_a_class_only() {
    let f = fixture().await;
    for t in ["abc", "a.b", "a.b.c", "....", "eyJ.eyJ.", "a.b.c.d"] {
        let e = f.reject(t).await;
        assert!(matches!(e.label(), "token_malformed" | "token_encrypted"), "{t}: {}", e.label());
        assert!(!e.to_string().contains(t), "error echoes the token: {e}");
    }
}

// --- token sources -----------------------------------------------------------------------------

#[tokio::test]
async fn duplicate_authorization_header_is_an_invalid_request() {
    let f = fixture().await;
    let good = format!("Bearer {}", f.rsa.token(&f.claims()));
    let req = check_request(&[("authorization", &good), ("Authorization", &good)]);
    let e = f.reject_req(&req).await;
    assert!(matches!(e, AuthnError::DuplicateCredential(_)), "{e:?}");
}

#[tokio::test]
async fn other_schemes_and_empty_bearer_are_handled() {
    let f = fixture().await;
    // Basic is not ours: anonymous, not an error.
    let ids = authn(&f.authn, &check_request(&[("authorization", "Basic YWxpY2U6cHc=")])).await.unwrap();
    assert!(ids.jwt.is_none());
    let e = f.reject_req(&check_request(&[("authorization", "Bearer ")])).await;
    assert_eq!(e.label(), "malformed_credential");
    // The scheme is case-insensitive.
    let lower = format!("bearer {}", f.rsa.token(&f.claims()));
    assert!(authn(&f.authn, &check_request(&[("authorization", &lower)])).await.unwrap().jwt.is_some());
}

#[tokio::test]
async fn tokens_are_read_from_a_cookie_or_custom_header_when_configured() {
    let f = fixture_with("      from:\n        - cookie: session\n        - header: x-id-token\n", "").await;
    let token = f.rsa.token(&f.claims());
    let cookie = format!("theme=dark; session={token}; lang=en");
    let ids = authn(&f.authn, &check_request(&[("cookie", &cookie)])).await.unwrap();
    assert_eq!(ids.jwt.unwrap().subject, "alice");
    let ids = authn(&f.authn, &check_request(&[("x-id-token", &token)])).await.unwrap();
    assert_eq!(ids.jwt.unwrap().subject, "alice");
    // Two session cookies are ambiguous.
    let two = format!("session={token}; session={token}");
    let e = f.reject_req(&check_request(&[("cookie", &two)])).await;
    assert!(matches!(e, AuthnError::DuplicateCredential(_)), "{e:?}");
    // A bad token in the cookie is refused, not ignored.
    let e = f.reject_req(&check_request(&[("cookie", "session=abc.def.ghi")])).await;
    assert_eq!(e.label(), "token_malformed");
    // The Authorization header is not a source for this issuer at all.
    let ids = authn(&f.authn, &bearer(&token)).await.unwrap();
    assert!(ids.jwt.is_none(), "authorization header is not configured as a source");
}

#[tokio::test]
async fn token_is_only_accepted_from_its_own_issuers_sources() {
    // Issuer A reads bearer headers only; issuer B reads a cookie. A's token in B's cookie is
    // refused (a cookie-borne token is CSRF-prone, A never opted into that), also from cache.
    let (rsa, ed) = (TestKey::rsa1(), TestKey::ed25519());
    let a = Idp::start(vec![rsa.jwk.clone()]).await;
    let b = Idp::start(vec![ed.jwk.clone()]).await;
    let cfg = config(&format!(
        "  group_namespace: shared
  issuers:
    - issuer: {}
      allow_insecure_http: true
      audiences: [{AUD}]
    - issuer: {}
      allow_insecure_http: true
      audiences: [{AUD}]
      algorithms: [EdDSA]
      from: [{{cookie: session}}]
",
        a.issuer, b.issuer
    ));
    let authn_ = Authenticator::new(&cfg, &mut Registry::default()).unwrap();
    let a_token = rsa.token(&claims(&a.issuer, AUD, "alice"));
    let b_token = ed.token(&claims(&b.issuer, AUD, "bob"));
    // Each from its own source (A's token is now in the verified-token cache).
    authn(&authn_, &bearer(&a_token)).await.unwrap().jwt.unwrap();
    let ok = authn(&authn_, &check_request(&[("cookie", &format!("session={b_token}"))])).await.unwrap();
    assert_eq!(ok.jwt.unwrap().subject, "bob");
    let e = authn(&authn_, &check_request(&[("cookie", &format!("session={a_token}"))])).await.unwrap_err();
    assert_eq!(e.label(), "wrong_token_source");
    let e = authn(&authn_, &bearer(&b_token)).await.unwrap_err();
    assert_eq!(e.label(), "wrong_token_source");
    // And on the uncached path.
    let fresh = rsa.token(&claims(&a.issuer, AUD, "alice2"));
    let e = authn(&authn_, &check_request(&[("cookie", &format!("session={fresh}"))])).await.unwrap_err();
    assert_eq!(e.label(), "wrong_token_source");
}

#[tokio::test]
async fn hmac_issuer_accepts_only_its_configured_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"0123456789abcdef0123456789abcdef-secret";
    std::fs::write(dir.path().join("hmac.key"), secret).unwrap();
    let cfg = config(&format!(
        "  issuers:
    - issuer: https://hmac.example
      hmac_secret_file: {}
      audiences: [{AUD}]
      algorithms: [HS256]
",
        dir.path().join("hmac.key").display()
    ));
    let a = Authenticator::new(&cfg, &mut Registry::default()).unwrap();
    let c = claims("https://hmac.example", AUD, "svc");
    // A kid is meaningless with one secret and must not make a good token fail.
    let header = json!({"alg": "HS256", "kid": "k1", "typ": "JWT"});
    let good = sign_raw(&header, &c, &EncodingKey::from_secret(secret), Algorithm::HS256);
    assert_eq!(authn(&a, &bearer(&good)).await.unwrap().jwt.unwrap().subject, "svc");
    let wrong =
        sign_raw(&header, &c, &EncodingKey::from_secret(b"another-secret-of-enough-length!!"), Algorithm::HS256);
    assert_eq!(authn(&a, &bearer(&wrong)).await.unwrap_err().label(), "bad_signature");
    let hs512 = sign_raw(&json!({"alg": "HS512"}), &c, &EncodingKey::from_secret(secret), Algorithm::HS512);
    assert_eq!(authn(&a, &bearer(&hs512)).await.unwrap_err().label(), "alg_not_allowed");
}

#[tokio::test]
async fn rejections_are_counted_by_reason() {
    let f = fixture().await;
    let header = with(f.rsa.header(), "jku", json!("https://x"));
    f.reject(&f.rsa.sign(&header, &f.claims())).await;
    f.reject("abc").await;
    f.accept(&f.rsa.token(&f.claims())).await;
    let text = portcullis::metrics::encode(&f.registry);
    assert!(text.contains(r#"token_rejections_total{reason="embedded_key"} 1"#), "{text}");
    assert!(text.contains(r#"token_rejections_total{reason="token_malformed"} 1"#), "{text}");
}

#[tokio::test]
async fn unreadable_or_empty_ca_file_fails_at_start_naming_the_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    for path in [dir.path().join("missing.pem"), garbage] {
        let cfg = config(&format!(
            "  issuers:\n    - issuer: https://k8s.example\n      ca_file: {}\n      audiences: [{AUD}]\n",
            path.display()
        ));
        let err = Authenticator::new(&cfg, &mut Registry::default()).err().expect("refused");
        assert!(err.to_string().contains("https://k8s.example"), "{err}");
    }
}

#[tokio::test]
async fn pss_and_other_rsa_algorithms_verify_with_a_jwk_that_pins_no_alg() {
    let rsa = TestKey::rsa1();
    let mut jwk = rsa.jwk.clone();
    jwk.as_object_mut().unwrap().remove("alg");
    let idp = Idp::start(vec![jwk]).await;
    let cfg = config(&format!(
        "  issuers:\n    - issuer: {}\n      allow_insecure_http: true\n      audiences: [{AUD}]\n      algorithms: [RS256, RS384, RS512, PS256, PS384, PS512]\n",
        idp.issuer
    ));
    let a = Authenticator::new(&cfg, &mut Registry::default()).unwrap();
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        let header = json!({"alg": alg, "kid": rsa.kid, "typ": "JWT"});
        let token = rsa.sign(&header, &claims(&idp.issuer, AUD, alg));
        assert_eq!(authn(&a, &bearer(&token)).await.unwrap().jwt.unwrap().subject, alg);
    }
    // An allowed algorithm of the wrong family for the key is still refused.
    let ed = TestKey::ed25519();
    let header = json!({"alg": "EdDSA", "kid": rsa.kid});
    let e = authn(&a, &bearer(&ed.sign(&header, &claims(&idp.issuer, AUD, "x")))).await.unwrap_err();
    assert_eq!(e.label(), "alg_not_allowed");
}

/// A Checker over two discovery issuers and a tiny policy set, for group-namespace decisions.
async fn two_issuer_checker(
    a: &Idp,
    b: &Idp,
    namespace: &str,
    policies: &str,
) -> (portcullis::check::Checker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/policies/portcullis.cedarschema");
    std::fs::copy(schema, dir.path().join("portcullis.cedarschema")).unwrap();
    std::fs::write(dir.path().join("groups.cedar"), policies).unwrap();
    let text = format!(
        "policy: {{dir: {dir}, watch: false}}
authn:
{namespace}  issuers:
    - issuer: {}
      allow_insecure_http: true
      audiences: [{AUD}]
    - issuer: {}
      allow_insecure_http: true
      audiences: [{AUD}]
",
        a.issuer,
        b.issuer,
        dir = dir.path().display()
    );
    let cfg = portcullis::config::Config::from_yaml(&text).unwrap();
    cfg.validate().unwrap();
    let mut registry = Registry::default();
    let store = std::sync::Arc::new(portcullis::policy::PolicyStore::new(cfg.policy.on_empty, &mut registry));
    portcullis::policy::files::load_into(dir.path(), &store).expect("policies load");
    let checker = portcullis::check::Checker::new(&cfg, store, &mut registry).expect("checker");
    (checker, dir)
}

#[tokio::test]
async fn per_issuer_groups_do_not_grant_another_issuers_group() {
    let (rsa1, rsa2) = (TestKey::rsa1(), TestKey::rsa2());
    let a = Idp::start(vec![rsa1.jwk.clone()]).await;
    let b = Idp::start(vec![rsa2.jwk.clone()]).await;
    let policies = format!(
        "@id(\"shared-admins\")\npermit (principal in Group::\"admins\", action, resource);\n\
         @id(\"a-admins\")\npermit (principal in Group::\"{}#admins\", action, resource);\n",
        a.issuer
    );
    let admins = |key: &TestKey, idp: &Idp| {
        let mut c = claims(&idp.issuer, AUD, "mallory");
        c["groups"] = json!(["admins"]);
        bearer(&key.token(&c))
    };

    let (per_issuer, _d1) = two_issuer_checker(&a, &b, "  group_namespace: per_issuer\n", &policies).await;
    // B says "admins": that is B's admins, not `Group::"admins"` and not A's.
    let d = decide(&per_issuer, &admins(&rsa2, &b)).await;
    assert!(!d.is_allowed(), "{d:?}");
    assert_eq!(d.http_status(), 403, "{d:?}");
    assert!(d.policies().is_empty(), "{d:?}");
    // A's admins are `Group::"<A>#admins"` only.
    let d = decide(&per_issuer, &admins(&rsa1, &a)).await;
    assert!(d.is_allowed(), "{d:?}");
    assert_eq!(d.policies(), ["a-admins"]);

    // Shared (today's behaviour, chosen explicitly): any trusted issuer grants `admins`.
    let (shared, _d2) = two_issuer_checker(&a, &b, "  group_namespace: shared\n", &policies).await;
    let d = decide(&shared, &admins(&rsa2, &b)).await;
    assert!(d.is_allowed(), "{d:?}");
    assert_eq!(d.policies(), ["shared-admins"]);
}
