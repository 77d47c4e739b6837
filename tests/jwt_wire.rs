//! JWT outcomes on the wire: the real gRPC ext_authz server (`server::start`) with issuers backed
//! by real identity providers on 127.0.0.1, checked with a real gRPC client. A bad token is a 401
//! with an RFC 6750 `invalid_token` challenge naming only the class of failure; keys that cannot
//! be had are a 503 with Retry-After.
mod common;

use common::idp::{self, Idp, Mode, TestKey, bearer, check_request, claims};
use portcullis::config::Config;
use portcullis::proto::auth::CheckResponse;
use portcullis::proto::auth::check_response::HttpResponse;
use serde_json::json;

const AUD: &str = "orders-api";

struct Server {
    running: Option<portcullis::server::Running>,
    addr: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(up: &Idp, down: &Idp) -> Self {
        Self::start_with(up, down, "1h").await
    }

    /// With unknown-kid refreshes allowed every `refresh_interval`.
    async fn start_with(up: &Idp, down: &Idp, refresh_interval: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.cedar"), "permit (principal is User, action, resource);\n").unwrap();
        // Policies are validated strictly against a schema: use the demo's.
        let schema =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/policies/portcullis.cedarschema");
        std::fs::copy(schema, dir.path().join("portcullis.cedarschema")).unwrap();
        let yaml = format!(
            "listen: {{grpc: '127.0.0.1:0', admin: '127.0.0.1:0', diagnostics: null}}
policy: {{dir: {dir}, watch: false}}
authn:
  group_namespace: shared
  issuers:
    - issuer: {up}
      allow_insecure_http: true
      audiences: [{AUD}]
      algorithms: [RS256, EdDSA]
    - issuer: {down}
      allow_insecure_http: true
      audiences: [{AUD}]
  jwks:
    unknown_kid_refresh_interval: {refresh_interval}
",
            dir = dir.path().display(),
            up = up.issuer,
            down = down.issuer,
        );
        let mut cfg = Config::from_yaml(&yaml).unwrap();
        cfg.validate().unwrap();
        cfg.limits.max_token_bytes = 4096;
        let running = portcullis::server::start(cfg).await.expect("server starts");
        let addr = format!("http://{}", running.grpc_addr.expect("grpc bound"));
        let admin = format!("http://{}", running.admin_addr.expect("admin bound"));
        Self { running: Some(running), addr, admin, _dir: dir }
    }

    /// The value of one metric line (name with labels, exactly), 0 when absent.
    async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.admin)).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0)
    }

    async fn check(&self, req: portcullis::proto::auth::CheckRequest) -> CheckResponse {
        tokio::time::timeout(std::time::Duration::from_secs(20), portcullis::cli::send_check(&self.addr, req))
            .await
            .expect("check answered in time")
            .expect("gRPC call succeeds")
    }

    async fn stop(mut self) {
        self.running.take().unwrap().shutdown().await.unwrap();
    }
}

/// (HTTP status, headers) of a denial; panics on an allow.
fn denied(r: &CheckResponse) -> (i32, Vec<(String, String)>) {
    match r.http_response.as_ref() {
        Some(HttpResponse::DeniedResponse(d)) => (
            d.status.as_ref().map(|s| s.code).unwrap_or(0),
            d.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| (h.key.clone(), h.value.clone())).collect(),
        ),
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_outcomes_on_the_wire() {
    let key = TestKey::rsa1();
    let up = Idp::start(vec![key.jwk.clone(), TestKey::ed25519().jwk]).await;
    let down = Idp::start(vec![key.jwk.clone()]).await;
    down.set_mode(Mode::Fail500);
    let server = Server::start(&up, &down).await;

    // A good token is allowed, with identity headers for the upstream.
    let good = key.token(&claims(&up.issuer, AUD, "alice"));
    let r = server.check(bearer(&good)).await;
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
    let Some(HttpResponse::OkResponse(ok)) = r.http_response else { panic!("not ok") };
    assert!(ok.headers.iter().filter_map(|h| h.header.as_ref()).any(|h| h.value == "alice"));

    // Hostile or invalid tokens: 401 with a Bearer invalid_token challenge naming the class only.
    let mut with_jku = key.header();
    with_jku["jku"] = json!("https://attacker.example/jwks");
    let mut expired = claims(&up.issuer, AUD, "alice");
    expired["exp"] = json!(idp::now() - 3600);
    let mut wrong_aud = claims(&up.issuer, AUD, "alice");
    wrong_aud["aud"] = json!("billing");
    let mut big = claims(&up.issuer, AUD, "alice");
    big["pad"] = json!("x".repeat(5000));
    let cases = [
        (key.sign(&with_jku, &claims(&up.issuer, AUD, "alice")), "embedded_key"),
        (key.token(&expired), "token_expired"),
        (key.token(&wrong_aud), "bad_audience"),
        (key.token(&claims("https://evil.example", AUD, "alice")), "unknown_issuer"),
        (key.token(&big), "token_too_large"),
        (format!("{}.{}.", idp::b64(&json!({"alg": "none"})), idp::b64(&claims(&up.issuer, AUD, "a"))), "alg_none"),
    ];
    for (token, reason) in cases {
        let r = server.check(bearer(&token)).await;
        let (status, headers) = denied(&r);
        assert_eq!(status, 401, "{reason}");
        assert_eq!(r.status.as_ref().unwrap().code, 16, "UNAUTHENTICATED for {reason}");
        assert_eq!(r.status.as_ref().unwrap().message, reason);
        let ch = header(&headers, "www-authenticate").unwrap_or_else(|| panic!("no challenge for {reason}"));
        assert!(ch.starts_with("Bearer "), "{ch}");
        assert!(ch.contains(r#"error="invalid_token""#), "{ch}");
        // Names a class, never echoes token material.
        let body_parts: Vec<&str> = token.split('.').filter(|p| p.len() > 8).collect();
        assert!(body_parts.iter().all(|p| !ch.contains(p)), "{ch}");
        assert!(header(&headers, "retry-after").is_none());
    }

    // Two Authorization headers: 400 invalid_request.
    let dup = format!("Bearer {good}");
    let r = server.check(check_request(&[("authorization", &dup), ("authorization", &dup)])).await;
    let (status, headers) = denied(&r);
    assert_eq!(status, 400);
    // In the Bearer scheme: the duplicated credential is a bearer token, not an API key.
    assert!(
        header(&headers, "www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer ") && c.contains(r#"error="invalid_request""#)),
        "{headers:?}"
    );

    // The other issuer's provider answers 500 and nothing is cached: 503 + Retry-After, not 401.
    let r = server.check(bearer(&key.token(&claims(&down.issuer, AUD, "bob")))).await;
    let (status, headers) = denied(&r);
    assert_eq!(status, 503, "{r:?}");
    assert_eq!(r.status.as_ref().unwrap().code, 14, "UNAVAILABLE");
    assert!(header(&headers, "retry-after").is_some_and(|v| v.parse::<u32>().is_ok()), "{headers:?}");
    assert!(header(&headers, "www-authenticate").is_none(), "not a credential problem");

    // The healthy issuer is unaffected.
    let r = server.check(bearer(&good)).await;
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    server.stop().await;
}

const VERIFICATIONS: &str = "portcullis_authn_jwt_token_verifications_total";
const NEGATIVE_HITS: &str = r#"portcullis_authn_jwt_token_negative_cache_lookups_total{result="hit"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_forged_token_is_verified_once_but_an_unknown_kid_is_never_remembered() {
    let (rsa1, rsa2) = (TestKey::rsa1(), TestKey::rsa2());
    let up = Idp::start(vec![rsa1.jwk.clone()]).await;
    let down = Idp::start(vec![rsa1.jwk.clone()]).await;
    let server = Server::start_with(&up, &down, "100ms").await;

    // rsa1's kid, rsa2's signature: a forgery. Every repeat gets the same deny; one verification.
    let forged = rsa2.sign(&rsa1.header(), &claims(&up.issuer, AUD, "mallory"));
    let before = server.metric(VERIFICATIONS).await;
    for _ in 0..30 {
        let r = server.check(bearer(&forged)).await;
        assert_eq!(denied(&r).0, 401);
        assert_eq!(r.status.as_ref().unwrap().message, "bad_signature");
    }
    assert_eq!(server.metric(VERIFICATIONS).await - before, 1, "verified once");
    assert_eq!(server.metric(NEGATIVE_HITS).await, 29);

    // A kid the provider has not published yet: refused, but not remembered, so once the
    // provider publishes it the very same token is allowed.
    let early = rsa2.token(&claims(&up.issuer, AUD, "bob"));
    let before = server.metric(VERIFICATIONS).await;
    for _ in 0..3 {
        let r = server.check(bearer(&early)).await;
        assert_eq!(r.status.as_ref().unwrap().message, "unknown_kid", "{r:?}");
    }
    assert_eq!(server.metric(VERIFICATIONS).await - before, 3, "looked up every time");
    up.set_keys(vec![rsa1.jwk.clone(), rsa2.jwk.clone()]);
    common::eventually(common::WAIT, "the same token allowed once its key is published", async || {
        server.check(bearer(&early)).await.status.as_ref().unwrap().code == 0
    })
    .await;
    assert_eq!(server.metric(NEGATIVE_HITS).await, 29, "the unknown-kid token never hit the negative cache");
    server.stop().await;
}
