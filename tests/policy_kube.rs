//! The Kubernetes API policy source, driven by the REAL `kube` client and `kube-runtime`
//! watcher against `common::kube::FakeApiServer`, which stands in for an API server on
//! 127.0.0.1 (list/watch protocol for ConfigMaps, 410 Gone, dropped streams, Events).
mod common;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cedar_policy::{Authorizer, Context, Decision, EntityUid, Request};
use common::eventually;
use common::kube::FakeApiServer;
use portcullis::config::{EmptyPolicy, KubernetesSource};
use portcullis::policy::PolicyStore;
use portcullis::policy::kube::KubeSource;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

const NS: &str = "policies";
const SELECTED: &[(&str, &str)] = &[("portcullis.dev/policy", "true")];
const SCHEMA: &str = r#"
    entity User;
    entity Route;
    action "GET" appliesTo { principal: [User], resource: [Route] };
"#;

fn permit(user: &str) -> String {
    format!("@id(\"{user}-get\") permit(principal == User::\"{user}\", action == Action::\"GET\", resource);\n")
}

struct Source {
    store: Arc<PolicyStore>,
    registry: Registry,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Source {
    async fn start(api: &FakeApiServer, on_empty: EmptyPolicy, debounce_ms: u64) -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let store = Arc::new(PolicyStore::new(on_empty, registry.sub_registry_with_prefix("policy")));
        let cfg = KubernetesSource {
            namespaces: vec![NS.into()],
            selector: "portcullis.dev/policy=true".into(),
            kubeconfig: None,
            events: true,
        };
        let source = KubeSource::new(
            api.client(),
            &cfg,
            Duration::from_millis(debounce_ms),
            registry.sub_registry_with_prefix("policy_kubernetes"),
        );
        let (stop, rx) = watch::channel(false);
        let task = source.spawn(store.clone(), rx);
        Self { store, registry, stop, task }
    }

    /// Cedar's decision for `User::"<user>"` GET on the live snapshot; no snapshot, or a
    /// request the snapshot's schema refuses, is a deny.
    fn allows(&self, user: &str) -> bool {
        let Some(snap) = self.store.load() else { return false };
        let principal = EntityUid::from_str(&format!("User::\"{user}\"")).expect("uid");
        let action = EntityUid::from_str("Action::\"GET\"").expect("uid");
        let resource = EntityUid::from_str("Route::\"r\"").expect("uid");
        let Ok(req) = Request::new(principal, action, resource, Context::empty(), Some(snap.engine.schema())) else {
            return false;
        };
        Authorizer::new().is_authorized(&req, snap.engine.policies(), snap.engine.entities()).decision()
            == Decision::Allow
    }

    fn version(&self) -> Option<String> {
        self.store.status().version
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("source stops").expect("no panic");
    }
}

/// A schema ConfigMap and a rules ConfigMap that lets alice GET.
fn seed(api: &FakeApiServer) {
    api.put(NS, "schema", SELECTED, &[("portcullis.cedarschema", SCHEMA)]);
    api.put(NS, "rules", SELECTED, &[("policy.cedar", &permit("alice"))]);
}

#[tokio::test]
async fn initial_list_loads_every_selected_configmap_and_nothing_else() {
    let api = FakeApiServer::start().await;
    seed(&api);
    api.put(NS, "extra", SELECTED, &[("extra.cedar", "permit(principal == User::\"carol\", action, resource);")]);
    // Not selected (wrong label) and in another namespace: both must be ignored.
    api.put(NS, "unlabelled", &[("app", "shop")], &[("bob.cedar", &permit("bob"))]);
    api.put("elsewhere", "rules", SELECTED, &[("bob.cedar", &permit("bob"))]);
    let src = Source::start(&api, EmptyPolicy::DenyAll, 50).await;

    eventually(Duration::from_secs(10), "first snapshot", async || src.store.is_ready()).await;
    assert!(src.allows("alice"));
    assert!(src.allows("carol"));
    assert!(!src.allows("bob"), "an unselected ConfigMap must not contribute policies");
    let snap = src.store.load().expect("snapshot");
    assert_eq!(snap.source, "kubernetes:policies/portcullis.dev/policy=true");
    assert_eq!(snap.origins.get("alice-get").map(String::as_str), Some("configmap/policies/rules/policy.cedar"));
    assert!(
        snap.origins.contains_key("configmap/policies/extra/extra.cedar#0"),
        "an unannotated policy is named by ConfigMap and key: {:?}",
        snap.origins.keys()
    );
    src.stop().await;
}

#[tokio::test]
async fn not_ready_until_a_complete_list_has_succeeded() {
    let api = FakeApiServer::start().await;
    seed(&api);
    api.fail_next_lists(2);
    let src = Source::start(&api, EmptyPolicy::DenyAll, 50).await;
    eventually(Duration::from_secs(20), "snapshot after failed lists are retried", async || src.store.is_ready()).await;
    assert!(api.lists() >= 3, "two failed lists then a good one, got {}", api.lists());
    assert!(src.metrics().contains("portcullis_policy_kubernetes_watch_errors_total{namespace=\"policies\"}"));
    assert!(src.allows("alice"));
    src.stop().await;
}

#[tokio::test]
async fn an_invalid_initial_set_never_becomes_ready_until_fixed() {
    let api = FakeApiServer::start().await;
    api.put(NS, "schema", SELECTED, &[("portcullis.cedarschema", SCHEMA)]);
    api.put(NS, "rules", SELECTED, &[("policy.cedar", "permit(principal, action, resource) when { nope };")]);
    let src = Source::start(&api, EmptyPolicy::DenyAll, 50).await;
    eventually(Duration::from_secs(10), "rejection recorded", async || src.store.status().last_error.is_some()).await;
    assert!(!src.store.is_ready(), "an invalid first set must not make the sidecar ready");
    assert!(!src.allows("alice"));

    api.put(NS, "rules", SELECTED, &[("policy.cedar", &permit("alice"))]);
    eventually(Duration::from_secs(10), "ready after the fix", async || src.store.is_ready()).await;
    assert!(src.allows("alice"));
    src.stop().await;
}

#[tokio::test]
async fn an_update_is_picked_up_without_a_restart() {
    let api = FakeApiServer::start().await;
    seed(&api);
    let src = Source::start(&api, EmptyPolicy::DenyAll, 50).await;
    eventually(Duration::from_secs(10), "first snapshot", async || src.store.is_ready()).await;
    let first = src.version();
    assert!(src.allows("alice") && !src.allows("bob"));

    api.put(NS, "rules", SELECTED, &[("policy.cedar", &permit("bob"))]);
    eventually(Duration::from_secs(10), "bob allowed", async || src.allows("bob")).await;
    assert!(!src.allows("alice"), "the whole set is replaced, not merged");
    assert_ne!(src.version(), first);
    src.stop().await;
}

#[tokio::test]
async fn an_invalid_update_is_refused_decisions_stay_and_an_event_names_the_configmap() {
    let api = FakeApiServer::start().await;
    seed(&api);
    let src = Source::start(&api, EmptyPolicy::DenyAll, 50).await;
    eventually(Duration::from_secs(10), "first snapshot", async || src.store.is_ready()).await;
    let good = src.version();

    // Line 2 has a syntax error; line 1 alone would have let bob in.
    let broken = format!("{}permit(principal action resource);\n", permit("bob"));
    api.put(NS, "rules", SELECTED, &[("policy.cedar", &broken)]);
    eventually(Duration::from_secs(10), "rejection recorded", async || src.store.status().last_error.is_some()).await;

    let status = src.store.status();
    let err = status.last_error.expect("last error");
    assert!(err.contains("configmap/policies/rules/policy.cedar:2:"), "error names ConfigMap, key and line: {err}");
    assert_eq!(status.version, good, "the last good snapshot stays live");
    assert!(src.allows("alice"), "old decisions unchanged");
    assert!(!src.allows("bob"), "nothing of the refused set leaks in");
    assert!(src.metrics().contains("portcullis_policy_reloads_total{result=\"rejected\"} 1"), "{}", src.metrics());

    eventually(Duration::from_secs(10), "Event posted", async || !api.events().is_empty()).await;
    let ev = &api.events()[0];
    assert_eq!(ev["regarding"]["kind"], "ConfigMap");
    assert_eq!(ev["regarding"]["namespace"], NS);
    assert_eq!(ev["regarding"]["name"], "rules");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "PolicyRejected");
    assert_eq!(ev["reportingController"], "portcullis");
    let note = ev["note"].as_str().unwrap_or_default();
    assert!(note.contains("configmap/policies/rules/policy.cedar:2:"), "{note}");
    assert!(api.events().iter().all(|e| e["regarding"]["name"] == "rules"), "no blame on the untouched schema");

    // Fixing it swaps in and clears the error.
    api.put(NS, "rules", SELECTED, &[("policy.cedar", &permit("bob"))]);
    eventually(Duration::from_secs(10), "fix applied", async || src.allows("bob")).await;
    assert_eq!(src.store.status().last_error, None);
    src.stop().await;
}

#[tokio::test]
async fn a_dropped_watch_resumes_and_sees_changes_made_meanwhile() {
    let api = FakeApiServer::start().await;
    seed(&api);
    let src = Source::start(&api, EmptyPolicy::DenyAll, 50).await;
    eventually(Duration::from_secs(10), "first snapshot", async || src.store.is_ready()).await;
    eventually(Duration::from_secs(10), "watch open", async || api.watches() >= 1).await;
    let watches = api.watches();

    api.drop_watches();
    api.put(NS, "rules", SELECTED, &[("policy.cedar", &permit("bob"))]);
    eventually(Duration::from_secs(20), "bob allowed after the drop", async || src.allows("bob")).await;
    assert!(api.watches() > watches, "the watch was re-opened");
    assert_eq!(api.lists(), 1, "resumed from its resourceVersion, no re-list needed");
    src.stop().await;
}

#[tokio::test]
async fn an_expired_resource_version_relists_and_forgets_configmaps_deleted_meanwhile() {
    let api = FakeApiServer::start().await;
    seed(&api);
    api.put(NS, "bob", SELECTED, &[("bob.cedar", &permit("bob"))]);
    let src = Source::start(&api, EmptyPolicy::DenyAll, 50).await;
    eventually(Duration::from_secs(10), "first snapshot", async || src.store.is_ready() && src.allows("bob")).await;
    eventually(Duration::from_secs(10), "watch open", async || api.watches() >= 1).await;

    // The deletion is never streamed; history is compacted; the connection drops. Only a
    // re-list after the 410 can learn that bob's ConfigMap is gone.
    api.delete_unseen(NS, "bob");
    api.compact();
    api.drop_watches();
    eventually(Duration::from_secs(20), "bob's policy gone", async || !src.allows("bob")).await;
    assert!(api.gone_sent() >= 1, "the resumed watch was told 410 Gone");
    assert!(api.lists() >= 2, "and re-listed");
    assert!(src.allows("alice"));
    src.stop().await;
}

#[tokio::test]
async fn deleting_every_policy_configmap_is_an_explicit_deny_all() {
    let api = FakeApiServer::start().await;
    seed(&api);
    let src = Source::start(&api, EmptyPolicy::DenyAll, 50).await;
    eventually(Duration::from_secs(10), "first snapshot", async || src.store.is_ready()).await;

    // Only the rules go: schema left, no policies at all.
    api.delete(NS, "rules");
    eventually(Duration::from_secs(10), "deny-all", async || src.store.status().deny_all).await;
    assert!(!src.allows("alice"));

    // Everything goes: still deny-all, never allow-all, and still ready.
    api.delete(NS, "schema");
    eventually(Duration::from_secs(10), "empty set applied", async || {
        src.store.status().policy_count == 0 && src.store.load().is_some()
    })
    .await;
    eventually(Duration::from_secs(10), "schema gone too", async || {
        src.store
            .load()
            .is_some_and(|s| s.source.starts_with("kubernetes:") && s.engine.schema().entity_types().count() == 0)
    })
    .await;
    assert!(src.store.status().deny_all);
    assert!(src.store.is_ready());
    assert!(!src.allows("alice"));
    assert_eq!(src.store.status().last_error, None);
    src.stop().await;
}

#[tokio::test]
async fn with_keep_last_deleting_every_policy_keeps_the_last_good_set() {
    let api = FakeApiServer::start().await;
    seed(&api);
    let src = Source::start(&api, EmptyPolicy::KeepLast, 50).await;
    eventually(Duration::from_secs(10), "first snapshot", async || src.store.is_ready()).await;
    let good = src.version();

    api.delete(NS, "rules");
    api.delete(NS, "schema");
    eventually(Duration::from_secs(10), "empty set refused", async || src.store.status().last_error.is_some()).await;
    assert!(src.store.status().last_error.unwrap_or_default().contains("empty"));
    assert_eq!(src.version(), good);
    assert!(src.allows("alice"));
    src.stop().await;
}

#[tokio::test]
async fn a_burst_of_changes_is_folded_into_one_rebuild() {
    let api = FakeApiServer::start().await;
    seed(&api);
    let src = Source::start(&api, EmptyPolicy::DenyAll, 400).await;
    eventually(Duration::from_secs(10), "first snapshot", async || src.store.is_ready()).await;

    for user in ["u1", "u2", "u3", "u4", "bob"] {
        api.put(NS, "rules", SELECTED, &[("policy.cedar", &permit(user))]);
    }
    eventually(Duration::from_secs(10), "last change applied", async || src.allows("bob")).await;
    let m = src.metrics();
    assert!(m.contains("portcullis_policy_reloads_total{result=\"ok\"} 2"), "initial load + one rebuild: {m}");
    src.stop().await;
}

#[tokio::test]
async fn without_namespaces_the_pod_or_kubeconfig_namespace_is_watched() {
    let api = FakeApiServer::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = KubernetesSource {
        namespaces: vec![],
        selector: "portcullis.dev/policy=true".into(),
        kubeconfig: Some(api.write_kubeconfig(tmp.path())),
        events: true,
    };
    let client = portcullis::policy::kube::client(&cfg).await.expect("client from kubeconfig");
    let expected = std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| "policies".into());
    assert_eq!(portcullis::policy::kube::namespaces(&cfg, &client), [expected]);

    let missing = KubernetesSource { kubeconfig: Some(tmp.path().join("nope")), ..cfg };
    let Err(err) = portcullis::policy::kube::client(&missing).await else { panic!("a missing kubeconfig is an error") };
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn the_example_manifests_are_one_valid_policy_set_and_config() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;
    use portcullis::policy::PolicySnapshot;
    use portcullis::policy::kube::Index;

    let load = |path: &str| -> ConfigMap {
        let text = std::fs::read_to_string(path).expect("example exists");
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let mut index = Index::new(&["shop".into()]);
    index.apply("shop", Event::Init);
    for path in ["examples/kubernetes/policy-configmap.yaml", "examples/kubernetes/team-policy-configmap.yaml"] {
        let cm = load(path);
        let labels = cm.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("portcullis.dev/policy").map(String::as_str), Some("true"), "{path} is selected");
        index.apply("shop", Event::InitApply(cm));
    }
    index.apply("shop", Event::InitDone);
    let snap = PolicySnapshot::build(&index.documents(), "examples").expect("the examples validate");
    assert!(snap.origins.contains_key("public-read"));
    assert!(snap.origins.contains_key("batch-client-write"));
    assert!(snap.origins.contains_key("configmap/shop/portcullis-policies-batch/batch.cedar#1"));

    let cfg = load("examples/kubernetes/portcullis-config.yaml");
    let text = cfg.data.unwrap_or_default().remove("config.yaml").expect("config.yaml key");
    let cfg = portcullis::config::Config::from_yaml(&text).expect("config parses");
    cfg.validate().expect("config is valid");
    let k8s = cfg.policy.kubernetes.expect("kubernetes source");
    assert_eq!(k8s.namespaces, ["shop"]);
}

#[tokio::test]
async fn the_first_snapshot_waits_for_every_namespace_to_be_listed() {
    let api = FakeApiServer::start().await;
    seed(&api);
    api.put("team", "bob", SELECTED, &[("bob.cedar", &permit("bob"))]);
    // `policies` alone is a valid set: only waiting for `team` gets bob into the first snapshot.
    api.fail_next_lists_in("team", 2);
    let mut registry = Registry::default();
    let store = Arc::new(PolicyStore::new(EmptyPolicy::DenyAll, &mut registry));
    let cfg = KubernetesSource {
        namespaces: vec!["team".into(), NS.into(), "team".into()],
        selector: "portcullis.dev/policy=true".into(),
        kubeconfig: None,
        events: false,
    };
    let source = KubeSource::new(api.client(), &cfg, Duration::from_millis(20), &mut registry);
    assert_eq!(source.namespaces(), ["policies", "team"]);
    let (stop, rx) = watch::channel(false);
    let task = source.spawn(store.clone(), rx);
    let src = Source { store, registry, stop, task };

    eventually(Duration::from_secs(20), "first snapshot", async || src.store.is_ready()).await;
    assert!(src.allows("bob"), "the first snapshot already holds the slow namespace's policies");
    assert!(src.allows("alice"));
    assert_eq!(src.store.load().expect("snapshot").source, "kubernetes:policies,team/portcullis.dev/policy=true");
    assert!(api.lists() >= 4, "policies once, team three times: {}", api.lists());
    src.stop().await;
}
