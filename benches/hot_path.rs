//! Micro-benchmarks of the check hot path, over the same fixtures as `scripts/bench.sh`:
//! request normalization, JWT verification per algorithm (uncached) and the cached-token path,
//! Cedar evaluation with 10 / 100 / 1000 policies, response rendering, and one whole check.
//!
//! `cargo bench --bench hot_path` (add `-- <filter>` to run a subset)
#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;
use portcullis::authn::Identities;
use portcullis::authz::{self, CedarMapping};
use portcullis::config::HeaderNames;
use portcullis::config::Limits;
use portcullis::proto::auth::{CheckRequest, CheckRequestIn};
use portcullis::request::RequestView;
use portcullis::response;
use support::{Caller, Fixture, PEER, check_request, token};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn normalize(c: &mut Criterion) {
    use prost::Message as _;
    // From the framed bytes, as the server gets them: decode, then normalize.
    let frame = check_request(&Caller::Bearer(token(Algorithm::RS256, 1)), "rid-1").encode_to_vec();
    let limits = Limits::default();
    c.bench_function("normalize/istio_20_headers", |b| {
        b.iter(|| {
            let req = CheckRequestIn::decode(black_box(frame.as_slice())).expect("decodes");
            RequestView::from_check(&req, &limits).expect("valid").headers().len()
        })
    });
    // The decode alone, of the same bytes: the standard type (headers into a `HashMap`) and the
    // server's (headers as a list, build.rs).
    let mut group = c.benchmark_group("decode/istio_20_headers");
    group
        .bench_function("standard", |b| b.iter(|| CheckRequest::decode(black_box(frame.as_slice())).expect("decodes")));
    group.bench_function("list", |b| b.iter(|| CheckRequestIn::decode(black_box(frame.as_slice())).expect("decodes")));
    group.finish();
}

fn jwt(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    let fx = Fixture::write(dir.path(), 10);
    let rt = rt();
    let mut group = c.benchmark_group("jwt");
    for (cache, label) in [(0u64, "uncached"), (10_000, "cached")] {
        let path = dir.path().join(format!("c{cache}.yaml"));
        std::fs::write(&path, fx.config_yaml("127.0.0.1:0", &dir.path().join("u.sock"), "127.0.0.1:0", cache))
            .expect("config");
        let checker = support::checker(&path);
        let jwt = checker.authenticator().jwt();
        let algs: &[(Algorithm, &str)] = if cache == 0 {
            &[(Algorithm::RS256, "RS256"), (Algorithm::ES256, "ES256"), (Algorithm::EdDSA, "EdDSA")]
        } else {
            &[(Algorithm::RS256, "RS256")]
        };
        for (alg, name) in algs {
            let t = token(*alg, 1);
            rt.block_on(jwt.verify(&t)).expect("token verifies");
            group.bench_function(BenchmarkId::new(label, name), |b| {
                b.iter(|| rt.block_on(jwt.verify(black_box(&t))).expect("verifies"))
            });
        }
    }
    // The signature check alone, jsonwebtoken's primitive over a prebuilt key: the floor under
    // the uncached rows (everything above it is parsing, claim checks and the identity).
    let set = support::jwks();
    for (alg, name) in [(Algorithm::RS256, "RS256"), (Algorithm::ES256, "ES256"), (Algorithm::EdDSA, "EdDSA")] {
        let t = token(alg, 1);
        let (input, sig) = t.rsplit_once('.').expect("three segments");
        let kid = support::KEYS.iter().find(|k| k.1 == alg).map(|k| k.2).expect("fixture key");
        let key = jsonwebtoken::DecodingKey::from_jwk(set.find(kid).expect("jwk")).expect("key");
        assert!(jsonwebtoken::crypto::verify(sig, input.as_bytes(), &key, alg).expect("verifies"), "{name}");
        group.bench_function(BenchmarkId::new("signature_only", name), |b| {
            b.iter(|| jsonwebtoken::crypto::verify(black_box(sig), input.as_bytes(), &key, alg).expect("verifies"))
        });
        // The same check with the key's verifier prebuilt at load, as the uncached path now does
        // it (the signature decoded each time, the public key not rebuilt).
        let jwk = serde_json::to_string(set.find(kid).expect("jwk")).expect("jwk json");
        let loaded =
            portcullis::authn::jwks::parse_jwks(format!(r#"{{"keys":[{jwk}]}}"#).as_bytes(), "bench", 1).expect("jwks");
        let verifiers = &loaded[0].verifiers;
        group.bench_function(BenchmarkId::new("signature_prebuilt", name), |b| {
            b.iter(|| {
                let raw = URL_SAFE_NO_PAD.decode(black_box(sig)).expect("base64url");
                assert!(verifiers.verify(alg, input.as_bytes(), &raw));
            })
        });
    }
    group.finish();
}

fn cedar(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    let fx = Fixture::write(dir.path(), 10);
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, fx.config_yaml("127.0.0.1:0", &dir.path().join("u.sock"), "127.0.0.1:0", 10_000))
        .expect("config");
    let checker = support::checker(&path);
    let rt = rt();
    let req = check_request(&Caller::Bearer(token(Algorithm::RS256, 1)), "rid-1");
    let req_in = portcullis::proto::check_in(&req);
    let view = RequestView::from_check(&req_in, &Limits::default()).expect("valid");
    let ids: Identities = rt.block_on(checker.authenticator().authenticate(&view)).expect("authenticated");
    let peer_req = check_request(&Caller::Peer(PEER), "rid-2");
    let peer_req_in = portcullis::proto::check_in(&peer_req);
    let peer_view = RequestView::from_check(&peer_req_in, &Limits::default()).expect("valid");
    let peer_ids = rt.block_on(checker.authenticator().authenticate(&peer_view)).expect("authenticated");
    let mapping = CedarMapping::new(&["x-tenant".to_owned()], &["authorization".to_owned()]);

    let mut group = c.benchmark_group("cedar");
    for n in [10usize, 100, 1000] {
        let snap = Arc::new(support::snapshot(n));
        let out = authz::authorize(&snap.engine, &view, &ids, &mapping).expect("evaluates");
        assert!(out.allowed, "bench user must be allowed: {out:?}");
        group.bench_function(BenchmarkId::new("authorize_jwt_user", n), |b| {
            b.iter(|| authz::authorize(&snap.engine, black_box(&view), &ids, &mapping).expect("evaluates"))
        });
        group.bench_function(BenchmarkId::new("authorize_spiffe_peer", n), |b| {
            b.iter(|| authz::authorize(&snap.engine, black_box(&peer_view), &peer_ids, &mapping).expect("evaluates"))
        });
        // The same requests answered from the decision memo (warm: every iteration is a hit).
        let memo_snap = Arc::new(support::snapshot(n));
        let memo = mapping.clone().with_decision_memo(authz::DecisionMemoSettings::unmetered(10_000));
        let hit = authz::authorize(&memo_snap.engine, &view, &ids, &memo).expect("evaluates");
        assert_eq!((hit.allowed, &hit.policies), (out.allowed, &out.policies));
        group.bench_function(BenchmarkId::new("authorize_jwt_user_memo_hit", n), |b| {
            b.iter(|| authz::authorize(&memo_snap.engine, black_box(&view), &ids, &memo).expect("evaluates"))
        });
        group.bench_function(BenchmarkId::new("authorize_spiffe_peer_memo_hit", n), |b| {
            b.iter(|| authz::authorize(&memo_snap.engine, black_box(&peer_view), &peer_ids, &memo).expect("evaluates"))
        });
        // A hit handed out shared: no copy of the outcome.
        group.bench_function(BenchmarkId::new("authorize_shared_jwt_user_memo_hit", n), |b| {
            b.iter(|| authz::authorize_shared(&memo_snap.engine, black_box(&view), &ids, &memo).expect("evaluates"))
        });
    }
    group.finish();
}

fn render_and_check(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    let fx = Fixture::write(dir.path(), 300);
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, fx.config_yaml("127.0.0.1:0", &dir.path().join("u.sock"), "127.0.0.1:0", 10_000))
        .expect("config");
    let checker = support::checker(&path);
    let rt = rt();
    let opts = portcullis::server::response_options(&HeaderNames {
        policy_ids: Some("x-portcullis-policy".into()),
        ..HeaderNames::default()
    });
    let allow_req = check_request(&Caller::Bearer(token(Algorithm::RS256, 1)), "rid-1");
    let allow = rt.block_on(support::decide(&checker, &allow_req));
    assert!(allow.is_allowed());
    let deny = rt.block_on(support::decide(&checker, &check_request(&Caller::Anonymous, "rid-2")));
    assert!(!deny.is_allowed());
    c.bench_function("response/render_allow", |b| b.iter(|| response::render(black_box(&allow), &opts)));
    c.bench_function("response/render_deny", |b| b.iter(|| response::render(black_box(&deny), &opts)));
    c.bench_function("check/jwt_cached_300_policies", |b| {
        b.iter(|| {
            let d = rt.block_on(support::decide(&checker, black_box(&allow_req)));
            response::render(&d, &opts)
        })
    });
}

/// One realistic decision line (a cached-JWT allow with its full audit) formatted as the log
/// writer thread formats it.
fn decision_line(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    let fx = Fixture::write(dir.path(), 10);
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, fx.config_yaml("127.0.0.1:0", &dir.path().join("u.sock"), "127.0.0.1:0", 10_000))
        .expect("config");
    let checker = support::checker(&path);
    let mut d =
        rt().block_on(support::decide(&checker, &check_request(&Caller::Bearer(token(Algorithm::RS256, 1)), "rid-1")));
    assert!(d.is_allowed() && d.audit().policy_version.is_some());
    d.audit_mut().trace_id = Some(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
    let at = std::time::SystemTime::now();
    let mut out = Vec::with_capacity(64 * 1024);
    c.bench_function("decision_log/json_line", |b| {
        b.iter(|| {
            out.clear();
            portcullis::server::write_json_line(black_box(&d), at, 87, portcullis::config::SubjectLog::Plain, &mut out);
        })
    });
}

criterion_group!(benches, normalize, jwt, cedar, render_and_check, decision_line);
criterion_main!(benches);
