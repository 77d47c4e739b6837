use std::collections::HashSet;
use std::sync::Arc;

use super::context::MAX_CACHED_IPS;
use super::engine::authorize_with;
use super::entities::base_entities;
use super::guard::{Facts, PrincipalFacts};
use super::index::Shape;
use super::model::{PrincipalKind, public, types};
use super::*;
use crate::authn::{ApiClientIdentity, Identities};
use crate::config::Limits;
use crate::proto::auth::{AttributeContext, CheckRequest, attribute_context};
use crate::request::RequestView;

/// The tests' own schema: the shape of the shipped model, kept here so these tests do not move
/// when an example changes. Tests derive variants from it with [`schema_with`].
pub(super) const SCHEMA: &str = r#"
    entity Group;
    entity User in [Group] { issuer: String } tags String;
    entity Service in [Group] {
        spiffe_id: String, trust_domain: String, namespace: String, service_account: String,
    };
    entity ApiClient in [Group];
    entity Anonymous;
    entity Route { host: String, path: String, service: String } tags String;
    type Ctx = {
        method: String, path: String, query: String, host: String, scheme: String, request_id: String,
        authn: Set<String>, source_ip?: ipaddr, peer?: Service, time: Long,
    };
    action "read";
    action "write";
    action "GET", "HEAD", "OPTIONS" in ["read"]
        appliesTo { principal: [User, Service, ApiClient, Anonymous], resource: [Route], context: Ctx };
    action "POST", "PUT", "PATCH", "DELETE" in ["write"]
        appliesTo { principal: [User, Service, ApiClient, Anonymous], resource: [Route], context: Ctx };
"#;

/// [`SCHEMA`] with one declaration changed (which must be there, so no test silently runs
/// against the unchanged schema).
pub(super) fn schema_with(from: &str, to: &str) -> String {
    assert!(SCHEMA.contains(from), "the test schema has no `{from}`");
    SCHEMA.replace(from, to)
}

pub(super) fn snapshot(policies: &str) -> Engine {
    snapshot_with_schema(SCHEMA.into(), policies)
}

pub(super) fn snapshot_with_schema(schema: String, policies: &str) -> Engine {
    let docs = [
        PolicyDocument { origin: "s.cedarschema".into(), kind: DocKind::Schema, text: schema },
        PolicyDocument { origin: "p.cedar".into(), kind: DocKind::Policies, text: policies.into() },
    ];
    Engine::compile(&docs, "test").expect("test policies build").engine
}

pub(super) fn request(method: &str, path: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "shop.svc".into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

pub(super) fn client(name: &str, groups: &[&str]) -> Identities {
    Identities {
        api_client: Some(Arc::new(ApiClientIdentity {
            client: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            rate_limit: None,
        })),
        ..Default::default()
    }
}

fn decide(snap: &Engine, mapping: &CedarMapping, method: &str, ids: &Identities) -> AuthzOutcome {
    let req = request(method, "/api/orders");
    let req_in = crate::proto::check_in(&req);
    let view = RequestView::from_check(&req_in, &Limits::default()).expect("valid request");
    authorize(snap, &view, ids, mapping).expect("evaluates")
}

const MIXED: &str = r#"
    @id("service-only") permit (principal is Service, action, resource);
    @id("get-only") permit (principal, action == Action::"GET", resource);
    @id("writes-frozen") forbid (principal, action in Action::"write", resource);
    @id("batch-group") permit (principal in Group::"batch", action, resource);
    @id("route-only") permit (principal is ApiClient, action == Action::"POST", resource is Route);
"#;

#[test]
fn forbids_scoped_to_an_action_group_still_apply_to_its_members() {
    let snap = snapshot(MIXED);
    let mapping = CedarMapping::default();
    let out = decide(&snap, &mapping, "POST", &client("batch", &["batch"]));
    assert!(!out.allowed);
    assert_eq!(*out.policies, ["writes-frozen".to_owned()]);
}

/// The ids of the policies the index hands Cedar for a request with no guards involved.
fn selected(snap: &Engine, method: &str, kind: PrincipalKind) -> Vec<String> {
    let facts = Facts {
        route_host: "h",
        route_path: "/",
        route_service: "h",
        method,
        path: "/",
        query: "",
        host: "h",
        scheme: "http",
        request_id: "",
        principal: PrincipalFacts::None,
    };
    let shape = Shape { authn: kind != PrincipalKind::Anonymous, ..Shape::default() };
    let set = snap.index.select(method, kind, shape, &facts).expect("fits the schema");
    let mut ids: Vec<String> = set.policies.policies().map(|p| p.id().to_string()).collect();
    ids.sort();
    ids
}

#[test]
fn slices_leave_out_only_policies_scoped_to_other_actions_or_principal_types() {
    let snap = snapshot(MIXED);
    assert_eq!(selected(&snap, "GET", PrincipalKind::ApiClient), ["batch-group", "get-only"]);
    assert_eq!(selected(&snap, "POST", PrincipalKind::ApiClient), ["batch-group", "route-only", "writes-frozen"]);
    assert_eq!(selected(&snap, "DELETE", PrincipalKind::Service), ["batch-group", "service-only", "writes-frozen"]);
    assert_eq!(selected(&snap, "HEAD", PrincipalKind::Anonymous), ["batch-group"]);
}

#[test]
fn sliced_decisions_match_evaluating_every_policy() {
    let snap = snapshot(MIXED);
    let mapping = CedarMapping::default();
    for method in ["GET", "HEAD", "POST", "DELETE", "OPTIONS"] {
        for ids in [Identities::default(), client("batch", &["batch"]), client("other", &[])] {
            let out = decide(&snap, &mapping, method, &ids);
            // The same request against the whole policy set, without slicing.
            let req = request(method, "/api/orders");
            let req_in = crate::proto::check_in(&req);
            let view = RequestView::from_check(&req_in, &Limits::default()).expect("valid");
            let full = authorize_with(&snap, &view, &ids, &mapping, true).expect("evaluates");
            assert_eq!((out.allowed, &out.policies), (full.allowed, &full.policies), "{method} {ids:?}");
        }
    }
}

/// Policies whose leading conjuncts the index reads (equality, `like`, negation, `unless`,
/// principal attributes) mixed with ones it must leave to Cedar (`||`, tags, and an
/// overflow: an evaluation error, so a deny, when its guard holds).
pub(super) const GUARDED: &str = r#"
    @id("api") permit (principal, action in Action::"read", resource) when { resource.path like "/api/*" };
    @id("evil") forbid (principal, action, resource) when { resource.host == "evil.example" };
    @id("tenant") permit (principal is User, action == Action::"GET", resource)
        when { resource.host == "a.svc" && principal.hasTag("tenant") && principal.getTag("tenant") == "t1" };
    @id("err") permit (principal is User, action, resource)
        when { resource.path like "/err*" && context.time * 1000000000000 > 0 };
    @id("https-only") forbid (principal, action, resource)
        when { resource.service == "secure" } unless { context.scheme == "https" };
    @id("frontend") permit (principal is Service, action, resource)
        when { principal.namespace == "frontend" && resource.path like "/svc/*" };
    @id("post-orders") permit (principal, action, resource)
        when { context.method == "POST" && resource.service == "orders" };
    @id("json") permit (principal, action in Action::"read", resource)
        when { !(resource.path like "/private*") && resource.path like "*.json" };
    @id("star") permit (principal, action, resource) when { context.path like "/p\*x*" };
    @id("either") permit (principal, action, resource)
        when { resource.path == "/exact" || resource.path == "/other" };
    @id("admins") permit (principal in Group::"admins", action, resource) when { resource.path like "/admin*" };
    @id("unicode") permit (principal, action, resource) when { resource.path like "/\u{fc}*\u{df}" };
    @id("issuer") forbid (principal is User, action, resource)
        when { principal.issuer == "https://bad" && context.host like "*.svc" };
    @id("query") permit (principal, action == Action::"DELETE", resource)
        when { context.query == "confirm=1" && resource.host like "*.svc" };
"#;

pub(super) fn user(issuer: &str, groups: &[&str], claims: &[(&str, &str)]) -> Identities {
    Identities {
        jwt: Some(Arc::new(crate::authn::JwtIdentity::for_tests(issuer, "alice", groups, claims))),
        ..Default::default()
    }
}

pub(super) fn peer(ns: &str) -> crate::authn::PeerIdentity {
    crate::authn::PeerIdentity {
        spiffe_id: format!("spiffe://cluster.local/ns/{ns}/sa/web"),
        trust_domain: "cluster.local".into(),
        namespace: ns.into(),
        service_account: "web".into(),
    }
}

pub(super) fn callers() -> Vec<Identities> {
    let via_peer = |mut ids: Identities, ns: &str| {
        ids.peer = Some(peer(ns));
        ids
    };
    vec![
        Identities::default(),
        client("batch", &[]),
        client("ops", &["admins"]),
        user("https://idp", &[], &[]),
        user("https://idp", &["admins"], &[("tenant", "t1")]),
        user("https://bad", &[], &[("tenant", "t2"), ("missing", "x")]),
        via_peer(Identities::default(), "frontend"),
        via_peer(Identities::default(), "backend"),
        via_peer(user("https://idp", &[], &[("tenant", "t1")]), "frontend"),
    ]
}

/// Requests over [`GUARDED`]'s guards: methods, hosts, paths (wildcards, Unicode, negations),
/// schemes and queries. Each with a label for failure messages.
pub(super) fn guarded_requests() -> Vec<(String, CheckRequest)> {
    let hosts = ["a.svc", "evil.example", "orders.svc", "secure.svc", "b.other"];
    let paths = [
        "/api/x",
        "/api",
        "/err1",
        "/ok",
        "/svc/1",
        "/private/a.json",
        "/pub/a.json",
        "/p*x/y",
        "/pax",
        "/exact",
        "/other",
        "/admin/x",
        "/\u{fc}a\u{df}",
        "/\u{fc}",
        "/a*b",
    ];
    let mut out = Vec::new();
    for method in ["GET", "POST", "DELETE"] {
        for host in hosts {
            for path in paths {
                for (scheme, query) in [("http", ""), ("https", "confirm=1")] {
                    let mut req = request(method, path);
                    if let Some(http) =
                        req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut())
                    {
                        http.host = host.into();
                        http.scheme = scheme.into();
                        http.query = query.into();
                    }
                    out.push((format!("{method} {host}{path} {scheme}"), req));
                }
            }
        }
    }
    out
}

#[test]
fn guarded_selection_decides_exactly_as_every_policy_would() {
    let snap = snapshot(GUARDED);
    let mapping = CedarMapping::default();
    let mut compared = 0;
    let mut outcomes = HashSet::new();
    for (label, req) in guarded_requests() {
        let req_in = crate::proto::check_in(&req);
        let Ok(view) = RequestView::from_check(&req_in, &Limits::default()) else { continue };
        for ids in callers() {
            let got = authorize(&snap, &view, &ids, &mapping).expect("evaluates");
            let want = authorize_with(&snap, &view, &ids, &mapping, true).expect("evaluates");
            // Errors are compared by the policy they name: their text carries
            // `context.time`, which may tick between the two evaluations.
            let blamed = |errors: &[String]| -> Vec<String> {
                errors.iter().map(|e| e.split(':').next().unwrap_or(e).to_owned()).collect()
            };
            assert_eq!(
                (got.allowed, &got.policies, blamed(&got.errors)),
                (want.allowed, &want.policies, blamed(&want.errors)),
                "{label} {ids:?}"
            );
            outcomes.insert((got.allowed, got.policies.clone(), !got.errors.is_empty()));
            compared += 1;
        }
    }
    assert!(compared > 1000, "only {compared} requests compared");
    // The corpus reaches allows, forbids, no-permit denials and evaluation errors.
    assert!(outcomes.len() > 15, "too few distinct outcomes: {outcomes:?}");
    assert!(outcomes.iter().any(|(_, _, err)| *err), "no request hit an evaluation error");
}

#[test]
fn the_index_hands_cedar_only_the_policies_whose_guards_hold() {
    let snap = snapshot(GUARDED);
    let facts = |host, path| Facts {
        route_host: host,
        route_path: path,
        route_service: host.split('.').next().unwrap_or(""),
        method: "GET",
        path,
        query: "",
        host,
        scheme: "http",
        request_id: "",
        principal: PrincipalFacts::User { issuer: "https://idp" },
    };
    let shape = Shape { authn: true, ..Shape::default() };
    let ids = |host, path| -> Vec<String> {
        let set = snap.index.select("GET", PrincipalKind::User, shape, &facts(host, path)).expect("fits");
        let mut v: Vec<String> = set.policies.policies().map(|p| p.id().to_string()).collect();
        v.sort();
        v
    };
    // `either` (a disjunction) is always left to Cedar; the rest only when their guards hold.
    assert_eq!(ids("b.other", "/ok"), ["either"]);
    assert_eq!(ids("b.other", "/api/x"), ["api", "either"]);
    assert_eq!(ids("a.svc", "/a.json"), ["either", "json", "tenant"]);
    assert_eq!(ids("evil.example", "/err"), ["either", "err", "evil"]);
}

#[test]
fn requests_whose_shape_the_schema_does_not_declare_are_refused() {
    // This schema's context has no `source_ip`: a request that carries one does not fit it.
    let snap = snapshot_with_schema(
        schema_with("source_ip?: ipaddr,", ""),
        r#"@id("open") permit (principal, action, resource);"#,
    );
    let mapping = CedarMapping::default();
    assert!(decide(&snap, &mapping, "GET", &Identities::default()).allowed);
    let mut req = request("GET", "/api/orders");
    if let Some(a) = req.attributes.as_mut() {
        use crate::proto::core::{Address, SocketAddress, address};
        a.source = Some(attribute_context::Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "10.0.0.1".into(),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        });
    }
    let req_in = crate::proto::check_in(&req);
    let view = RequestView::from_check(&req_in, &Limits::default()).expect("valid");
    let err = authorize(&snap, &view, &Identities::default(), &mapping).expect_err("does not fit");
    assert!(err.to_string().contains("context"), "{err}");
    // Undeclared actions are refused too.
    let propfind = request("PROPFIND", "/");
    let propfind_in = crate::proto::check_in(&propfind);
    let view = RequestView::from_check(&propfind_in, &Limits::default()).expect("valid");
    assert!(authorize(&snap, &view, &Identities::default(), &mapping).is_err());
}

#[test]
fn enumerated_principal_types_are_validated_on_every_request() {
    // Whether an `ApiClient` fits now depends on its id, which no per-slice check can know.
    let snap = snapshot_with_schema(
        schema_with("entity ApiClient in [Group];", r#"entity ApiClient enum ["batch"];"#),
        r#"@id("open") permit (principal, action, resource);"#,
    );
    assert!(snap.index.validates_each_request());
    let mapping = CedarMapping::default();
    assert!(decide(&snap, &mapping, "GET", &client("batch", &[])).allowed);
    let get = request("GET", "/");
    let get_in = crate::proto::check_in(&get);
    let view = RequestView::from_check(&get_in, &Limits::default()).expect("valid");
    assert!(authorize(&snap, &view, &client("intruder", &[]), &mapping).is_err(), "not a declared client");
    // The test schema has no enumerations: requests are checked once per slice.
    assert!(!snapshot(MIXED).index.validates_each_request());
}

#[test]
fn source_address_policies_hold_for_repeated_and_many_distinct_callers() {
    use crate::proto::core::{Address, SocketAddress, address};
    let snap = snapshot(
        r#"@id("internal") permit (principal, action, resource)
           when { context has source_ip && context.source_ip.isInRange(ip("10.0.0.0/8")) };"#,
    );
    let mapping = CedarMapping::default();
    let from = |ip: String| {
        let mut req = request("GET", "/api/orders");
        if let Some(a) = req.attributes.as_mut() {
            a.source = Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress { address: ip, ..Default::default() })),
                }),
                ..Default::default()
            });
        }
        let req_in = crate::proto::check_in(&req);
        let view = RequestView::from_check(&req_in, &Limits::default()).expect("valid");
        authorize(&snap, &view, &Identities::default(), &mapping).expect("evaluates").allowed
    };
    // More distinct addresses than the per-thread cache holds, each asked twice.
    for i in 0..(MAX_CACHED_IPS as u32 + 10) {
        let (inside, outside) = (format!("10.0.{}.{}", i / 250, i % 250), format!("192.168.{}.{}", i / 250, i % 250));
        for _ in 0..2 {
            assert!(from(inside.clone()), "{inside} is internal");
            assert!(!from(outside.clone()), "{outside} is not internal");
        }
    }
}

#[test]
fn group_hierarchies_survive_leaving_out_bare_static_entities() {
    let docs = [
        PolicyDocument {
            origin: "s.cedarschema".into(),
            kind: DocKind::Schema,
            text: schema_with("entity Group;", "entity Group in [Group];"),
        },
        PolicyDocument {
            origin: "g.entities.json".into(),
            kind: DocKind::Entities,
            text: r#"[
                {"uid": {"type": "Group", "id": "batch"}, "attrs": {}, "parents": [{"type": "Group", "id": "ops"}]},
                {"uid": {"type": "Group", "id": "ops"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Group", "id": "bare"}, "attrs": {}, "parents": []}
            ]"#
            .into(),
        },
        PolicyDocument {
            origin: "p.cedar".into(),
            kind: DocKind::Policies,
            text: r#"@id("ops") permit (principal in Group::"ops", action, resource);"#.into(),
        },
    ];
    let snap = Engine::compile(&docs, "test").expect("builds").engine;
    let t = types().expect("types");
    let per_request = [&t.user, &t.service, &t.api_client, &t.anonymous, &t.route].map(|ty| public(ty).expect("name"));
    let kept: Vec<String> = base_entities(snap.entities(), &per_request).iter().map(|e| e.uid().to_string()).collect();
    assert!(kept.contains(&r#"Group::"batch""#.to_owned()), "{kept:?}");
    assert!(!kept.iter().any(|u| u.contains("bare")), "{kept:?}");
    let mapping = CedarMapping::default();
    assert!(decide(&snap, &mapping, "GET", &client("a", &["batch"])).allowed, "batch is inside ops");
    assert!(decide(&snap, &mapping, "GET", &client("b", &["ops"])).allowed);
    assert!(!decide(&snap, &mapping, "GET", &client("c", &["bare"])).allowed);
}

#[test]
fn static_entities_below_a_per_request_principal_still_get_its_groups() {
    // A static group sits below an API client, which is built per request in another group:
    // `inner in outer` holds only through the per-request entity, so the closure must be
    // recomputed per request for such a schema.
    let docs = [
        PolicyDocument {
            origin: "s.cedarschema".into(),
            kind: DocKind::Schema,
            text: schema_with("entity Group;", "entity Group in [ApiClient];"),
        },
        PolicyDocument {
            origin: "g.entities.json".into(),
            kind: DocKind::Entities,
            text: r#"[
                {"uid": {"type": "Group", "id": "inner"}, "attrs": {},
                 "parents": [{"type": "ApiClient", "id": "batch"}]}
            ]"#
            .into(),
        },
        PolicyDocument {
            origin: "p.cedar".into(),
            kind: DocKind::Policies,
            text: r#"@id("nested") permit (principal, action, resource) when { Group::"inner" in Group::"outer" };"#
                .into(),
        },
    ];
    let snap = Engine::compile(&docs, "test").expect("builds").engine;
    assert!(snap.index.static_entities_reach_request_types());
    let mapping = CedarMapping::default();
    assert!(decide(&snap, &mapping, "GET", &client("batch", &["outer"])).allowed);
    assert!(!decide(&snap, &mapping, "GET", &client("batch", &[])).allowed);
    assert!(!snapshot(MIXED).index.static_entities_reach_request_types());
}

#[test]
fn a_new_snapshot_is_never_answered_from_the_old_ones_slices() {
    let mapping = CedarMapping::default();
    let ids = client("batch", &[]);
    let open = snapshot(r#"@id("open") permit (principal, action, resource);"#);
    assert!(decide(&open, &mapping, "GET", &ids).allowed);
    let closed = snapshot(r#"@id("admins") permit (principal in Group::"admins", action, resource);"#);
    let out = decide(&closed, &mapping, "GET", &ids);
    assert!(!out.allowed, "answered from the previous snapshot's slice: {out:?}");
    assert!(decide(&open, &mapping, "GET", &ids).allowed);
}

/// A policy on a context extension: only Envoy's `context_extensions` satisfy it, never a
/// header, even one that is mapped into Cedar and carries the same name and value.
#[test]
fn a_route_extension_tag_is_set_only_by_context_extensions() {
    let snap = snapshot(
        r#"@id("tenant-a") permit (principal, action, resource)
            when { resource.hasTag("ext:tenant") && resource.getTag("ext:tenant") == "a" };"#,
    );
    let mapping = CedarMapping::new(&["x-tenant".into(), "ext-tenant".into()], &[]);
    let decide_on = |ext: &[(&str, &str)], headers: &[(&str, &str)]| {
        let mut req = request("GET", "/api/orders");
        if let Some(a) = req.attributes.as_mut() {
            a.context_extensions = ext.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            if let Some(h) = a.request.as_mut().and_then(|r| r.http.as_mut()) {
                h.headers = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            }
        }
        let req_in = crate::proto::check_in(&req);
        let view = RequestView::from_check(&req_in, &Limits::default()).expect("valid");
        authorize(&snap, &view, &Identities::default(), &mapping).expect("evaluates").allowed
    };
    assert!(decide_on(&[("tenant", "a")], &[]));
    assert!(!decide_on(&[("tenant", "b")], &[]));
    assert!(!decide_on(&[], &[]));
    // Headers that imitate the extension change nothing.
    assert!(!decide_on(&[], &[("x-tenant", "a"), ("ext-tenant", "a"), ("ext:tenant", "a")]));
    assert!(!decide_on(&[("tenant", "b")], &[("ext:tenant", "a"), ("x-tenant", "a")]));
}

/// Metadata strings are tags `route_metadata:<namespace>:<key>`, read only for the configured
/// namespaces, and validate strictly against the shipped `Route ... tags String`.
#[test]
fn route_metadata_tags_carry_the_namespace() {
    use crate::proto::core::Metadata;
    use crate::request::RouteFactNamespaces;
    let snap = snapshot(
        r#"permit (principal, action, resource)
            when { resource.hasTag("route_metadata:com.example:tier")
                && resource.getTag("route_metadata:com.example:tier") == "gold" };"#,
    );
    let mut req = request("GET", "/api/orders");
    if let Some(a) = req.attributes.as_mut() {
        let fields = [(
            "tier".to_owned(),
            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue("gold".into())) },
        )];
        a.route_metadata_context = Some(Metadata {
            filter_metadata: [("com.example".to_owned(), prost_types::Struct { fields: fields.into_iter().collect() })]
                .into_iter()
                .collect(),
            ..Default::default()
        });
    }
    let mapping = CedarMapping::default();
    let ids = Identities::default();
    let wanted = ["com.example".to_owned()];
    let ns = RouteFactNamespaces { metadata: &[], route_metadata: &wanted };
    let m = crate::config::MatrixParameters::Refuse;
    let req_in = crate::proto::check_in(&req);
    let view = RequestView::from_check_route(&req_in, &Limits::default(), m, ns).expect("valid");
    assert!(authorize(&snap, &view, &ids, &mapping).expect("evaluates").allowed);
    // Configured for dynamic metadata only, the route's metadata is not read: no match.
    let ns = RouteFactNamespaces { metadata: &wanted, route_metadata: &[] };
    let req_in = crate::proto::check_in(&req);
    let view = RequestView::from_check_route(&req_in, &Limits::default(), m, ns).expect("valid");
    assert!(!authorize(&snap, &view, &ids, &mapping).expect("evaluates").allowed);
}

/// A request with a content type and a body (`body` field), for the body and gRPC tests.
pub(super) fn request_with(method: &str, path: &str, content_type: &str, body: &str) -> CheckRequest {
    let mut req = request(method, path);
    if let Some(http) = req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
        http.headers.insert("content-type".into(), content_type.into());
        http.body = body.into();
    }
    req
}

fn decide_req(snap: &Engine, req: &CheckRequest) -> Result<AuthzOutcome, AuthzError> {
    let req_in = crate::proto::check_in(req);
    let view = RequestView::from_check(&req_in, &Limits::default()).expect("valid request");
    authorize(snap, &view, &client("batch", &[]), &CedarMapping::default())
}

const BODY_POLICY: &str = r#"
    @id("small-orders") permit (principal, action == Action::"POST", resource)
        when { context has body && context.body.amount < 100 };
"#;

/// [`SCHEMA`] where the write actions have a context of their own that declares `decl`.
pub(super) fn body_schema(decl: &str) -> String {
    let write = r#"action "POST", "PUT", "PATCH", "DELETE" in ["write"]
        appliesTo { principal: [User, Service, ApiClient, Anonymous], resource: [Route], context: Ctx };"#;
    let ctx = SCHEMA.split("type Ctx = {").nth(1).and_then(|s| s.split("};").next()).expect("the test schema has Ctx");
    let own = format!("type WriteCtx = {{{ctx} {decl} }};\n{}", write.replace("context: Ctx", "context: WriteCtx"));
    schema_with(write, &own)
}

fn body_error(r: Result<AuthzOutcome, AuthzError>) -> Option<crate::request::BodyError> {
    match r {
        Err(AuthzError::Body(e)) => Some(e),
        _ => None,
    }
}

#[test]
fn a_declared_body_decides_with_its_schema_type() {
    use crate::request::BodyError;
    let snap = snapshot_with_schema(body_schema("body?: { amount: Long, currency: String },"), BODY_POLICY);
    let post = |body: &str| decide_req(&snap, &request_with("POST", "/orders", "application/json", body));
    assert!(post(r#"{"amount": 5, "currency": "EUR"}"#).expect("evaluates").allowed);
    assert!(!post(r#"{"amount": 500, "currency": "EUR"}"#).expect("evaluates").allowed);
    // Not the declared type: a string number, an extra or a missing attribute, a float, a huge
    // integer, null.
    for bad in [
        r#"{"amount": "5", "currency": "EUR"}"#,
        r#"{"amount": 5, "currency": "EUR", "admin": true}"#,
        r#"{"amount": 5}"#,
        r#"{"amount": 5.5, "currency": "EUR"}"#,
        r#"{"amount": 99999999999999999999999, "currency": "EUR"}"#,
        r#"{"amount": null, "currency": "EUR"}"#,
        r#"[5]"#,
    ] {
        assert_eq!(body_error(post(bad)), Some(BodyError::Invalid), "{bad}");
    }
    assert_eq!(body_error(post(r#"{"amount": 5, "amount": 500, "currency": "EUR"}"#)), Some(BodyError::Ambiguous));
    assert_eq!(body_error(post("{")), Some(BodyError::NotJson));
    // Optional: no body, or a body that is not JSON, is simply absent (and this policy denies).
    assert!(!post("").expect("evaluates").allowed);
    let form = decide_req(&snap, &request_with("POST", "/orders", "application/x-www-form-urlencoded", "amount=5"));
    assert!(!form.expect("evaluates").allowed);
    // Only the actions that declare it read it: GET has no body in this schema.
    let get = decide_req(&snap, &request_with("GET", "/orders", "application/json", "{"));
    assert!(get.is_ok());
}

#[test]
fn a_required_body_must_be_there_and_be_json() {
    use crate::request::BodyError;
    let snap = snapshot_with_schema(body_schema("body: { amount: Long },"), BODY_POLICY);
    let post = |ct: &str, body: &str| decide_req(&snap, &request_with("POST", "/orders", ct, body));
    assert!(post("application/json", r#"{"amount": 1}"#).expect("evaluates").allowed);
    assert_eq!(body_error(post("application/json", "")), Some(BodyError::Missing));
    assert_eq!(body_error(post("text/plain", r#"{"amount": 1}"#)), Some(BodyError::NotJson));
    let deep = "[".repeat(5_000);
    assert_eq!(body_error(post("application/json", &deep)), Some(BodyError::TooDeep));
    let large = format!(r#"{{"amount": 1, "pad": "{}"}}"#, "x".repeat(10_000));
    assert_eq!(body_error(post("application/json", &large)), Some(BodyError::TooLarge));
    let mut partial = request_with("POST", "/orders", "application/json", r#"{"amount": 1}"#);
    if let Some(http) = partial.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
        http.headers.insert("x-envoy-auth-partial-body".into(), "true".into());
    }
    assert_eq!(body_error(decide_req(&snap, &partial)), Some(BodyError::TooLarge));
}

#[test]
fn without_a_declared_body_the_body_is_never_read() {
    let snap = snapshot(r#"@id("posts") permit (principal, action == Action::"POST", resource);"#);
    let deep = "[".repeat(10_000);
    let out = decide_req(&snap, &request_with("POST", "/orders", "application/json", &deep)).expect("evaluates");
    assert!(out.allowed);
}

#[test]
fn grpc_service_and_method_decide_when_the_schema_declares_them() {
    let schema = schema_with("time: Long,", "time: Long, grpc_service?: String, grpc_method?: String,");
    let policy = r#"@id("orders-get") permit (principal, action == Action::"POST", resource)
        when { context has grpc_service && context.grpc_service == "orders.v1.Orders" &&
               context has grpc_method && context.grpc_method == "GetOrder" };"#;
    let snap = snapshot_with_schema(schema, policy);
    let call = |path: &str, ct: &str| decide_req(&snap, &request_with("POST", path, ct, "")).expect("evaluates");
    assert!(call("/orders.v1.Orders/GetOrder", "application/grpc").allowed);
    assert!(call("/orders.v1.Orders/GetOrder", "application/grpc+proto").allowed);
    assert!(!call("/orders.v1.Orders/DeleteOrder", "application/grpc").allowed);
    assert!(!call("/orders.v1.Orders/GetOrder", "application/json").allowed);
    assert!(!call("/orders.v1.Orders/GetOrder/x", "application/grpc").allowed);
    // A schema without them still fits gRPC requests: they are simply not set.
    let old = snapshot(r#"@id("posts") permit (principal, action == Action::"POST", resource);"#);
    let out = decide_req(&old, &request_with("POST", "/orders.v1.Orders/GetOrder", "application/grpc", ""));
    assert!(out.expect("an old schema still evaluates gRPC requests").allowed);
}

#[test]
fn a_body_on_an_action_the_principal_cannot_take_is_not_blamed_on_the_body() {
    let schema = body_schema("body?: { amount: Long },");
    let from = "principal: [User, Service, ApiClient, Anonymous], resource: [Route], context: WriteCtx";
    assert!(schema.contains(from));
    let snap = snapshot_with_schema(schema.replace(from, &from.replace(", Anonymous", "")), BODY_POLICY);
    let req = request_with("POST", "/orders", "application/json", r#"{"amount": 1}"#);
    let req_in = crate::proto::check_in(&req);
    let view = RequestView::from_check(&req_in, &Limits::default()).expect("valid request");
    let out = authorize(&snap, &view, &Identities::default(), &CedarMapping::default());
    assert!(matches!(out, Err(AuthzError::Request(_))), "{out:?}");
}
