//! Per-route authentication requirements over gRPC: the route's `portcullis.*` context extensions
//! (Envoy's `ExtAuthzPerRoute.check_settings`) decide which credentials, issuers and audiences a
//! route accepts, before any policy. The policy here permits everything, so every refusal below
//! is the requirement's own. Headers that imitate the extensions change nothing.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use portcullis::config::Config;
use portcullis::proto::auth::CheckRequest;
use portcullis::token::TokenSpec;

const PARTNER: &str = "https://partner.test";
const PARTNER_KID: &str = "p1";
const PERMIT_ALL: &str = "@id(\"permit-all\")\npermit (principal, action, resource);\n";

async fn start() -> (portcullis::server::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy_dir = dir.path().join("policies");
    copy_demo_policies(&policy_dir);
    std::fs::write(policy_dir.join("permit-all.cedar"), PERMIT_ALL).expect("write policy");
    let write_jwks = |pem: &str, kid: &str, name: &str| {
        let jwks = portcullis::token::jwks_for(&key(pem), Algorithm::RS256, kid).expect("jwks");
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec(&jwks).expect("jwks json")).expect("write jwks");
        path.display().to_string()
    };
    let jwks = write_jwks("rsa1.pem", KID, "jwks.json");
    let partner_jwks = write_jwks("rsa2.pem", PARTNER_KID, "partner.json");
    let sock = dir.path().join("authz.sock");
    let yaml = sidecar_yaml(&[
        ("GRPC", "127.0.0.1:0"),
        ("UNIX", &sock.display().to_string()),
        ("ADMIN", "127.0.0.1:0"),
        ("DIAGNOSTICS", "127.0.0.1:0"),
        ("POLICY_DIR", &policy_dir.display().to_string()),
        ("ISSUER", ISSUER),
        ("JWKS_FILE", &jwks),
    ]);
    // A second issuer without configured audiences: only a route can narrow its `aud`.
    let anchor = "        email: x-portcullis-email\n";
    assert!(yaml.contains(anchor), "the shared config has one issuer with claim headers");
    let second =
        format!("{anchor}    - issuer: {PARTNER}\n      jwks_file: \"{partner_jwks}\"\n      algorithms: [RS256]\n");
    let yaml = yaml.replacen(anchor, &second, 1).replacen("authn:\n", "authn:\n  group_namespace: per_issuer\n", 1);
    let cfg = Config::from_yaml(&yaml).expect("config parses");
    cfg.validate().expect("config is valid");
    (portcullis::server::start(cfg).await.expect("sidecar starts"), dir)
}

fn mint(issuer: &str, aud: &str) -> String {
    let (pem, kid) = if issuer == ISSUER { ("rsa1.pem", KID) } else { ("rsa2.pem", PARTNER_KID) };
    let spec = TokenSpec {
        issuer: issuer.into(),
        subject: "alice".into(),
        audience: Some(aud.into()),
        groups: Vec::new(),
        ttl: Duration::from_secs(600),
        kid: Some(kid.into()),
        extra: BTreeMap::new(),
    };
    portcullis::token::mint(&key(pem), Algorithm::RS256, &spec).expect("mint")
}

fn on_route(mut rq: CheckRequest, ext: &[(&str, &str)]) -> CheckRequest {
    let a = rq.attributes.as_mut().expect("attributes");
    a.context_extensions = ext.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    rq
}

/// Needs one of our users: a credential from the main issuer, as a bearer token.
const INTERNAL: &[(&str, &str)] =
    &[("portcullis.require", "credential"), ("portcullis.issuers", ISSUER), ("portcullis.credentials", "bearer")];
/// Takes partner tokens for the partner API only (no credential required).
const PARTNER_ROUTE: &[(&str, &str)] = &[("portcullis.issuers", PARTNER), ("portcullis.audiences", "partner-api")];

fn www(r: &portcullis::proto::auth::CheckResponse) -> String {
    denied_header(r, "www-authenticate").unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_token_is_accepted_on_one_route_and_refused_on_another() {
    let (running, _dir) = start().await;
    let url = format!("http://{}", running.grpc_addr.expect("grpc listener"));
    let mut c = portcullis::proto::auth::authorization_client::AuthorizationClient::new(tcp_channel(&url).await);
    let mut check = async |rq: CheckRequest| c.check(rq).await.expect("rpc").into_inner();

    let ours = mint(ISSUER, AUDIENCE);
    let r = check(on_route(req("GET", "/internal/x").bearer(&ours).build(), INTERNAL)).await;
    assert!(is_allowed(&r), "{r:?}");
    assert_eq!(upstream_headers(&r).get("x-portcullis-subject").map(String::as_str), Some("alice"));
    // Issuer: the same token on the partner route.
    let r = check(on_route(req("GET", "/partner/x").bearer(&ours).build(), PARTNER_ROUTE)).await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (401, "issuer_not_accepted"), "{r:?}");
    assert!(www(&r).starts_with("Bearer ") && www(&r).contains(r#"error="invalid_token""#), "{}", www(&r));

    // Audience: a partner token is accepted for the partner API, refused for another audience,
    // and refused on the internal route by issuer.
    let partner = mint(PARTNER, "partner-api");
    let r = check(on_route(req("GET", "/partner/x").bearer(&partner).build(), PARTNER_ROUTE)).await;
    assert!(is_allowed(&r), "{r:?}");
    let r = check(on_route(req("GET", "/internal/x").bearer(&partner).build(), INTERNAL)).await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (401, "issuer_not_accepted"), "{r:?}");
    let elsewhere = mint(PARTNER, "billing-api");
    let r = check(on_route(req("GET", "/partner/x").bearer(&elsewhere).build(), PARTNER_ROUTE)).await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (401, "audience_not_accepted"), "{r:?}");
    assert!(www(&r).contains(r#"error="invalid_token""#), "{}", www(&r));
    // Without a requirement the global config decides: the same token passes.
    let r = check(req("GET", "/partner/x").bearer(&elsewhere).build()).await;
    assert!(is_allowed(&r), "{r:?}");
    // One token, two audience lists.
    let r = check(on_route(req("GET", "/a").bearer(&ours).build(), &[("portcullis.audiences", "demo-api")])).await;
    assert!(is_allowed(&r), "{r:?}");
    let r = check(on_route(req("GET", "/a").bearer(&ours).build(), &[("portcullis.audiences", "other x")])).await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (401, "audience_not_accepted"), "{r:?}");

    tokio::time::timeout(WAIT, running.shutdown()).await.expect("shutdown in time").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_requires_a_credential_refuses_anonymous_callers_before_policy() {
    let (running, _dir) = start().await;
    let url = format!("http://{}", running.grpc_addr.expect("grpc listener"));
    let mut c = portcullis::proto::auth::authorization_client::AuthorizationClient::new(tcp_channel(&url).await);
    let mut check = async |rq: CheckRequest| c.check(rq).await.expect("rpc").into_inner();

    // The permit-all policy allows an anonymous caller where the route says nothing...
    let r = check(req("GET", "/internal/x").build()).await;
    assert!(is_allowed(&r), "{r:?}");
    assert_eq!(policy_ids(&r), vec!["permit-all".to_owned()]);
    // ...and the route's requirement refuses it with the challenge, no policy consulted.
    let r = check(on_route(req("GET", "/internal/x").build(), INTERNAL)).await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (401, "credential_required"), "{r:?}");
    assert_eq!(www(&r), r#"Bearer realm="portcullis""#);
    assert!(policy_ids(&r).is_empty(), "no policy decided: {r:?}");
    // Credentials of kinds the route does not accept are ignored: a mesh peer and an API key
    // prove nothing on a bearer-only route.
    let rq = req("GET", "/internal/x")
        .peer("spiffe://cluster.local/ns/default/sa/web")
        .header("x-api-key", "demo-batch-key")
        .build();
    let r = check(on_route(rq.clone(), INTERNAL)).await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (401, "credential_required"), "{r:?}");
    // The same peer satisfies a route that accepts peers.
    let r = check(on_route(rq, &[("portcullis.require", "credential"), ("portcullis.credentials", "peer")])).await;
    assert!(is_allowed(&r), "{r:?}");
    // A peer-only route cannot challenge an anonymous caller: 403.
    let r = check(on_route(
        req("GET", "/internal/x").build(),
        &[("portcullis.require", "credential"), ("portcullis.credentials", "peer")],
    ))
    .await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (403, "credential_required"), "{r:?}");
    // A bad token is still a 401 of its own, on any route.
    let r = check(on_route(req("GET", "/internal/x").bearer("not.a.jwt").build(), INTERNAL)).await;
    assert_eq!(http_status(&r), 401, "{r:?}");
    assert_ne!(meta(&r, "reason"), "credential_required");

    tokio::time::timeout(WAIT, running.shutdown()).await.expect("shutdown in time").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requirements_fail_closed_and_headers_cannot_imitate_them() {
    let (running, _dir) = start().await;
    let url = format!("http://{}", running.grpc_addr.expect("grpc listener"));
    let mut c = portcullis::proto::auth::authorization_client::AuthorizationClient::new(tcp_channel(&url).await);
    let mut check = async |rq: CheckRequest| c.check(rq).await.expect("rpc").into_inner();

    let ours = mint(ISSUER, AUDIENCE);
    let broken: &[&[(&str, &str)]] = &[
        &[("portcullis.require", "yes")],
        &[("portcullis.requires", "credential")],
        &[("Portcullis.Require", "credential")],
        &[("portcullis.issuers", "https://unconfigured.test")],
        &[("portcullis.issuers", "")],
        &[("portcullis.audiences", "demo-api,other")],
        &[("portcullis.credentials", "bearer jwt")],
        &[("portcullis.credentials", "peer"), ("portcullis.issuers", ISSUER)],
    ];
    for ext in broken {
        // Even a caller the route would otherwise accept: the route's config is what is wrong.
        for rq in [req("GET", "/a").build(), req("GET", "/a").bearer(&ours).build()] {
            let r = check(on_route(rq, ext)).await;
            assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (500, "invalid_route_requirement"), "{ext:?}");
        }
    }

    // Headers that imitate a requirement, in the merged and the raw map, change nothing...
    let partner = mint(PARTNER, "billing-api");
    for rq in [
        req("GET", "/a").header("portcullis.require", "credential").build(),
        req("GET", "/a").header("ext:portcullis.require", "credential").build(),
        req("GET", "/a").header("x-portcullis-require", "credential").build_header_map_only(true),
        req("GET", "/a").bearer(&partner).header("portcullis.issuers", ISSUER).build(),
        req("GET", "/a").bearer(&partner).header("portcullis.audiences", "partner-api").build_header_map(true),
    ] {
        let r = check(rq).await;
        assert!(is_allowed(&r), "a header is not a route requirement: {r:?}");
    }
    // ...nor can a header undo a real one.
    let rq = req("GET", "/a").header("portcullis.require", "").header("portcullis.credentials", "peer").build();
    let r = check(on_route(rq, INTERNAL)).await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (401, "credential_required"), "{r:?}");

    tokio::time::timeout(WAIT, running.shutdown()).await.expect("shutdown in time").expect("clean shutdown");
}
