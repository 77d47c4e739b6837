//! Rate limiting over a real gRPC connection: a caller over its quota gets 429 + Retry-After,
//! another caller is unaffected.
use portcullis::cli::send_check;
use portcullis::client::CheckRequestBuilder;
use portcullis::config::Config;
use portcullis::proto::auth::check_response::HttpResponse;

fn request(ip: &str) -> portcullis::proto::auth::CheckRequest {
    CheckRequestBuilder::new("GET", "/public/status").host("shop.local").source_ip(ip).build()
}

#[tokio::test]
async fn a_caller_over_quota_gets_429_with_retry_after_and_others_do_not() {
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/policies");
    let yaml = format!(
        "listen: {{grpc: '127.0.0.1:0', admin: null, diagnostics: null}}\npolicy: {{dir: '{}', watch: false}}\n\
         rate_limit: {{requests_per_second: 1, burst: 2}}\n",
        policies.display()
    );
    let cfg = Config::from_yaml(&yaml).expect("config");
    let running = portcullis::server::start(cfg).await.expect("start");
    let url = format!("http://{}", running.grpc_addr.expect("tcp addr"));

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let r = send_check(&url, request("10.0.0.1")).await.expect("check");
        match r.http_response {
            Some(HttpResponse::OkResponse(_)) => statuses.push(200),
            Some(HttpResponse::DeniedResponse(d)) => {
                statuses.push(d.status.map(|s| s.code).unwrap_or(0));
                retry_after = d
                    .headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .find(|h| h.key == "retry-after")
                    .map(|h| h.value.clone());
            }
            None => statuses.push(0),
        }
    }
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    assert!(statuses[2..].iter().all(|s| *s == 429), "{statuses:?}");
    let secs: u32 = retry_after.expect("retry-after header").parse().expect("seconds");
    assert!(secs >= 1);

    let other = send_check(&url, request("10.0.0.2")).await.expect("check");
    assert!(matches!(other.http_response, Some(HttpResponse::OkResponse(_))), "{other:?}");
    running.shutdown().await.expect("shutdown");
}
