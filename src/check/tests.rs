//! `Checker` tested directly, without sockets: a tiny schema and policy set written here, wire
//! requests built by the one builder and normalized as the server does.
use std::sync::Arc;

use prometheus_client::registry::Registry;

use super::*;
use crate::client::CheckRequestBuilder;
use crate::config::Limits;
use crate::policy::{DocKind, PolicyDocument};
use crate::proto::auth::CheckRequest;
use crate::response::challenge_header;

/// Just enough of the Cedar model for these tests: every principal type, GET and POST on routes.
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
action "GET", "POST" appliesTo {
  principal: [User, Service, ApiClient, Anonymous], resource: [Route], context: Ctx,
};
"#;
const ALLOW_ALL: &str = r#"@id("all") permit (principal, action, resource);"#;
/// sha256("good-key").
const KEY_SHA: &str = "b8ce88d57f4916859bcecb01b98b041299a759313987af89f9fc6608d7440537";
const BEARER_MALFORMED: &str =
    r#"Bearer realm="portcullis", error="invalid_token", error_description="bearer token is malformed""#;
const APIKEY_MALFORMED: &str =
    r#"ApiKey realm="portcullis", error="invalid_key", error_description="API key is malformed""#;

/// A checker over `policies` (none applied at all when `None`), for this config YAML.
fn checker_with(yaml: &str, policies: Option<&str>) -> Checker {
    let cfg = Config::from_yaml(yaml).expect("parses");
    cfg.validate().expect("valid");
    let mut registry = Registry::default();
    let store = Arc::new(PolicyStore::new(cfg.policy.on_empty, &mut registry));
    if let Some(text) = policies {
        let mut docs =
            vec![PolicyDocument { origin: "s.cedarschema".into(), kind: DocKind::Schema, text: SCHEMA.into() }];
        if !text.is_empty() {
            docs.push(PolicyDocument { origin: "p.cedar".into(), kind: DocKind::Policies, text: text.into() });
        }
        store.apply(&docs, "test").expect("policies build");
    }
    Checker::new(&cfg, store, &mut registry).expect("checker")
}

/// Anyone may do anything: every denial from this checker comes from authentication alone.
fn checker(headers_yaml: &str, from_yaml: &str) -> Checker {
    let yaml = format!(
        "policy: {{dir: x}}\nauthn:\n  issuers:\n    - issuer: https://issuer.test\n      \
         jwks_file: /nonexistent/jwks.json\n      from: {from_yaml}\n  api_keys:\n    \
         keys: [{{client: batch, sha256: \"{KEY_SHA}\"}}]\nheaders: {headers_yaml}\n"
    );
    checker_with(&yaml, Some(ALLOW_ALL))
}

fn default_checker() -> Checker {
    checker("{}", r#"[{header: authorization, prefix: "Bearer "}]"#)
}

/// A GET with these headers, every value in `raw_value` as a proxyless client may send it.
fn request(headers: &[(&str, &[u8])]) -> CheckRequest {
    let mut b = CheckRequestBuilder::new("GET", "/x").host("shop");
    for (k, v) in headers {
        b = b.raw_header(k, v);
    }
    b.build_header_map_only(true)
}

/// What the server does: normalize, then check; a request that does not normalize is a 400.
async fn decide(c: &Checker, req: &CheckRequest) -> Decision {
    let req_in = crate::proto::check_in(req);
    match RequestView::from_check(&req_in, &Limits::default()) {
        Ok(view) => c.check(&view).await,
        Err(e) => invalid_request(&e),
    }
}

fn status(d: &Decision) -> Option<Status> {
    d.as_deny().map(|d| d.status)
}

fn allowed<'d>(d: &'d Decision, what: &str) -> &'d Allow {
    d.as_allow().unwrap_or_else(|| panic!("{what}: expected an allow, got {d:?}"))
}

fn denied<'d>(d: &'d Decision, what: &str) -> &'d Deny {
    d.as_deny().unwrap_or_else(|| panic!("{what}: expected a deny, got {d:?}"))
}

fn assert_malformed(d: &Decision, challenge: &str, what: &str) {
    let d = denied(d, what);
    assert_eq!(d.status, Status::Unauthorized, "{what}");
    assert_eq!(d.reason, "malformed_credential", "{what}");
    assert_eq!(d.challenge.as_ref().map(challenge_header).as_deref(), Some(challenge), "{what}");
}

#[tokio::test]
async fn our_scheme_that_does_not_parse_is_401_never_anonymous() {
    let c = default_checker();
    for v in [
        "Bearer\tabc",
        "Bearer",
        "Bearer ",
        "bearer  abc",
        "Bearer abc def",
        "Bearer abc ",
        "Bearer abc\t",
        " Bearer abc",
        "BEARER\tabc",
        "bEaReR  abc",
        "Bearer,abc",
        "Bearer abc,def",
        "Bearer\u{a0}abc",
        "",
        "   ",
    ] {
        let d = decide(&c, &request(&[("authorization", v.as_bytes())])).await;
        assert_malformed(&d, BEARER_MALFORMED, &format!("{v:?}"));
    }
    // Not UTF-8 at all (Envoy `raw_value`): unreadable, so refused.
    let d = decide(&c, &request(&[("authorization", b"Bearer \xff\xfe")])).await;
    assert_malformed(&d, BEARER_MALFORMED, "non-UTF-8");
    let d = decide(&c, &request(&[("Authorization", b"\xc3\x28")])).await;
    assert_malformed(&d, BEARER_MALFORMED, "non-UTF-8, other case");
    // Well-formed but not a JWT: still a 401, from verification (not a new behaviour).
    let d = decide(&c, &request(&[("authorization", b"bearer abc")])).await;
    assert_eq!((status(&d), d.reason()), (Some(Status::Unauthorized), "token_malformed"));
    // Twice stays a 400.
    let d = decide(&c, &request(&[("authorization", b"Bearer a"), ("authorization", b"Basic b")])).await;
    assert_eq!((status(&d), d.reason()), (Some(Status::BadRequest), "duplicate_credential"));
}

#[tokio::test]
async fn a_foreign_scheme_is_anonymous_and_forwarded_unless_stripping_is_configured() {
    for v in ["Basic dXNlcjpwYXNz", "Digest username=\"u\"", "Bearerx abc", "Negotiate abc"] {
        let d = decide(&default_checker(), &request(&[("authorization", v.as_bytes())])).await;
        let d = allowed(&d, v);
        assert_eq!(&*d.principal, r#"Anonymous::"anonymous""#, "{v}");
        assert!(!has(&d.remove_headers, "authorization"), "{v}: forwarded untouched");

        for flag in ["{strip_foreign_credentials: true}", "{remove_credentials: true}"] {
            let c = checker(flag, r#"[{header: authorization, prefix: "Bearer "}]"#);
            let d = decide(&c, &request(&[("authorization", v.as_bytes())])).await;
            let d = allowed(&d, &format!("{v} {flag}"));
            assert!(has(&d.remove_headers, "authorization"), "{v} {flag}: {:?}", d.remove_headers);
        }
    }
    // Even where no source reads `authorization` at all, remove_credentials strips a foreign one.
    let c = checker("{remove_credentials: true}", "[{cookie: session}]");
    let d = decide(&c, &request(&[("authorization", b"Basic dXNlcjpwYXNz")])).await;
    assert!(has(&allowed(&d, "foreign").remove_headers, "authorization"), "{d:?}");
    // The strip flag does not touch an allowed request without any authorization header.
    let c = checker("{strip_foreign_credentials: true}", r#"[{header: authorization, prefix: "Bearer "}]"#);
    let d = decide(&c, &request(&[])).await;
    assert!(!has(&allowed(&d, "none").remove_headers, "authorization"), "{d:?}");
}

#[tokio::test]
async fn empty_or_unreadable_cookie_token_and_api_key_are_401() {
    let c = checker("{}", "[{cookie: session}]");
    for v in [&b"session="[..], b"a=1; session= ; b=2", b"session=  "] {
        let d = decide(&c, &request(&[("cookie", v)])).await;
        assert_malformed(&d, BEARER_MALFORMED, &String::from_utf8_lossy(v));
    }
    let d = decide(&c, &request(&[("cookie", b"session=\xff")])).await;
    assert_malformed(&d, BEARER_MALFORMED, "non-UTF-8 cookie");
    // Another cookie is not a credential.
    assert!(decide(&c, &request(&[("cookie", b"theme=dark")])).await.is_allowed());
    // A prefix-less token header: empty or padded is malformed.
    let c = checker("{}", "[{header: x-token}]");
    for v in [&b""[..], b" abc", b"abc "] {
        let d = decide(&c, &request(&[("x-token", v)])).await;
        assert_malformed(&d, BEARER_MALFORMED, &String::from_utf8_lossy(v));
    }

    let c = default_checker();
    for v in [&b""[..], b"  ", b"\xff\xfe"] {
        let d = decide(&c, &request(&[("x-api-key", v)])).await;
        assert_malformed(&d, APIKEY_MALFORMED, &String::from_utf8_lossy(v));
    }
    let d = decide(&c, &request(&[("x-api-key", b"wrong")])).await;
    assert_eq!(d.reason(), "invalid_api_key");
}

#[tokio::test]
async fn owned_headers_are_removed_in_every_spelling_except_the_names_set() {
    let c = checker(
        "{principal: x-p, subject: x-s, issuer: x-i, peer: x-e, client: x-c, strip_on_allow: [m-o]}",
        r#"[{header: authorization, prefix: "Bearer "}]"#,
    );
    let d = decide(&c, &request(&[])).await;
    let d = allowed(&d, "owned");
    assert_eq!(strings(&d.upstream_headers), vec![("x-p".to_owned(), r#"Anonymous::"anonymous""#.to_owned())]);
    let want = ["m-o", "m_o", "x-c", "x-e", "x-i", "x-s", "x_c", "x_e", "x_i", "x_p", "x_s"];
    assert_eq!(d.remove_headers, want);

    // With remove_credentials the API-key header goes too, in every spelling.
    let c = checker(
        "{principal: x-p, subject: x-s, issuer: x-i, peer: x-e, client: x-c, strip_on_allow: [], \
         remove_credentials: true}",
        r#"[{header: authorization, prefix: "Bearer "}]"#,
    );
    let d = decide(&c, &request(&[])).await;
    let d = allowed(&d, "remove_credentials");
    let want = [
        "authorization",
        "x-api-key",
        "x-api_key",
        "x-c",
        "x-e",
        "x-i",
        "x-s",
        "x_api-key",
        "x_api_key",
        "x_c",
        "x_e",
        "x_i",
        "x_p",
        "x_s",
    ];
    assert_eq!(d.remove_headers, want);

    // The default strip list: the method- and URL-override family, in every spelling.
    let d = decide(&default_checker(), &request(&[])).await;
    let d = allowed(&d, "default strip list");
    for h in ["x-http-method-override", "x_http_method_override", "x-http_method-override", "x-original-url"] {
        assert!(has(&d.remove_headers, h), "{h}: {:?}", d.remove_headers);
    }
    for h in ["x_rewrite_url", "x-method_override", "x_http_method", "x_portcullis_subject"] {
        assert!(has(&d.remove_headers, h), "{h}");
    }
    assert!(!has(&d.remove_headers, "x-portcullis-principal"), "set, so not removed");
    assert!(has(&d.remove_headers, "x_portcullis_principal"));
}

#[tokio::test]
async fn a_deny_removes_nothing() {
    let c = default_checker();
    let d = decide(&c, &request(&[("authorization", b"Bearer\tx")])).await;
    // A `Deny` has no headers to set or remove: the type says so.
    assert_malformed(&d, BEARER_MALFORMED, "a deny");
}

const ALICE_ONLY: &str = r#"
@id("alice") permit (principal == User::"alice", action, resource);
@id("block-admin") forbid (principal, action, resource) when { resource.path like "/admin/*" };
"#;

#[tokio::test]
async fn an_anonymous_caller_denied_by_policy_gets_a_401_challenge_in_the_configured_scheme() {
    let bearer =
        "policy: {dir: x}\nauthn:\n  issuers:\n    - {issuer: https://issuer.test, jwks_file: /nonexistent/j.json}\n";
    let d = decide(&checker_with(bearer, Some(ALICE_ONLY)), &request(&[])).await;
    let den = denied(&d, "anonymous");
    assert_eq!((den.status, den.reason), (Status::Unauthorized, "credential_required"));
    assert_eq!(den.challenge, Some(Challenge { scheme: Scheme::Bearer, error: None, description: None }));
    assert_eq!(&*den.principal, r#"Anonymous::"anonymous""#);

    // Only API keys configured: the challenge names that scheme.
    let keys =
        format!("policy: {{dir: x}}\nauthn:\n  api_keys:\n    keys: [{{client: batch, sha256: \"{KEY_SHA}\"}}]\n");
    let d = decide(&checker_with(&keys, Some(ALICE_ONLY)), &request(&[])).await;
    let ch = denied(&d, "api keys").challenge.as_ref().map(challenge_header);
    assert_eq!(ch.as_deref(), Some(r#"ApiKey realm="portcullis""#));

    // No credential could help: a plain 403 without a challenge.
    let d = decide(&checker_with("policy: {dir: x}\n", Some(ALICE_ONLY)), &request(&[])).await;
    let den = denied(&d, "no authn");
    assert_eq!((den.status, den.reason, den.challenge.as_ref()), (Status::Forbidden, "no_permit", None));
}

#[tokio::test]
async fn a_proven_caller_without_a_permit_or_hit_by_a_forbid_gets_403_with_the_policies() {
    let c = checker_with("policy: {dir: x}\n", Some(ALICE_ONLY));
    // An mTLS peer is a proven identity, so no challenge: a 403.
    let peer = "spiffe://cluster.local/ns/shop/sa/orders";
    let req = CheckRequestBuilder::new("GET", "/x").host("shop").peer(peer).build();
    let d = decide(&c, &req).await;
    let den = denied(&d, "peer");
    assert_eq!((den.status, den.reason, den.challenge.as_ref()), (Status::Forbidden, "no_permit", None));
    assert_eq!(*den.principal, format!("Service::{peer:?}"));
    assert!(den.policies.is_empty());

    let c = checker_with("policy: {dir: x}\n", Some(&format!("{ALLOW_ALL}\n{ALICE_ONLY}")));
    let req = CheckRequestBuilder::new("POST", "/admin/users").host("shop").peer(peer).id("r-9").build();
    let d = decide(&c, &req).await;
    let den = denied(&d, "forbid");
    assert_eq!((den.status, den.reason), (Status::Forbidden, "forbidden_by_policy"));
    assert_eq!(*den.policies, ["block-admin"]);
    assert_eq!((&*den.action, den.request_id.as_str()), (r#"Action::"POST""#, "r-9"));
}

#[tokio::test]
async fn an_allow_sets_identity_headers_and_the_determining_policy() {
    let c = checker_with("policy: {dir: x}\n", Some(ALLOW_ALL));
    let peer = "spiffe://cluster.local/ns/shop/sa/orders";
    let req = CheckRequestBuilder::new("GET", "/x").host("shop").peer(peer).id("r-1").build();
    let d = decide(&c, &req).await;
    let a = allowed(&d, "peer");
    assert_eq!(*a.policies, ["all"]);
    assert_eq!(a.request_id, "r-1");
    assert_eq!(
        strings(&a.upstream_headers),
        [
            ("x-portcullis-principal".to_owned(), format!("Service::{peer:?}")),
            ("x-portcullis-peer".to_owned(), peer.to_owned())
        ]
    );
    assert!(!has(&a.remove_headers, "x-portcullis-peer"), "set, so not removed");
    assert!(has(&a.remove_headers, "x-portcullis-subject"), "owned and not set: removed");
    assert_eq!((d.reason(), d.http_status(), d.verdict()), ("allowed", 200, "allow"));
}

#[tokio::test]
async fn no_snapshot_yet_is_503_with_retry_after_and_an_empty_set_is_deny_all() {
    let d = decide(&checker_with("policy: {dir: x}\n", None), &request(&[])).await;
    let den = denied(&d, "no policy");
    assert_eq!((den.status, den.reason, den.retry_after), (Status::Unavailable, "no_policy", Some(5)));

    // A schema and no policies at all: an explicit deny-all, never allow-all.
    let d = decide(&checker_with("policy: {dir: x}\n", Some("")), &request(&[])).await;
    let den = denied(&d, "empty set");
    assert_eq!((den.status, den.reason, den.retry_after), (Status::Forbidden, "deny_all", None));
}

#[tokio::test]
async fn a_caller_over_quota_is_429_with_retry_after_before_any_policy() {
    let yaml = "policy: {dir: x}\nrate_limit: {requests_per_second: 1, burst: 1}\n";
    let c = checker_with(yaml, Some(ALLOW_ALL));
    let req = CheckRequestBuilder::new("GET", "/x").host("shop").source_ip("10.0.0.1").build();
    let mut limited = None;
    for _ in 0..3 {
        if let Decision::Deny(den) = decide(&c, &req).await {
            limited = Some(den);
        }
    }
    let den = limited.expect("three requests at 1/s with a burst of 1: one is limited");
    assert_eq!((den.status, den.reason), (Status::TooManyRequests, "rate_limited"));
    assert!(den.retry_after.is_some_and(|s| s >= 1), "{den:?}");
    assert!(den.policies.is_empty() && den.principal.is_empty(), "decided before Cedar: {den:?}");
    // Another caller has its own bucket.
    let other = CheckRequestBuilder::new("GET", "/x").host("shop").source_ip("10.0.0.2").build();
    assert!(decide(&c, &other).await.is_allowed());
}

#[tokio::test]
async fn a_request_that_does_not_normalize_is_400_and_still_echoes_its_request_id() {
    let c = default_checker();
    let bad = CheckRequestBuilder::new("GET", "/a/%2F/b").host("shop").id("rid-400").build();
    let d = decide(&c, &bad).await;
    let den = denied(&d, "encoded slash");
    assert_eq!((den.status, den.reason, den.request_id.as_str()), (Status::BadRequest, "encoded_separator", "rid-400"));
    // From `x-request-id` when Envoy sent no id.
    let bad = CheckRequestBuilder::new("GET", "/a\\b").host("shop").header("x-request-id", "hdr-id").build();
    assert_eq!(decide(&c, &bad).await.request_id(), "hdr-id");
    // An id that cannot be echoed safely (too long, unprintable) is dropped, never echoed.
    for id in ["x".repeat(129), "a b".to_owned(), "a\nb".to_owned()] {
        let bad = CheckRequestBuilder::new("GET", "/a/%2F").host("shop").id(&id).build();
        let d = decide(&c, &bad).await;
        assert_eq!((d.reason(), d.request_id()), ("encoded_separator", ""), "{id:?}");
    }
}

// ---- shadow (candidate) policy sets --------------------------------------------------------

/// A store holding SCHEMA plus `policies` (nothing applied for `None`).
fn store_with(policies: Option<&str>, registry: &mut Registry, candidate: bool) -> Arc<PolicyStore> {
    let store = Arc::new(if candidate {
        PolicyStore::candidate(registry)
    } else {
        PolicyStore::new(crate::config::EmptyPolicy::DenyAll, registry)
    });
    if let Some(text) = policies {
        let docs = vec![
            PolicyDocument { origin: "s.cedarschema".into(), kind: DocKind::Schema, text: SCHEMA.into() },
            PolicyDocument { origin: "p.cedar".into(), kind: DocKind::Policies, text: text.into() },
        ];
        store.apply(&docs, "test").expect("policies build");
    }
    store
}

/// A checker whose live set is `live` and candidate set `candidate`, sampling `sample`; also
/// returns the registry, to read the shadow metrics.
fn shadow_checker(live: &str, candidate: Option<&str>, sample: f64) -> (Checker, Registry) {
    let yaml = format!(
        "policy: {{dir: x, candidate: {{dir: y, sample: {sample}}}}}\nauthn:\n  issuers:\n    - issuer: \
         https://issuer.test\n      jwks_file: /nonexistent/jwks.json\n"
    );
    let cfg = Config::from_yaml(&yaml).expect("parses");
    cfg.validate().expect("valid");
    let mut registry = Registry::default();
    let store = store_with(Some(live), &mut registry, false);
    let cstore = store_with(candidate, registry.sub_registry_with_prefix("candidate"), true);
    let cc = cfg.policy.candidate.clone().expect("candidate");
    let c = Checker::new(&cfg, store, &mut registry).expect("checker").with_shadow(&cc, cstore, &mut registry);
    (c, registry)
}

fn metric(registry: &Registry, series: &str) -> f64 {
    crate::metrics::encode(registry)
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

const FORBID_ALL: &str = r#"@id("all") permit (principal, action, resource);
@id("freeze") forbid (principal, action == Action::"POST", resource);"#;

#[tokio::test]
async fn the_candidate_is_compared_but_never_decides() {
    let (c, reg) = shadow_checker(ALLOW_ALL, Some(FORBID_ALL), 1.0);
    let post = CheckRequestBuilder::new("POST", "/x").host("shop").id("r-post").build();
    let d = decide(&c, &post).await;
    let a = allowed(&d, "the live set allows; the candidate's forbid changes nothing");
    assert_eq!(*a.policies, ["all"]);
    let sh = a.shadow.as_ref().expect("shadowed");
    assert_eq!((sh.allowed, sh.policies.as_slice(), sh.errored), (false, &["freeze".to_owned()][..], false));
    // A GET: both allow by the same policy: no disagreement.
    let get = CheckRequestBuilder::new("GET", "/x").host("shop").build();
    assert!(decide(&c, &get).await.shadow().is_some_and(|s| s.allowed));
    assert_eq!(metric(&reg, "shadow_checks_total "), 2.0);
    assert_eq!(metric(&reg, r#"shadow_disagreements_total{live="allow",shadow="deny"} "#), 1.0);
    assert_eq!(metric(&reg, r#"shadow_disagreement_policies_total{side="shadow",policy="freeze"} "#), 1.0);
    // Blamed: what decided on one side only (`all` no longer determines the candidate's deny).
    assert_eq!(metric(&reg, r#"shadow_disagreement_policies_total{side="live",policy="all"} "#), 1.0);
}

#[tokio::test]
async fn checks_that_never_reach_cedar_are_not_shadowed() {
    let (c, reg) = shadow_checker(ALLOW_ALL, Some(FORBID_ALL), 1.0);
    // Authentication failure (401), and a request that does not normalize (400).
    let d = decide(&c, &request(&[("authorization", b"Bearer")])).await;
    assert_eq!((status(&d), d.shadow()), (Some(Status::Unauthorized), None));
    let d = decide(&c, &CheckRequestBuilder::new("GET", "/a/%2F").host("shop").build()).await;
    assert_eq!((status(&d), d.shadow()), (Some(Status::BadRequest), None));
    assert_eq!(metric(&reg, "shadow_checks_total "), 0.0);
}

#[tokio::test]
async fn no_candidate_loaded_or_sample_zero_shadows_nothing() {
    let req = CheckRequestBuilder::new("POST", "/x").host("shop").build();
    let (c, reg) = shadow_checker(ALLOW_ALL, None, 1.0);
    let d = decide(&c, &req).await;
    assert!(d.is_allowed() && d.shadow().is_none(), "{d:?}");
    let (c, reg0) = shadow_checker(ALLOW_ALL, Some(FORBID_ALL), 0.0);
    for _ in 0..50 {
        let d = decide(&c, &req).await;
        assert!(d.is_allowed() && d.shadow().is_none(), "{d:?}");
    }
    assert_eq!(metric(&reg, "shadow_checks_total "), 0.0);
    assert_eq!(metric(&reg0, "shadow_checks_total "), 0.0);
    assert_eq!(metric(&reg0, r#"shadow_disagreements_total{live="allow",shadow="deny"} "#), 0.0);
}

#[tokio::test]
async fn an_empty_candidate_is_deny_all_and_a_failing_one_is_its_deny() {
    let req = CheckRequestBuilder::new("GET", "/x").host("shop").build();
    let (c, reg) = shadow_checker(ALLOW_ALL, Some(""), 1.0);
    let d = decide(&c, &req).await;
    assert!(d.is_allowed(), "{d:?}");
    assert_eq!(d.shadow().map(|s| (s.allowed, s.errored)), Some((false, false)));
    assert_eq!(metric(&reg, r#"shadow_disagreement_policies_total{side="live",policy="all"} "#), 1.0);
    // A candidate whose evaluation errors (an overflow at run time): its deny, counted as an error.
    let erroring =
        r#"@id("err") permit (principal, action, resource) when { context.time * 9223372036854775807 > 0 };"#;
    let (c, reg) = shadow_checker(ALLOW_ALL, Some(erroring), 1.0);
    let d = decide(&c, &req).await;
    assert!(d.is_allowed(), "{d:?}");
    assert_eq!(d.shadow().map(|s| (s.allowed, s.errored)), Some((false, true)));
    assert_eq!(metric(&reg, "shadow_errors_total "), 1.0);
}

/// Whether a removal list names `h`.
fn has(list: &crate::decision::RemoveHeaders, h: &str) -> bool {
    list.contains(h.as_bytes())
}

/// Upstream headers as text, to compare with literals.
fn strings(set: &[(bytes::Bytes, bytes::Bytes)]) -> Vec<(String, String)> {
    set.iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

// --- The shared removal list against the old per-check computation (issue 18) ---

/// The removal list exactly as it was built per check before it was shared: every spelling of
/// every owned header (recomputed from config here), minus the names set, then the request's
/// foreign credentials not already listed. The oracle for the differential tests below.
fn old_removals(cfg: &Config, c: &Checker, set: &[(Bytes, Bytes)], view: &RequestView<'_>) -> Vec<Bytes> {
    let spellings = |names: &[String]| -> Vec<String> {
        names.iter().flat_map(|n| crate::config::separator_spellings(n)).collect()
    };
    let mut owned = [spellings(&cfg.identity_header_names()), spellings(&cfg.headers.strip_on_allow)].concat();
    if cfg.headers.remove_credentials {
        owned.extend(spellings(&c.authn.credential_headers()));
    }
    owned.sort();
    owned.dedup();
    let mut remove: Vec<Bytes> =
        owned.into_iter().map(Bytes::from).filter(|h| !set.iter().any(|(k, _)| k == h)).collect();
    if cfg.headers.strip_foreign_credentials || cfg.headers.remove_credentials {
        for h in c.authn.foreign_credential_headers(view) {
            if !remove.iter().any(|r| r == h.as_bytes()) {
                remove.push(Bytes::from(h));
            }
        }
    }
    remove
}

fn config_and_checker(headers_yaml: &str) -> (Config, Checker) {
    let yaml = format!(
        "policy: {{dir: x}}\nauthn:\n  issuers:\n    - issuer: https://issuer.test\n      \
         jwks_file: /nonexistent/jwks.json\n      \
         from: [{{header: authorization, prefix: \"Bearer \"}}, {{header: x-token, prefix: \"Token \"}}]\n      \
         claims_to_headers: {{email: x-user-email, tenant: x_tenant-id, team: x-team}}\n  api_keys:\n    \
         keys: [{{client: batch, sha256: \"{KEY_SHA}\"}}]\nheaders: {headers_yaml}\n"
    );
    (Config::from_yaml(&yaml).expect("parses"), checker_with(&yaml, Some(ALLOW_ALL)))
}

fn jwt_with(subject: &str, headers: &[(&str, &[u8])]) -> Arc<crate::authn::JwtIdentity> {
    let mut j = crate::authn::JwtIdentity::for_tests("https://issuer.test", subject, &[], &[]);
    j.headers =
        headers.iter().map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), Bytes::copy_from_slice(v))).collect();
    Arc::new(j)
}

fn peer(id: &str) -> crate::authn::PeerIdentity {
    crate::authn::PeerIdentity {
        spiffe_id: id.into(),
        trust_domain: "cluster.local".into(),
        namespace: "shop".into(),
        service_account: "orders".into(),
    }
}

fn api_client(name: &str) -> Arc<crate::authn::ApiClientIdentity> {
    Arc::new(crate::authn::ApiClientIdentity { client: name.into(), groups: Vec::new(), rate_limit: None })
}

/// Every kind of allow, on several configs and requests: the answer Envoy decodes (and the
/// bytes on the wire) are those of the old per-check list, and the list itself is the old one.
#[test]
fn a_shared_removal_list_answers_exactly_as_the_per_check_one() {
    use prost::Message as _;

    use crate::response::{ResponseOptions, as_envoy_sees_it, render};
    let jwt = || jwt_with("alice", &[("x-user-email", b"a@example.com"), ("x_tenant-id", b"acme"), ("x-team", b"t")]);
    let identities: Vec<(&str, Identities)> = vec![
        ("jwt with claim headers", Identities { jwt: Some(jwt()), ..Default::default() }),
        ("jwt without claim headers", Identities { jwt: Some(jwt_with("alice", &[])), ..Default::default() }),
        (
            "jwt with one claim header",
            Identities { jwt: Some(jwt_with("bob", &[("x-team", b"t")])), ..Default::default() },
        ),
        (
            "jwt with a claim value dropped for a control character",
            Identities {
                jwt: Some(jwt_with("alice", &[("x-user-email", b"a\x01@example.com"), ("x-team", b"t\x7f")])),
                ..Default::default()
            },
        ),
        (
            "jwt whose subject (and so principal) has a control character",
            Identities { jwt: Some(jwt_with("al\u{1}ice", &[("x_tenant-id", b"acme")])), ..Default::default() },
        ),
        (
            "jwt with an empty claim value",
            Identities { jwt: Some(jwt_with("alice", &[("x-team", b"")])), ..Default::default() },
        ),
        ("spiffe", Identities { peer: Some(peer("spiffe://cluster.local/ns/shop/sa/orders")), ..Default::default() }),
        ("api key", Identities { api_client: Some(api_client("batch")), ..Default::default() }),
        ("anonymous", Identities::default()),
        (
            "jwt, peer and api key together",
            Identities {
                jwt: Some(jwt()),
                peer: Some(peer("spiffe://cluster.local/ns/shop/sa/orders")),
                api_client: Some(api_client("batch")),
            },
        ),
        (
            "peer and api key",
            Identities {
                jwt: None,
                peer: Some(peer("spiffe://cluster.local/ns/a/sa/b")),
                api_client: Some(api_client("b\nad")),
            },
        ),
    ];
    let configs = [
        "{}",
        "{strip_foreign_credentials: true}",
        "{remove_credentials: true}",
        "{strip_foreign_credentials: true, remove_credentials: true, strip_on_allow: [x-a_b-c, authorization]}",
        "{principal: X-P, subject: x_s, issuer: x-i-i, peer: x-e, client: x-c, strip_on_allow: []}",
    ];
    let requests: [&[(&str, &[u8])]; 5] = [
        &[],
        &[("authorization", b"Basic dXNlcjpwYXNz")],
        &[("authorization", b"Basic dXNlcjpwYXNz"), ("x-token", b"Other abc")],
        &[("x-token", b"Negotiate abc"), ("x-user-email", b"spoofed"), ("x_team", b"spoofed")],
        &[("authorization", b"Bearer not-checked-here")],
    ];
    let opts = ResponseOptions { policy_ids_header: Some("x-policies".into()), ..Default::default() };
    let mut compared = 0;
    for headers_yaml in configs {
        let (cfg, c) = config_and_checker(headers_yaml);
        for (what, ids) in &identities {
            for headers in requests {
                let req = crate::proto::check_in(&request(headers));
                let view = RequestView::from_check(&req, &Limits::default()).expect("normalizes");
                // Twice: the second check answers from the kept list.
                for round in 0..2 {
                    let d = c.check_as(&view, ids.clone());
                    let a = allowed(&d, what);
                    let want = old_removals(&cfg, &c, &a.upstream_headers, &view);
                    let ctx = format!("{headers_yaml} / {what} / {headers:?} / round {round}");
                    assert_eq!(a.remove_headers, want, "{ctx}");
                    assert!(!want.is_empty(), "{ctx}: an allow always removes something here");
                    let mut old = d.clone();
                    if let Decision::Allow(o) = &mut old {
                        o.remove_headers = RemoveHeaders::from(want.clone());
                    }
                    let (new_wire, old_wire) = (render(&d, &opts), render(&old, &opts));
                    assert_eq!(new_wire.encode_to_vec(), old_wire.encode_to_vec(), "{ctx}: the same bytes");
                    let seen = as_envoy_sees_it(&new_wire).expect("decodes");
                    assert_eq!(seen, as_envoy_sees_it(&old_wire).expect("decodes"), "{ctx}");
                    let Some(crate::proto::auth::check_response::HttpResponse::OkResponse(ok)) = seen.http_response
                    else {
                        panic!("{ctx}: not an ok response")
                    };
                    let want: Vec<String> = want.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
                    assert_eq!(ok.headers_to_remove, want, "{ctx}: as Envoy decodes it");
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, configs.len() * identities.len() * requests.len() * 2);
}

/// A check shares the kept list (no copy of its names), one per distinct set of names set.
#[test]
fn allows_that_set_the_same_names_share_one_list() {
    let (_, c) = config_and_checker("{}");
    let view_req = crate::proto::check_in(&request(&[]));
    let view = RequestView::from_check(&view_req, &Limits::default()).expect("normalizes");
    let wire = |ids: Identities| {
        let d = c.check_as(&view, ids);
        allowed(&d, "shared").remove_headers.clone().into_wire()
    };
    let (a, extra_a) = wire(Identities { jwt: Some(jwt_with("alice", &[("x-team", b"t")])), ..Default::default() });
    let (b, _) = wire(Identities { jwt: Some(jwt_with("bob", &[("x-team", b"u")])), ..Default::default() });
    assert!(extra_a.is_empty());
    assert_eq!(a.as_ptr(), b.as_ptr(), "same names set: one shared list");
    let (other, _) = wire(Identities { jwt: Some(jwt_with("bob", &[])), ..Default::default() });
    assert_ne!(other, a, "another set of names: another list");
    // A dropped value sets no header, so its name is removed like any other owned name.
    let (dropped, _) = wire(Identities { jwt: Some(jwt_with("bob", &[("x-team", b"\x00")])), ..Default::default() });
    assert_eq!(dropped, other);
    assert_eq!(c.removals.kept(), 2);
}

/// A token's upstream headers are kept with its identity at the first allow, and answered from
/// there only when nothing else could change them: the same principal, no peer, no API client.
/// A clone of the identity (which may then differ) starts without them.
#[test]
fn a_token_keeps_its_upstream_headers_only_where_they_cannot_differ() {
    let (_, c) = config_and_checker("{strip_on_allow: [x-extra]}");
    let fresh = |ids: &Identities, principal: &str| {
        let (set, wire) = c.upstream_headers(ids, principal);
        (strings(&set), RemoveHeaders::shared(wire))
    };
    let kept = |ids: &Identities, principal: &str| {
        let (set, remove) = c.identity_headers_for(ids, principal);
        (strings(&set), remove)
    };
    let j = jwt_with("alice", &[("x-team", b"t")]);
    let alone = Identities { jwt: Some(j.clone()), ..Default::default() };
    let first = kept(&alone, "User::\"alice\"");
    assert_eq!(first, fresh(&alone, "User::\"alice\""));
    assert!(format!("{:?}", j.upstream).contains("kept"), "kept at the first allow");
    assert_eq!(kept(&alone, "User::\"alice\""), first, "answered from the identity");

    // Another principal for the same identity: computed, not the kept principal header.
    let other = kept(&alone, "User::\"mallory\"");
    assert_eq!(other, fresh(&alone, "User::\"mallory\""));
    assert!(other.0.iter().any(|(k, v)| k == "x-portcullis-principal" && v == "User::\"mallory\""), "{other:?}");

    // The same token with a peer or an API client: their headers are set, never the kept list.
    for ids in [
        Identities { peer: Some(peer("spiffe://cluster.local/ns/shop/sa/orders")), ..alone.clone() },
        Identities { api_client: Some(api_client("batch")), ..alone.clone() },
    ] {
        let got = kept(&ids, "User::\"alice\"");
        assert_eq!(got, fresh(&ids, "User::\"alice\""));
        assert_ne!(got, first, "{ids:?}");
    }

    // A changed clone of the identity answers with its own headers.
    let mut changed = (*j).clone();
    assert!(format!("{:?}", changed.upstream).contains("empty"), "a clone starts empty");
    changed.headers.clear();
    let changed = Identities { jwt: Some(Arc::new(changed)), ..Default::default() };
    let got = kept(&changed, "User::\"alice\"");
    assert_eq!(got, fresh(&changed, "User::\"alice\""));
    assert!(!got.0.iter().any(|(k, _)| k == "x-team"), "{got:?}");
}

/// Headers kept by one checker are not another's: a second checker with other header names
/// (as `portcullis test` or a restart-free config change could build) computes its own.
#[test]
fn kept_upstream_headers_belong_to_the_checker_that_made_them() {
    let (_, a) = config_and_checker("{}");
    let (_, b) = config_and_checker("{principal: x-who, strip_on_allow: [x-extra]}");
    let ids = Identities { jwt: Some(jwt_with("alice", &[("x-team", b"t")])), ..Default::default() };
    let from_a = a.identity_headers_for(&ids, "User::\"alice\"");
    let from_b = b.identity_headers_for(&ids, "User::\"alice\"");
    let (set, wire) = b.upstream_headers(&ids, "User::\"alice\"");
    assert_eq!(strings(&from_b.0), strings(&set));
    assert_eq!(from_b.1, RemoveHeaders::shared(wire));
    assert_ne!(strings(&from_a.0), strings(&from_b.0));
    assert!(from_b.0.iter().any(|(k, _)| k == "x-who"));
}

/// Without the verified-token cache every identity is new: nothing is kept with it, and its
/// headers are the computed ones.
#[test]
fn without_the_token_cache_nothing_is_kept() {
    let yaml = "policy: {dir: x}\nauthn:\n  token_cache: {max_entries: 0}\n  issuers:\n    \
                - issuer: https://issuer.test\n      jwks_file: /nonexistent/jwks.json\n";
    let c = checker_with(yaml, Some(ALLOW_ALL));
    let ids = Identities { jwt: Some(jwt_with("alice", &[("x-team", b"t")])), ..Default::default() };
    let (set, remove) = c.identity_headers_for(&ids, "User::\"alice\"");
    let (want_set, want_wire) = c.upstream_headers(&ids, "User::\"alice\"");
    assert_eq!((strings(&set), remove), (strings(&want_set), RemoveHeaders::shared(want_wire)));
    let j = ids.jwt.as_ref().expect("jwt");
    assert!(format!("{:?}", j.upstream).contains("empty"), "nothing kept");
}
