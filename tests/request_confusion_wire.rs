//! Credential and header confusion over real sockets (TCP and the Unix socket) against the
//! started sidecar with the demo policies: a credential portcullis reads that does not parse is
//! a 401 even where anonymous callers are permitted, and on allow every client copy of an owned
//! header is removed in every `-`/`_` spelling.
mod common;

use common::*;
use portcullis::proto::auth::{CheckRequest, CheckResponse};

const BEARER_MALFORMED: &str =
    r#"Bearer realm="portcullis", error="invalid_token", error_description="bearer token is malformed""#;

/// Checks one request over TCP and over the Unix socket; both must answer the same.
async fn both(s: &Sidecar, rq: CheckRequest) -> CheckResponse {
    let a = s.tcp().await.check(rq.clone()).await.expect("tcp rpc").into_inner();
    let b = s.uds().await.check(rq).await.expect("uds rpc").into_inner();
    assert_eq!(a, b, "TCP and Unix socket decide alike");
    a
}

fn assert_malformed(r: &CheckResponse, what: &str) {
    assert!(!is_allowed(r), "{what}: {r:?}");
    assert_eq!(http_status(r), 401, "{what}: {r:?}");
    assert_eq!(code(r), 16, "{what}: UNAUTHENTICATED");
    assert_eq!(meta(r, "reason"), "malformed_credential", "{what}");
    assert_eq!(denied_header(r, "www-authenticate").as_deref(), Some(BEARER_MALFORMED), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bearer_on_an_anonymous_route_is_401_not_allow() {
    let s = Sidecar::start().await;
    let alice = token("alice").mint();
    // The route permits anonymous GETs: before, each of these was an allow that forwarded the
    // unverified token.
    for v in [
        format!("Bearer\t{alice}"),
        "Bearer".to_owned(),
        format!("bearer  {alice}"),
        format!("Bearer {alice} extra"),
        format!("Bearer {alice} "),
        format!("BEARER\t{alice}"),
        String::new(),
    ] {
        let r = both(&s, req("GET", "/public/status").header("authorization", &v).build()).await;
        assert_malformed(&r, &format!("{v:?}"));
        assert!(!denied(&r).body.contains(&alice), "the token is never echoed");
    }
    // The same in Envoy's raw header map, and a value that is not UTF-8 at all.
    let rq = req("GET", "/public/status").header("authorization", "Bearer\tx").build_header_map_only(true);
    assert_malformed(&both(&s, rq).await, "raw tab");
    let rq =
        req("GET", "/public/status").raw_header("authorization", b"Bearer \xff\xfe\xfd").build_header_map_only(true);
    assert_malformed(&both(&s, rq).await, "non-UTF-8");

    // An empty API key is refused in its own scheme.
    let r = both(&s, req("GET", "/public/status").header("x-api-key", "").build()).await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (401, "malformed_credential"));
    assert!(denied_header(&r, "www-authenticate").is_some_and(|c| c.starts_with("ApiKey realm=\"portcullis\"")));

    // A well-formed token still works, and a foreign scheme is anonymous and forwarded.
    let r = both(&s, req("GET", "/api/orders").bearer(&alice).build()).await;
    assert!(is_allowed(&r), "{r:?}");
    let r = both(&s, req("GET", "/public/status").header("authorization", "Basic dXNlcjpwYXNz").build()).await;
    assert!(is_allowed(&r), "{r:?}");
    assert_eq!(meta(&r, "principal"), r#"Anonymous::"anonymous""#);
    assert!(!ok(&r).headers_to_remove.contains(&"authorization".to_owned()), "forwarded untouched");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_headers_are_removed_in_every_spelling_on_allow() {
    let s = Sidecar::start().await;
    let alice = token("alice").claim("email", "alice@example.com").mint();
    let spoof = [
        ("x_portcullis_subject", "admin"),
        ("x-portcullis_subject", "admin"),
        ("X_Portcullis_Principal", "User::\"admin\""),
        ("x_portcullis_email", "root@example.com"),
        ("x-http-method-override", "DELETE"),
        ("x_http_method_override", "DELETE"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
    ];

    // A user: the exact names set are overwritten, every other spelling is removed.
    let mut rq = req("GET", "/api/orders").bearer(&alice);
    for (k, v) in spoof {
        rq = rq.header(k, v);
    }
    let r = both(&s, rq.build()).await;
    assert!(is_allowed(&r), "{r:?}");
    let set = upstream_headers(&r);
    assert_eq!(set.get("x-portcullis-subject").map(String::as_str), Some("alice"));
    assert_eq!(set.get("x-portcullis-email").map(String::as_str), Some("alice@example.com"));
    let removed = &ok(&r).headers_to_remove;
    for h in [
        "x_portcullis_subject",
        "x-portcullis_subject",
        "x_portcullis-subject",
        "x_portcullis_principal",
        "x_portcullis_email",
        "x-portcullis-peer",
        "x_portcullis_peer",
        "x-http-method-override",
        "x_http_method_override",
        "x-http_method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x_original_url",
        "x-rewrite-url",
    ] {
        assert!(removed.contains(&h.to_owned()), "{h} must be removed: {removed:?}");
    }
    for h in set.keys() {
        assert!(!removed.contains(h), "{h} is set, so never removed (Envoy removes after adding)");
    }

    // Anonymous: the same over the raw header map.
    let mut rq = req("GET", "/public/status");
    for (k, v) in spoof {
        rq = rq.header(k, v);
    }
    let r = both(&s, rq.build_header_map_only(true)).await;
    assert!(is_allowed(&r), "{r:?}");
    let removed = &ok(&r).headers_to_remove;
    for h in ["x_portcullis_subject", "x-portcullis-subject", "x_portcullis_principal", "x_http_method_override"] {
        assert!(removed.contains(&h.to_owned()), "{h}: {removed:?}");
    }
    assert!(!removed.contains(&"x-portcullis-principal".to_owned()));
    s.stop().await;
}

/// The shared fixtures say what the sidecar does: the owned-header list both suites read is the
/// one the shared config makes portcullis own, in every `-`/`_` spelling, on a real allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owned_header_fixture_is_what_the_shared_config_owns() {
    let yaml = sidecar_yaml(&[
        ("GRPC", "127.0.0.1:0"),
        ("UNIX", "/nonexistent/authz.sock"),
        ("ADMIN", "127.0.0.1:0"),
        ("DIAGNOSTICS", "127.0.0.1:0"),
        ("POLICY_DIR", "/nonexistent"),
        ("ISSUER", ISSUER),
        ("JWKS_FILE", "/nonexistent/jwks.json"),
    ]);
    let cfg = portcullis::config::Config::from_yaml(&yaml).expect("fixture parses");
    cfg.validate().expect("fixture is valid");
    let mut identity = identity_headers();
    identity.sort();
    assert_eq!(cfg.identity_header_names(), identity);
    assert_eq!(cfg.headers.strip_on_allow, owned_headers("strip"));

    let s = Sidecar::start().await;
    let r = both(&s, req("GET", "/public/status").build()).await;
    let removed = &ok(&r).headers_to_remove;
    for name in identity_headers().into_iter().chain(owned_headers("strip")) {
        if name == "x-portcullis-principal" {
            assert!(upstream_headers(&r).contains_key(name), "{name} is set");
            assert!(!removed.contains(&name.to_owned()), "{name} is set, so not removed");
        } else {
            assert!(removed.contains(&name.to_owned()), "{name}: {removed:?}");
        }
        assert!(removed.contains(&name.replace('-', "_")), "{name} with `_`: {removed:?}");
    }
    s.stop().await;
}
