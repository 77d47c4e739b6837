//! The server's panic guard, shown over a real socket with a fault hook that exists only in
//! this crate's unit-test build (`cfg(test)`): integration tests, benches and every binary,
//! release or debug, are compiled without it, so no request can ever reach it outside these tests.
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::*;
use crate::client::CheckRequestBuilder;
use crate::proto::auth::CheckResponse;
use crate::proto::auth::authorization_client::AuthorizationClient;
use crate::proto::auth::check_response::HttpResponse;

/// The header that makes [`fault_hook`] act.
const FAULT_HEADER: &str = "x-portcullis-test-fault";

/// Checks parked by the `hold` fault, and the gate that releases them.
static HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

/// Test-only fault injection at the top of the pipeline: `panic` panics inside the check;
/// `hold` parks it until [`GATE`] gets a permit (a check kept in flight).
pub(super) async fn fault_hook(req: &CheckRequestIn) {
    let fault = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .and_then(|h| h.headers.iter().find(|e| e.key == FAULT_HEADER).map(|e| &e.value));
    if fault.is_some_and(|f| f == "panic") {
        panic!("injected fault");
    }
    if fault.is_some_and(|f| f == "hold") {
        HELD.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(p) = GATE.acquire().await {
            p.forget();
        }
    }
}

const WAIT: Duration = Duration::from_secs(10);

async fn sidecar() -> Running {
    sidecar_with("").await
}

async fn sidecar_with(extra: &str) -> Running {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo/policies");
    let yaml = format!(
        "listen: {{grpc: '127.0.0.1:0', admin: null, diagnostics: null, drain_timeout: 2s}}\npolicy: {{dir: '{policies}'}}\n{extra}"
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

/// Over `limits.max_in_flight` a check is shed at once: an in-band 503 `overloaded` with
/// `Retry-After: 1` inside a successful RPC, while the checks in flight are still undecided.
/// Once they finish, checks are decided again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_over_the_in_flight_cap_are_shed_with_503_overloaded() {
    use std::sync::atomic::Ordering;
    let running = sidecar_with("limits: {max_in_flight: 2}\n").await;
    let url = format!("http://{}", running.grpc_addr.expect("tcp"));
    let channel = tonic::transport::Endpoint::try_from(url).expect("url").connect().await.expect("connect");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !running.store.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "policies never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let public = CheckRequestBuilder::new("GET", "/public/a").host("shop");

    // Two checks parked in the pipeline fill the cap.
    let held: Vec<_> = (0..2)
        .map(|i| {
            let mut c = AuthorizationClient::new(channel.clone());
            let req = public.clone().id(&format!("held-{i}")).header(FAULT_HEADER, "hold").build();
            tokio::spawn(async move { c.check(req).await })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while HELD.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "held checks never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The third is answered while the two are still held: shed, not queued.
    let mut client = AuthorizationClient::new(channel.clone());
    let shed = tokio::time::timeout(WAIT, client.check(public.clone().id("rid-shed").build()))
        .await
        .expect("shed check answered while the others are held")
        .expect("the RPC itself succeeds")
        .into_inner();
    assert_eq!(status(&shed), 503, "{shed:?}");
    let Some(HttpResponse::DeniedResponse(d)) = &shed.http_response else { panic!("not denied: {shed:?}") };
    assert_eq!(d.body, r#"{"error":"overloaded","request_id":"rid-shed"}"#, "{shed:?}");
    let retry = d.headers.iter().filter_map(|h| h.header.as_ref()).find(|h| h.key == "retry-after");
    assert_eq!(retry.map(|h| h.value.as_str()), Some("1"), "{shed:?}");
    assert!(held.iter().all(|h| !h.is_finished()), "the held checks were still in flight");

    // Release them: they complete normally, and the cap has room again.
    GATE.add_permits(2);
    for h in held {
        let r = tokio::time::timeout(WAIT, h).await.expect("held check finishes").expect("task").expect("RPC ok");
        assert_eq!(status(r.get_ref()), 200, "{r:?}");
    }
    let after = tokio::time::timeout(WAIT, client.check(public.build())).await.expect("answered").expect("RPC ok");
    assert_eq!(status(after.get_ref()), 200, "{after:?}");
    tokio::time::timeout(WAIT, running.shutdown()).await.expect("stops").expect("clean");
}
