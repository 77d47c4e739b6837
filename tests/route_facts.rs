//! Route facts over gRPC: Envoy's per-route `context_extensions` and the string metadata of the
//! configured namespaces reach policies as reserved `Route` tags (`ext:<key>`,
//! `route_metadata:<namespace>:<key>`). Headers that imitate them change nothing, and a request
//! carrying more facts than the bound is a 400 with a reason, never truncated.
mod common;

use common::*;
use jsonwebtoken::Algorithm;
use portcullis::config::Config;
use portcullis::proto::auth::CheckRequest;
use portcullis::proto::core::Metadata;

const ROUTE_POLICIES: &str = r#"
@id("tenant-a-route")
permit (principal, action in Action::"read", resource)
when { resource.path like "/tenant/*" && resource.hasTag("ext:tenant") && resource.getTag("ext:tenant") == "a" };

@id("gold-route")
permit (principal, action in Action::"read", resource)
when {
  resource.path like "/gold/*" &&
  resource.hasTag("route_metadata:com.example.route:tier") &&
  resource.getTag("route_metadata:com.example.route:tier") == "gold"
};
"#;

async fn start() -> (portcullis::server::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy_dir = dir.path().join("policies");
    copy_demo_policies(&policy_dir);
    std::fs::write(policy_dir.join("route.cedar"), ROUTE_POLICIES).expect("write route policies");
    let jwks = portcullis::token::jwks_for(&key("rsa1.pem"), Algorithm::RS256, KID).expect("jwks");
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, serde_json::to_vec(&jwks).expect("jwks json")).expect("write jwks");
    let sock = dir.path().join("authz.sock");
    let yaml = sidecar_yaml(&[
        ("GRPC", "127.0.0.1:0"),
        ("UNIX", &sock.display().to_string()),
        ("ADMIN", "127.0.0.1:0"),
        ("DIAGNOSTICS", "127.0.0.1:0"),
        ("POLICY_DIR", &policy_dir.display().to_string()),
        ("ISSUER", ISSUER),
        ("JWKS_FILE", &jwks_path.display().to_string()),
    ]);
    let cedar = "cedar:\n  context_headers: [x-tenant]\n";
    assert!(yaml.contains(cedar), "the shared config maps x-tenant");
    let yaml = yaml.replace(
        cedar,
        "cedar:\n  context_headers: [x-tenant, ext-tenant]\n  route_metadata_namespaces: [com.example.route]\n",
    );
    let cfg = Config::from_yaml(&yaml).expect("config parses");
    cfg.validate().expect("config is valid");
    (portcullis::server::start(cfg).await.expect("sidecar starts"), dir)
}

fn with_extensions(mut rq: CheckRequest, ext: &[(&str, &str)]) -> CheckRequest {
    let a = rq.attributes.as_mut().expect("attributes");
    a.context_extensions = ext.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    rq
}

fn with_route_metadata(mut rq: CheckRequest, ns: &str, fields: &[(&str, &str)]) -> CheckRequest {
    let fields = fields
        .iter()
        .map(|(k, v)| {
            ((*k).to_owned(), prost_types::Value { kind: Some(prost_types::value::Kind::StringValue((*v).to_owned())) })
        })
        .collect();
    let a = rq.attributes.as_mut().expect("attributes");
    a.route_metadata_context = Some(Metadata {
        filter_metadata: [(ns.to_owned(), prost_types::Struct { fields })].into_iter().collect(),
        ..Default::default()
    });
    rq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_extensions_decide_and_headers_cannot_imitate_them() {
    let (running, _dir) = start().await;
    let url = format!("http://{}", running.grpc_addr.expect("grpc listener"));
    let mut c = portcullis::proto::auth::authorization_client::AuthorizationClient::new(tcp_channel(&url).await);
    let mut check = async |rq: CheckRequest| c.check(rq).await.expect("rpc").into_inner();

    // The same request: allowed with the real extension, refused without it.
    let r = check(with_extensions(req("GET", "/tenant/x").build(), &[("tenant", "a")])).await;
    assert!(is_allowed(&r), "{r:?}");
    assert_eq!(policy_ids(&r), vec!["tenant-a-route".to_owned()]);
    let r = check(with_extensions(req("GET", "/tenant/x").build(), &[("tenant", "b")])).await;
    assert!(!is_allowed(&r), "another tenant's route: {r:?}");
    // Headers that imitate it, mapped into Cedar or not, in the merged and the raw map.
    for rq in [
        req("GET", "/tenant/x").header("x-tenant", "a").header("ext-tenant", "a").build(),
        req("GET", "/tenant/x").header("ext:tenant", "a").build(),
        req("GET", "/tenant/x").header("ext:tenant", "a").build_header_map_only(true),
        with_extensions(req("GET", "/tenant/x").header("ext:tenant", "a").build(), &[("tenant", "b")]),
    ] {
        let r = check(rq).await;
        assert!(!is_allowed(&r), "a header is not a context extension: {r:?}");
    }

    // Route metadata of the configured namespace decides; another namespace is not read.
    let r = check(with_route_metadata(req("GET", "/gold/x").build(), "com.example.route", &[("tier", "gold")])).await;
    assert!(is_allowed(&r), "{r:?}");
    let r = check(with_route_metadata(req("GET", "/gold/x").build(), "com.example.other", &[("tier", "gold")])).await;
    assert!(!is_allowed(&r), "unconfigured namespace: {r:?}");

    // Over the bound: a 400 with its reason, not a decision on a truncated set.
    let many: Vec<(String, String)> =
        (0..=portcullis::request::MAX_ROUTE_FACTS).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let mut rq = req("GET", "/tenant/x").build();
    rq.attributes.as_mut().expect("attributes").context_extensions = many.into_iter().collect();
    rq.attributes.as_mut().expect("attributes").context_extensions.insert("tenant".into(), "a".into());
    let r = check(rq).await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (400, "too_many_route_facts"));
    let long = "v".repeat(portcullis::request::MAX_ROUTE_FACT_VALUE_BYTES + 1);
    let r = check(with_extensions(req("GET", "/tenant/x").build(), &[("tenant", "a"), ("note", &long)])).await;
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (400, "route_fact_too_long"));

    tokio::time::timeout(WAIT, running.shutdown()).await.expect("shutdown in time").expect("clean shutdown");
}
