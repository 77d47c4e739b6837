//! The decision memo answers exactly as Cedar does: over the guarded corpus with the memo warm,
//! and for pairs of requests that differ in exactly one input (so a key too narrow to tell them
//! apart answers the second from the first and fails here).
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::PolicySet;

use super::super::engine::authorize_with;
use super::super::tests::{
    GUARDED, body_schema, callers, client, guarded_requests, peer, request, request_with, schema_with, snapshot,
    snapshot_with_schema, user,
};
use super::super::*;
use super::*;
use crate::authn::Identities;
use crate::config::Limits;
use crate::proto::auth::CheckRequest;
use crate::request::RequestView;

fn memo_mapping(max_entries: u64) -> CedarMapping {
    // Counted, so tests can tell the memo answered.
    let settings = DecisionMemoSettings::new(max_entries, &mut Registry::default());
    CedarMapping::new(&["x-tenant".to_owned()], &[]).with_decision_memo(settings)
}

/// `context.time` fixed, so error texts (which may carry it) compare exactly.
const NOW: i64 = 1_800_000_000;

fn view_of(req: &CheckRequest) -> RequestView<'_> {
    // The view borrows the request as the server decodes it; leaked, as a test's requests are few.
    let req: &'static _ = Box::leak(Box::new(crate::proto::check_in(req)));
    let mut view = RequestView::from_check(req, &Limits::default()).expect("valid request");
    view.time = view.time.or(Some(NOW));
    view
}

/// The memo's answer and Cedar's over every policy, without the memo; equal in every field.
fn same_as_cedar(engine: &Engine, mapping: &CedarMapping, view: &RequestView<'_>, ids: &Identities) -> AuthzOutcome {
    let got = authorize(engine, view, ids, mapping);
    let want = authorize_with(engine, view, ids, mapping, true);
    match (got, want) {
        (Ok(mut got), Ok(mut want)) => {
            // Cedar lists errors in the order of its policy set: as a set, they are the same.
            got.errors.sort();
            want.errors.sort();
            let fields = |o: &AuthzOutcome| {
                (
                    o.allowed,
                    o.policies.clone(),
                    o.errors.clone(),
                    o.principal.clone(),
                    o.action.clone(),
                    o.resource.clone(),
                )
            };
            assert_eq!(fields(&got), fields(&want), "{} {} {ids:?}", view.method, view.path);
            got
        }
        (Err(g), Err(w)) => {
            assert_eq!(g.to_string(), w.to_string());
            panic!("test request refused: {g}");
        }
        (g, w) => panic!("memo {g:?} but Cedar {w:?}"),
    }
}

#[test]
fn memoized_decisions_match_cedar_over_the_guarded_corpus() {
    let engine = snapshot(GUARDED);
    let mapping = memo_mapping(100_000);
    let requests = guarded_requests();
    let mut compared = 0;
    let mut errors = 0;
    // The first pass fills the memo, the second answers from it: both must equal Cedar.
    for _ in 0..2 {
        for (_, req) in &requests {
            let req_in = crate::proto::check_in(req);
            let Ok(mut view) = RequestView::from_check(&req_in, &Limits::default()) else { continue };
            view.time = Some(NOW);
            for ids in callers() {
                let out = same_as_cedar(&engine, &mapping, &view, &ids);
                errors += usize::from(!out.errors.is_empty());
                compared += 1;
            }
        }
    }
    assert!(compared > 2000, "only {compared} compared");
    assert!(errors > 0, "no evaluation error reached");
    assert!(mapping.decision_memo.count_of("hit") > 1000, "the second pass came from the memo");
    let memo = engine.memo(&mapping).expect("memo on");
    // Every distinct request of the first pass is there (`err` reads `context.time`: keyed).
    assert!(memo.entries() > 1000, "{} entries", memo.entries());
}

/// A request whose hit must come from the memo: answered twice, the second time a hit.
#[test]
fn a_repeated_request_is_answered_from_the_memo_and_other_engines_start_empty() {
    let mut registry = Registry::default();
    let settings = DecisionMemoSettings::new(100, &mut registry);
    let mapping = CedarMapping::default().with_decision_memo(settings.clone());
    let open = snapshot(r#"@id("open") permit (principal, action, resource);"#);
    let req = request("GET", "/api/orders");
    let view = view_of(&req);
    let ids = client("batch", &[]);
    for _ in 0..3 {
        assert!(same_as_cedar(&open, &mapping, &view, &ids).allowed);
    }
    assert_eq!((settings.count_of("miss"), settings.count_of("hit")), (1, 2));
    assert!(crate::metrics::encode(&registry).contains("decision_memo_lookups_total{result=\"hit\"} 2"));
    // A new snapshot's engine has its own, empty memo.
    let closed = snapshot(r#"@id("admins") permit (principal in Group::"admins", action, resource);"#);
    assert!(!same_as_cedar(&closed, &mapping, &view, &ids).allowed);
    assert_eq!(settings.count_of("miss"), 2);
}

#[test]
fn the_memo_is_bounded_and_zero_turns_it_off() {
    let engine = snapshot(r#"@id("open") permit (principal, action, resource);"#);
    assert!(engine.memo(&memo_mapping(0)).is_none());
    let mapping = memo_mapping(8);
    for i in 0..200 {
        let req = request("GET", &format!("/r/{i}"));
        same_as_cedar(&engine, &mapping, &view_of(&req), &client("c", &[]));
    }
    let entries = engine.memo(&mapping).expect("on").entries();
    assert!(entries <= 8, "{entries} entries");
}

#[test]
fn an_entry_under_the_same_hash_but_another_key_is_a_miss() {
    let engine = snapshot(r#"@id("open") permit (principal, action, resource);"#);
    let mapping = memo_mapping(10);
    let memo = engine.memo(&mapping).expect("on");
    let req = request("GET", "/a");
    let view = view_of(&req);
    let ids = client("c", &[]);
    let probe = Probe {
        scope: Scope::Set(7),
        reads: Reads::NONE,
        shape: 0,
        req: &view,
        ids: &ids,
        mapping: &mapping,
        time: &crate::authz::context::RequestTime::new(Some(NOW)),
        grpc: None,
    };
    let mut key = Vec::new();
    probe.encode(&mut key);
    let hash = memo.hasher.hash_one(key.as_slice());
    let forged = AuthzOutcome {
        allowed: true,
        policies: vec!["forged".into()].into(),
        errors: Vec::new(),
        principal: "".into(),
        action: "".into(),
        resource: "".into(),
    };
    key.push(0);
    memo.insert(Pending { hash, key: key.into() }, &Arc::new(forged));
    assert!(matches!(memo.lookup(&probe), Lookup::Miss(_)));
    // Oversized keys are never stored.
    let many: Vec<(&str, &str)> = vec![("claim", "x"); MAX_KEY_BYTES];
    let big = user("https://idp", &[], &many);
    let probe = Probe { ids: &big, ..probe };
    assert!(matches!(memo.lookup(&probe), Lookup::Bypass));
}

#[test]
fn reads_follow_every_use_of_context() {
    let reads = |cond: &str| {
        let text = format!("permit (principal, action, resource) when {{ {cond} }};");
        let set = PolicySet::from_str(&text).expect("parses");
        Reads::of_policy(set.policies().next().expect("one"))
    };
    assert_eq!(reads("true"), Reads::NONE);
    assert_eq!(reads(r#"principal.issuer == "x" && resource.path like "/a*""#), Reads::NONE);
    // Always keyed: the action, the route and the identities fix them.
    assert_eq!(
        reads(r#"context.method == "GET" && context.peer.namespace == "x" && context.authn.isEmpty()"#),
        Reads::NONE
    );
    assert_eq!(reads(r#"context.query == "a""#), Reads::QUERY);
    assert_eq!(reads(r#"context["scheme"] == "https""#), Reads::SCHEME);
    assert_eq!(reads("context has time"), Reads::TIME);
    assert_eq!(reads(r#"context has source_ip && context.source_ip.isLoopback()"#), Reads::SOURCE_IP);
    assert_eq!(reads(r#"context has grpc_method"#), Reads::GRPC);
    assert_eq!(reads(r#"context has body.amount"#), Reads::BODY);
    assert_eq!(
        reads(r#"if context.query == "" then true else context.scheme == "x""#),
        Reads::QUERY.union(Reads::SCHEME)
    );
    assert_eq!(reads(r#"{ a: context.time }.a > 0"#), Reads::TIME);
    assert_eq!(reads(r#"[context.query].contains("a")"#), Reads::QUERY);
    assert!(!reads(r#"context.request_id == "x""#).memoizable());
    // Any other use of `context` reads all of it, `request_id` included: never memoized.
    for whole in [r#"context == { method: "GET" }"#, "[context].isEmpty()", r#"{ c: context } has c"#] {
        let r = reads(whole);
        assert_eq!(r, Reads::ALL, "{whole}");
        assert!(!r.memoizable(), "{whole}");
    }
}

/// Every attribute the context can hold is either always in the key or tracked by [`Reads`]: a
/// new attribute that is neither fails here, before it can be answered from a narrow key.
#[test]
fn every_context_attribute_is_keyed() {
    use super::super::context::{ContextParts, context};
    let t = model::types().expect("types");
    let peer = super::super::entities::uid(&t.service, "p");
    let body = cedar_policy_core::ast::Value::from(1_i64);
    let ctx = context(&ContextParts {
        method: "GET",
        path: "/",
        query: "q",
        host: "h",
        scheme: "https",
        request_id: "r",
        authn: &["jwt"],
        source_ip: Some([127, 0, 0, 1].into()),
        peer: Some(&peer),
        time: Some(NOW),
        grpc: Some(("s", "m")),
        body: Some(body),
    })
    .expect("builds");
    let always = [model::CTX_METHOD, model::CTX_PATH, model::CTX_HOST, model::CTX_AUTHN, model::CTX_PEER];
    let mut seen = 0;
    for (name, _) in ctx.into_iter() {
        seen += 1;
        assert!(always.contains(&name.as_str()) || Reads::attribute(&name) != Reads::NONE, "`{name}` is not keyed");
    }
    assert_eq!(seen, 13);
}

/// One forbid per input, none of them a guard the index reads (each starts with `has`), so
/// only the memo key can tell the two requests of a pair apart. `f-rid` is in the `Service`
/// slice only: every set holding it reads `request_id` and is never memoized.
const PAIRS: &str = r#"
    @id("base") permit (principal, action, resource);
    @id("f-post") forbid (principal, action == Action::"POST", resource);
    @id("f-path") forbid (principal, action, resource) when { context has path && context.path == "/bad" };
    @id("f-host") forbid (principal, action, resource) when { context has host && context.host == "bad.svc" };
    @id("f-scheme") forbid (principal, action, resource) when { context has scheme && context.scheme == "http" };
    @id("f-query") forbid (principal, action, resource) when { context has query && context.query == "bad=1" };
    @id("f-rid") forbid (principal is Service, action, resource)
        when { context has request_id && context.request_id == "bad" };
    @id("f-time") forbid (principal, action, resource) when { context has time && context.time > 2000000000 };
    @id("f-ip") forbid (principal, action, resource)
        when { context has source_ip && context.source_ip.isInRange(ip("10.0.0.0/8")) };
    @id("f-peer") forbid (principal, action, resource) when { context has peer && context.peer.namespace == "bad" };
    @id("f-authn") forbid (principal, action, resource) when { context has authn && context.authn.containsAll(["jwt", "api_key"]) };
    @id("f-header") forbid (principal, action, resource)
        when { resource.hasTag("x-tenant") && resource.getTag("x-tenant") == "bad" };
    @id("f-ext") forbid (principal, action, resource)
        when { resource.hasTag("ext:tenant") && resource.getTag("ext:tenant") == "bad" };
    @id("f-group") forbid (principal in Group::"bad", action, resource);
    @id("f-subject") forbid (principal == User::"mallory", action, resource);
    @id("f-client") forbid (principal == ApiClient::"mallory", action, resource);
    @id("f-claim") forbid (principal is User, action, resource)
        when { principal.hasTag("tier") && principal.getTag("tier") == "bad" };
    @id("f-issuer") forbid (principal is User, action, resource)
        when { principal has issuer && principal.issuer == "https://bad" };
    @id("f-scope") forbid (principal is User, action, resource) when { principal.scopes.contains("bad") };
    @id("f-aud") forbid (principal is User, action, resource) when { principal.audiences.contains("bad") };
"#;

fn pairs_schema() -> String {
    let user = "entity User in [Group] { issuer: String } tags String;";
    let with = "entity User in [Group] { issuer: String, scopes: Set<String>, audiences: Set<String> } tags String;";
    schema_with(user, with)
}

/// The base request of a pair: a user, with a peer, over https, with a source address.
fn base_request() -> CheckRequest {
    use crate::proto::core::{Address, SocketAddress, address};
    let mut req = request("GET", "/ok");
    if let Some(a) = req.attributes.as_mut() {
        a.source = Some(crate::proto::auth::attribute_context::Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "192.168.1.1".into(),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        });
        if let Some(h) = a.request.as_mut().and_then(|r| r.http.as_mut()) {
            h.scheme = "https".into();
            h.query = "ok=1".into();
            h.id = "rid-1".into();
            h.headers.insert("x-tenant".into(), "good".into());
        }
        a.context_extensions.insert("tenant".into(), "good".into());
    }
    req
}

fn base_ids() -> Identities {
    let mut ids = user("https://idp", &["staff"], &[("tier", "gold")]);
    ids.peer = Some(peer("frontend"));
    ids
}

type Change = fn(&mut CheckRequest, &mut Identities, &mut Option<i64>);

fn http(req: &mut CheckRequest) -> &mut crate::proto::auth::attribute_context::HttpRequest {
    req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()).expect("http")
}

fn with_jwt(ids: &mut Identities, f: impl FnOnce(&mut crate::authn::JwtIdentity)) {
    if let Some(jwt) = ids.jwt.as_mut() {
        f(Arc::make_mut(jwt));
    }
}

/// The caller of a pair's base request.
#[derive(Clone, Copy)]
enum Base {
    /// [`base_ids`]: a user, with a peer.
    User,
    /// The API client `k`, no groups.
    Client,
    /// Only the peer.
    Service,
}

/// Each changes exactly one input of the base request into one a policy of [`PAIRS`] forbids.
const CHANGES: &[(&str, Base, Change)] = &[
    ("method", Base::User, |r, _, _| http(r).method = "POST".into()),
    ("path", Base::User, |r, _, _| http(r).path = "/bad".into()),
    ("host", Base::User, |r, _, _| http(r).host = "bad.svc".into()),
    ("scheme", Base::User, |r, _, _| http(r).scheme = "http".into()),
    ("query", Base::User, |r, _, _| http(r).query = "bad=1".into()),
    ("request_id", Base::Service, |r, _, _| http(r).id = "bad".into()),
    ("time", Base::User, |_, _, t| *t = Some(2_100_000_000)),
    ("source_ip", Base::User, |r, _, _| {
        if let Some(crate::proto::core::address::Address::SocketAddress(s)) = r
            .attributes
            .as_mut()
            .and_then(|a| a.source.as_mut())
            .and_then(|s| s.address.as_mut())
            .and_then(|a| a.address.as_mut())
        {
            s.address = "10.1.2.3".into();
        }
    }),
    ("peer", Base::User, |_, ids, _| ids.peer = Some(peer("bad"))),
    ("authn methods", Base::User, |_, ids, _| ids.api_client = client("k", &[]).api_client),
    ("context header", Base::User, |r, _, _| {
        http(r).headers.insert("x-tenant".into(), "bad".into());
    }),
    ("route fact", Base::User, |r, _, _| {
        if let Some(a) = r.attributes.as_mut() {
            a.context_extensions.insert("tenant".into(), "bad".into());
        }
    }),
    ("group", Base::User, |_, ids, _| with_jwt(ids, |j| j.groups.push("bad".into()))),
    ("subject", Base::User, |_, ids, _| with_jwt(ids, |j| j.subject = "mallory".into())),
    ("claim", Base::User, |_, ids, _| with_jwt(ids, |j| j.claims[0].1 = "bad".into())),
    ("issuer", Base::User, |_, ids, _| with_jwt(ids, |j| j.issuer = "https://bad".into())),
    ("scopes", Base::User, |_, ids, _| with_jwt(ids, |j| j.scopes.push("bad".into()))),
    ("audience", Base::User, |_, ids, _| with_jwt(ids, |j| j.audiences.push("bad".into()))),
    ("api client", Base::Client, |_, ids, _| *ids = client("mallory", &[])),
    ("api client group", Base::Client, |_, ids, _| *ids = client("k", &["bad"])),
];

#[test]
fn requests_differing_in_one_input_are_never_answered_from_each_other() {
    // With `f-time` every slice reads `context.time`, so the memo is asked after the guards; without
    // it, before them (and a hit runs no guard).
    let without_time: String = PAIRS.lines().filter(|l| !l.contains(r#"@id("f-time")"#)).collect::<Vec<_>>().join("\n");
    let base_req = base_request();
    for (policies, pre_guard) in [(PAIRS, false), (without_time.as_str(), true)] {
        for (name, base, change) in CHANGES {
            if pre_guard && *name == "time" {
                continue;
            }
            let base_ids = || match base {
                Base::User => base_ids(),
                Base::Client => client("k", &[]),
                Base::Service => Identities { peer: Some(peer("frontend")), ..Default::default() },
            };
            let (mut req, mut ids, mut time) = (base_req.clone(), base_ids(), Some(NOW));
            change(&mut req, &mut ids, &mut time);
            let base_view = view_of(&base_req);
            let mut view = view_of(&req);
            view.time = time;
            // The base request fills the memo and the other is asked next: a key that cannot tell
            // them apart answers it from the base's entry. Then both are answered from the memo.
            let engine = snapshot_with_schema(pairs_schema(), policies);
            let mapping = memo_mapping(1_000);
            for round in 0..2 {
                let guards_before = engine.index.guard_runs();
                for (v, who, allowed) in [(&base_view, base_ids(), true), (&view, ids.clone(), false)] {
                    let out = same_as_cedar(&engine, &mapping, v, &who);
                    assert_eq!(out.allowed, allowed, "{name} (round {round}): {out:?}");
                }
                // `same_as_cedar` runs the guards once more per request (for every policy: no memo).
                let memo_guards = engine.index.guard_runs() - guards_before - 2;
                let want = if round == 0 || !pre_guard || *name == "request_id" { 2 } else { 0 };
                assert_eq!(memo_guards, want, "{name} (round {round}, before the guards: {pre_guard})");
            }
            // The second round came from the memo (a set reading `request_id` is never memoized).
            let hits = if *name == "request_id" { 0 } else { 2 };
            assert_eq!(mapping.decision_memo.count_of("hit"), hits, "{name}");
        }
    }
}

/// Policies whose leading conjuncts are guards the index evaluates (and one tag condition
/// behind a path guard): each forbid is chosen or left out by its guard alone.
const GUARD_PAIRS: &str = r#"
    @id("base") permit (principal, action, resource);
    @id("g-host") forbid (principal, action, resource) when { resource.host == "bad.svc" };
    @id("g-glob") forbid (principal, action, resource) when { context.host like "*.evil" };
    @id("g-prefix") forbid (principal, action, resource) when { resource.path like "/admin/*" };
    @id("g-service") forbid (principal, action, resource) when { resource.service == "billing" };
    @id("g-query") forbid (principal, action, resource) when { context.query == "bad=1" };
    @id("g-scheme") forbid (principal, action, resource) unless { context.scheme == "https" };
    @id("g-issuer") forbid (principal is User, action, resource) when { principal.issuer == "https://bad" };
    @id("g-ns") forbid (principal is Service, action, resource) when { principal.namespace == "bad" };
    @id("g-tag") forbid (principal, action, resource)
        when { resource.path like "/t/*" && resource.hasTag("x-tenant") && resource.getTag("x-tenant") == "bad" };
"#;

/// The policies the index hands Cedar for a request, after its guards (built as `prepare` does).
fn chosen(engine: &Engine, view: &RequestView<'_>, ids: &Identities) -> Vec<String> {
    use super::super::guard::Facts;
    use super::super::index::Shape;
    let (kind, principal) = super::super::entities::principal_facts(ids);
    let facts = Facts {
        route_host: &view.host,
        route_path: &view.path,
        route_service: view.host.split('.').next().unwrap_or(""),
        method: &view.method,
        path: &view.path,
        query: view.query,
        host: &view.host,
        scheme: view.scheme,
        request_id: view.request_id,
        principal,
    };
    let shape = Shape {
        source_ip: view.source_ip.is_some(),
        peer: ids.peer.is_some(),
        authn: !ids.methods().is_empty(),
        ..Shape::default()
    };
    let set = engine.index.select(&view.method, kind, shape, &facts).expect("fits");
    let mut ids: Vec<String> = set.policies.policies().map(|p| p.id().to_string()).collect();
    ids.sort();
    ids
}

type Edit = fn(&mut CheckRequest, &mut Identities);

/// (name, caller, the allowed request, the forbidden one, whether the guards choose different
/// sets for the two): each pair differs in one fact a guard reads (or, for the tag, one fact
/// behind a guard that holds for both).
const GUARD_CHANGES: &[(&str, Base, Edit, Edit, bool)] = &[
    ("route host", Base::User, |_, _| {}, |r, _| http(r).host = "bad.svc".into(), true),
    ("host glob", Base::User, |r, _| http(r).host = "x.evil.ok".into(), |r, _| http(r).host = "x.evil".into(), true),
    ("path prefix", Base::User, |r, _| http(r).path = "/admin".into(), |r, _| http(r).path = "/admin/".into(), true),
    (
        "service",
        Base::User,
        |r, _| http(r).host = "billings.svc".into(),
        |r, _| http(r).host = "billing.svc".into(),
        true,
    ),
    ("query", Base::User, |r, _| http(r).query = "bad=10".into(), |r, _| http(r).query = "bad=1".into(), true),
    ("scheme (unless)", Base::User, |_, _| {}, |r, _| http(r).scheme = "http".into(), true),
    ("issuer", Base::User, |_, _| {}, |_, ids| with_jwt(ids, |j| j.issuer = "https://bad".into()), true),
    ("namespace", Base::Service, |_, _| {}, |_, ids| ids.peer = Some(peer("bad")), true),
    (
        "path guard before a tag",
        Base::User,
        |r, _| {
            http(r).headers.insert("x-tenant".into(), "bad".into());
        },
        |r, _| {
            http(r).headers.insert("x-tenant".into(), "bad".into());
            http(r).path = "/t/x".into();
        },
        true,
    ),
    (
        "tag behind a guard",
        Base::User,
        |r, _| http(r).path = "/t/x".into(),
        |r, _| {
            http(r).path = "/t/x".into();
            http(r).headers.insert("x-tenant".into(), "bad".into());
        },
        false,
    ),
];

/// Asked before the guards run, the key must hold every fact a guard reads: pairs that differ
/// only in one such fact (so their guards choose different sets) are told apart, in either
/// order, and a warm memo answers both without running a guard.
#[test]
fn requests_differing_in_one_guard_fact_are_never_answered_from_each_other() {
    let base_req = base_request();
    for (name, base, allowed_edit, forbidden_edit, sets_differ) in GUARD_CHANGES {
        let base_ids = || match base {
            Base::Service => Identities { peer: Some(peer("frontend")), ..Default::default() },
            _ => base_ids(),
        };
        let mut pair = [(base_req.clone(), base_ids(), true), (base_req.clone(), base_ids(), false)];
        allowed_edit(&mut pair[0].0, &mut pair[0].1);
        forbidden_edit(&mut pair[1].0, &mut pair[1].1);
        let views = pair.each_ref().map(|(r, ids, allowed)| (view_of(r), ids.clone(), *allowed));
        let probe = snapshot(GUARD_PAIRS);
        let sets = views.each_ref().map(|(v, ids, _)| chosen(&probe, v, ids));
        assert_eq!(sets[0] != sets[1], *sets_differ, "{name}: {sets:?}");
        for order in [[0, 1], [1, 0]] {
            let engine = snapshot(GUARD_PAIRS);
            let mapping = memo_mapping(1_000);
            for round in 0..2 {
                let guards_before = engine.index.guard_runs();
                for i in order {
                    let (view, ids, allowed) = &views[i];
                    let out = same_as_cedar(&engine, &mapping, view, ids);
                    assert_eq!(out.allowed, *allowed, "{name} (round {round}, {order:?}): {out:?}");
                }
                let memo_guards = engine.index.guard_runs() - guards_before - 2;
                assert_eq!(memo_guards, if round == 0 { 2 } else { 0 }, "{name} (round {round})");
            }
            let counts = ["miss", "hit"].map(|r| mapping.decision_memo.count_of(r));
            assert_eq!(counts, [2, 2], "{name} {order:?}");
        }
    }
}

/// What a slice's key must read before its guards run: every guard's field and every policy's
/// reads; a slice reading `request_id` or `time` is looked up after its guards instead.
#[test]
fn a_slice_is_looked_up_before_its_guards_only_when_its_key_covers_them() {
    use super::super::index::Shape;
    use super::super::model::PrincipalKind;
    let pre_guard = |cond: &str| {
        let engine = snapshot(&format!("permit (principal is User, action, resource) when {{ {cond} }};"));
        let shape = Shape { authn: true, ..Shape::default() };
        engine.index.slice("GET", PrincipalKind::User, shape).expect("fits").pre_guard().map(|(_, r)| r)
    };
    assert_eq!(pre_guard(r#"resource.host == "a" && principal.issuer == "i""#), Some(Reads::NONE));
    assert_eq!(pre_guard(r#"context.query == "a""#), Some(Reads::QUERY));
    assert_eq!(pre_guard(r#"!(context.scheme like "h*")"#), Some(Reads::SCHEME));
    assert_eq!(pre_guard(r#"context.request_id == "a""#), None);
    assert_eq!(pre_guard(r#"resource.path like "/a*" && context.time > 0"#), None);
    assert_eq!(pre_guard("context has source_ip && context.source_ip.isLoopback()"), Some(Reads::SOURCE_IP));
}

/// A hit shares the stored outcome: no copy of its strings.
#[test]
fn a_shared_hit_is_the_stored_outcome() {
    let engine = snapshot(GUARD_PAIRS);
    let mapping = memo_mapping(10);
    let req = base_request();
    let view = view_of(&req);
    let ids = base_ids();
    let first = authorize_shared(&engine, &view, &ids, &mapping).expect("decides");
    let second = authorize_shared(&engine, &view, &ids, &mapping).expect("decides");
    assert!(first.allowed && Arc::ptr_eq(&first, &second));
    assert_eq!(authorize(&engine, &view, &ids, &mapping).expect("decides").policies, first.policies);
}

/// gRPC attributes and a body, when the schema declares them: pairs differing only in the
/// content type (gRPC or not) or only in the body.
#[test]
fn grpc_and_body_pairs_decide_as_cedar_with_the_memo_warm() {
    let grpc = schema_with("time: Long,", "time: Long, grpc_service?: String, grpc_method?: String,");
    let body = body_schema("body?: { amount: Long },");
    let policies = r#"@id("base") permit (principal, action, resource);
        @id("f-grpc") forbid (principal, action, resource)
            when { context has grpc_method && context.grpc_method == "Delete" };"#;
    let grpc_pair = ["application/grpc", "application/json"].map(|ct| request_with("POST", "/o.v1.O/Delete", ct, ""));
    let policies_body = r#"@id("base") permit (principal, action, resource);
        @id("f-big") forbid (principal, action, resource) when { context has body && context.body.amount > 100 };"#;
    let body_pair =
        [r#"{"amount": 500}"#, r#"{"amount": 5}"#].map(|b| request_with("POST", "/o", "application/json", b));
    for (schema, policies, pair) in [(grpc, policies, grpc_pair), (body, policies_body, body_pair)] {
        let engine = snapshot_with_schema(schema, policies);
        let mapping = memo_mapping(100);
        let ids = client("k", &[]);
        for _ in 0..2 {
            let [forbidden, allowed] =
                [&pair[0], &pair[1]].map(|r| same_as_cedar(&engine, &mapping, &view_of(r), &ids));
            assert!(!forbidden.allowed && allowed.allowed, "{forbidden:?} {allowed:?}");
        }
    }
}
