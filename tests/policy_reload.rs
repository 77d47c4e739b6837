//! Policy lifecycle over real sockets and real files: hot reload of the watched directory, an
//! invalid policy refused with the last good snapshot kept, and health gating until a snapshot
//! is live.
mod common;

use common::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const OPEN_STATUS: &str = r#"@id("open-status")
permit (principal, action == Action::"GET", resource)
when { resource.path == "/api/status" };
"#;

/// A syntax error on line 3.
const BROKEN_SYNTAX: &str = "// a comment\n@id(\"broken\")\npermit (principal action, resource);\n";

/// Parses, but does not fit the schema (Route has no `owner`): refused on line 2.
const BROKEN_SCHEMA: &str =
    "@id(\"no-such-attr\")\npermit (principal, action, resource) when { resource.owner == \"x\" };\n";

async fn policy_status(s: &Sidecar) -> serde_json::Value {
    let (code, body) = s.diagnostics_get("/policy").await;
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("/policy is JSON")
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_file_flips_the_decision_live() {
    let s = Sidecar::start().await;
    let before = policy_status(&s).await["version"].as_str().expect("a version").to_owned();
    let r = s.check(req("GET", "/api/status").build()).await;
    assert_eq!(http_status(&r), 401, "denied before the change");

    std::fs::write(s.policy_dir.join("open.cedar"), OPEN_STATUS).expect("write policy");
    let r = eventually(WAIT, "the new policy allows", || async {
        let r = s.check(req("GET", "/api/status").build()).await;
        is_allowed(&r).then_some(r)
    })
    .await;
    assert_eq!(policy_ids(&r), vec!["open-status"]);
    let after = policy_status(&s).await["version"].as_str().expect("a version").to_owned();
    assert_ne!(before, after);
    // Only that route opened.
    assert!(!is_allowed(&s.check(req("POST", "/api/status").build()).await));
    assert!(!is_allowed(&s.check(req("GET", "/api/orders").build()).await));

    std::fs::remove_file(s.policy_dir.join("open.cedar")).expect("remove policy");
    eventually(WAIT, "the removed policy no longer allows", || async {
        (!is_allowed(&s.check(req("GET", "/api/status").build()).await)).then_some(())
    })
    .await;
    assert_eq!(policy_status(&s).await["version"].as_str(), Some(before.as_str()));
    s.stop().await;
}

/// Writes `files` as the next version of a kubelet-style ConfigMap volume in `dir`, in kubelet's
/// order: a new timestamped directory, a `..data_tmp` symlink renamed over `..data`, then the
/// visible `name -> ..data/name` symlinks added and stale ones removed.
fn configmap_update(dir: &std::path::Path, version: &str, files: &[(&str, &str)]) {
    use std::os::unix::fs::symlink;
    let ts = format!("..2026_11_23_{version}");
    std::fs::create_dir(dir.join(&ts)).expect("timestamped dir");
    for (name, text) in files {
        std::fs::write(dir.join(&ts).join(name), text).expect("write key");
    }
    symlink(&ts, dir.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    for (name, _) in files {
        let visible = dir.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            symlink(format!("..data/{name}"), &visible).expect("visible symlink");
        }
    }
    for e in std::fs::read_dir(dir).expect("list") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !files.iter().any(|(n, _)| *n == name) {
            std::fs::remove_file(dir.join(&name)).expect("remove stale key");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_volume_symlink_swap_is_followed() {
    let demo = repo().join("examples/demo/policies");
    let read = |n: &str| std::fs::read_to_string(demo.join(n)).expect("demo file");
    let (schema, entities, policies) =
        (read("portcullis.cedarschema"), read("groups.entities.json"), read("policies.cedar"));
    let base = [
        ("portcullis.cedarschema", schema.as_str()),
        ("groups.entities.json", entities.as_str()),
        ("policies.cedar", policies.as_str()),
    ];
    let s = Sidecar::start_with(|dir| {
        for e in std::fs::read_dir(dir).expect("list") {
            std::fs::remove_file(e.expect("entry").path()).expect("clear");
        }
        configmap_update(dir, "v1", &base);
    })
    .await;
    assert!(is_allowed(&s.check(req("GET", "/public/status").build()).await));
    assert!(!is_allowed(&s.check(req("GET", "/api/status").build()).await));

    // v2 adds a key.
    let mut v2 = base.to_vec();
    v2.push(("open.cedar", OPEN_STATUS));
    configmap_update(&s.policy_dir, "v2", &v2);
    eventually(WAIT, "the new key is live", || async {
        is_allowed(&s.check(req("GET", "/api/status").build()).await).then_some(())
    })
    .await;

    // v3 removes it again.
    configmap_update(&s.policy_dir, "v3", &base);
    eventually(WAIT, "the removed key is gone", || async {
        (!is_allowed(&s.check(req("GET", "/api/status").build()).await)).then_some(())
    })
    .await;
    assert!(is_allowed(&s.check(req("GET", "/public/status").build()).await));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_during_reloads_always_see_one_whole_snapshot() {
    let s = Sidecar::start().await;
    let uds = s.uds().await;
    let checker = tokio::spawn(async move {
        let mut uds = uds;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let r = uds.check(req("GET", "/api/status").build()).await.expect("rpc").into_inner();
            seen.insert(meta(&r, "reason"));
            // Either the old snapshot (no permit for an anonymous caller) or the new one.
            assert!(
                (is_allowed(&r) && policy_ids(&r) == vec!["open-status"])
                    || (http_status(&r) == 401 && meta(&r, "reason") == "credential_required"),
                "{r:?}"
            );
        }
        seen
    });
    for i in 0..10 {
        let f = s.policy_dir.join("open.cedar");
        if i % 2 == 0 {
            std::fs::write(&f, OPEN_STATUS).expect("write");
        } else {
            std::fs::remove_file(&f).expect("remove");
        }
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    let seen = tokio::time::timeout(WAIT, checker).await.expect("checks finish").expect("no assertion failed");
    assert!(seen.contains("credential_required"), "{seen:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_is_refused_and_the_last_good_one_stays() {
    let s = Sidecar::start().await;
    let alice = token("alice").mint();
    let good = policy_status(&s).await;
    let good_version = good["version"].as_str().expect("a version").to_owned();
    assert!(good["last_error"].is_null());

    for (file, text, line) in [("broken.cedar", BROKEN_SYNTAX, 3), ("schema.cedar", BROKEN_SCHEMA, 2)] {
        std::fs::write(s.policy_dir.join(file), text).expect("write policy");
        let err = eventually(WAIT, "the reload is rejected", || async {
            policy_status(&s).await["last_error"].as_str().filter(|e| e.contains(file)).map(str::to_owned)
        })
        .await;
        assert!(err.contains(&format!("{file}:{line}:")), "error names file and line: {err}");

        // Same snapshot, same decisions.
        assert_eq!(policy_status(&s).await["version"].as_str(), Some(good_version.as_str()));
        assert!(is_allowed(&s.check(req("GET", "/public/status").build()).await));
        let r = s.check(req("GET", "/api/orders").bearer(&alice).build()).await;
        assert_eq!(policy_ids(&r), vec!["users-read-api"]);
        assert!(!is_allowed(&s.check(req("POST", "/api/orders").bearer(&alice).build()).await));
        let (ready, _) = s.admin_get("/readyz").await;
        assert_eq!(ready, 200, "a refused reload does not make a live sidecar unready");

        std::fs::remove_file(s.policy_dir.join(file)).expect("remove policy");
        eventually(WAIT, "the error clears once the files are good again", || async {
            policy_status(&s).await["last_error"].is_null().then_some(())
        })
        .await;
    }

    let (_, metrics) = s.admin_get("/metrics").await;
    let rejected = metric(&metrics, r#"portcullis_policy_reloads_total{result="rejected"}"#);
    assert!(rejected.is_some_and(|n| n >= 2.0), "rejected reloads counted: {metrics}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_valid_policy_means_not_serving_and_every_check_is_503() {
    let s = Sidecar::start_with(|dir| std::fs::write(dir.join("broken.cedar"), BROKEN_SYNTAX).expect("write")).await;
    let mut health = HealthClient::new(tcp_channel(&s.grpc_url()).await);
    let status = |svc: &str| HealthCheckRequest { service: svc.to_owned() };
    for svc in ["", "envoy.service.auth.v3.Authorization"] {
        let r = health.check(status(svc)).await.expect("health rpc").into_inner();
        assert_eq!(r.status, ServingStatus::NotServing as i32, "{svc:?}");
    }
    let (ready, body) = s.admin_get("/readyz").await;
    assert_eq!(ready, 503);
    assert!(body.contains("broken.cedar:3:"), "readiness says why: {body}");

    let alice = token("alice").mint();
    for rq in [
        req("GET", "/public/status").build(),
        req("GET", "/api/orders").bearer(&alice).build(),
        req("GET", "/api/catalog").peer("spiffe://cluster.local/ns/frontend/sa/web").build(),
    ] {
        let r = s.check(rq).await;
        assert!(!is_allowed(&r));
        assert_eq!(http_status(&r), 503);
        assert_eq!(code(&r), 14, "UNAVAILABLE");
        assert_eq!(meta(&r, "reason"), "no_policy");
        assert!(denied_header(&r, "retry-after").is_some());
    }
    // Over the Unix socket too.
    let r = s.uds().await.check(req("GET", "/public/status").build()).await.expect("rpc").into_inner();
    assert_eq!(meta(&r, "reason"), "no_policy");
    let (_, metrics) = s.admin_get("/metrics").await;
    let denied = metric(&metrics, r#"portcullis_checks_total{decision="deny",reason="no_policy"}"#);
    assert_eq!(denied, Some(4.0), "{metrics}");
    assert_eq!(metric(&metrics, r#"portcullis_checks_total{decision="allow",reason="allowed"}"#), None);

    std::fs::remove_file(s.policy_dir.join("broken.cedar")).expect("fix the files");
    eventually(WAIT, "health turns SERVING", || {
        let mut h = health.clone();
        async move {
            let r = h.check(status("envoy.service.auth.v3.Authorization")).await.ok()?.into_inner();
            (r.status == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await;
    let r = health.check(status("")).await.expect("health rpc").into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    let (ready, _) = s.admin_get("/readyz").await;
    assert_eq!(ready, 200);
    assert!(is_allowed(&s.check(req("GET", "/public/status").build()).await));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_status_is_served_on_loopback_diagnostics_only() {
    let s = Sidecar::start().await;
    // The admin port (reachable from the pod network) serves probes and metrics, never /policy.
    let (code, _) = s.admin_get("/policy").await;
    assert_eq!(code, 404, "/policy is not on the admin port");
    assert_eq!(s.admin_get("/healthz").await.0, 200);
    assert_eq!(s.admin_get("/metrics").await.0, 200);
    // The diagnostics port has /policy, bound on loopback, and nothing else.
    assert!(s.running().diagnostics_addr.expect("diagnostics").ip().is_loopback());
    let status = policy_status(&s).await;
    assert!(status["version"].is_string(), "{status}");
    assert_eq!(s.diagnostics_get("/metrics").await.0, 404);
    assert_eq!(s.diagnostics_get("/readyz").await.0, 404);
    s.stop().await;
}
