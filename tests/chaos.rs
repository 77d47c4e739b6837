//! Chaos: the sidecar (`server::start`, real listeners on 127.0.0.1) while what it depends on
//! misbehaves: an identity provider that accepts and never answers, or answers a key set too
//! large to hold; a Kubernetes API server that is not there at start; a policy directory deleted
//! while serving. Each test asserts what is still decided, what fails closed, and what the
//! operator can see. Waits are generous deadlines or counted events, never timing assertions.
mod common;

use std::time::Duration;

use common::idp::{Idp, Mode, TestKey, bearer, claims};
use common::kube::FakeApiServer;
use common::{Sidecar, WAIT, code, denied_header, eventually, http_status, is_allowed, req};
use portcullis::config::Config;
use portcullis::proto::auth::{CheckRequest, CheckResponse};
use serde_json::json;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const AUD: &str = "orders-api";

/// A sidecar whose only policy permits any verified user, with issuers backed by `idps`.
struct JwtSidecar {
    running: Option<portcullis::server::Running>,
    grpc: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl JwtSidecar {
    async fn start(idps: &[&Idp], jwks_yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("policy.cedar"), "permit (principal is User, action, resource);\n")
            .expect("policy");
        let schema = common::repo().join("examples/demo/policies/portcullis.cedarschema");
        std::fs::copy(schema, dir.path().join("portcullis.cedarschema")).expect("schema");
        let issuers: String = idps
            .iter()
            .map(|i| {
                format!(
                    "    - issuer: {}\n      allow_insecure_http: true\n      audiences: [{AUD}]\n      algorithms: [RS256]\n",
                    i.issuer
                )
            })
            .collect();
        let yaml = format!(
            "listen: {{grpc: '127.0.0.1:0', admin: '127.0.0.1:0', diagnostics: null}}
policy: {{dir: {dir}, watch: false}}
authn:
  group_namespace: shared
  issuers:
{issuers}  jwks:
{jwks_yaml}",
            dir = dir.path().display(),
        );
        let cfg = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("config: {e}\n{yaml}"));
        cfg.validate().expect("valid config");
        let running = portcullis::server::start(cfg).await.expect("server starts");
        let grpc = format!("http://{}", running.grpc_addr.expect("grpc"));
        let admin = format!("http://{}", running.admin_addr.expect("admin"));
        Self { running: Some(running), grpc, admin, _dir: dir }
    }

    async fn check(&self, r: CheckRequest) -> CheckResponse {
        check_at(&self.grpc, r).await
    }

    async fn metrics(&self) -> String {
        get(&format!("{}/metrics", self.admin)).await.1
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            tokio::time::timeout(WAIT, r.shutdown()).await.expect("shutdown in time").expect("clean shutdown");
        }
    }
}

/// One check; the deadline is generous (20 s) but below any fetch timeout used as "too long".
async fn check_at(grpc: &str, r: CheckRequest) -> CheckResponse {
    tokio::time::timeout(Duration::from_secs(20), portcullis::cli::send_check(grpc, r))
        .await
        .expect("check answered in time")
        .expect("gRPC call succeeds")
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::Client::new().get(url).timeout(WAIT).send().await.expect("HTTP answers");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

/// A token of `idp` signed by `key` but naming a kid the provider never published.
fn unknown_kid_token(key: &TestKey, idp: &Idp, kid: &str) -> String {
    let mut h = key.header();
    h["kid"] = json!(kid);
    key.sign(&h, &claims(&idp.issuer, AUD, "mallory"))
}

fn assert_unavailable(r: &CheckResponse, what: &str) {
    assert_eq!(http_status(r), 503, "{what}: {r:?}");
    assert_eq!(code(r), 14, "{what}: UNAVAILABLE");
    assert!(denied_header(r, "retry-after").is_some_and(|v| v.parse::<u32>().is_ok()), "{what}: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_that_accepts_and_never_answers() {
    let key = TestKey::rsa1();
    let hung = Idp::start(vec![key.jwk.clone()]).await;
    let healthy = Idp::start(vec![key.jwk.clone()]).await;
    // A fetch timeout far longer than the short unknown-kid wait: only the caller that started
    // the fetch may wait for it.
    let server = JwtSidecar::start(
        &[&hung, &healthy],
        "    unknown_kid_refresh_interval: 10ms\n    fetch_timeout: 8s\n    default_ttl: 1h\n    min_ttl: 1h\n",
    )
    .await;
    let fresh = |idp: &Idp, sub: &str| bearer(&key.token(&claims(&idp.issuer, AUD, sub)));
    assert!(is_allowed(&server.check(fresh(&hung, "warm")).await), "keys load while the provider answers");
    let before = hung.jwks_fetches();

    hung.set_mode(Mode::Hang);
    // The first unknown kid starts a refresh that hangs until the fetch timeout.
    let first = {
        let (grpc, r) = (server.grpc.clone(), bearer(&unknown_kid_token(&key, &hung, "rotated-1")));
        tokio::spawn(async move { check_at(&grpc, r).await })
    };
    eventually(WAIT, "the refresh reaches the provider", async || hung.jwks_fetches() == before + 1).await;

    // Unknown kids arriving meanwhile wait only `unknown_kid_wait`, then 503 + Retry-After (not
    // 401: the kid may exist), and start no fetch of their own.
    let burst: Vec<_> = (0..20)
        .map(|i| {
            let (grpc, r) = (server.grpc.clone(), bearer(&unknown_kid_token(&key, &hung, &format!("forged-{i}"))));
            tokio::spawn(async move { check_at(&grpc, r).await })
        })
        .collect();
    for t in burst {
        assert_unavailable(&t.await.expect("task"), "unknown kid while a refresh is in flight");
    }
    assert!(!first.is_finished(), "the burst was answered before the hung fetch timed out");
    assert_eq!(hung.jwks_fetches(), before + 1, "one outstanding fetch for the issuer");

    // Checks whose key is cached are unaffected, and so is the other issuer.
    for i in 0..5 {
        assert!(is_allowed(&server.check(fresh(&hung, &format!("cached-{i}"))).await), "cached key still verifies");
    }
    assert!(is_allowed(&server.check(fresh(&healthy, "other")).await), "the healthy issuer is unaffected");

    // The refresh that hung fails closed at the fetch timeout: 503, never an allow or a 401.
    assert_unavailable(&first.await.expect("task"), "the caller whose fetch timed out");
    let m = server.metrics().await;
    let timeout = format!(r#"jwks_fetches_total{{issuer="{}",result="timeout"}} 1"#, hung.issuer);
    assert!(m.contains(&timeout), "{m}");
    let busy = format!(r#"jwks_key_lookups_total{{issuer="{}",result="refresh_busy"}} 20"#, hung.issuer);
    assert!(m.contains(&busy), "{m}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_with_too_many_keys_or_too_many_bytes_is_refused_and_the_cached_keys_stay() {
    let key = TestKey::rsa1();
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let server = JwtSidecar::start(
        &[&idp],
        "    unknown_kid_refresh_interval: 10ms\n    default_ttl: 1h\n    min_ttl: 1h\n    max_response_bytes: 4194304\n",
    )
    .await;
    let fresh = |sub: &str| bearer(&key.token(&claims(&idp.issuer, AUD, sub)));
    assert!(is_allowed(&server.check(fresh("warm")).await));

    // 10,000 keys (about 1 MB, under the byte cap): refused by the key-count cap.
    let many: Vec<_> = (0..10_000)
        .map(|i| {
            let mut k = TestKey::ed25519().jwk;
            k["kid"] = json!(format!("k{i}"));
            k
        })
        .collect();
    idp.set_keys(many);
    // And a 10 MB body: refused by the byte cap. Each shape is fetched by an unknown-kid refresh.
    for (mode, label) in [(Mode::Normal, "too_many_keys"), (Mode::Oversized(10 << 20), "too_large")] {
        idp.set_mode(mode);
        let metric = format!(r#"jwks_fetches_total{{issuer="{}",result="{label}"}}"#, idp.issuer);
        eventually(WAIT, label, async || {
            let r = server.check(bearer(&unknown_kid_token(&key, &idp, "k1"))).await;
            assert!(!is_allowed(&r), "{label}: a refused key set grants nothing");
            server.metrics().await.contains(&metric)
        })
        .await;
        // The refused set did not replace the last good one.
        assert!(is_allowed(&server.check(fresh(label)).await), "{label}: cached key kept");
    }
    let m = server.metrics().await;
    assert!(m.contains(&format!(r#"jwks_keys{{issuer="{}"}} 1"#, idp.issuer)), "{m}");
    server.stop().await;
}

fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         users:\n- name: tester\n  user:\n    token: not-a-real-token\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: policies\n\
         current-context: fake\n"
    )
}

async fn health(grpc: &str) -> i32 {
    let mut h = HealthClient::new(common::tcp_channel(grpc).await);
    h.check(HealthCheckRequest { service: String::new() }).await.expect("health answers").get_ref().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_api_unreachable_at_start_then_up() {
    // A port with nothing listening yet; the API server comes up on it later.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("kubeconfig"), kubeconfig(&format!("http://{addr}"))).expect("kubeconfig");
    let cfg_path = tmp.path().join("config.yaml");
    std::fs::write(
        &cfg_path,
        "listen:\n  grpc: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  diagnostics: null\n\
         policy:\n  debounce: 50ms\n  kubernetes:\n    namespaces: [policies]\n\
         \x20   selector: portcullis.dev/policy=true\n    kubeconfig: kubeconfig\n",
    )
    .expect("config");
    let cfg = Config::load(&cfg_path).expect("config loads");
    let running = portcullis::server::start(cfg).await.expect("starts without the API server");
    let grpc = format!("http://{}", running.grpc_addr.expect("grpc"));
    let admin = format!("http://{}", running.admin_addr.expect("admin"));

    let public = || req("GET", "/public/status").build();
    assert_eq!(get(&format!("{admin}/readyz")).await.0, 503, "no policy yet: not ready");
    assert_eq!(health(&grpc).await, ServingStatus::NotServing as i32);
    assert!(!is_allowed(&check_at(&grpc, public()).await), "no policy yet: fail closed");

    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind the chosen port");
    let api = FakeApiServer::start_on(listener).await;
    let selected = &[("portcullis.dev/policy", "true")];
    let schema =
        std::fs::read_to_string(common::repo().join("examples/demo/policies/portcullis.cedarschema")).expect("schema");
    api.put("policies", "schema", selected, &[("portcullis.cedarschema", &schema)]);
    let rule = "@id(\"public-read\")\npermit (principal, action in Action::\"read\", resource)\nwhen { resource.path like \"/public/*\" };\n";
    api.put("policies", "rules", selected, &[("policy.cedar", rule)]);

    // The watcher's backoff is at most 30 s between attempts.
    eventually(Duration::from_secs(60), "ready once the API is up", async || {
        get(&format!("{admin}/readyz")).await.0 == 200
    })
    .await;
    // gRPC health follows readiness (it is updated by its own task, so it may lag a moment).
    eventually(WAIT, "gRPC health SERVING", async || health(&grpc).await == ServingStatus::Serving as i32).await;
    assert!(is_allowed(&check_at(&grpc, public()).await));
    tokio::time::timeout(WAIT, running.shutdown()).await.expect("shutdown in time").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_directory_deleted_while_serving() {
    let sidecar = Sidecar::start().await;
    let public = || req("GET", "/public/a").build();
    assert!(is_allowed(&sidecar.check(public()).await));
    let (_, before) = sidecar.diagnostics_get("/policy").await;
    let before: serde_json::Value = serde_json::from_str(&before).expect("json");
    assert!(before["last_error"].is_null(), "{before}");

    std::fs::remove_dir_all(&sidecar.policy_dir).expect("delete the policy dir");
    let status = eventually(WAIT, "the error is visible at /policy", async || {
        let (_, body) = sidecar.diagnostics_get("/policy").await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        (!v["last_error"].is_null()).then_some(v)
    })
    .await;
    assert!(status["last_error"].as_str().is_some_and(|e| e.contains("cannot read directory")), "{status}");
    assert_eq!(status["version"], before["version"], "the last good snapshot is still live");

    // Still deciding with it, still ready, and the failure counted.
    assert!(is_allowed(&sidecar.check(public()).await));
    assert!(!is_allowed(&sidecar.check(req("GET", "/api/orders").build()).await));
    assert_eq!(sidecar.admin_get("/readyz").await.0, 200);
    let (_, m) = sidecar.admin_get("/metrics").await;
    assert!(m.contains(r#"portcullis_policy_reloads_total{result="unreadable"}"#), "{m}");
    sidecar.stop().await;
}
