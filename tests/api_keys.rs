//! API keys from Secrets, over the wire (a real sidecar answering gRPC Checks):
//! - labelled Secrets through the real `kube` client against `common::kube::FakeApiServer`:
//!   nothing (and not ready) before the first list, add, rotate, invalid (Event, last good kept), duplicates
//!   across Secrets (both named), delete;
//! - a mounted Secret volume swapped as the kubelet does (`..data` symlink): add, rotate,
//!   expiry, invalid (last good kept), delete.
mod common;

use std::path::Path;
use std::time::Duration;

use common::kube::FakeApiServer;
use common::{Sidecar, eventually, http_status, is_allowed, meta, req};
use portcullis::config::{ApiKeyKubernetes, Config};

const NS: &str = "keys";
const SELECTED: &[(&str, &str)] = &[("portcullis.dev/api-key", "true")];
const WAIT: Duration = Duration::from_secs(20);

/// `batch` may POST /api/jobs* in the demo policies.
fn entry(key: &str) -> String {
    format!("client: batch\nkey: {key}\ngroups: [jobs]\n")
}

/// 200 for allowed; otherwise the denial's HTTP status and reason.
async fn try_key(s: &Sidecar, key: &str) -> (i32, String) {
    let r = s.check(req("POST", "/api/jobs/nightly").header("x-api-key", key).build()).await;
    let reason = if is_allowed(&r) { String::new() } else { meta(&r, "reason") };
    (http_status(&r), reason)
}

async fn until(s: &Sidecar, key: &str, want: i32, what: &str) {
    eventually(WAIT, what, async || try_key(s, key).await.0 == want).await;
}

async fn metric(s: &Sidecar, needle: &str) -> bool {
    let (_, body) = s.admin_get("/metrics").await;
    body.lines().any(|l| l.starts_with(needle))
}

// ---- Secrets through the Kubernetes API ------------------------------------------------------

async fn kube_sidecar(api: &FakeApiServer) -> Sidecar {
    Sidecar::start_configured(
        |_| {},
        |dir: &Path, cfg: &mut Config| {
            let kubeconfig = api.write_kubeconfig(dir);
            cfg.authn.api_keys.debounce = Duration::from_millis(50);
            cfg.authn.api_keys.kubernetes = Some(ApiKeyKubernetes {
                namespaces: vec![NS.into()],
                selector: "portcullis.dev/api-key=true".into(),
                kubeconfig: Some(kubeconfig),
                events: true,
            });
        },
    )
    .await
}

fn rejected_events(api: &FakeApiServer) -> Vec<serde_json::Value> {
    api.events().into_iter().filter(|e| e["reason"] == "ApiKeyRejected").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_through_the_api_add_rotate_refuse_and_delete_keys_without_a_restart() {
    let api = FakeApiServer::start().await;
    // The API server fails at first: nothing is applied, so the key is refused (fail closed).
    api.fail_next_lists(10_000);
    api.put_secret(NS, "batch", SELECTED, &[("batch", entry("k8s-key-one").as_bytes())]);
    // Not selected: never read.
    api.put_secret(NS, "other", &[], &[("x", entry("unselected-key").as_bytes())]);
    let s = kube_sidecar(&api).await;
    eventually(WAIT, "the first list is attempted", async || api.lists() > 0).await;
    assert_eq!(try_key(&s, "k8s-key-one").await, (401, "invalid_api_key".into()));
    // Policies are live, but every Secret-held key would be refused: not ready, so the proxy
    // sends no traffic here yet.
    let (code, body) = s.admin_get("/readyz").await;
    assert_eq!(code, 503, "not ready before the first Secret list: {body}");
    api.fail_next_lists(0);

    // Add: the first complete list applies the Secret, and the sidecar becomes ready.
    until(&s, "k8s-key-one", 200, "the listed key is accepted").await;
    eventually(WAIT, "ready once the Secrets are listed", async || s.admin_get("/readyz").await.0 == 200).await;
    assert_eq!(try_key(&s, "unselected-key").await.0, 401, "a Secret without the label is not read");
    // The inline config key still works alongside.
    assert_eq!(try_key(&s, "demo-batch-key").await.0, 200);

    // Rotate: the old key stops working, the new one works.
    api.put_secret(NS, "batch", SELECTED, &[("batch", entry("k8s-key-two").as_bytes())]);
    until(&s, "k8s-key-two", 200, "the rotated key is accepted").await;
    assert_eq!(try_key(&s, "k8s-key-one").await, (401, "invalid_api_key".into()));

    // Invalid Secret: the whole update is refused, an Event names it, the last good set stays.
    api.put_secret(
        NS,
        "broken",
        SELECTED,
        &[("good", entry("k8s-key-three").as_bytes()), ("bad", b"client: x\nkey: hunter2\nextra: 1\n")],
    );
    eventually(WAIT, "an ApiKeyRejected Event", async || !rejected_events(&api).is_empty()).await;
    let ev = &rejected_events(&api)[0];
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["regarding"]["name"], "broken");
    assert_eq!(ev["regarding"]["kind"], "Secret");
    let note = ev["note"].as_str().unwrap_or_default();
    assert!(note.contains("keys/broken#bad"), "{note}");
    assert!(!note.contains("hunter2") && !note.contains("k8s-key"), "a note never holds key material: {note}");
    assert!(metric(&s, "portcullis_authn_api_keys_reloads_total{result=\"rejected\"} 1").await);
    assert_eq!(try_key(&s, "k8s-key-two").await.0, 200, "last good set kept");
    assert_eq!(try_key(&s, "k8s-key-three").await.0, 401, "nothing of a refused set is applied");

    // Duplicates across Secrets: refused, naming both Secrets.
    api.put_secret(NS, "broken", SELECTED, &[("copy", entry("k8s-key-two").as_bytes())]);
    eventually(WAIT, "a duplicate refused", async || {
        rejected_events(&api)
            .iter()
            .any(|e| e["note"].as_str().is_some_and(|n| n.contains("keys/batch#batch and keys/broken#copy")))
    })
    .await;
    let named: Vec<String> =
        rejected_events(&api).iter().filter_map(|e| e["regarding"]["name"].as_str().map(String::from)).collect();
    assert!(named.contains(&"batch".to_string()) && named.contains(&"broken".to_string()), "{named:?}");
    assert_eq!(try_key(&s, "k8s-key-two").await.0, 200, "last good set kept");

    // Fixing the Secret applies it; deleting a Secret revokes its keys.
    api.put_secret(NS, "broken", SELECTED, &[("good", entry("k8s-key-three").as_bytes())]);
    until(&s, "k8s-key-three", 200, "the fixed Secret is applied").await;
    api.delete_secret(NS, "batch");
    until(&s, "k8s-key-two", 401, "a deleted Secret's key is refused").await;
    assert_eq!(try_key(&s, "k8s-key-two").await, (401, "invalid_api_key".into()));
    assert_eq!(try_key(&s, "k8s-key-three").await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_may_not_repeat_an_inline_key_and_expired_keys_are_refused() {
    let api = FakeApiServer::start().await;
    api.put_secret(
        NS,
        "timed",
        SELECTED,
        &[
            ("old", b"client: batch\nkey: k8s-expired\nexpires: 2001-01-01T00:00:00Z\n"),
            ("new", b"client: batch\nkey: k8s-current\nexpires: 2999-01-01T00:00:00Z\n"),
        ],
    );
    let s = kube_sidecar(&api).await;
    until(&s, "k8s-current", 200, "the unexpired key is accepted").await;
    assert_eq!(try_key(&s, "k8s-expired").await, (401, "invalid_api_key".into()));

    // `demo-batch-key` is an inline key of the test config.
    api.put_secret(NS, "clash", SELECTED, &[("k", entry("demo-batch-key").as_bytes())]);
    eventually(WAIT, "the clash refused", async || {
        rejected_events(&api).iter().any(|e| {
            e["note"].as_str().is_some_and(|n| n.contains("authn.api_keys.keys[0] and keys/clash#k"))
                && e["regarding"]["name"] == "clash"
        })
    })
    .await;
    assert_eq!(try_key(&s, "k8s-current").await.0, 200, "last good set kept");
    s.stop().await;
}

// ---- a mounted Secret volume ---------------------------------------------------------------

/// Publishes `files` into `dir` as the kubelet does: a new timestamped directory, `..data`
/// renamed atomically onto it, top-level links for the names, the old directory removed.
fn kubelet_swap(dir: &Path, generation: u32, files: &[(&str, &str)]) {
    use std::os::unix::fs::symlink;
    let stamp = format!("..2026_{generation:04}");
    std::fs::create_dir_all(dir.join(&stamp)).expect("mkdir");
    for (name, text) in files {
        std::fs::write(dir.join(&stamp).join(name), text).expect("write entry");
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    symlink(&stamp, dir.join("..data_tmp")).expect("link");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap");
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && !files.iter().any(|(n, _)| *n == name) {
            std::fs::remove_file(entry.path()).expect("unlink");
        }
    }
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).expect("name link");
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).expect("remove old generation");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_secret_volume_adds_rotates_expires_refuses_and_deletes_keys() {
    let s = Sidecar::start_configured(
        |_| {},
        |dir: &Path, cfg: &mut Config| {
            let keys = dir.join("keys");
            std::fs::create_dir_all(&keys).expect("mkdir");
            kubelet_swap(&keys, 1, &[("batch", &entry("dir-key-one"))]);
            cfg.authn.api_keys.dir = Some(keys);
            cfg.authn.api_keys.debounce = Duration::from_millis(50);
        },
    )
    .await;
    let keys = s.dir.path().join("keys");
    assert_eq!(try_key(&s, "dir-key-one").await.0, 200, "loaded at start");
    assert_eq!(try_key(&s, "dir-key-two").await, (401, "invalid_api_key".into()));

    // Add and rotate in one swap.
    kubelet_swap(
        &keys,
        2,
        &[
            ("batch", &entry("dir-key-two")),
            ("expired", "client: batch\nkey: dir-expired\nexpires: 2001-01-01T00:00:00Z\n"),
            ("later", "client: batch\nkey: dir-later\nexpires: 2999-01-01T00:00:00Z\n"),
        ],
    );
    until(&s, "dir-key-two", 200, "the rotated key is accepted").await;
    assert_eq!(try_key(&s, "dir-key-one").await, (401, "invalid_api_key".into()));
    assert_eq!(try_key(&s, "dir-expired").await, (401, "invalid_api_key".into()));
    assert_eq!(try_key(&s, "dir-later").await.0, 200);

    // Invalid: the whole swap is refused, the last good set stays.
    kubelet_swap(&keys, 3, &[("batch", &entry("dir-key-three")), ("bad", "client: x\nsha256: abc\n")]);
    eventually(WAIT, "the invalid set refused", async || {
        metric(&s, "portcullis_authn_api_keys_reloads_total{result=\"rejected\"} 1").await
    })
    .await;
    assert_eq!(try_key(&s, "dir-key-two").await.0, 200, "last good set kept");
    assert_eq!(try_key(&s, "dir-key-three").await.0, 401, "nothing of a refused set is applied");

    // Delete: a swap without the entry revokes it.
    kubelet_swap(&keys, 4, &[("later", "client: batch\nkey: dir-later\nexpires: 2999-01-01T00:00:00Z\n")]);
    until(&s, "dir-key-two", 401, "a removed key is refused").await;
    assert_eq!(try_key(&s, "dir-later").await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_its_own_rate_limit_is_throttled_by_it_without_a_global_limit() {
    let s = Sidecar::start_configured(
        |_| {},
        |dir: &Path, cfg: &mut Config| {
            let keys = dir.join("keys");
            std::fs::create_dir_all(&keys).expect("mkdir");
            kubelet_swap(
                &keys,
                1,
                &[
                    ("limited", "client: batch\nkey: dir-limited\nrate_limit: {requests_per_second: 1, burst: 1}\n"),
                    ("open", &entry("dir-open")),
                ],
            );
            cfg.authn.api_keys.dir = Some(keys);
            assert!(cfg.rate_limit.is_none(), "no global limit in this test");
        },
    )
    .await;
    let mut limited = Vec::new();
    for _ in 0..5 {
        limited.push(try_key(&s, "dir-limited").await);
    }
    assert_eq!(limited[0].0, 200);
    assert!(limited.contains(&(429, "rate_limited".into())), "{limited:?}");
    for _ in 0..5 {
        assert_eq!(try_key(&s, "dir-open").await.0, 200, "a key without its own limit is not limited");
    }
    s.stop().await;
}
