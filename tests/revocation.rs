//! Token revocation on the wire: a started sidecar whose deny-list directory is edited while it
//! runs, and a real HTTP status-list server on 127.0.0.1 serving signed status list tokens
//! (draft-ietf-oauth-status-list). Revocation is checked on every request, cache hits included.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use common::idp::TestKey;
use common::*;
use jsonwebtoken::Algorithm;
use portcullis::config::OnUnavailable;
use portcullis::proto::auth::CheckResponse;
use serde_json::{Value, json};

// ---- the status list server -----------------------------------------------------------------

/// How one status list URI answers.
#[derive(Clone)]
enum Served {
    /// A correctly signed list: one status per index, `bits` each, with an optional `ttl`.
    List { statuses: Vec<u8>, bits: u8, ttl: Option<u64> },
    /// HTTP 500.
    Fail,
    /// Signed, but `typ` is a plain `JWT`.
    WrongTyp,
    /// Signed, but its `sub` names another list.
    WrongSub,
    /// Signed with a key the issuer does not publish.
    ForeignKey,
    /// A list that inflates to far more than `max_list_bytes`.
    Bomb,
    /// `bits: 3`.
    BadBits,
}

struct ListState {
    base: String,
    lists: Mutex<HashMap<String, Served>>,
    fetches: AtomicUsize,
    delay: Mutex<Duration>,
}

struct StatusServer {
    base: String,
    state: Arc<ListState>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(ListState {
            base: base.clone(),
            lists: Mutex::default(),
            fetches: AtomicUsize::new(0),
            delay: Mutex::new(Duration::ZERO),
        });
        let app =
            axum::Router::new().route("/statuslists/{name}", axum::routing::get(serve_list)).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, state, task }
    }

    fn uri(&self, name: &str) -> String {
        format!("{}/statuslists/{name}", self.base)
    }

    fn prefix(&self) -> String {
        format!("{}/statuslists/", self.base)
    }

    fn set(&self, name: &str, s: Served) {
        self.state.lists.lock().unwrap().insert(name.to_owned(), s);
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn signer() -> TestKey {
    // The sidecar's issuer key (tests/common: rsa1.pem as `k1`).
    TestKey::load("rsa1.pem", Algorithm::RS256, KID)
}

/// Statuses packed `bits` at a time, least significant bits first, then zlib and base64url.
fn lst(statuses: &[u8], bits: u8) -> String {
    let per_byte = 8 / bits as usize;
    let mut bytes = vec![0u8; statuses.len().div_ceil(per_byte)];
    for (i, s) in statuses.iter().enumerate() {
        bytes[i / per_byte] |= s << ((i % per_byte) * bits as usize);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(miniz_oxide::deflate::compress_to_vec_zlib(&bytes, 6))
}

async fn serve_list(State(s): State<Arc<ListState>>, UrlPath(name): UrlPath<String>) -> Response {
    s.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = *s.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let served = s.lists.lock().unwrap().get(&name).cloned();
    let uri = format!("{}/statuslists/{name}", s.base);
    let now = idp::now();
    let header = json!({"alg": "RS256", "kid": KID, "typ": "statuslist+jwt"});
    let claims = |sub: &str, list: Value, ttl: Option<u64>| {
        let mut c = json!({"sub": sub, "iat": now, "exp": now + 600, "status_list": list});
        if let Some(t) = ttl {
            c["ttl"] = json!(t);
        }
        c
    };
    let ok_list = json!({"bits": 1, "lst": lst(&[0; 16], 1)});
    let body = match served {
        None => return StatusCode::NOT_FOUND.into_response(),
        Some(Served::Fail) => return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
        Some(Served::List { statuses, bits, ttl }) => {
            signer().sign(&header, &claims(&uri, json!({"bits": bits, "lst": lst(&statuses, bits)}), ttl))
        }
        Some(Served::WrongTyp) => {
            signer().sign(&json!({"alg": "RS256", "kid": KID, "typ": "JWT"}), &claims(&uri, ok_list, None))
        }
        Some(Served::WrongSub) => signer().sign(&header, &claims(&format!("{uri}-other"), ok_list, None)),
        Some(Served::ForeignKey) => {
            TestKey::load("rsa2.pem", Algorithm::RS256, KID).sign(&header, &claims(&uri, ok_list, None))
        }
        Some(Served::Bomb) => {
            let zeros = vec![0u8; 8 * 1024 * 1024];
            let l = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(miniz_oxide::deflate::compress_to_vec_zlib(&zeros, 9));
            signer().sign(&header, &claims(&uri, json!({"bits": 1, "lst": l}), None))
        }
        Some(Served::BadBits) => {
            signer().sign(&header, &claims(&uri, json!({"bits": 3, "lst": lst(&[0; 8], 1)}), None))
        }
    };
    ([("content-type", "application/statuslist+jwt")], body).into_response()
}

// ---- helpers --------------------------------------------------------------------------------

fn status_token(sub: &str, idx: u64, uri: &str) -> String {
    token(sub).claim("status", json!({"status_list": {"idx": idx, "uri": uri}})).mint()
}

fn get(t: &str) -> portcullis::proto::auth::CheckRequest {
    req("GET", "/api/orders/42").bearer(t).build()
}

fn assert_allowed(r: &CheckResponse) {
    assert!(is_allowed(r), "expected allow, got {r:?}");
}

fn assert_revoked(r: &CheckResponse) {
    assert_eq!(http_status(r), 401, "{r:?}");
    assert_eq!(meta(r, "reason"), "token_revoked", "{r:?}");
    let ch = denied_header(r, "www-authenticate").unwrap_or_default();
    assert!(ch.contains(r#"error="invalid_token""#), "{ch}");
}

/// A metric line's value (name with labels, exactly), 0 when absent.
async fn metric(s: &Sidecar, name: &str) -> u64 {
    let (_, text) = s.admin_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("number"))
        .unwrap_or(0)
}

/// Replaces the deny-list file atomically (written under a hidden name, then renamed).
fn write_deny_list(dir: &Path, text: &str) {
    let tmp = dir.join(".deny.yaml.tmp");
    std::fs::write(&tmp, text).expect("write deny-list");
    std::fs::rename(&tmp, dir.join("deny.yaml")).expect("rename deny-list");
}

/// A sidecar whose deny-list directory starts with `initial`.
async fn with_deny_list(initial: &str) -> (Sidecar, PathBuf) {
    let mut deny_dir = PathBuf::new();
    let s = Sidecar::start_configured(
        |_| {},
        |dir, cfg| {
            deny_dir = dir.join("revoked");
            std::fs::create_dir_all(&deny_dir).expect("mkdir");
            write_deny_list(&deny_dir, initial);
            cfg.authn.revocation.dir = Some(deny_dir.clone());
            cfg.authn.revocation.debounce = Duration::from_millis(50);
        },
    )
    .await;
    (s, deny_dir)
}

/// A sidecar whose issuer trusts status lists under `server`'s prefix.
async fn with_status_lists(server: &StatusServer, on_unavailable: OnUnavailable) -> Sidecar {
    with_status_lists_retry(server, on_unavailable, Duration::from_millis(100)).await
}

/// With failed fetches of one URI retried no sooner than `retry`.
async fn with_status_lists_retry(server: &StatusServer, on_unavailable: OnUnavailable, retry: Duration) -> Sidecar {
    let prefix = server.prefix();
    Sidecar::start_configured(
        |_| {},
        move |_, cfg| {
            let iss = &mut cfg.authn.issuers[0];
            iss.allow_insecure_http = true;
            iss.status_list_uris = vec![prefix];
            cfg.authn.status_list.on_unavailable = on_unavailable;
            cfg.authn.status_list.retry_interval = retry;
        },
    )
    .await
}

const CACHE_HITS: &str = r#"portcullis_authn_jwt_token_cache_lookups_total{result="hit"}"#;
const REVOKED_METRIC: &str = r#"portcullis_authn_jwt_token_rejections_total{reason="token_revoked"}"#;

// ---- deny-lists -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jti_added_to_the_deny_list_takes_effect_on_an_already_cached_token() {
    let (s, dir) = with_deny_list("jti: []\n").await;
    let stolen = token("alice").claim("jti", "t-1").mint();
    let other = token("alice").claim("jti", "t-2").mint();
    assert_allowed(&s.check(get(&stolen)).await);
    assert_allowed(&s.check(get(&stolen)).await);
    assert!(metric(&s, CACHE_HITS).await >= 1, "the second check was answered from the token cache");

    write_deny_list(&dir, "jti:\n  - {id: t-1, forget_after: 4102444800}\n");
    let r = eventually(WAIT, "the revoked jti is refused", async || {
        let r = s.check(get(&stolen)).await;
        (!is_allowed(&r)).then_some(r)
    })
    .await;
    assert_revoked(&r);
    assert!(metric(&s, REVOKED_METRIC).await >= 1);
    assert_allowed(&s.check(get(&other)).await);
    // Revoked stays revoked on every later request (no cache lets it back in).
    assert_revoked(&s.check(get(&stolen)).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_before_logs_a_subject_out_everywhere() {
    let (s, dir) = with_deny_list("").await;
    let t = idp::now();
    let old = token("alice").claim("iat", t - 200).mint();
    let old_bob = token("bob").claim("iat", t - 200).mint();
    let new = token("alice").claim("iat", t - 50).mint();
    // A fractional `iat` is a NumericDate like any other (not "no iat", which is revoked).
    let new_fractional = token("alice").claim("iat", t as f64 - 49.5).mint();
    let old_fractional = token("alice").claim("iat", t as f64 - 100.5).mint();
    assert_allowed(&s.check(get(&old)).await);

    write_deny_list(
        &dir,
        &format!("subjects:\n  - {{issuer: '{ISSUER}', subject: alice, revoked_before: {}}}\n", t - 100),
    );
    eventually(WAIT, "alice's old token is refused", async || !is_allowed(&s.check(get(&old)).await)).await;
    assert_revoked(&s.check(get(&old)).await);
    assert_allowed(&s.check(get(&new)).await);
    assert_allowed(&s.check(get(&new_fractional)).await);
    assert_revoked(&s.check(get(&old_fractional)).await);
    assert_allowed(&s.check(get(&old_bob)).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_deny_list_is_refused_and_the_last_good_one_stays() {
    let (s, dir) = with_deny_list("jti: [{id: t-1}]\n").await;
    let revoked = token("alice").claim("jti", "t-1").mint();
    let fine = token("alice").claim("jti", "t-2").mint();
    assert_revoked(&s.check(get(&revoked)).await);

    const REJECTED: &str = r#"portcullis_authn_jwt_revocation_reloads_total{result="rejected"}"#;
    for bad in ["jti: [{id: t-2}, {id: ''}]\n", "jti: {not: a list}\n", "subjects: [{issuer: x, subject: y}]\n"] {
        let before = metric(&s, REJECTED).await;
        write_deny_list(&dir, bad);
        eventually(WAIT, "the bad deny-list is refused", async || metric(&s, REJECTED).await > before).await;
        assert_revoked(&s.check(get(&revoked)).await);
        assert_allowed(&s.check(get(&fine)).await);
    }
    s.stop().await;
}

#[test]
fn an_invalid_deny_list_at_start_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("deny.yaml"), "jti: [{id: a, unknown: 1}]\n").expect("write");
    let cfg = idp::config(&format!("  revocation: {{dir: '{}'}}\n", dir.path().display()));
    let err = portcullis::authn::Authenticator::new(&cfg, &mut prometheus_client::registry::Registry::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("authn.revocation.dir"), "{err}");
}

// ---- status lists ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_suspended_status_is_refused_and_a_valid_one_allowed() {
    let server = StatusServer::start().await;
    server.set("1", Served::List { statuses: vec![0, 1, 0, 2, 0, 0, 0, 0], bits: 2, ttl: None });
    let s = with_status_lists(&server, OnUnavailable::Deny).await;
    let uri = server.uri("1");

    assert_allowed(&s.check(get(&status_token("alice", 0, &uri))).await);
    assert_revoked(&s.check(get(&status_token("alice", 1, &uri))).await);
    assert_revoked(&s.check(get(&status_token("alice", 3, &uri))).await); // 2 = suspended
    assert_allowed(&s.check(get(&status_token("alice", 2, &uri))).await);
    // Past the end of the list: cannot be shown valid.
    assert_revoked(&s.check(get(&status_token("alice", 1000, &uri))).await);
    assert_eq!(server.fetches(), 1, "one fetch, then answered from the cached list");

    // A URI outside the issuer's prefixes is a 401 and is never fetched.
    for bad in [
        format!("{}/elsewhere/1", server.base),
        format!("{}/statuslists/../elsewhere/1", server.base),
        "http://127.0.0.2:9/statuslists/1".to_owned(),
    ] {
        let r = s.check(get(&status_token("alice", 0, &bad))).await;
        assert_eq!(http_status(&r), 401, "{bad}: {r:?}");
        assert_eq!(meta(&r, "reason"), "status_list_uri_not_allowed", "{bad}");
    }
    assert_eq!(server.fetches(), 1);
    // A malformed reference is a malformed token.
    let r = s.check(get(&token("alice").claim("status", json!({"status_list": {"uri": uri}})).mint())).await;
    assert_eq!((http_status(&r), meta(&r, "reason")), (401, "token_malformed".to_owned()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_change_reaches_a_cached_token_once_the_list_expires() {
    let server = StatusServer::start().await;
    server.set("1", Served::List { statuses: vec![0; 8], bits: 1, ttl: Some(1) });
    let s = with_status_lists(&server, OnUnavailable::Deny).await;
    let t = status_token("alice", 5, &server.uri("1"));
    assert_allowed(&s.check(get(&t)).await);
    assert_allowed(&s.check(get(&t)).await);
    assert!(metric(&s, CACHE_HITS).await >= 1);

    server.set("1", Served::List { statuses: vec![0, 0, 0, 0, 0, 1, 0, 0], bits: 1, ttl: Some(1) });
    let r = eventually(WAIT, "the new status is seen", async || {
        let r = s.check(get(&t)).await;
        (!is_allowed(&r)).then_some(r)
    })
    .await;
    assert_revoked(&r);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_status_list_is_503_by_default_and_allowed_when_configured() {
    let server = StatusServer::start().await;
    server.set("down", Served::Fail);
    let uri = server.uri("down");
    let t = status_token("alice", 0, &uri);

    let s = with_status_lists_retry(&server, OnUnavailable::Deny, Duration::from_secs(3600)).await;
    let r = s.check(get(&t)).await;
    assert_eq!(http_status(&r), 503, "{r:?}");
    assert_eq!(meta(&r, "reason"), "status_list_unavailable");
    assert!(denied_header(&r, "retry-after").is_some());
    // Failures are not retried on every request.
    let fetched = server.fetches();
    assert_eq!(http_status(&s.check(get(&t)).await), 503);
    assert_eq!(server.fetches(), fetched, "within retry_interval: no new fetch");
    s.stop().await;

    let s = with_status_lists(&server, OnUnavailable::Allow).await;
    assert_allowed(&s.check(get(&t)).await);
    assert_eq!(metric(&s, r#"portcullis_authn_jwt_status_list_checks_total{result="unavailable_allowed"}"#).await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_list_answers_while_refreshes_fail() {
    let server = StatusServer::start().await;
    server.set("1", Served::List { statuses: vec![0, 1], bits: 1, ttl: Some(1) });
    let s = with_status_lists(&server, OnUnavailable::Deny).await;
    let (good, bad) = (status_token("alice", 0, &server.uri("1")), status_token("alice", 1, &server.uri("1")));
    assert_allowed(&s.check(get(&good)).await);
    server.set("1", Served::Fail);
    eventually(WAIT, "a refresh is attempted and fails", async || {
        assert_allowed(&s.check(get(&good)).await);
        assert_revoked(&s.check(get(&bad)).await);
        server.fetches() >= 2
    })
    .await;
    assert_allowed(&s.check(get(&good)).await);
    assert_revoked(&s.check(get(&bad)).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_fetch() {
    let server = StatusServer::start().await;
    server.set("1", Served::List { statuses: vec![0; 16], bits: 1, ttl: None });
    *server.state.delay.lock().unwrap() = Duration::from_millis(300);
    let s = Arc::new(with_status_lists(&server, OnUnavailable::Deny).await);
    let uri = server.uri("1");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (s, t) = (s.clone(), status_token(&format!("user{i}"), i, &uri));
        tasks.push(tokio::spawn(async move { is_allowed(&s.check(get(&t)).await) }));
    }
    for t in tasks {
        assert!(t.await.expect("task"), "allowed");
    }
    assert_eq!(server.fetches(), 1);
    if let Ok(s) = Arc::try_unwrap(s) {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_hostile_status_lists_are_not_trusted() {
    let server = StatusServer::start().await;
    let cases = [
        ("typ", Served::WrongTyp),
        ("sub", Served::WrongSub),
        ("key", Served::ForeignKey),
        ("bomb", Served::Bomb),
        ("bits", Served::BadBits),
        ("missing", Served::Fail),
    ];
    for (name, served) in cases.iter().cloned() {
        if name != "missing" {
            server.set(name, served);
        }
    }
    let s = with_status_lists(&server, OnUnavailable::Deny).await;
    for (name, _) in cases {
        let r = s.check(get(&status_token("alice", 0, &server.uri(name)))).await;
        assert_eq!(http_status(&r), 503, "{name}: {r:?}");
        assert_eq!(meta(&r, "reason"), "status_list_unavailable", "{name}");
    }
    s.stop().await;
}
