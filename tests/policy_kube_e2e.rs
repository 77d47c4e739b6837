//! End to end: `server::start` with `policy.kubernetes` pointing (through a kubeconfig file
//! written here) at `common::kube::FakeApiServer`, which stands in for the Kubernetes API
//! server. A ConfigMap change flips a real gRPC Check decision without a restart.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::eventually;
use common::kube::FakeApiServer;
use portcullis::cli::{PeerSpec, RequestSpec, send_check};
use portcullis::config::Config;
use portcullis::server;
use serde_json::Value;

const SCHEMA: &str = include_str!("../examples/demo/policies/portcullis.cedarschema");
const SELECTED: &[(&str, &str)] = &[("portcullis.dev/policy", "true")];
const PUBLIC_READ: &str = r#"
@id("public-read")
permit (principal, action in Action::"read", resource)
when { resource.path like "/public/*" };
"#;
const NOTHING_PUBLIC: &str = r#"
@id("admins-only")
permit (principal in Group::"admins", action, resource);
"#;

async fn check_public(grpc: &str) -> i32 {
    check_public_full(grpc).await.0
}

/// gRPC status code and the `reason` from the dynamic metadata.
async fn check_public_full(grpc: &str) -> (i32, String) {
    let spec = RequestSpec {
        method: "GET".into(),
        path: "/public/status".into(),
        host: "shop.default.svc.cluster.local".into(),
        headers: BTreeMap::new(),
        bearer: None,
        source: PeerSpec::default(),
        id: "e2e".into(),
    };
    let resp = send_check(grpc, spec.to_check_request()).await.expect("Check RPC itself succeeds");
    let reason = match resp.dynamic_metadata.as_ref().and_then(|m| m.fields.get("reason")).and_then(|v| v.kind.clone())
    {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        _ => String::new(),
    };
    (resp.status.map(|s| s.code).unwrap_or(-1), reason)
}

async fn get_json(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.expect("admin reachable");
    let code = resp.status().as_u16();
    (code, resp.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_change_flips_a_grpc_check_without_a_restart() {
    let api = FakeApiServer::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    api.write_kubeconfig(tmp.path());
    let cfg_path = tmp.path().join("config.yaml");
    std::fs::write(
        &cfg_path,
        "listen:\n  grpc: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  diagnostics: 127.0.0.1:0\n\
         policy:\n  debounce: 50ms\n  kubernetes:\n    namespaces: [policies]\n\
         \x20   selector: portcullis.dev/policy=true\n    kubeconfig: kubeconfig\n",
    )
    .expect("config");
    let cfg = Config::load(&cfg_path).expect("config loads");

    // The API server is failing at first: the sidecar must come up unready and deny.
    api.fail_next_lists(10_000);
    api.put("policies", "schema", SELECTED, &[("portcullis.cedarschema", SCHEMA)]);
    api.put("policies", "rules", SELECTED, &[("policy.cedar", PUBLIC_READ)]);
    let running = server::start(cfg).await.expect("server starts");
    let grpc = format!("http://{}", running.grpc_addr.expect("grpc"));
    let admin = format!("http://{}", running.admin_addr.expect("admin"));
    let diag = format!("http://{}", running.diagnostics_addr.expect("diagnostics"));
    eventually(Duration::from_secs(10), "a list attempt", async || api.lists() >= 1).await;
    assert_eq!(get_json(&format!("{admin}/readyz")).await.0, 503, "not ready before a complete list");
    assert_ne!(check_public(&grpc).await, 0, "no snapshot yet: fail closed");

    api.fail_next_lists(0);
    eventually(Duration::from_secs(15), "ready", async || running.store.is_ready()).await;
    assert_eq!(get_json(&format!("{admin}/readyz")).await.0, 200);
    assert_eq!(check_public(&grpc).await, 0, "public-read allows");

    // The policy change reaches the live sidecar: now denied.
    api.put("policies", "rules", SELECTED, &[("policy.cedar", NOTHING_PUBLIC)]);
    let mut code = 0;
    for _ in 0..500 {
        code = check_public(&grpc).await;
        if code != 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(code, 7, "PERMISSION_DENIED after the update");
    let (_, good) = get_json(&format!("{diag}/policy")).await;

    // A broken update is refused: decision unchanged, the failure visible at /policy, in
    // metrics and as an Event on the ConfigMap.
    api.put("policies", "rules", SELECTED, &[("policy.cedar", "permit (principal, action, resource) when { 1 };")]);
    eventually(Duration::from_secs(10), "rejection", async || running.store.status().last_error.is_some()).await;
    let (_, status) = get_json(&format!("{diag}/policy")).await;
    assert_eq!(status["version"], good["version"]);
    let err = status["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("configmap/policies/rules/policy.cedar:1:"), "{err}");
    assert_eq!(check_public(&grpc).await, 7);
    let metrics = reqwest::get(format!("{admin}/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("portcullis_policy_reloads_total{result=\"rejected\"} 1"), "{metrics}");
    eventually(Duration::from_secs(10), "Event posted", async || {
        api.events().iter().any(|e| e["regarding"]["name"] == "rules")
    })
    .await;

    // And back again, still without a restart.
    api.put("policies", "rules", SELECTED, &[("policy.cedar", PUBLIC_READ)]);
    eventually(Duration::from_secs(10), "fixed", async || running.store.status().last_error.is_none()).await;
    assert_eq!(check_public(&grpc).await, 0);

    // Every policy ConfigMap deleted: an explicit deny-all (on_empty defaults to deny_all),
    // still ready, never allow-all.
    api.delete("policies", "rules");
    api.delete("policies", "schema");
    eventually(Duration::from_secs(10), "deny-all", async || {
        running.store.load().is_some_and(|s| s.engine.schema().entity_types().count() == 0)
    })
    .await;
    let (_, status) = get_json(&format!("{diag}/policy")).await;
    assert_eq!(status["deny_all"], true);
    assert_eq!(check_public_full(&grpc).await, (7, "deny_all".to_owned()));
    assert_eq!(get_json(&format!("{admin}/readyz")).await.0, 200);
    running.shutdown().await.expect("clean shutdown");
}
