//! Differential test (issue 10): every spelling of a path `/p` that the canonicalization contract
//! accepts is decided exactly as `/p` by a real policy set, and the attack spellings are 400.
//! The policies and their schema are written here, into a temp dir; the `Checker` runs offline.
mod common;

use std::path::Path;
use std::sync::Arc;

use portcullis::check::Checker;
use portcullis::client::CheckRequestBuilder;
use portcullis::config::Config;
use portcullis::decision::Decision;
use portcullis::policy::{PolicyStore, files};
use portcullis::proto::auth::CheckRequest;
use prometheus_client::registry::Registry;

use common::decide_with;

const HOST: &str = "shop.example.com";

const SCHEMA: &str = r#"
entity Group;
entity User in [Group] { issuer: String } tags String;
entity Service in [Group] { spiffe_id: String, trust_domain: String, namespace: String, service_account: String };
entity ApiClient in [Group];
entity Anonymous;
entity Route { host: String, path: String, service: String } tags String;
type Ctx = {
  method: String, path: String, query: String, host: String, scheme: String, request_id: String,
  authn: Set<String>, source_ip?: ipaddr, peer?: Service, time: Long,
};
action "read";
action "write";
action "GET", "HEAD", "OPTIONS" in ["read"] appliesTo {
  principal: [User, Service, ApiClient, Anonymous], resource: [Route], context: Ctx,
};
action "POST", "PUT", "PATCH", "DELETE" in ["write"] appliesTo {
  principal: [User, Service, ApiClient, Anonymous], resource: [Route], context: Ctx,
};
"#;

const POLICIES: &str = r#"
@id("public-read")
permit (principal, action in Action::"read", resource) when { resource.path like "/public/*" };
@id("api-read")
permit (principal, action in Action::"read", resource) when { resource.path like "/api/*" };
@id("tenants-forbidden")
forbid (principal, action, resource) when { resource.path like "/api/tenants/*" };
@id("internal-forbidden")
forbid (principal, action, resource) when { resource.path like "/internal/*" };
@id("admin-host-forbidden")
forbid (principal, action, resource) when { resource.host == "admin.example.com" };
"#;

/// A checker with the config it was built from, deciding wire requests as the server does.
struct Offline {
    checker: Checker,
    cfg: Config,
}

impl Offline {
    async fn check(&self, req: &CheckRequest) -> Decision {
        decide_with(&self.checker, req, &self.cfg.limits, self.cfg.request.matrix_parameters).await
    }
}

fn checker(dir: &Path, matrix: &str) -> Offline {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("policy dir");
    std::fs::write(policies.join("test.cedarschema"), SCHEMA).expect("schema");
    std::fs::write(policies.join("test.cedar"), POLICIES).expect("policies");
    let yaml = format!("policy: {{dir: {}}}\nrequest: {{matrix_parameters: {matrix}}}\n", policies.display());
    let cfg = Config::from_yaml(&yaml).expect("config parses");
    cfg.validate().expect("config valid");
    let mut registry = Registry::default();
    let store = Arc::new(PolicyStore::new(cfg.policy.on_empty, &mut registry));
    files::load_into(&policies, &store).expect("policies load");
    let checker = Checker::new(&cfg, store, &mut registry).expect("checker");
    Offline { checker, cfg }
}

fn request(method: &str, path: &str, host: &str) -> CheckRequest {
    CheckRequestBuilder::new(method, path).host(host).scheme("https").pseudo_headers().build()
}

/// What a decision says, without the per-request id.
fn outcome(d: &Decision) -> (bool, u16, &'static str, Vec<String>, String) {
    (d.is_allowed(), d.http_status(), d.reason(), d.policies().to_vec(), d.resource().to_owned())
}

/// Every spelling of `base` the contract accepts: escapes of unreserved characters (upper- and
/// lower-case hex), `/./`, `x/../`, `%2e` dot segments, and duplicate slashes without a `..`.
fn spellings(base: &str) -> Vec<String> {
    let segs: Vec<&str> = base.trim_start_matches('/').split('/').collect();
    let join = |s: &[String]| format!("/{}", s.join("/"));
    let owned: Vec<String> = segs.iter().map(|s| (*s).to_owned()).collect();
    let mut out = Vec::new();
    for upper in [true, false] {
        let enc = |c: char| if upper { format!("%{:02X}", c as u32) } else { format!("%{:02x}", c as u32) };
        // Every unreserved character escaped, then only the first of each segment.
        out.push(join(&owned.iter().map(|s| s.chars().map(enc).collect::<String>()).collect::<Vec<_>>()));
        out.push(join(
            &owned
                .iter()
                .map(|s| s.chars().enumerate().map(|(i, c)| if i == 0 { enc(c) } else { c.to_string() }).collect())
                .collect::<Vec<_>>(),
        ));
    }
    for i in 0..segs.len() {
        let mut with = |insert: &[&str]| {
            let mut v = owned.clone();
            for (k, s) in insert.iter().enumerate() {
                v.insert(i + k, (*s).to_owned());
            }
            out.push(join(&v));
        };
        with(&["."]);
        with(&["%2e"]);
        with(&["x", ".."]);
        with(&["%78", "%2E%2e"]);
        with(&["x", ".", ".."]);
        with(&[".", "x", "%2e."]);
    }
    // Duplicate slashes, with no `..` after them.
    out.push(format!("/{base}"));
    out.push(base.replace('/', "//"));
    out.push(base.replacen('/', "///", 2));
    out.push(format!("/.{}", base.replace('/', "/./")));
    // A trailing `/.` or `x/..` where the base ends in `/`.
    if let Some(dir) = base.strip_suffix('/') {
        out.push(format!("{dir}/."));
        out.push(format!("{dir}/x/.."));
        out.push(format!("{dir}//"));
    }
    out
}

const BASES: [&str; 8] = [
    "/public/status",
    "/public/docs/",
    "/api/orders/42",
    "/api/tenants/acme/invoices",
    "/api/tenants/",
    "/internal/secrets",
    "/internal/",
    "/other/page",
];

#[tokio::test]
async fn every_accepted_spelling_decides_as_the_canonical_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checker = checker(dir.path(), "refuse");
    let mut allowed = 0;
    let mut forbidden = 0;
    for base in BASES {
        let expected = outcome(&checker.check(&request("GET", base, HOST)).await);
        assert_ne!(expected.1, 400, "{base} must be accepted");
        if expected.0 {
            allowed += 1;
        } else if expected.2 == "forbidden_by_policy" {
            forbidden += 1;
        }
        for s in spellings(base) {
            let got = outcome(&checker.check(&request("GET", &s, HOST)).await);
            assert_eq!(got, expected, "{s} decided differently from {base}");
        }
    }
    // The bases cover permitted, forbidden and unmatched paths.
    assert!(allowed >= 3 && forbidden >= 3, "allowed {allowed}, forbidden {forbidden}");
}

#[tokio::test]
async fn host_spellings_decide_as_the_canonical_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checker = checker(dir.path(), "refuse");
    for (canonical, spellings) in [
        ("admin.example.com", ["admin.example.com.", "ADMIN.example.com:443", "Admin.Example.Com.:8443"]),
        (HOST, ["shop.example.com.", "SHOP.EXAMPLE.COM", "shop.example.com:443"]),
    ] {
        let expected = outcome(&checker.check(&request("GET", "/public/x", canonical)).await);
        for h in spellings {
            let got = outcome(&checker.check(&request("GET", "/public/x", h)).await);
            assert_eq!(got, expected, "{h} decided differently from {canonical}");
        }
    }
    let admin = checker.check(&request("GET", "/public/x", "admin.example.com.")).await;
    assert_eq!((admin.is_allowed(), admin.reason()), (false, "forbidden_by_policy"));
}

#[tokio::test]
async fn attack_spellings_are_refused_with_400() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checker = checker(dir.path(), "refuse");
    for (path, host, reason) in [
        ("/internal;x/secrets", HOST, "path_parameter"),
        ("/api/tenants;x/acme", HOST, "path_parameter"),
        ("/api/tenants%3Bx/acme", HOST, "path_parameter"),
        ("/public/status;v=1", HOST, "path_parameter"),
        ("/public/..;/internal/secrets", HOST, "dot_segment_parameter"),
        ("/public/..%3B/internal/secrets", HOST, "dot_segment_parameter"),
        ("/internal//../public/x", HOST, "ambiguous_dot_segment"),
        ("/public//../internal/secrets", HOST, "ambiguous_dot_segment"),
        ("/public/x#/../../internal/secrets", HOST, "path_fragment"),
        ("/public/%2e%2e/%2e%2e/internal", HOST, "above_root"),
        ("/public%2finternal", HOST, "encoded_separator"),
        ("/public/x", "[admin.example.com]", "bad_host"),
        ("/public/x", "[::1]junk", "bad_host"),
        ("/public/x", "127.1", "bad_host"),
    ] {
        let d = checker.check(&request("GET", path, host)).await;
        assert_eq!((d.is_allowed(), d.http_status(), d.reason()), (false, 400, reason), "{path} @ {host}");
    }
}

#[tokio::test]
async fn strip_mode_decides_on_the_path_a_servlet_container_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checker = checker(dir.path(), "strip");
    for (spelling, base) in [
        ("/internal;x/secrets", "/internal/secrets"),
        ("/api/tenants;x/acme/invoices", "/api/tenants/acme/invoices"),
        ("/api;v=2/tenants/acme;a=b/invoices", "/api/tenants/acme/invoices"),
        ("/public/status;jsessionid=1", "/public/status"),
        ("/public%3Bx/status", "/public/status"),
    ] {
        let expected = outcome(&checker.check(&request("GET", base, HOST)).await);
        let got = outcome(&checker.check(&request("GET", spelling, HOST)).await);
        assert_eq!(got, expected, "{spelling} decided differently from {base}");
    }
    for path in ["/public/..;/internal/secrets", "/public/;x/../internal/secrets"] {
        assert_eq!(checker.check(&request("GET", path, HOST)).await.http_status(), 400, "{path}");
    }
}
