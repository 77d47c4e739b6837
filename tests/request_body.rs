//! Request bodies and gRPC calls over gRPC: a policy reads `context.body` only where the schema
//! declares it (typed, so strict validation holds), each body that cannot be read as declared is
//! refused with its own 400/413 reason, an undeclared body is never read, and a gRPC call's
//! service and method decide.
mod common;

use common::*;
use portcullis::config::Config;
use portcullis::proto::auth::{CheckRequest, CheckResponse};

/// The demo schema, with the write actions given a context that declares a body: optional for
/// POST, PATCH and DELETE, required for PUT. The read actions keep the shipped context.
fn schema() -> String {
    let demo = std::fs::read_to_string(repo().join("examples/demo/policies/portcullis.cedarschema")).expect("schema");
    let fields = demo
        .split("type RequestContext = {")
        .nth(1)
        .and_then(|s| s.split("\n};").next())
        .expect("the demo schema has a RequestContext")
        .to_owned();
    let write = r#"action "POST", "PUT", "PATCH", "DELETE" in ["write"] appliesTo {
  principal: [User, Service, ApiClient, Anonymous],
  resource: [Route],
  context: RequestContext,
};"#;
    assert!(demo.contains(write), "the demo schema declares the write actions together");
    let order = "{ amount: Long, currency: String, items?: Set<String> }";
    let declared = format!(
        "type WriteContext = {{{fields}\n  body?: {order},\n}};\n\ntype PutContext = {{{fields}\n  body: {order},\n}};\n\n\
         action \"POST\", \"PATCH\", \"DELETE\" in [\"write\"] appliesTo {{\n  principal: [User, Service, ApiClient, Anonymous],\n  resource: [Route],\n  context: WriteContext,\n}};\n\n\
         action \"PUT\" in [\"write\"] appliesTo {{\n  principal: [User, Service, ApiClient, Anonymous],\n  resource: [Route],\n  context: PutContext,\n}};"
    );
    demo.replace(write, &declared)
}

const POLICIES: &str = r#"
@id("small-orders")
permit (principal is ApiClient, action in [Action::"POST", Action::"PUT"], resource)
when { resource.path like "/orders*" && context has body && context.body.amount <= 100 };

@id("no-gift-cards")
forbid (principal, action, resource)
when { context has body && context.body has items && context.body.items.contains("gift-card") };

@id("orders-lookup-grpc")
permit (principal is ApiClient, action == Action::"POST", resource)
when {
  context has grpc_service && context.grpc_service == "orders.v1.Orders" &&
  context has grpc_method && context.grpc_method == "GetOrder"
};
"#;

const MAX_BODY: usize = 65_536;

async fn start() -> (portcullis::server::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy_dir = dir.path().join("policies");
    copy_demo_policies(&policy_dir);
    std::fs::write(policy_dir.join("portcullis.cedarschema"), schema()).expect("write schema");
    std::fs::write(policy_dir.join("body.cedar"), POLICIES).expect("write policies");
    let sock = dir.path().join("authz.sock");
    let mut yaml = sidecar_yaml(&[
        ("GRPC", "127.0.0.1:0"),
        ("UNIX", &sock.display().to_string()),
        ("ADMIN", "127.0.0.1:0"),
        ("DIAGNOSTICS", "127.0.0.1:0"),
        ("POLICY_DIR", &policy_dir.display().to_string()),
        ("ISSUER", ISSUER),
        ("JWKS_FILE", &dir.path().join("jwks.json").display().to_string()),
    ]);
    assert!(!yaml.contains("\nrequest:"), "the shared config sets no request section");
    yaml.push_str(&format!("request:\n  max_body_bytes: {MAX_BODY}\n  max_body_depth: 32\n"));
    std::fs::write(dir.path().join("jwks.json"), r#"{"keys": []}"#).expect("write jwks");
    let cfg = Config::from_yaml(&yaml).expect("config parses");
    cfg.validate().expect("config is valid");
    (portcullis::server::start(cfg).await.expect("sidecar starts"), dir)
}

/// A request from the `batch` API client with a content type and a body in `body`.
fn with_body(method: &str, path: &str, content_type: &str, body: &str) -> CheckRequest {
    let mut rq = req(method, path).header("x-api-key", "demo-batch-key").header("content-type", content_type).build();
    http(&mut rq).body = body.into();
    rq
}

fn http(rq: &mut CheckRequest) -> &mut portcullis::proto::auth::attribute_context::HttpRequest {
    rq.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()).expect("http attributes")
}

fn refusal(r: &CheckResponse) -> (i32, String) {
    (http_status(r), meta(r, "reason"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_decide_where_declared_and_each_unreadable_body_has_its_reason() {
    let (running, _dir) = start().await;
    let url = format!("http://{}", running.grpc_addr.expect("grpc listener"));
    let mut c = portcullis::proto::auth::authorization_client::AuthorizationClient::new(tcp_channel(&url).await);
    let mut check = async |rq: CheckRequest| c.check(rq).await.expect("rpc").into_inner();
    let json = "application/json";

    // The body decides: a small order is allowed, a large one is not, a forbidden item wins.
    let r = check(with_body("POST", "/orders", json, r#"{"amount": 40, "currency": "EUR"}"#)).await;
    assert!(is_allowed(&r), "{r:?}");
    assert_eq!(policy_ids(&r), vec!["small-orders".to_owned()]);
    let r = check(with_body("POST", "/orders", json, r#"{"amount": 400, "currency": "EUR"}"#)).await;
    assert_eq!(refusal(&r), (403, "no_permit".to_owned()));
    let r =
        check(with_body("POST", "/orders", json, r#"{"amount": 4, "currency": "EUR", "items": ["gift-card"]}"#)).await;
    assert_eq!(refusal(&r), (403, "forbidden_by_policy".to_owned()));
    // `raw_body` (Envoy's pack_as_bytes) reads the same, with a `+json` media type.
    let mut rq = with_body("PUT", "/orders/1", "application/vnd.order+json; charset=utf-8", "");
    http(&mut rq).raw_body = br#"{"amount": 7, "currency": "EUR"}"#.to_vec();
    assert!(is_allowed(&check(rq).await));

    // An optional body that is absent or not JSON is simply not there: no permit, no error.
    let r = check(with_body("POST", "/orders", json, "")).await;
    assert_eq!(refusal(&r), (403, "no_permit".to_owned()));
    let r = check(with_body("POST", "/orders", "application/x-www-form-urlencoded", "amount=40&currency=EUR")).await;
    assert_eq!(refusal(&r), (403, "no_permit".to_owned()));

    // Each body that cannot be read as declared is the client's error, with its reason.
    let deep = "[".repeat(10_000);
    let large = format!(r#"{{"amount": 1, "currency": "{}"}}"#, "x".repeat(MAX_BODY));
    for (method, ct, body, want) in [
        ("PUT", json, "", (400, "body_missing")),
        ("PUT", "text/plain", r#"{"amount": 1, "currency": "EUR"}"#, (400, "body_not_json")),
        ("PUT", json, r#"{"amount": 1, "currency": "EUR""#, (400, "body_not_json")),
        ("POST", json, "{\"amount\": 1} trailing", (400, "body_not_json")),
        ("POST", json, deep.as_str(), (400, "body_too_deep")),
        ("POST", json, large.as_str(), (413, "body_too_large")),
        // Two readings of one body: which `amount` would the upstream take?
        ("POST", json, r#"{"amount": 1, "currency": "EUR", "amount": 1000}"#, (400, "body_ambiguous")),
        // Not the declared type: numbers beyond Long, a float, a string, an undeclared field.
        ("POST", json, r#"{"amount": 1e400, "currency": "EUR"}"#, (400, "body_not_json")),
        ("POST", json, r#"{"amount": 123456789012345678901234567890, "currency": "EUR"}"#, (400, "body_invalid")),
        ("POST", json, r#"{"amount": 9223372036854775808, "currency": "EUR"}"#, (400, "body_invalid")),
        ("POST", json, r#"{"amount": 1.5, "currency": "EUR"}"#, (400, "body_invalid")),
        ("POST", json, r#"{"amount": "1", "currency": "EUR"}"#, (400, "body_invalid")),
        ("POST", json, r#"{"amount": 1, "currency": "EUR", "admin": true}"#, (400, "body_invalid")),
        // Cedar's JSON escapes would make the body a different value than it looks.
        (
            "POST",
            json,
            r#"{"amount": {"__extn": {"fn": "unknown", "arg": "a"}}, "currency": "EUR"}"#,
            (400, "body_invalid"),
        ),
    ] {
        let r = check(with_body(method, "/orders", ct, body)).await;
        let head: String = body.chars().take(60).collect();
        assert_eq!(refusal(&r), (want.0, want.1.to_owned()), "{method} {ct} {head}");
    }
    // A body Envoy truncated (allow_partial_message) is never judged on its first part.
    let mut rq = with_body("POST", "/orders", json, r#"{"amount": 40, "currency": "EUR"}"#);
    http(&mut rq).headers.insert("x-envoy-auth-partial-body".into(), "true".into());
    assert_eq!(refusal(&check(rq).await), (413, "body_too_large".to_owned()));
    // Invalid UTF-8 in raw_body, and `body` and `raw_body` that disagree.
    let mut rq = with_body("POST", "/orders", json, "");
    http(&mut rq).raw_body = b"{\"amount\": 1, \"currency\": \"\xff\"}".to_vec();
    assert_eq!(refusal(&check(rq).await), (400, "body_not_json".to_owned()));
    let mut rq = with_body("POST", "/orders", json, r#"{"amount": 1, "currency": "EUR"}"#);
    http(&mut rq).raw_body = br#"{"amount": 1000, "currency": "EUR"}"#.to_vec();
    assert_eq!(refusal(&check(rq).await), (400, "body_ambiguous".to_owned()));

    // Where no schema declares a body (the read actions), it is never read, however hostile.
    let mut rq = req("GET", "/public/status").header("content-type", json).build();
    http(&mut rq).body = deep.clone();
    let r = check(rq).await;
    assert!(is_allowed(&r), "an undeclared body is ignored: {r:?}");

    tokio::time::timeout(WAIT, running.shutdown()).await.expect("shutdown in time").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_calls_service_and_method_decide() {
    let (running, _dir) = start().await;
    let url = format!("http://{}", running.grpc_addr.expect("grpc listener"));
    let mut c = portcullis::proto::auth::authorization_client::AuthorizationClient::new(tcp_channel(&url).await);
    let mut check = async |rq: CheckRequest| c.check(rq).await.expect("rpc").into_inner();
    let grpc =
        |path: &str, ct: &str| req("POST", path).header("x-api-key", "demo-batch-key").header("content-type", ct);

    let r = check(grpc("/orders.v1.Orders/GetOrder", "application/grpc").build()).await;
    assert!(is_allowed(&r), "{r:?}");
    assert_eq!(policy_ids(&r), vec!["orders-lookup-grpc".to_owned()]);
    // Proxyless gRPC clients send only the raw header map.
    assert!(is_allowed(
        &check(grpc("/orders.v1.Orders/GetOrder", "application/grpc+proto").build_header_map_only(true)).await
    ));
    for (path, ct) in [
        ("/orders.v1.Orders/DeleteOrder", "application/grpc"),
        ("/orders.v1.Billing/GetOrder", "application/grpc"),
        // Not a gRPC call: another content type, or a path that is not /<Service>/<Method>.
        ("/orders.v1.Orders/GetOrder", "application/json"),
        ("/orders.v1.Orders/GetOrder/extra", "application/grpc"),
    ] {
        let r = check(grpc(path, ct).build()).await;
        assert_eq!(refusal(&r), (403, "no_permit".to_owned()), "{path} {ct}");
    }
    // A gRPC body is protobuf, never read as JSON: an optional body is absent, not a 400.
    let mut rq = grpc("/orders.v1.Orders/GetOrder", "application/grpc").build();
    http(&mut rq).raw_body = vec![0, 0, 0, 0, 2, 8, 1];
    assert!(is_allowed(&check(rq).await));

    tokio::time::timeout(WAIT, running.shutdown()).await.expect("shutdown in time").expect("clean shutdown");
}
