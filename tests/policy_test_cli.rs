//! `portcullis test`, `check --explain` and `validate`, run as the real binary: exit codes, the
//! human and JUnit reports, coverage, explain content, and validate's `file:line:column: message`.
use std::path::Path;
use std::process::Command;

const DEMO_SCHEMA: &str = "examples/demo/policies/portcullis.cedarschema";
const DEMO_ENTITIES: &str = "examples/demo/policies/groups.entities.json";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn portcullis(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_POLICY_DIR")
        .output()
        .expect("binary runs");
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A policy directory: the demo schema and groups, `policies` as `p.cedar`, `tests` as `t.test.yaml`.
fn policy_dir(policies: &str, tests: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(DEMO_SCHEMA, dir.path().join("portcullis.cedarschema")).expect("schema");
    std::fs::copy(DEMO_ENTITIES, dir.path().join("groups.entities.json")).expect("entities");
    std::fs::write(dir.path().join("p.cedar"), policies).expect("write");
    if let Some(t) = tests {
        std::fs::write(dir.path().join("t.test.yaml"), t).expect("write");
    }
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const POLICIES: &str = r#"
@id("public-read")
permit (principal, action in Action::"read", resource) when { resource.path like "/public/*" };

@id("admins-write")
permit (principal in Group::"admins", action in Action::"write", resource) when { resource.path like "/api/*" };

@id("no-deletes-of-audit")
forbid (principal, action == Action::"DELETE", resource) when { resource.path like "/api/audit*" };

@id("clients-read")
permit (principal is ApiClient, action in Action::"read", resource) when { resource.path like "/api/*" };
"#;

/// Two passing cases, two failing ones (wrong decision; wrong policies, status and header).
const MIXED: &str = r#"
cases:
  - name: public read
    request: { path: /public/a }
    expect: { decision: allow, status: 200, policies: [public-read] }
  - name: admins write
    request: { method: POST, path: /api/x }
    identity: { jwt: { issuer: "https://idp.test", claims: { sub: root, groups: [admins] } } }
    expect: { decision: allow, policies: [admins-write], headers: { x-portcullis-subject: root } }
  - name: wrongly expects anonymous writes
    request: { method: POST, path: /api/x }
    expect: { decision: allow }
  - name: wrong details for an audit delete
    request: { method: DELETE, path: /api/audit/1 }
    identity: { jwt: { issuer: "https://idp.test", claims: { sub: root, groups: [admins] } } }
    expect: { decision: deny, status: 401, policies: [admins-write] }
"#;

#[test]
fn the_shipped_suites_pass() {
    let r = portcullis(&["test", "-c", "examples/demo/config.yaml", "examples/demo/policies"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.ends_with("test result: ok. 22 passed, 0 failed\n"), "{}", r.stdout);
    let r = portcullis(&["test", "charts/portcullis/policies"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(" 0 failed"), "{}", r.stdout);
}

#[test]
fn a_failing_suite_names_each_failing_case_with_expected_and_actual() {
    let dir = policy_dir(POLICIES, Some(MIXED));
    let r = portcullis(&["test", s(dir.path())]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let out = &r.stdout;
    assert!(!out.contains("public read"), "passing cases are not listed: {out}");
    assert!(!out.contains("admins write\n"), "{out}");
    assert!(out.contains("t.test.yaml: wrongly expects anonymous writes\n"), "{out}");
    // The issuer is trusted (named by a case, no config), so an anonymous denial is a 401.
    assert!(out.contains("    expected allow, got deny (HTTP 401, credential_required, policies: -)\n"), "{out}");
    assert!(out.contains("t.test.yaml: wrong details for an audit delete\n"), "{out}");
    assert!(out.contains("    expected status 401, got 403\n"), "{out}");
    assert!(out.contains("    expected policies [admins-write], got [no-deletes-of-audit]\n"), "{out}");
    assert!(out.ends_with("test result: FAILED. 2 passed, 2 failed\n"), "{out}");
}

#[test]
fn identity_headers_and_unknown_issuers_are_checked_against_the_config() {
    let tests = r#"
cases:
  - name: the upstream hears the subject and the mapped claim
    request: { path: /public/a }
    identity: { jwt: { issuer: "https://idp.test", claims: { sub: alice, email: a@x.test } } }
    expect: { decision: allow, headers: { x-portcullis-subject: alice, x-email: a@x.test } }
  - name: a wrong header value fails
    request: { path: /public/a }
    identity: { jwt: { issuer: "https://idp.test", claims: { sub: alice } } }
    expect: { decision: allow, headers: { x-portcullis-subject: bob } }
  - name: an issuer the config does not trust cannot be stated
    request: { path: /public/a }
    identity: { jwt: { issuer: "https://evil.test", claims: { sub: alice } } }
    expect: { decision: allow }
  - name: a token without sub proves nothing
    request: { path: /public/a }
    identity: { jwt: { issuer: "https://idp.test", claims: { email: a@x.test } } }
    expect: { decision: allow }
  - name: a peer that is not a SPIFFE id is refused
    request: { path: /public/a }
    identity: { spiffe_id: "https://not-spiffe" }
    expect: { decision: allow }
  - name: an API client takes its configured groups
    request: { method: POST, path: /api/things }
    identity: { api_client: { client: batch } }
    expect: { decision: allow, policies: [admins-write], headers: { x-portcullis-client: batch } }
"#;
    let dir = policy_dir(POLICIES, Some(tests));
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "policy: {dir: .}\nauthn:\n  issuers:\n    - issuer: https://idp.test\n      jwks_uri: https://idp.test/jwks\n      \
         claims_to_headers: {email: x-email}\n  api_keys:\n    keys:\n      - {client: batch, sha256: \
         \"74045098110de75482c9e34a190dab5a1dd308be1ed6e16fee2dc05e01152d74\", groups: [admins]}\n",
    )
    .expect("write");
    let r = portcullis(&["test", "-c", s(&cfg), s(dir.path())]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let out = &r.stdout;
    assert!(!out.contains("the upstream hears"), "{out}");
    assert!(out.contains("    expected header x-portcullis-subject: \"bob\", got \"alice\"\n"), "{out}");
    assert!(
        out.contains("an issuer the config does not trust cannot be stated\n    identity.jwt: invalid token"),
        "{out}"
    );
    assert!(
        out.contains(
            "a token without sub proves nothing\n    identity.jwt: invalid token: token lacks a required claim"
        ),
        "{out}"
    );
    assert!(out.contains("identity.spiffe_id: not a SPIFFE id"), "{out}");
    assert!(!out.contains("configured groups"), "{out}");
    assert!(out.ends_with("2 passed, 4 failed\n"), "{out}");
}

#[test]
fn junit_report_parses_with_counts_and_failure_messages() {
    let dir = policy_dir(POLICIES, Some(MIXED));
    let xml_path = dir.path().join("report.xml");
    let r = portcullis(&["test", "--format", "junit", "--output", s(&xml_path), s(dir.path())]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("2 passed, 2 failed"), "the summary still reaches people: {}", r.stderr);
    let text = std::fs::read_to_string(&xml_path).expect("report written");
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("4"));
    assert_eq!(root.attribute("failures"), Some("2"));
    let suites: Vec<_> = root.children().filter(|n| n.has_tag_name("testsuite")).collect();
    assert_eq!(suites.len(), 1);
    assert_eq!(suites[0].attribute("name"), Some(s(dir.path())));
    let cases: Vec<_> = suites[0].children().filter(|n| n.has_tag_name("testcase")).collect();
    assert_eq!(cases.len(), 4);
    assert!(cases.iter().all(|c| c.attribute("classname") == Some("t.test.yaml")));
    let failure = |name: &str| {
        let case = cases.iter().find(|c| c.attribute("name") == Some(name)).expect("case present");
        case.children().find(|n| n.has_tag_name("failure")).and_then(|f| f.attribute("message")).map(str::to_owned)
    };
    assert_eq!(failure("public read"), None);
    assert_eq!(failure("admins write"), None);
    assert_eq!(
        failure("wrongly expects anonymous writes").as_deref(),
        Some("expected allow, got deny (HTTP 401, credential_required, policies: -)")
    );
    let m = failure("wrong details for an audit delete").expect("failed");
    assert!(m.contains("expected status 401, got 403"), "{m}");
    assert!(m.contains("expected policies [admins-write], got [no-deletes-of-audit]"), "{m}");

    // Without --output the XML is the whole of stdout.
    let r = portcullis(&["test", "--format", "junit", s(dir.path())]);
    assert_eq!(r.code, 1);
    roxmltree::Document::parse(&r.stdout).expect("stdout is the XML");
}

#[test]
fn coverage_lists_the_policies_no_case_made_determining() {
    let dir = policy_dir(POLICIES, Some(MIXED));
    let r = portcullis(&["test", "--coverage", s(dir.path())]);
    let out = &r.stdout;
    // Determining somewhere: public-read, admins-write, no-deletes-of-audit (even in a failing case).
    assert!(out.contains("coverage: 3 of 4 policies determined some case\n"), "{out}");
    assert!(out.contains("    not determining in any case: clients-read (p.cedar)\n"), "{out}");
    assert!(!out.contains("not determining in any case: public-read"), "{out}");
    let r = portcullis(&["test", s(dir.path())]);
    assert!(!r.stdout.contains("coverage"), "only when asked: {}", r.stdout);
}

#[test]
fn tests_that_cannot_run_exit_2_and_say_why() {
    // An unknown field is refused, not ignored (a typo must not silently weaken a case).
    let dir = policy_dir(
        POLICIES,
        Some("cases:\n  - name: x\n    request: {path: /}\n    expect: {decision: allow, polices: [a]}\n"),
    );
    let r = portcullis(&["test", s(dir.path())]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("t.test.yaml") && r.stderr.contains("polices"), "{}", r.stderr);

    // An expected decision that is neither allow nor deny.
    let dir =
        policy_dir(POLICIES, Some("cases:\n  - name: x\n    request: {path: /}\n    expect: {decision: maybe}\n"));
    assert_eq!(portcullis(&["test", s(dir.path())]).code, 2);

    // Policies that do not load: nothing is run.
    let dir = policy_dir("permit(principal, action, resource) when { principal.nope };", Some(MIXED));
    let r = portcullis(&["test", s(dir.path())]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("policies do not load") && r.stderr.contains("p.cedar"), "{}", r.stderr);

    // No cases at all is not a pass.
    let dir = policy_dir(POLICIES, None);
    let r = portcullis(&["test", s(dir.path())]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("no test cases"), "{}", r.stderr);
}

#[test]
fn test_files_are_ignored_by_the_directory_and_kubernetes_loaders() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;

    // Not Cedar at all: loading it as policy would fail.
    let garbage = "cases: [ this is not cedar";
    let dir = policy_dir(POLICIES, Some(garbage));
    let r = portcullis(&["validate", s(dir.path())]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("ok: 4 policies"), "{}", r.stdout);
    let docs = portcullis::policy::files::read_dir(dir.path()).expect("reads");
    assert!(docs.iter().all(|d| !d.origin.ends_with(".test.yaml")), "{docs:?}");

    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("team".into());
    cm.metadata.namespace = Some("shop".into());
    cm.data = Some(
        [
            ("p.cedar".to_owned(), POLICIES.to_owned()),
            ("routes.test.yaml".to_owned(), garbage.to_owned()),
            ("portcullis.cedarschema".to_owned(), std::fs::read_to_string(DEMO_SCHEMA).expect("schema")),
        ]
        .into(),
    );
    let mut index = portcullis::policy::kube::Index::new(&["shop".into()]);
    index.apply("shop", Event::Init);
    index.apply("shop", Event::InitApply(cm));
    index.apply("shop", Event::InitDone);
    let docs = index.documents();
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert!(docs.iter().all(|d| !d.origin.ends_with(".test.yaml")), "{docs:?}");
}

fn request_file(dir: &Path, name: &str, yaml: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, yaml).expect("write");
    p.to_str().expect("utf-8").to_owned()
}

#[test]
fn explain_shows_what_cedar_saw_for_an_allow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request_file(
        dir.path(),
        "r.yaml",
        "path: /public/status\nhost: shop.default.svc.cluster.local\nsource: {address: 10.1.2.3, principal: \"spiffe://cluster.local/ns/frontend/sa/web\"}\n",
    );
    let r = portcullis(&["check", "-c", "examples/demo/config.yaml", &req, "--explain"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = &r.stdout;
    assert!(out.contains("decision:  allow"), "{out}");
    assert!(out.contains("  principal:   Service::\"spiffe://cluster.local/ns/frontend/sa/web\"\n"), "{out}");
    assert!(out.contains("  action:      Action::\"GET\"\n"), "{out}");
    assert!(out.contains("  resource:    Route::\"shop.default.svc.cluster.local/public/status\"\n"), "{out}");
    assert!(out.contains("source_ip: ip(\"10.1.2.3\")") && out.contains("authn: [\"mtls\"]"), "{out}");
    assert!(out.contains("namespace: \"frontend\""), "the principal entity is shown: {out}");
    // Indexing leaves out the policies that cannot match a Service's GET of /public/*.
    let considered = out.lines().find(|l| l.starts_with("  considered:")).expect("considered line");
    assert!(considered.contains(" of 10 policies: "), "{considered}");
    assert!(considered.contains("public-read") && !considered.contains("batch-client-write"), "{considered}");
    assert!(out.contains("  satisfied:   public-read\n"), "{out}");
    assert!(out.contains("  determining: public-read\n"), "{out}");
    assert!(out.contains("  errors:      -\n"), "{out}");
    assert!(out.contains("  cedar:       allow\n"), "{out}");
}

#[test]
fn explain_shows_a_satisfied_permit_overridden_by_a_forbid() {
    let dir = policy_dir(POLICIES, None);
    let req = request_file(dir.path(), "r.yaml", "method: DELETE\npath: /api/audit/1\nhost: h\n");
    // An API key proves the client; its configured groups include admins, so admins-write holds too.
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "policy: {dir: .}\nauthn:\n  api_keys:\n    keys:\n      - {client: batch, sha256: \
         \"74045098110de75482c9e34a190dab5a1dd308be1ed6e16fee2dc05e01152d74\", groups: [admins]}\n",
    )
    .expect("write");
    let req = {
        std::fs::write(&req, "method: DELETE\npath: /api/audit/1\nhost: h\nheaders: {x-api-key: demo-batch-key}\n")
            .expect("write");
        req
    };
    let r = portcullis(&["check", "-c", s(&cfg), &req, "--explain", "--expect", "deny"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = &r.stdout;
    assert!(out.contains("reason:    forbidden_by_policy"), "{out}");
    assert!(out.contains("  principal:   ApiClient::\"batch\"\n"), "{out}");
    assert!(out.contains("in [Group::\"admins\"]"), "{out}");
    assert!(out.contains("  satisfied:   admins-write, no-deletes-of-audit\n"), "{out}");
    assert!(out.contains("  determining: no-deletes-of-audit\n"), "{out}");
    assert!(out.contains("  cedar:       deny\n"), "{out}");
    // The key itself is never echoed.
    assert!(!out.contains("demo-batch-key"), "{out}");
}

#[test]
fn explain_lists_every_evaluation_error_with_its_policy() {
    let policies = r#"
@id("public-read")
permit (principal, action in Action::"read", resource) when { resource.path like "/public/*" };
@id("clock-overflow")
permit (principal, action in Action::"read", resource)
when { resource.path like "/clock/*" && context.time * 10000000000 > 0 };
"#;
    let dir = policy_dir(policies, None);
    let req = request_file(dir.path(), "r.yaml", "path: /clock/now\nhost: h\n");
    let r = portcullis(&["check", "--policies", s(dir.path()), &req, "--explain"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = &r.stdout;
    assert!(out.contains("decision:  deny"), "{out}");
    assert!(out.contains("reason:    evaluation_error"), "{out}");
    let err = out.lines().find(|l| l.starts_with("  error:")).expect("an error line");
    assert!(err.starts_with("  error:       clock-overflow: "), "{err}");
    assert!(err.contains("overflow"), "{err}");
    assert!(out.contains("  satisfied:   -\n") && out.contains("  determining: -\n"), "{out}");
    assert!(out.contains("  cedar:       deny\n"), "{out}");
}

#[test]
fn explain_is_offline_only() {
    let r = portcullis(&["check", "examples/demo/requests/public.yaml", "--server", "http://127.0.0.1:1", "--explain"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("--explain") || r.stderr.contains("--server"), "{}", r.stderr);
}

#[test]
fn validate_reports_file_line_column_message() {
    let dir = policy_dir("permit(principal, action, resource);\n\npermit(principal action);\n", None);
    let r = portcullis(&["validate", s(dir.path())]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let want = format!("{}:3:", dir.path().join("p.cedar").display());
    let line =
        r.stderr.lines().find(|l| l.starts_with(&want)).unwrap_or_else(|| panic!("want {want}, got {}", r.stderr));
    // file:line:column: message
    let rest = &line[want.len()..];
    let (col, msg) = rest.split_once(": ").expect("column then message");
    assert!(col.parse::<u32>().is_ok_and(|c| c >= 1), "{line}");
    assert!(!msg.is_empty(), "{line}");

    // A policy that parses but does not fit the schema: the position of the bad expression, and
    // the policy's id.
    let dir = policy_dir(
        "permit(principal, action, resource);\n@id(\"bad\")\npermit(principal, action, resource) when { principal.nope == 1 };\n",
        None,
    );
    let r = portcullis(&["validate", s(dir.path())]);
    assert_eq!(r.code, 1);
    let want = format!("{}:3:44: policy `bad`: ", dir.path().join("p.cedar").display());
    let line =
        r.stderr.lines().find(|l| l.starts_with(&want)).unwrap_or_else(|| panic!("want {want}, got {}", r.stderr));
    assert!(line.contains("attribute `nope`"), "{line}");

    // Broken entities name their file too.
    let dir = policy_dir("permit(principal, action, resource);", None);
    std::fs::write(dir.path().join("groups.entities.json"), "[{").expect("write");
    let r = portcullis(&["validate", s(dir.path())]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.lines().any(|l| l.starts_with(&format!("{}:", dir.path().join("groups.entities.json").display()))),
        "{}",
        r.stderr
    );

    // Clean: exit 0 and a count.
    let r = portcullis(&["validate", "examples/demo/policies"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("ok: 10 policies, version "), "{}", r.stdout);
}

const CUTOFF_POLICIES: &str = r#"
@id("sale-until-2026")
permit (principal, action in Action::"read", resource)
when { resource.path like "/sale/*" && context.time < 1767225600 };
"#;

#[test]
fn a_case_fixes_context_time_so_cutoffs_are_testable() {
    // 1767225600 is 2026-01-01T00:00:00Z; today's clock is past it, so the "before" cases pass
    // only because the stated time is what the policy sees.
    let tests = r#"
cases:
  - name: just before the cutoff (RFC 3339)
    time: "2025-12-31T23:59:59Z"
    request: { path: /sale/a }
    expect: { decision: allow, policies: [sale-until-2026] }
  - name: before the cutoff in local time with an offset
    time: "2026-01-01T01:30:00+02:00"
    request: { path: /sale/a }
    expect: { decision: allow }
  - name: one second before (unix seconds)
    time: 1767225599
    request: { path: /sale/a }
    expect: { decision: allow }
  - name: at the cutoff
    time: 1767225600
    request: { path: /sale/a }
    expect: { decision: deny, reason: no_permit }
  - name: after the cutoff in local time with a negative offset
    time: "2025-12-31T19:00:00-05:00"
    request: { path: /sale/a }
    expect: { decision: deny }
"#;
    let dir = policy_dir(CUTOFF_POLICIES, Some(tests));
    let r = portcullis(&["test", s(dir.path())]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.ends_with("test result: ok. 5 passed, 0 failed\n"), "{}", r.stdout);

    // A wrong expectation about the cutoff fails like any other case.
    let wrong = "cases:\n  - name: after\n    time: \"2026-06-01T00:00:00Z\"\n    request: {path: /sale/a}\n    expect: {decision: allow}\n";
    let dir = policy_dir(CUTOFF_POLICIES, Some(wrong));
    let r = portcullis(&["test", s(dir.path())]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("t.test.yaml: after\n    expected allow, got deny (HTTP 403, no_permit"), "{}", r.stdout);
}

#[test]
fn a_time_that_is_not_a_moment_fails_its_case_by_name() {
    let tests = r#"
cases:
  - name: words
    time: yesterday
    request: { path: /sale/a }
    expect: { decision: deny }
  - name: no offset
    time: "2025-12-31T23:59:59"
    request: { path: /sale/a }
    expect: { decision: deny }
  - name: month thirteen
    time: "2025-13-01T00:00:00Z"
    request: { path: /sale/a }
    expect: { decision: deny }
  - name: offset out of range
    time: "2025-12-31T23:59:59+24:00"
    request: { path: /sale/a }
    expect: { decision: deny }
  - name: signed offset digits
    time: "2025-12-31T23:59:59+-1:00"
    request: { path: /sale/a }
    expect: { decision: deny }
  - name: not ascii
    time: "2025-12-31T23:59:59+0é:00"
    request: { path: /sale/a }
    expect: { decision: deny }
  - name: fine
    time: "2026-01-01T00:00:00Z"
    request: { path: /sale/a }
    expect: { decision: deny }
"#;
    let dir = policy_dir(CUTOFF_POLICIES, Some(tests));
    let r = portcullis(&["test", s(dir.path())]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let out = &r.stdout;
    for name in ["words", "no offset", "month thirteen", "offset out of range", "signed offset digits", "not ascii"] {
        let head = format!("t.test.yaml: {name}\n    time: ");
        assert!(out.contains(&head), "{name}: {out}");
    }
    assert!(out.contains("time: \"yesterday\" is neither RFC 3339"), "{out}");
    // A case that cannot run never counts as a pass, even when it expected a deny.
    assert!(out.ends_with("test result: FAILED. 1 passed, 6 failed\n"), "{out}");

    // A time of the wrong YAML type is a test file that does not load: exit 2, naming the file.
    let dir = policy_dir(
        CUTOFF_POLICIES,
        Some("cases:\n  - name: x\n    time: [1]\n    request: {path: /}\n    expect: {decision: deny}\n"),
    );
    let r = portcullis(&["test", s(dir.path())]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("t.test.yaml"), "{}", r.stderr);
}

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

@id("verified-by-filter")
permit (principal, action in Action::"read", resource)
when {
  resource.path like "/filtered/*" &&
  resource.hasTag("metadata:com.example.filter:verdict") &&
  resource.getTag("metadata:com.example.filter:verdict") == "ok"
};
"#;

#[test]
fn context_extensions_flip_a_decision_as_envoy_would_send_them() {
    let many: String = (0..65).map(|i| format!("k{i}: v, ")).collect();
    let tests = format!(
        r#"
cases:
  - name: the tenant a route
    request: {{ path: /tenant/x, context_extensions: {{ tenant: a }} }}
    expect: {{ decision: allow, policies: [tenant-a-route] }}
  - name: another tenant's route
    request: {{ path: /tenant/x, context_extensions: {{ tenant: b }} }}
    expect: {{ decision: deny, reason: no_permit }}
  - name: no extension
    request: {{ path: /tenant/x }}
    expect: {{ decision: deny }}
  - name: a header cannot imitate an extension
    request: {{ path: /tenant/x, headers: {{ "ext:tenant": a, ext-tenant: a }} }}
    expect: {{ decision: deny }}
  - name: more route facts than the bound are refused like the sidecar refuses them
    request: {{ path: /tenant/x, context_extensions: {{ tenant: a, {many} }} }}
    expect: {{ decision: deny, status: 400, reason: too_many_route_facts }}
"#
    );
    let dir = policy_dir(ROUTE_POLICIES, Some(&tests));
    let r = portcullis(&["test", s(dir.path())]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.ends_with("test result: ok. 5 passed, 0 failed\n"), "{}", r.stdout);
}

const METADATA_CASES: &str = r#"
cases:
  - name: gold route metadata
    request: { path: /gold/x, route_metadata: { com.example.route: { tier: gold } } }
    expect: { decision: allow, policies: [gold-route] }
  - name: silver route metadata
    request: { path: /gold/x, route_metadata: { com.example.route: { tier: silver } } }
    expect: { decision: deny }
  - name: the right key in another namespace is another fact
    request: { path: /gold/x, route_metadata: { com.example.other: { tier: gold } } }
    expect: { decision: deny }
  - name: route metadata is not dynamic metadata
    request: { path: /gold/x, metadata: { com.example.route: { tier: gold } } }
    expect: { decision: deny }
  - name: a filter's dynamic metadata
    request: { path: /filtered/x, metadata: { com.example.filter: { verdict: ok } } }
    expect: { decision: allow, policies: [verified-by-filter] }
"#;

#[test]
fn metadata_reaches_policies_only_for_the_namespaces_the_sidecar_reads() {
    // Without a config, every namespace a case names is read.
    let dir = policy_dir(ROUTE_POLICIES, Some(METADATA_CASES));
    let r = portcullis(&["test", s(dir.path())]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.ends_with("test result: ok. 5 passed, 0 failed\n"), "{}", r.stdout);

    // With a config, only its namespaces: the filter's namespace is not configured, so the
    // sidecar would never show it to policies and the case that relies on it fails.
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "policy: {dir: .}\ncedar:\n  route_metadata_namespaces: [com.example.route]\n")
        .expect("write");
    let r = portcullis(&["test", "-c", s(&cfg), s(dir.path())]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("t.test.yaml: a filter's dynamic metadata\n    expected allow, got deny"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.ends_with("4 passed, 1 failed\n"), "{}", r.stdout);
}

#[test]
fn the_rate_limit_does_not_apply_to_test_cases() {
    // One request per second, no burst, and forty cases from the same caller: as traffic, all
    // but the first would be 429s.
    let case = "  - name: read {i}\n    request: { path: /public/a, source_ip: 10.0.0.1 }\n    \
                identity: { api_client: { client: batch } }\n    expect: { decision: allow, status: 200 }\n";
    let tests: String =
        std::iter::once("cases:\n".to_owned()).chain((0..40).map(|i| case.replace("{i}", &i.to_string()))).collect();
    let dir = policy_dir(POLICIES, Some(&tests));
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "policy: {dir: .}\nrate_limit: {requests_per_second: 1, burst: 1}\nauthn:\n  api_keys:\n    keys:\n      \
         - {client: batch, sha256: \"74045098110de75482c9e34a190dab5a1dd308be1ed6e16fee2dc05e01152d74\"}\n",
    )
    .expect("write");
    let r = portcullis(&["test", "-c", s(&cfg), s(dir.path())]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.ends_with("test result: ok. 40 passed, 0 failed\n"), "{}", r.stdout);
}

#[test]
fn check_takes_a_fixed_time_offline() {
    let dir = policy_dir(CUTOFF_POLICIES, None);
    let req = request_file(dir.path(), "r.yaml", "path: /sale/a\nhost: h\n");
    let p = s(dir.path());
    let r = portcullis(&["check", "--policies", p, &req, "--explain", "--time", "2025-12-31T23:59:59Z"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("decision:  allow") && r.stdout.contains("time: 1767225599}"), "{}", r.stdout);
    let r = portcullis(&["check", "--policies", p, &req, "--time", "1767225600", "--expect", "deny"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // Not a moment: refused, never the clock.
    let r = portcullis(&["check", "--policies", p, &req, "--time", "noon"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("--time: \"noon\" is neither RFC 3339"), "{}", r.stderr);
    // Offline only: a sidecar uses its own clock.
    let r = portcullis(&["check", &req, "--server", "http://127.0.0.1:1", "--time", "0"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
}

/// A one-shot command whose reader has gone (`portcullis validate … | head`) ends with its normal
/// exit code, never with a panic about a broken pipe.
#[test]
fn a_closed_stdout_ends_the_output_quietly_not_with_a_panic() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["validate", "examples/demo/policies"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    // Closed before the command can have written anything: its first write hits a broken pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("waits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{:?} {stderr}", out.status);
}
