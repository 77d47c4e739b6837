//! The request spine over real sockets: a started sidecar with the demo policies, called with the
//! generated tonic client over TCP and over the Unix socket.
mod common;

use common::*;
use portcullis::proto::auth::CheckResponse;

const FRONTEND: &str = "spiffe://cluster.local/ns/frontend/sa/web";
const BACKEND: &str = "spiffe://cluster.local/ns/backend/sa/worker";

fn assert_allow(r: &CheckResponse, policy: &str) {
    assert!(is_allowed(r), "expected allow by {policy}, got {r:?}");
    assert_eq!(meta(r, "decision"), "allow");
    assert_eq!(policy_ids(r), vec![policy.to_owned()]);
}

fn assert_deny(r: &CheckResponse, http: i32, reason: &str) {
    assert!(!is_allowed(r), "expected deny ({reason}), got {r:?}");
    assert_ne!(code(r), 0);
    assert_eq!(http_status(r), http, "{r:?}");
    assert_eq!(meta(r, "decision"), "deny");
    assert_eq!(meta(r, "reason"), reason, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_policies_decide_the_matrix() {
    let s = Sidecar::start().await;
    let alice = token("alice").mint();
    let admin = token("root").groups(&["admins"]).mint();

    // Anonymous: public routes only; anything else asks for a credential.
    let r = s.check(req("GET", "/public/status").build()).await;
    assert_allow(&r, "public-read");
    assert_eq!(meta(&r, "principal"), r#"Anonymous::"anonymous""#);
    let r = s.check(req("POST", "/public/status").build()).await;
    assert_deny(&r, 401, "credential_required");
    let r = s.check(req("GET", "/api/orders/42").build()).await;
    assert_deny(&r, 401, "credential_required");
    assert_eq!(denied_header(&r, "www-authenticate").as_deref(), Some(r#"Bearer realm="portcullis""#));

    // Users read the API, only admins write it.
    let r = s.check(req("GET", "/api/orders/42").bearer(&alice).build()).await;
    assert_allow(&r, "users-read-api");
    assert_eq!(meta(&r, "principal"), r#"User::"alice""#);
    let r = s.check(req("HEAD", "/api/orders/42").bearer(&alice).build()).await;
    assert_allow(&r, "users-read-api");
    let r = s.check(req("POST", "/api/orders").bearer(&alice).build()).await;
    assert_deny(&r, 403, "no_permit");
    assert!(policy_ids(&r).is_empty());
    assert_eq!(denied_header(&r, "www-authenticate"), None, "a known caller gets no challenge");
    let r = s.check(req("DELETE", "/api/orders/42").bearer(&admin).build()).await;
    assert_allow(&r, "admins-write-api");

    // The admin area: the forbid wins for everyone but admins.
    let r = s.check(req("GET", "/admin/users").bearer(&alice).build()).await;
    assert_deny(&r, 403, "forbidden_by_policy");
    assert_eq!(policy_ids(&r), vec!["admin-area-admins-only"]);
    let r = s.check(req("DELETE", "/admin/users/7").bearer(&admin).build()).await;
    assert_allow(&r, "admins-admin-area");
    let r = s.check(req("GET", "/admin").build()).await;
    assert_deny(&r, 401, "credential_required");

    // A method the schema does not know is denied, even where a policy permits every action.
    let r = s.check(req("PROPFIND", "/admin/users").bearer(&admin).build()).await;
    assert_deny(&r, 403, "unmapped_request");
    let r = s.check(req("G:ET", "/public/status").build()).await;
    assert_deny(&r, 400, "bad_method");

    // mTLS peers: frontend services read the API.
    let r = s.check(req("GET", "/api/catalog").peer(FRONTEND).build()).await;
    assert_allow(&r, "frontend-service-read");
    assert_eq!(meta(&r, "principal"), format!(r#"Service::"{FRONTEND}""#));
    let r = s.check(req("POST", "/api/catalog").peer(FRONTEND).build()).await;
    assert_deny(&r, 403, "no_permit");
    let r = s.check(req("GET", "/api/catalog").peer(BACKEND).build()).await;
    assert_deny(&r, 403, "no_permit");
    let r = s.check(req("GET", "/api/catalog").peer("spiffe://evil.example/ns/frontend/sa/web").build()).await;
    assert_deny(&r, 403, "untrusted_peer");

    // API key client: POST to /api/jobs only.
    let r = s.check(req("POST", "/api/jobs/nightly").header("x-api-key", "demo-batch-key").build()).await;
    assert_allow(&r, "batch-client-write");
    assert_eq!(meta(&r, "principal"), r#"ApiClient::"batch""#);
    let r = s.check(req("POST", "/api/orders").header("x-api-key", "demo-batch-key").build()).await;
    assert_deny(&r, 403, "no_permit");
    let r = s.check(req("POST", "/api/jobs/nightly").header("x-api-key", "not-the-key").build()).await;
    assert_deny(&r, 401, "invalid_api_key");

    // Tenant header must match the token's tenant claim.
    let acme = token("carol").claim("tenant", "acme").mint();
    let path = "/api/tenants/acme/invoices";
    let r = s.check(req("GET", path).bearer(&acme).header("x-tenant", "acme").build()).await;
    assert_allow(&r, "users-read-api");
    let r = s.check(req("GET", path).bearer(&acme).header("x-tenant", "globex").build()).await;
    assert_deny(&r, 403, "forbidden_by_policy");
    assert_eq!(policy_ids(&r), vec!["tenant-header-must-match"]);
    let r = s.check(req("GET", path).bearer(&acme).build()).await;
    assert_deny(&r, 403, "forbidden_by_policy");
    let r = s.check(req("GET", path).bearer(&alice).header("x-tenant", "acme").build()).await;
    assert_deny(&r, 403, "forbidden_by_policy");

    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_and_tcp_decide_alike() {
    let s = Sidecar::start().await;
    let alice = token("alice").mint();
    let mut tcp = s.tcp().await;
    let mut uds = s.uds().await;
    for rq in [
        req("GET", "/public/status").build(),
        req("GET", "/api/orders").bearer(&alice).build(),
        req("POST", "/api/orders").bearer(&alice).build(),
        req("GET", "/api/orders").build(),
        req("GET", "/public%2fadmin").build(),
    ] {
        let a = tcp.check(rq.clone()).await.expect("tcp rpc").into_inner();
        let b = uds.check(rq).await.expect("uds rpc").into_inner();
        assert_eq!(a, b);
    }
    let r = uds.check(req("GET", "/api/orders").bearer(&alice).build()).await.expect("uds rpc").into_inner();
    assert_eq!(policy_ids(&r), vec!["users-read-api"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_401_with_a_bearer_challenge() {
    let s = Sidecar::start().await;
    let cases = [
        ("garbage", "not-a-jwt".to_owned()),
        ("three garbage parts", "aaa.bbb.ccc".to_owned()),
        ("wrong key", token("alice").signed_with("rsa2.pem").mint()),
        ("expired", token("alice").expired().mint()),
        ("alg none", alg_none_token("alice")),
        ("wrong audience", token("alice").claim("aud", "someone-else").mint()),
        ("unknown issuer", token("alice").claim("iss", "https://evil.example").mint()),
    ];
    for (what, t) in cases {
        // Even on a public route: a bad credential is never downgraded to anonymous.
        for path in ["/api/orders", "/public/status"] {
            let r = s.check(req("GET", path).bearer(&t).id("rid-bad").build()).await;
            assert!(!is_allowed(&r), "{what} on {path} must not be allowed: {r:?}");
            assert_eq!(http_status(&r), 401, "{what}: {r:?}");
            assert_eq!(code(&r), 16, "{what}: UNAUTHENTICATED");
            let ch = denied_header(&r, "www-authenticate").unwrap_or_default();
            assert!(ch.starts_with(r#"Bearer realm="portcullis""#), "{what}: {ch}");
            assert!(ch.contains(r#"error="invalid_token""#), "{what}: {ch}");
            assert_eq!(meta(&r, "request_id"), "rid-bad");
            assert!(!denied(&r).body.contains(&t), "{what}: the token must not be echoed");
        }
    }
    let sr = &s;
    let label = |t: String| async move { meta(&sr.check(req("GET", "/api/x").bearer(&t).build()).await, "reason") };
    assert_eq!(label(token("alice").expired().mint()).await, "token_expired");
    assert_eq!(label(alg_none_token("alice")).await, "alg_none");
    assert_eq!(label(token("alice").signed_with("rsa2.pem").mint()).await, "bad_signature");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_overwrite_and_spoofed_copies_are_stripped() {
    let s = Sidecar::start().await;
    let alice = token("alice").claim("email", "alice@example.com").mint();
    let mut rq = req("GET", "/api/orders/42").bearer(&alice);
    for h in identity_headers() {
        rq = rq.header(h, "spoofed-by-client");
    }
    let r = s.check(rq.build()).await;
    let set = upstream_headers(&r);
    assert_eq!(set.get("x-portcullis-principal").map(String::as_str), Some(r#"User::"alice""#));
    assert_eq!(set.get("x-portcullis-subject").map(String::as_str), Some("alice"));
    assert_eq!(set.get("x-portcullis-issuer").map(String::as_str), Some(ISSUER));
    assert_eq!(set.get("x-portcullis-email").map(String::as_str), Some("alice@example.com"));
    let removed = &ok(&r).headers_to_remove;
    // Other spellings (`_`) and the strip list are removed too: request_confusion_wire checks them.
    let canonical = |h: &&String| h.starts_with("x-portcullis-") && !h.contains('_');
    let mut all: Vec<&str> =
        set.keys().map(String::as_str).chain(removed.iter().filter(canonical).map(String::as_str)).collect();
    all.sort();
    let mut want = identity_headers();
    want.sort();
    assert_eq!(all, want, "every identity header is either set or removed, never both");
    assert!(removed.contains(&"x-portcullis-peer".to_owned()));
    assert!(removed.contains(&"x-portcullis-client".to_owned()));
    // The policy ids go back to the client, not the upstream.
    let back = &ok(&r).response_headers_to_add;
    assert_eq!(back.len(), 1);
    assert_eq!(
        back[0].header.as_ref().map(|h| (h.key.as_str(), h.value.as_str())),
        Some(("x-portcullis-policy", "users-read-api"))
    );

    // An anonymous allow strips every identity header but the principal.
    let mut rq = req("GET", "/public/status");
    for h in identity_headers() {
        rq = rq.header(h, "spoofed-by-client");
    }
    let r = s.check(rq.build()).await;
    let set = upstream_headers(&r);
    assert_eq!(set.keys().collect::<Vec<_>>(), vec!["x-portcullis-principal"]);
    let mut removed: Vec<String> = ok(&r).headers_to_remove.iter().filter(canonical).cloned().collect();
    removed.sort();
    let mut want: Vec<String> =
        identity_headers().iter().filter(|h| **h != "x-portcullis-principal").map(|h| h.to_string()).collect();
    want.sort();
    assert_eq!(removed, want);

    // A peer calling: the peer header is set from the certificate, not the client's copy.
    let r = s
        .check(req("GET", "/api/catalog").peer(FRONTEND).header("x-portcullis-peer", "spiffe://x/ns/y/sa/z").build())
        .await;
    assert_eq!(upstream_headers(&r).get("x-portcullis-peer").map(String::as_str), Some(FRONTEND));
    assert!(ok(&r).headers_to_remove.contains(&"x-portcullis-subject".to_owned()));

    // An API client.
    let r = s.check(req("POST", "/api/jobs/1").header("x-api-key", "demo-batch-key").build()).await;
    assert_eq!(upstream_headers(&r).get("x-portcullis-client").map(String::as_str), Some("batch"));

    // A user calling through an mTLS peer: both identities reach the upstream.
    let r = s.check(req("GET", "/api/orders").peer(FRONTEND).bearer(&alice).build()).await;
    let set = upstream_headers(&r);
    assert_eq!(set.get("x-portcullis-subject").map(String::as_str), Some("alice"));
    assert_eq!(set.get("x-portcullis-peer").map(String::as_str), Some(FRONTEND));
    assert_eq!(meta(&r, "principal"), r#"User::"alice""#);

    // A claim that cannot be a header value (CR/LF) is never sent, and its header is stripped.
    let crlf = token("mallory").claim("email", "m@example.com\r\nx-portcullis-subject: root").mint();
    let r = s.check(req("GET", "/api/orders").bearer(&crlf).header("x-portcullis-email", "spoofed").build()).await;
    assert!(!upstream_headers(&r).contains_key("x-portcullis-email"));
    assert!(ok(&r).headers_to_remove.contains(&"x-portcullis-email".to_owned()));
    assert_eq!(upstream_headers(&r).get("x-portcullis-subject").map(String::as_str), Some("mallory"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_are_normalized_or_refused_on_the_wire() {
    let s = Sidecar::start().await;
    let alice = token("alice").mint();

    // Dot segments, encoded or not, resolve before policies see the path: never public-read.
    for p in ["/public/../admin", "/public/%2e%2e/admin", "/public/%2E./admin", "//admin", "/public/./../%61dmin"] {
        let r = s.check(req("GET", p).build()).await;
        assert!(!is_allowed(&r), "{p}: {r:?}");
        assert_eq!(policy_ids(&r), vec!["admin-area-admins-only"], "{p} must be seen as /admin");
        let r = s.check(req("GET", p).bearer(&alice).build()).await;
        assert_eq!(http_status(&r), 403, "{p}");
        assert_eq!(meta(&r, "reason"), "forbidden_by_policy", "{p}");
    }

    // Ambiguous separators are refused outright.
    for (p, reason) in [
        ("/public%2fadmin", "encoded_separator"),
        ("/public%2Fadmin", "encoded_separator"),
        ("/public%5cadmin", "encoded_separator"),
        ("/public\\admin", "backslash"),
        ("/public/%00/x", "bad_escape"),
        ("/public/../../admin", "above_root"),
        ("public/status", "bad_path"),
    ] {
        let r = s.check(req("GET", p).bearer(&alice).id("rid-400").build()).await;
        assert_eq!(http_status(&r), 400, "{p}: {r:?}");
        assert_eq!(code(&r), 3, "{p}: INVALID_ARGUMENT");
        assert_eq!(meta(&r, "reason"), reason, "{p}");
        assert_eq!(meta(&r, "request_id"), "rid-400");
    }

    // Path parameters on dot segments (`..;x`) are read as `..` by some upstream servers
    // (Tomcat, Spring): ambiguous, so refused rather than matched as /public/*.
    for p in ["/public/..;/admin", "/public/..;jsessionid=1/admin", "/public/%2e%2e;/admin", "/public/.;/status"] {
        let r = s.check(req("GET", p).build()).await;
        assert!(!is_allowed(&r), "{p}: {r:?}");
        assert_eq!(http_status(&r), 400, "{p}: {r:?}");
        assert_eq!(meta(&r, "reason"), "dot_segment_parameter");
    }
    // A parameter on any other segment is refused too (request.matrix_parameters: refuse).
    let r = s.check(req("GET", "/public/status;v=1").build()).await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (400, "path_parameter"));

    // Oversized input is refused before any work.
    let long = format!("/public/{}", "a".repeat(9000));
    let r = s.check(req("GET", &long).build()).await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (400, "path_too_long"));

    // Case matters: /PUBLIC is not /public.
    let r = s.check(req("GET", "/PUBLIC/status").build()).await;
    assert!(!is_allowed(&r));
    // Duplicate slashes collapse toward the real route.
    assert_allow(&s.check(req("GET", "//public//status").build()).await, "public-read");
    assert_allow(&s.check(req("GET", "/public/x/../status/").build()).await, "public-read");

    // The query string never changes the path.
    assert_allow(&s.check(req("GET", "/public/status?next=/../admin").build()).await, "public-read");
    let r = s.check(req("GET", "/admin?x=/public/status").build()).await;
    assert_eq!(policy_ids(&r), vec!["admin-area-admins-only"]);
    let r = s.check(req("GET", "/api/orders?path=/public/x").build()).await;
    assert_deny(&r, 401, "credential_required");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_map_only_requests_are_read_like_envoy_merged_ones() {
    let s = Sidecar::start().await;
    let alice = token("alice").claim("tenant", "acme").mint();
    for raw in [false, true] {
        let r = s.check(req("GET", "/public/status").build_header_map_only(raw)).await;
        assert_allow(&r, "public-read");
        let rq = req("GET", "/api/tenants/acme/x")
            .host("shop.default.svc.cluster.local:8080")
            .bearer(&alice)
            .header("x-tenant", "acme")
            .header("x-request-id", "rid-hm");
        let r = s.check(rq.build_header_map_only(raw)).await;
        assert_allow(&r, "users-read-api");
        assert_eq!(meta(&r, "request_id"), "rid-hm", "request id falls back to x-request-id");
        assert_eq!(upstream_headers(&r).get("x-portcullis-subject").map(String::as_str), Some("alice"));
        let rq = req("GET", "/api/tenants/acme/x").bearer(&alice).header("x-tenant", "globex");
        assert_deny(&s.check(rq.build_header_map_only(raw)).await, 403, "forbidden_by_policy");
        let r = s.check(req("POST", "/api/orders").bearer(&alice).build_header_map_only(raw)).await;
        assert_deny(&r, 403, "no_permit");
        let r = s.check(req("GET", "/public/../admin").build_header_map_only(raw)).await;
        assert!(!is_allowed(&r));
        let r =
            s.check(req("GET", "/public%2fadmin").header("x-request-id", "rid-400").build_header_map_only(raw)).await;
        assert_eq!(http_status(&r), 400);
        assert_eq!(meta(&r, "request_id"), "rid-400", "a refusal still carries the request id");
    }

    // A context header sent twice is read as Envoy's merged map reads it (joined with ","),
    // never as its first copy: the upstream may act on the second one.
    let rq = req("GET", "/api/tenants/acme/x").bearer(&alice).header("x-tenant", "acme").header("x-tenant", "globex");
    let r = s.check(rq.build_header_map_only(false)).await;
    assert_deny(&r, 403, "forbidden_by_policy");

    // Two tokens in the raw map are ambiguous: never allowed, whichever of them is valid.
    let bob = token("bob").mint();
    let rq = req("GET", "/api/orders").bearer(&alice).bearer(&bob);
    let r = s.check(rq.build_header_map_only(false)).await;
    assert!(!is_allowed(&r), "{r:?}");
    assert!([400, 401].contains(&http_status(&r)), "{r:?}");

    // Two API keys: ambiguous, refused.
    let rq = req("POST", "/api/jobs/1").header("x-api-key", "demo-batch-key").header("x-api-key", "demo-batch-key");
    let r = s.check(rq.build_header_map_only(false)).await;
    assert_deny(&r, 400, "duplicate_credential");
    let challenge = denied(&r).headers.iter().filter_map(|h| h.header.as_ref()).find(|h| h.key == "www-authenticate");
    assert!(challenge.is_some_and(|h| h.value.starts_with("ApiKey ")), "{r:?}");

    // Too many headers.
    let mut rq = req("GET", "/public/status");
    for i in 0..250 {
        rq = rq.header(&format!("x-h{i}"), "v");
    }
    assert_deny(&s.check(rq.build_header_map_only(false)).await, 400, "too_many_headers");

    // Nothing at all.
    let r = s.check(portcullis::proto::auth::CheckRequest::default()).await;
    assert_deny(&r, 400, "missing_http");

    // No method and no path at all.
    let mut empty = req("GET", "/").build_header_map_only(false);
    if let Some(h) = empty.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
        h.header_map = None;
    }
    let r = s.check(empty).await;
    assert_eq!(http_status(&r), 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_authorization_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let s = Sidecar::start().await;
    let mut c = ServerReflectionClient::new(tcp_channel(&s.grpc_url()).await);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = c.server_reflection_info(tokio_stream::iter([ask])).await.expect("reflection rpc").into_inner();
    let msg = tokio::time::timeout(WAIT, stream.message()).await.expect("in time").expect("ok").expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("{msg:?}") };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"envoy.service.auth.v3.Authorization"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    drop(stream);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_removes_the_socket() {
    let s = Sidecar::start().await;
    let sock = s.unix_path();
    let tcp_url = s.grpc_url();
    assert!(sock.exists());
    let mut c = s.uds().await;
    let r = c.check(req("GET", "/public/status").build()).await.expect("rpc").into_inner();
    assert!(is_allowed(&r));
    // A pooled keep-alive admin connection and an idle gRPC channel stay open across shutdown:
    // neither may hold it up.
    let http = reqwest::Client::new();
    let ready = http.get(s.admin_url("/readyz")).timeout(WAIT).send().await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    let admin = s.admin_url("/healthz");

    s.stop().await;
    assert!(!sock.exists(), "socket file removed on shutdown");
    assert!(tokio::net::UnixStream::connect(&sock).await.is_err());
    let tcp_gone = tonic::transport::Endpoint::try_from(tcp_url).expect("endpoint").connect().await;
    assert!(tcp_gone.is_err(), "TCP listener closed");
    assert!(reqwest::get(admin).await.is_err(), "admin listener closed");
    drop((c, http));
}
