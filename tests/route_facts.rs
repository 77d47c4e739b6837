//! Route facts over gRPC: Envoy's per-route `context_extensions` and the string metadata of the
//! configured namespaces reach policies as reserved `Route` tags (`ext:<key>`,
//! `route_metadata:<namespace>:<key>`). Headers that imitate them change nothing, and a request
//! carrying more facts than the bound is a 400 with a reason, never truncated.
mod common;

use common::*;
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

/// The shared sidecar plus the route policies, `ext-tenant` as a context header (so a header
/// named like the extension is mapped into Cedar) and one route metadata namespace.
async fn start() -> Sidecar {
    Sidecar::start_configured(
        |policies| std::fs::write(policies.join("route.cedar"), ROUTE_POLICIES).expect("write route policies"),
        |_, cfg| {
            assert_eq!(cfg.cedar.context_headers, ["x-tenant"], "the shared config maps x-tenant");
            cfg.cedar.context_headers.push("ext-tenant".into());
            cfg.cedar.route_metadata_namespaces = vec!["com.example.route".into()];
        },
    )
    .await
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
    let s = start().await;
    let mut c = s.tcp().await;
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

    s.stop().await;
}
