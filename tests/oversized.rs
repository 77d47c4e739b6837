//! A CheckRequest over `limits.max_message_bytes`, over a real gRPC connection (TCP and the Unix
//! socket). The limit is tonic's decode limit: the length prefix of the gRPC message is compared
//! with it before the body is buffered, so memory stays bounded, and the RPC fails with a gRPC
//! status instead of a `CheckResponse` (Envoy, with `failure_mode_allow: false`, then denies with
//! its `status_on_error`). A message of exactly the limit is answered, and the connection and the
//! sidecar keep serving afterwards. No decision is counted for the refused message.
mod common;

use common::*;
use jsonwebtoken::Algorithm;
use portcullis::config::Config;
use portcullis::proto::auth::CheckRequest;
use portcullis::proto::auth::authorization_client::AuthorizationClient;
use prost::Message;
use tonic::transport::Channel;

/// Small, so the test messages stay small; large enough for any ordinary test request.
const LIMIT: usize = 8192;

/// A sidecar from the shared test config with `limits.max_message_bytes: LIMIT`.
async fn start() -> Sidecar {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy_dir = dir.path().join("policies");
    copy_demo_policies(&policy_dir);
    let jwks = portcullis::token::jwks_for(&key("rsa1.pem"), Algorithm::RS256, KID).expect("jwks");
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, serde_json::to_vec(&jwks).expect("jwks json")).expect("write jwks");
    let sock = dir.path().join("authz.sock");
    let mut yaml = sidecar_yaml(&[
        ("GRPC", "127.0.0.1:0"),
        ("UNIX", &sock.display().to_string()),
        ("ADMIN", "127.0.0.1:0"),
        ("DIAGNOSTICS", "127.0.0.1:0"),
        ("POLICY_DIR", &policy_dir.display().to_string()),
        ("ISSUER", ISSUER),
        ("JWKS_FILE", &jwks_path.display().to_string()),
    ]);
    // The shared config has no `limits:` section; this is the override.
    yaml.push_str(&format!("limits:\n  max_message_bytes: {LIMIT}\n"));
    let cfg = Config::from_yaml(&yaml).expect("test config parses");
    cfg.validate().expect("test config is valid");
    assert_eq!(cfg.limits.max_message_bytes, LIMIT);
    let running = portcullis::server::start(cfg).await.expect("sidecar starts");
    Sidecar { running: Some(running), dir, policy_dir }
}

/// A public GET (allowed by the demo policies) whose encoded CheckRequest is exactly `len` bytes,
/// padded with the request body (which portcullis does not read).
fn sized(len: usize) -> CheckRequest {
    let base = req("GET", "/public/status").build();
    let empty = base.encoded_len();
    assert!(empty + 16 < len, "the base request ({empty} bytes) must fit well under {len}");
    // Field tag and length varints grow with the body: search the few candidates around the size.
    for pad in (len - empty).saturating_sub(16)..=len - empty {
        let mut r = base.clone();
        let http = r.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|q| q.http.as_mut());
        http.expect("builder sets attributes.request.http").body = "a".repeat(pad);
        if r.encoded_len() == len {
            return r;
        }
    }
    panic!("no padding gives a {len}-byte CheckRequest");
}

/// Sum of `portcullis_checks_total` over all labels.
async fn checks_total(s: &Sidecar) -> u64 {
    let (status, body) = s.admin_get("/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with("portcullis_checks_total{"))
        .filter_map(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().expect("counter value") as u64)
        .sum()
}

/// Over one connection: at the limit → answered; one byte over, and far over → refused with the
/// transport's status; then the same connection still answers.
async fn exercise(s: &Sidecar, mut client: AuthorizationClient<Channel>, via: &str) {
    let at = client.check(sized(LIMIT)).await.unwrap_or_else(|e| panic!("{via}: at the limit: {e:?}")).into_inner();
    assert!(is_allowed(&at), "{via}: a message of exactly the limit is decided normally: {at:?}");

    let before = checks_total(s).await;
    for len in [LIMIT + 1, LIMIT * 16] {
        let err = tokio::time::timeout(WAIT, client.check(sized(len)))
            .await
            .unwrap_or_else(|_| panic!("{via}: {len} bytes: refused in time"))
            .expect_err("over the limit is not answered with a CheckResponse");
        // tonic's decoder reports the limit as OUT_OF_RANGE (not RESOURCE_EXHAUSTED).
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{via}: {len} bytes: {err:?}");
        assert!(err.message().contains("too large"), "{via}: {err:?}");
    }
    assert_eq!(checks_total(s).await, before, "{via}: a refused message is not a decision");

    let after = tokio::time::timeout(WAIT, client.check(req("GET", "/public/status").build()))
        .await
        .expect("answered in time")
        .unwrap_or_else(|e| panic!("{via}: same connection after the refusal: {e:?}"))
        .into_inner();
    assert!(is_allowed(&after), "{via}: {after:?}");
}

#[tokio::test]
async fn over_max_message_bytes_is_refused_by_the_transport_and_the_sidecar_keeps_serving() {
    let s = start().await;
    exercise(&s, s.tcp().await, "tcp").await;
    exercise(&s, s.uds().await, "unix").await;

    // New connections on both listeners are still served.
    assert!(is_allowed(&s.check(req("GET", "/public/status").build()).await));
    let mut uds = s.uds().await;
    let r = uds.check(sized(LIMIT)).await.expect("unix, new connection").into_inner();
    assert!(is_allowed(&r), "{r:?}");
    s.stop().await;
}
