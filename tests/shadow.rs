//! Shadow (candidate) policy sets over real gRPC: a differential matrix over two policy sets that
//! differ in known places, whose disagreement counts (from `/metrics`) and log lines are exactly
//! the ones an independent model of the two sets predicts; the live decision never changes when
//! the candidate changes or is invalid; an invalid candidate is refused and reported as a live
//! one is (directory and Kubernetes sources); `sample: 0` shadows nothing.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use common::*;
use portcullis::config::{CandidateConfig, Config};
use portcullis::proto::auth::CheckResponse;
use prost_types::value::Kind;

// ---- log capture: every INFO+ line of this test binary, as JSON ------------------------------

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOG.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(|| Capture)
            .finish();
        tracing::subscriber::set_global_default(sub).expect("the only subscriber");
    });
}

/// Captured lines that satisfy `pred` (tests run in parallel: each filters on what is its own).
fn logged(pred: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    let buf = LOG.lock().expect("log buffer").clone();
    String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| pred(v))
        .collect()
}

/// Shadow disagreement lines whose request id starts with `prefix`.
fn shadow_lines(prefix: &str) -> Vec<serde_json::Value> {
    logged(|v| v["target"] == "portcullis::shadow" && v["request_id"].as_str().is_some_and(|r| r.starts_with(prefix)))
}

// ---- the two policy sets -------------------------------------------------------------------

/// The candidate's additions: a forbid and a permit the live set does not have.
const CANDIDATE_EXTRA: &str = r#"
@id("freeze-orders")
forbid (principal, action in Action::"write", resource)
when { resource.path like "/api/orders*" };

@id("open-status")
permit (principal, action == Action::"GET", resource)
when { resource.path == "/api/status" };
"#;

/// The candidate: the demo set without `frontend-service-read`, plus [`CANDIDATE_EXTRA`].
fn write_candidate(dir: &Path) {
    copy_demo_policies(dir);
    let path = dir.join("policies.cedar");
    let live = std::fs::read_to_string(&path).expect("demo policies");
    let removed = "@id(\"frontend-service-read\")\npermit (principal is Service, action in Action::\"read\", resource)\nwhen { principal.namespace == \"frontend\" && resource.path like \"/api/*\" };\n";
    assert!(live.contains(removed), "the demo policy set changed; update this test");
    std::fs::write(&path, live.replace(removed, "") + CANDIDATE_EXTRA).expect("write candidate");
    drop_test_files(dir);
}

/// The policy test files beside the demo policies are not policies: keep the dirs minimal.
fn drop_test_files(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("list") {
        let p = e.expect("entry").path();
        if p.to_string_lossy().ends_with(".test.yaml") {
            std::fs::remove_file(p).expect("remove test file");
        }
    }
}

fn candidate(dir: PathBuf, sample: f64) -> CandidateConfig {
    let mut cfg = Config::from_yaml("policy: {dir: x, candidate: {dir: y, debounce: 50ms, log_per_second: 100000}}\n")
        .expect("parses");
    let mut c = cfg.policy.candidate.take().expect("candidate");
    c.dir = Some(dir);
    c.sample = sample;
    c
}

/// A sidecar whose candidate set is written by `write` into `<tmp>/candidate`.
async fn start(write: impl FnOnce(&Path), sample: f64) -> (Sidecar, PathBuf) {
    capture_logs();
    let mut cdir = PathBuf::new();
    let s = Sidecar::start_configured(drop_test_files, |tmp, cfg| {
        cdir = tmp.join("candidate");
        std::fs::create_dir_all(&cdir).expect("candidate dir");
        write(&cdir);
        cfg.policy.candidate = Some(candidate(cdir.clone(), sample));
    })
    .await;
    (s, cdir)
}

// ---- an independent model of the two sets, for the matrix's identities and routes -----------

#[derive(Clone, Copy, Debug)]
enum Who {
    Anonymous,
    Alice,
    /// A user in `admins`.
    Bob,
    Frontend,
    Billing,
}

const WHO: [Who; 5] = [Who::Anonymous, Who::Alice, Who::Bob, Who::Frontend, Who::Billing];
const METHODS: [&str; 3] = ["GET", "POST", "DELETE"];
const PATHS: [&str; 6] = ["/public/a", "/api/status", "/api/orders/1", "/api/items", "/admin/x", "/other"];

/// Allowed, and the sorted determining policy ids.
type Outcome = (bool, Vec<&'static str>);

/// The outcome under the live set, or the candidate.
fn model(who: Who, method: &str, path: &str, candidate: bool) -> Outcome {
    let read = method == "GET";
    let write = !read;
    let api = path.starts_with("/api/");
    let user = matches!(who, Who::Alice | Who::Bob);
    let admin = matches!(who, Who::Bob);
    let mut permits = Vec::new();
    let mut forbids = Vec::new();
    if read && path.starts_with("/public/") {
        permits.push("public-read");
    }
    if user && read && api {
        permits.push("users-read-api");
    }
    if admin && write && api {
        permits.push("admins-write-api");
    }
    if path.starts_with("/admin") {
        if admin {
            permits.push("admins-admin-area");
        } else {
            forbids.push("admin-area-admins-only");
        }
    }
    if !candidate && matches!(who, Who::Frontend) && read && api {
        permits.push("frontend-service-read");
    }
    if candidate && write && path.starts_with("/api/orders") {
        forbids.push("freeze-orders");
    }
    if candidate && method == "GET" && path == "/api/status" {
        permits.push("open-status");
    }
    let (allowed, mut ids) = if !forbids.is_empty() { (false, forbids) } else { (!permits.is_empty(), permits) };
    ids.sort_unstable();
    (allowed, ids)
}

fn request(who: Who, method: &str, path: &str, id: &str) -> Req {
    let r = req(method, path).id(id);
    match who {
        Who::Anonymous => r,
        Who::Alice => r.bearer(&token("alice").mint()),
        Who::Bob => r.bearer(&token("bob").groups(&["admins"]).mint()),
        Who::Frontend => r.peer("spiffe://cluster.local/ns/frontend/sa/web"),
        Who::Billing => r.peer("spiffe://cluster.local/ns/billing/sa/api"),
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}

fn meta_list(r: &CheckResponse, k: &str) -> Vec<String> {
    match r.dynamic_metadata.as_ref().and_then(|m| m.fields.get(k)).and_then(|v| v.kind.as_ref()) {
        Some(Kind::ListValue(l)) => l
            .values
            .iter()
            .map(|v| match &v.kind {
                Some(Kind::StringValue(s)) => s.clone(),
                other => panic!("not a string: {other:?}"),
            })
            .collect(),
        other => panic!("`{k}` is not a list: {other:?}"),
    }
}

fn has_shadow_fields(r: &CheckResponse) -> bool {
    r.dynamic_metadata.as_ref().is_some_and(|m| m.fields.keys().any(|k| k.starts_with("shadow")))
}

/// The value of one exact series in `/metrics` (0 when absent).
async fn metric(s: &Sidecar, series: &str) -> f64 {
    let (code, text) = s.admin_get("/metrics").await;
    assert_eq!(code, 200);
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Every `portcullis_shadow_*` series in `/metrics` with its value.
async fn shadow_series(s: &Sidecar) -> BTreeMap<String, f64> {
    let (_, text) = s.admin_get("/metrics").await;
    text.lines()
        .filter(|l| l.starts_with("portcullis_shadow_"))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

async fn policy_status(s: &Sidecar) -> serde_json::Value {
    let (code, body) = s.diagnostics_get("/policy").await;
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("/policy is JSON")
}

// ---- tests -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_differential_matrix_counts_and_logs_exactly_the_known_disagreements() {
    let (s, _) = start(write_candidate, 1.0).await;
    let status = policy_status(&s).await;
    let candidate_version = status["candidate"]["version"].as_str().expect("candidate loaded").to_owned();
    let live_version = status["version"].as_str().expect("live loaded").to_owned();
    assert_ne!(candidate_version, live_version);

    let mut expected_pairs: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut expected_blame: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut expected_lines: BTreeMap<String, (Outcome, Outcome)> = BTreeMap::new();
    let mut n = 0;
    for round in 0..3 {
        for who in WHO {
            for method in METHODS {
                for path in PATHS {
                    n += 1;
                    let id = format!("matrix-{round}-{n}");
                    let r = s.check(request(who, method, path, &id).build()).await;
                    let (live_ok, live_ids) = model(who, method, path, false);
                    let (sh_ok, sh_ids) = model(who, method, path, true);
                    let what = format!("{who:?} {method} {path}");
                    // Only the live set decides.
                    assert_eq!(is_allowed(&r), live_ok, "{what}");
                    assert_eq!(policy_ids(&r), live_ids, "{what}");
                    assert_eq!(meta(&r, "shadow_decision"), verdict(sh_ok), "{what}");
                    assert_eq!(meta_list(&r, "shadow_policies"), sh_ids, "{what}");
                    assert_eq!(meta(&r, "shadow_version"), candidate_version, "{what}");
                    if (live_ok, &live_ids) != (sh_ok, &sh_ids) {
                        *expected_pairs.entry((verdict(live_ok), verdict(sh_ok))).or_default() += 1;
                        for p in live_ids.iter().filter(|p| !sh_ids.contains(p)) {
                            *expected_blame.entry(("live", p)).or_default() += 1;
                        }
                        for p in sh_ids.iter().filter(|p| !live_ids.contains(p)) {
                            *expected_blame.entry(("shadow", p)).or_default() += 1;
                        }
                        expected_lines.insert(id, ((live_ok, live_ids), (sh_ok, sh_ids)));
                    }
                }
            }
        }
    }
    assert_eq!(n, 270);
    // The model's disagreements cover every kind the two sets differ in.
    for pair in [("allow", "deny"), ("deny", "allow"), ("allow", "allow"), ("deny", "deny")] {
        assert!(expected_pairs.contains_key(&pair), "the matrix exercises {pair:?}: {expected_pairs:?}");
    }

    let mut want = BTreeMap::new();
    want.insert("portcullis_shadow_checks_total".to_owned(), 270.0);
    want.insert("portcullis_shadow_errors_total".to_owned(), 0.0);
    for ((live, shadow), c) in &expected_pairs {
        want.insert(format!("portcullis_shadow_disagreements_total{{live=\"{live}\",shadow=\"{shadow}\"}}"), *c as f64);
    }
    for ((side, policy), c) in &expected_blame {
        want.insert(
            format!("portcullis_shadow_disagreement_policies_total{{side=\"{side}\",policy=\"{policy}\"}}"),
            *c as f64,
        );
    }
    assert_eq!(shadow_series(&s).await, want);
    let info = format!("portcullis_policy_candidate_snapshot_info{{version=\"{candidate_version}\"}}");
    assert_eq!(metric(&s, &info).await, 1.0);

    // Exactly one line per disagreement, with both sides and both versions; none for agreements.
    let lines = shadow_lines("matrix-");
    let mut got = BTreeMap::new();
    for l in &lines {
        let rid = l["request_id"].as_str().expect("request_id").to_owned();
        assert_eq!(l["live_version"], live_version.as_str(), "{l}");
        assert_eq!(l["shadow_version"], candidate_version.as_str(), "{l}");
        assert_eq!(l["suppressed"], 0, "{l}");
        assert!(got.insert(rid, l.clone()).is_none(), "one line per request: {l}");
    }
    assert_eq!(got.keys().collect::<Vec<_>>(), expected_lines.keys().collect::<Vec<_>>());
    for (rid, ((live_ok, live_ids), (sh_ok, sh_ids))) in &expected_lines {
        let l = &got[rid];
        assert_eq!(l["live_decision"], verdict(*live_ok), "{l}");
        assert_eq!(l["shadow_decision"], verdict(*sh_ok), "{l}");
        assert_eq!(l["live_policies"], format!("{live_ids:?}"), "{l}");
        assert_eq!(l["shadow_policies"], format!("{sh_ids:?}"), "{l}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_decision_never_changes_when_the_candidate_changes_or_is_invalid() {
    // The candidate starts as a copy of the live set: no disagreement at all.
    let (s, cdir) = start(
        |d| {
            copy_demo_policies(d);
            drop_test_files(d);
        },
        1.0,
    )
    .await;
    let live_version = policy_status(&s).await["version"].as_str().expect("live").to_owned();
    let probe = |i: usize| {
        let (who, method, path) = (WHO[i % 5], METHODS[i % 3], PATHS[i % 6]);
        request(who, method, path, &format!("stable-{i}")).build()
    };
    let mut baseline = Vec::new();
    for i in 0..30 {
        let r = s.check(probe(i)).await;
        assert_eq!(meta(&r, "shadow_decision"), meta(&r, "decision"));
        baseline.push((http_status(&r), policy_ids(&r)));
    }
    assert_eq!(metric(&s, "portcullis_shadow_checks_total").await, 30.0);
    assert!(shadow_series(&s).await.keys().all(|k| !k.contains("disagreement")), "a copy agrees");
    let same = async |tag: &str| {
        for (i, want) in baseline.iter().enumerate() {
            let r = s.check(probe(i)).await;
            assert_eq!(&(http_status(&r), policy_ids(&r)), want, "{tag}: probe {i}");
        }
    };

    // A candidate that denies everything (an empty set): the live answers stay.
    std::fs::write(cdir.join("policies.cedar"), "// nothing\n").expect("write");
    eventually(WAIT, "the empty candidate is loaded", || async {
        policy_status(&s).await["candidate"]["deny_all"] == true
    })
    .await;
    same("empty candidate").await;
    let r = s.check(req("GET", "/public/a").build()).await;
    assert!(is_allowed(&r));
    assert_eq!((meta(&r, "shadow_decision"), meta_list(&r, "shadow_policies")), ("deny".to_owned(), vec![]));

    // An invalid candidate: refused, reported, the last good candidate stays, live unchanged.
    let before = policy_status(&s).await["candidate"]["version"].clone();
    std::fs::write(cdir.join("policies.cedar"), "@id(\"broken\")\npermit (principal action, resource);\n")
        .expect("write");
    let st = eventually(WAIT, "the broken candidate is refused", || async {
        let st = policy_status(&s).await;
        st["candidate"]["last_error"].as_str().is_some().then_some(st)
    })
    .await;
    assert!(st["candidate"]["last_error"].as_str().is_some_and(|e| e.contains("policies.cedar:2:")), "{st}");
    assert_eq!(st["candidate"]["version"], before);
    assert_eq!(st["version"], live_version.as_str());
    assert!(st["last_error"].is_null(), "the live set has no error: {st}");
    assert!(metric(&s, "portcullis_policy_candidate_reloads_total{result=\"rejected\"}").await >= 1.0);
    assert_eq!(metric(&s, "portcullis_policy_reloads_total{result=\"rejected\"}").await, 0.0);
    same("invalid candidate").await;
    assert_eq!(s.admin_get("/readyz").await.0, 200, "a refused candidate never affects readiness");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_candidate_is_refused_and_reported_like_a_live_one() {
    let (s, cdir) = start(
        |d| {
            copy_demo_policies(d);
            drop_test_files(d);
            std::fs::write(
                d.join("bad.cedar"),
                "@id(\"x\")\npermit (principal, action, resource) when { resource.owner == \"x\" };\n",
            )
            .expect("write");
        },
        1.0,
    )
    .await;
    let st = policy_status(&s).await;
    assert!(st["version"].is_string(), "live loaded: {st}");
    assert!(st["candidate"]["version"].is_null(), "no candidate snapshot: {st}");
    let err = st["candidate"]["last_error"].as_str().expect("candidate last_error");
    assert!(err.contains("bad.cedar:2:"), "{err}");
    assert!(st["candidate"]["last_error_at_unix"].is_u64(), "{st}");
    // The same ERROR line a refused live set gets, naming the candidate set and its source.
    let source = format!("dir:{}", cdir.display());
    let lines = logged(|v| v["source"] == source.as_str() && v["level"] == "ERROR");
    assert!(!lines.is_empty(), "no ERROR line for {source}");
    for l in &lines {
        assert_eq!(l["set"], "candidate", "{l}");
        assert_eq!(l["message"], "policy reload rejected; last good snapshot stays", "{l}");
    }
    assert!(metric(&s, "portcullis_policy_candidate_reloads_total{result=\"rejected\"}").await >= 1.0);
    // Ready (only the live set gates readiness); checks are decided and not shadowed.
    assert_eq!(s.admin_get("/readyz").await.0, 200);
    let r = s.check(req("GET", "/public/a").id("nocand-1").build()).await;
    assert!(is_allowed(&r));
    assert!(!has_shadow_fields(&r), "{:?}", r.dynamic_metadata);
    assert_eq!(metric(&s, "portcullis_shadow_checks_total").await, 0.0);

    // Fixed: the candidate loads and shadowing starts.
    std::fs::remove_file(cdir.join("bad.cedar")).expect("remove");
    eventually(WAIT, "the fixed candidate loads", || async {
        policy_status(&s).await["candidate"]["version"].is_string()
    })
    .await;
    let r = s.check(req("GET", "/public/a").id("nocand-2").build()).await;
    assert_eq!(meta(&r, "shadow_decision"), "allow");
    assert!(policy_status(&s).await["candidate"]["last_error"].is_null());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sample_zero_nothing_is_shadowed() {
    let (s, _) = start(write_candidate, 0.0).await;
    assert!(policy_status(&s).await["candidate"]["version"].is_string(), "the candidate is loaded");
    let mut n = 0;
    for who in WHO {
        for method in METHODS {
            for path in PATHS {
                for _ in 0..2 {
                    n += 1;
                    let r = s.check(request(who, method, path, &format!("unsampled-{n}")).build()).await;
                    assert_eq!(is_allowed(&r), model(who, method, path, false).0);
                    assert!(!has_shadow_fields(&r), "{who:?} {method} {path}: {:?}", r.dynamic_metadata);
                }
            }
        }
    }
    assert_eq!(n, 180);
    let series = shadow_series(&s).await;
    assert_eq!(series.get("portcullis_shadow_checks_total"), Some(&0.0));
    assert!(series.keys().all(|k| !k.contains("disagreement")), "{series:?}");
    assert!(shadow_lines("unsampled-").is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_candidate_uses_its_own_selector_and_a_refusal_is_a_candidate_event() {
    use common::kube::FakeApiServer;
    let api = FakeApiServer::start().await;
    let demo = repo().join("examples/demo/policies");
    let read = |n: &str| std::fs::read_to_string(demo.join(n)).expect("demo file");
    let (schema, entities, policies) =
        (read("portcullis.cedarschema"), read("groups.entities.json"), read("policies.cedar"));
    let candidate_label: &[(&str, &str)] = &[("portcullis.dev/policy", "candidate")];
    let base = [
        ("portcullis.cedarschema", schema.as_str()),
        ("groups.entities.json", entities.as_str()),
        ("policies.cedar", policies.as_str()),
    ];
    api.put("policies", "next", candidate_label, &base);
    // Live-labelled ConfigMaps are not the candidate's: this one would refuse every set it joins.
    api.put("policies", "live", &[("portcullis.dev/policy", "true")], &[("x.cedar", "not cedar")]);
    capture_logs();
    let s = Sidecar::start_configured(drop_test_files, |tmp, cfg| {
        let mut c = candidate(PathBuf::new(), 1.0);
        c.dir = None;
        c.kubernetes = Some(portcullis::config::KubernetesSource {
            namespaces: vec!["policies".into()],
            selector: "portcullis.dev/policy=candidate".into(),
            kubeconfig: Some(api.write_kubeconfig(tmp)),
            events: true,
        });
        cfg.policy.candidate = Some(c);
    })
    .await;
    let st = eventually(WAIT, "the candidate is loaded", || async {
        let st = policy_status(&s).await;
        st["candidate"]["version"].is_string().then_some(st)
    })
    .await;
    assert_eq!(st["candidate"]["source"], "kubernetes:policies/portcullis.dev/policy=candidate");
    assert_eq!(st["candidate"]["policy_count"], st["policy_count"], "a copy of the live set: {st}");
    let r = s.check(req("GET", "/public/a").id("kube-1").build()).await;
    assert!(is_allowed(&r));
    assert_eq!(meta(&r, "shadow_decision"), "allow");

    // A broken candidate: refused, a Warning Event with the candidate's own reason, live unchanged.
    let broken = format!("{policies}\n@id(\"broken\")\npermit (principal action, resource);\n");
    api.put("policies", "next", candidate_label, &[base[0], base[1], ("policies.cedar", broken.as_str())]);
    eventually(WAIT, "the candidate Event is posted", || async { !api.events().is_empty() }).await;
    let ev = &api.events()[0];
    assert_eq!((ev["reason"].as_str(), ev["type"].as_str()), (Some("CandidatePolicyRejected"), Some("Warning")));
    assert_eq!(ev["regarding"]["name"], "next");
    let st = policy_status(&s).await;
    assert!(st["candidate"]["last_error"].as_str().is_some_and(|e| e.contains("configmap/policies/next/")), "{st}");
    assert!(st["last_error"].is_null(), "{st}");
    let r = s.check(req("GET", "/public/a").id("kube-2").build()).await;
    assert!(is_allowed(&r));
    assert_eq!(meta(&r, "shadow_decision"), "allow", "the last good candidate is still compared");
    s.stop().await;
}
