//! The policy directory watcher against real files: an idle server performs no reloads (its own
//! reads are not changes), and a continuous stream of writes still reloads at least every
//! maximum wait, with every set validated before it goes live.
mod common;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cedar_policy::{Authorizer, Context, Decision, EntityUid, Request};
use common::*;
use portcullis::config::EmptyPolicy;
use portcullis::policy::{PolicyStore, files};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// Reloads by result, as `/metrics` shows them: (ok, rejected, unchanged).
fn reloads(metrics: &str) -> (f64, f64, f64) {
    let get = |result: &str| {
        let series = format!("portcullis_policy_reloads_total{{result=\"{result}\"}}");
        metrics.lines().find_map(|l| l.strip_prefix(series.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
    };
    (get("ok"), get("rejected"), get("unchanged"))
}

const OPEN_STATUS: &str = r#"@id("open-status")
permit (principal, action == Action::"GET", resource)
when { resource.path == "/api/status" };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_performs_no_reloads() {
    let s = Sidecar::start().await;
    // One real change first: its reload reads the directory, and those reads must not count as
    // changes of their own (they used to keep an idle server re-reading forever).
    std::fs::write(s.policy_dir.join("open.cedar"), OPEN_STATUS).expect("write policy");
    eventually(Duration::from_secs(10), "the change is live", async || {
        is_allowed(&s.check(req("GET", "/api/status").build()).await).then_some(())
    })
    .await;
    // Let the events of that one write drain (many debounce periods).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = reloads(&s.admin_get("/metrics").await.1);
    assert!(before.0 >= 2.0, "the initial load and the change were counted: {before:?}");

    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = reloads(&s.admin_get("/metrics").await.1);
    assert_eq!(before, after, "(ok, rejected, unchanged) reloads while nothing changed");
    s.stop().await;
}

const SCHEMA: &str = r#"
    entity User;
    entity Route;
    action "GET" appliesTo { principal: [User], resource: [Route] };
"#;

fn permit(user: &str) -> String {
    format!("@id(\"{user}-get\") permit(principal == User::\"{user}\", action == Action::\"GET\", resource);\n")
}

/// Parses up to a syntax error on line 2: the whole set must be refused, so the permit-all in
/// front of it is never live.
const INVALID: &str = "@id(\"everyone\") permit(principal, action, resource);\npermit(oops\n";

fn allows(store: &PolicyStore, user: &str) -> bool {
    let Some(snap) = store.load() else { return false };
    let principal = EntityUid::from_str(&format!("User::\"{user}\"")).expect("uid");
    let action = EntityUid::from_str("Action::\"GET\"").expect("uid");
    let resource = EntityUid::from_str("Route::\"r\"").expect("uid");
    let Ok(req) = Request::new(principal, action, resource, Context::empty(), Some(snap.engine.schema())) else {
        return false;
    };
    Authorizer::new().is_authorized(&req, snap.engine.policies(), snap.engine.entities()).decision() == Decision::Allow
}

/// Replaces `name` atomically (a hidden temporary renamed over it), as editors and config
/// management do: every read sees one whole version of the file.
fn replace(dir: &std::path::Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write temporary");
    std::fs::rename(&tmp, dir.join(name)).expect("rename over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_writes_still_reload_regularly_and_only_valid_sets_go_live() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("schema.cedarschema"), SCHEMA).expect("schema");
    std::fs::write(tmp.path().join("rules.cedar"), permit("alice")).expect("rules");
    let mut registry = Registry::with_prefix("portcullis");
    let store = Arc::new(PolicyStore::new(EmptyPolicy::DenyAll, registry.sub_registry_with_prefix("policy")));
    files::load_into(tmp.path(), &store).expect("first load");
    let metrics = |registry: &Registry| {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
        reloads(&out)
    };
    // The quiet period (250 ms, the default) is longer than the gap between writes (100 ms):
    // only the maximum wait lets a reload happen while the writes go on.
    let (stop, rx) = watch::channel(false);
    let task = files::spawn_watch(tmp.path().to_owned(), store.clone(), Duration::from_millis(250), rx).expect("watch");

    // Watches the live snapshot the whole time: the permit-all of the invalid set never shows.
    let done = Arc::new(AtomicBool::new(false));
    let seen_bob = Arc::new(AtomicUsize::new(0));
    let observer = {
        let (store, done, seen_bob) = (store.clone(), done.clone(), seen_bob.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                assert!(!allows(&store, "mallory"), "an invalid set went live");
                assert!(store.is_ready(), "the live snapshot never goes away");
                if allows(&store, "bob") {
                    seen_bob.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let before = metrics(&registry);
    // 10 s of writes every 100 ms: alice's set, bob's set, an invalid set, in turn.
    for i in 0..100 {
        let text = match i % 3 {
            0 => permit("bob"),
            1 => permit("alice"),
            _ => INVALID.to_owned(),
        };
        replace(tmp.path(), "rules.cedar", &text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = metrics(&registry);
    done.store(true, Ordering::Relaxed);
    observer.await.expect("no invalid set was ever live");

    let reloaded = (during.0 - before.0) + (during.1 - before.1) + (during.2 - before.2);
    // A reload at least every maximum wait (2 s) over 10 s is about 5; the bound is generous because
    // a loaded CI machine stretches the reloads themselves (the old debounce gave 0).
    assert!(reloaded >= 2.0, "reloads during 10 s of continuous writes: {reloaded} ({before:?} -> {during:?})");
    assert!(seen_bob.load(Ordering::Relaxed) > 0 || during.0 > before.0, "a valid set was swapped in");

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("watch stops").expect("no panic");
}
