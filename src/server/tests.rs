//! The server's panic guard, shown over a real socket with a fault hook that exists only in
//! this crate's unit-test build (`cfg(test)`): integration tests, benches and every binary,
//! release or debug, are compiled without it, so no request can ever reach it outside these tests.
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::*;
use crate::client::CheckRequestBuilder;
use crate::proto::auth::authorization_client::AuthorizationClient;
use crate::proto::auth::check_response::HttpResponse;

/// The header that makes [`fault_hook`] act.
const FAULT_HEADER: &str = "x-portcullis-test-fault";

/// Test-only fault injection at the top of the pipeline: `panic` panics inside the check.
pub(super) async fn fault_hook(req: &CheckRequest) {
    let fault = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .and_then(|h| h.headers.get(FAULT_HEADER));
    if fault.is_some_and(|f| f == "panic") {
        panic!("injected fault");
    }
}

const WAIT: Duration = Duration::from_secs(10);

async fn sidecar() -> Running {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo/policies");
    let yaml = format!(
        "listen: {{grpc: '127.0.0.1:0', admin: null, diagnostics: null, drain_timeout: 2s}}\npolicy: {{dir: '{policies}'}}\n"
    );
    let cfg = Config::from_yaml(&yaml).expect("parses");
    cfg.validate().expect("valid");
    start(cfg).await.expect("starts")
}

fn status(r: &CheckResponse) -> i32 {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code),
        Some(HttpResponse::OkResponse(_)) => 200,
        None => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_check_is_denied_and_the_server_keeps_serving() {
    let running = sidecar().await;
    let url = format!("http://{}", running.grpc_addr.expect("tcp"));
    let channel = tonic::transport::Endpoint::try_from(url).expect("url").connect().await.expect("connect");
    let mut client = AuthorizationClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let public = CheckRequestBuilder::new("GET", "/public/a").host("shop");
    let ask = async |c: &mut AuthorizationClient<_>, req| {
        tokio::time::timeout(WAIT, c.check(req)).await.expect("answered").expect("the RPC itself succeeds").into_inner()
    };

    // Wait until the policies are live, so the allow below is the policy's, not a 503.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !running.store.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "policies never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = ask(&mut client, public.build()).await;
    assert_eq!(status(&before), 200, "{before:?}");

    // The same allowed request, but the pipeline panics: a deny (500), never an allow, never an
    // RPC error that Envoy's failure_mode_allow could turn into an allow.
    let boom = ask(&mut client, public.clone().id("rid-panic").header(FAULT_HEADER, "panic").build()).await;
    assert_eq!(status(&boom), 500, "{boom:?}");
    // The deny still names the request, so it can be matched with Envoy's access log.
    let Some(HttpResponse::DeniedResponse(d)) = &boom.http_response else { panic!("not denied: {boom:?}") };
    assert_eq!(d.body, r#"{"error":"internal_error","request_id":"rid-panic"}"#, "{boom:?}");
    assert_ne!(boom.status.as_ref().map_or(0, |s| s.code), 0, "the gRPC status denies too: {boom:?}");

    // Several at once, then the process still answers on the same connection and on a new one.
    let mut pending = Vec::new();
    for _ in 0..8 {
        let mut c = client.clone();
        let req = public.clone().header(FAULT_HEADER, "panic").build();
        pending.push(tokio::spawn(async move { c.check(req).await.map(|r| status(r.get_ref())) }));
    }
    for p in pending {
        assert_eq!(p.await.expect("join").expect("rpc ok"), 500);
    }
    let after = ask(&mut client, public.build()).await;
    assert_eq!(status(&after), 200, "{after:?}");
    let url = format!("http://{}", running.grpc_addr.expect("tcp"));
    let mut fresh = AuthorizationClient::new(
        tonic::transport::Endpoint::try_from(url).expect("url").connect().await.expect("connect"),
    );
    assert_eq!(status(&ask(&mut fresh, public.build()).await), 200);
    let h = health.check(HealthCheckRequest { service: String::new() }).await.expect("health").into_inner();
    assert_eq!(h.status, ServingStatus::Serving as i32, "a panic does not take the sidecar out of service");

    running.shutdown().await.expect("clean shutdown");
}
