//! Shared benchmark fixtures: a realistic policy set (a few hundred Cedar policies over 102
//! groups), a JWKS with four keys, ~800-byte tokens, Istio-shaped `CheckRequest`s with ~20
//! headers, and gRPC frames for h2load. Included by `benches/hot_path.rs` and the bench examples
//! with `#[path]`, so every measurement runs over the same inputs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use portcullis::check::Checker;
use portcullis::client::CheckRequestBuilder;
use portcullis::config::Config;
use portcullis::config::Limits;
use portcullis::decision::Decision;
use portcullis::policy::{DocKind, PolicyDocument, PolicySnapshot, PolicyStore, files};
use portcullis::proto::auth::CheckRequest;
use portcullis::request::RequestView;
use portcullis::token::{TokenSpec, jwks_for, mint};
use prost::Message as _;

pub const ISSUER: &str = "https://idp.bench.local";
pub const AUDIENCE: &str = "bench-api";
pub const HOST: &str = "orders.shop.svc.cluster.local";
pub const PATH: &str = "/api/orders/12345?expand=items";
pub const PEER: &str = "spiffe://cluster.local/ns/frontend/sa/web";

/// The signing keys in `tests/fixtures/keys`, with the `kid` the JWKS gives each.
pub const KEYS: [(&str, Algorithm, &str); 4] = [
    ("rsa1.pem", Algorithm::RS256, "rsa-1"),
    ("rsa2.pem", Algorithm::RS256, "rsa-2"),
    ("ec256.pem", Algorithm::ES256, "ec-1"),
    ("ed25519.pem", Algorithm::EdDSA, "ed-1"),
];

pub fn key_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys").join(file)
}

/// The demo schema: the shape policies are strictly validated against.
pub fn schema_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/policies/portcullis.cedarschema"))
        .expect("demo schema")
}

/// Groups `team-0..team-99`, `staff` and `admins` (the demo schema's groups are flat).
pub fn entities_json() -> String {
    let mut v = Vec::new();
    for t in 0..100 {
        v.push(serde_json::json!({"uid": {"type": "Group", "id": format!("team-{t}")}, "attrs": {}, "parents": []}));
    }
    for g in ["staff", "admins"] {
        v.push(serde_json::json!({"uid": {"type": "Group", "id": g}, "attrs": {}, "parents": []}));
    }
    serde_json::to_string_pretty(&v).expect("json")
}

/// `n` policies: the handful the scenarios hit, then a mix of group, service, forbid and
/// tenant/tag rules that do not match them (Cedar still evaluates every one).
pub fn policies_text(n: usize) -> String {
    let mut out = String::from(
        r#"@id("public-read")
permit (principal, action in Action::"read", resource) when { resource.path like "/public/*" };
@id("users-read-api")
permit (principal is User, action in Action::"read", resource) when { resource.path like "/api/*" };
@id("frontend-service-read")
permit (principal is Service, action in Action::"read", resource)
when { principal.namespace == "frontend" && resource.path like "/api/*" };
@id("admin-area-admins-only")
forbid (principal, action, resource) when { resource.path like "/admin*" } unless { principal in Group::"admins" };
"#,
    );
    for i in 4..n {
        let rule = match i % 4 {
            0 => format!(
                "permit (principal in Group::\"team-{t}\", action in Action::\"write\", resource)\n\
                 when {{ resource.service == \"svc-{i}\" }};",
                t = i % 100
            ),
            1 => format!(
                "permit (principal is Service, action, resource)\n\
                 when {{ principal.namespace == \"ns-{i}\" && resource.path like \"/svc-{i}/*\" }};"
            ),
            2 => format!(
                "forbid (principal, action in Action::\"write\", resource) when {{ resource.path like \"/frozen-{i}/*\" }};"
            ),
            _ => format!(
                "permit (principal is User, action == Action::\"GET\", resource)\n\
                 when {{ resource.host == \"host-{i}.example\" && principal.hasTag(\"tenant\") && principal.getTag(\"tenant\") == \"t{i}\" }};"
            ),
        };
        out.push_str(&format!("@id(\"rule-{i}\")\n{rule}\n"));
    }
    out
}

/// The policy documents for `n` policies, as a source would hand them over.
pub fn policy_docs(n: usize) -> Vec<PolicyDocument> {
    vec![
        PolicyDocument { origin: "portcullis.cedarschema".into(), kind: DocKind::Schema, text: schema_text() },
        PolicyDocument { origin: "groups.entities.json".into(), kind: DocKind::Entities, text: entities_json() },
        PolicyDocument { origin: "policies.cedar".into(), kind: DocKind::Policies, text: policies_text(n) },
    ]
}

pub fn snapshot(n: usize) -> PolicySnapshot {
    PolicySnapshot::build(&policy_docs(n), "bench").expect("bench policies build")
}

/// A ~800-byte token signed with the fixture key for `alg`. `salt` makes each token distinct.
pub fn token(alg: Algorithm, salt: u64) -> String {
    let (file, _, kid) = KEYS.iter().find(|(_, a, _)| *a == alg).copied().expect("key for alg");
    token_with(&key_path(file), alg, Some(kid), salt, 800)
}

/// A token of at least `min_len` bytes, padded with a realistic `scope` claim.
pub fn token_with(key: &Path, alg: Algorithm, kid: Option<&str>, salt: u64, min_len: usize) -> String {
    let mut scope_len = 0usize;
    loop {
        let words = ["orders:read", "orders:write", "orders:list", "profile", "email"];
        let mut scope = String::new();
        let mut i = 0;
        while scope.len() < scope_len {
            if !scope.is_empty() {
                scope.push(' ');
            }
            scope.push_str(words[i % words.len()]);
            i += 1;
        }
        let mut extra = BTreeMap::new();
        extra.insert("email".into(), serde_json::json!("alice@shop.example"));
        extra.insert("tenant".into(), serde_json::json!("acme"));
        extra.insert("name".into(), serde_json::json!("Alice Example"));
        extra.insert("jti".into(), serde_json::json!(format!("{salt:016x}")));
        extra.insert("azp".into(), serde_json::json!("shop-frontend"));
        extra.insert("scope".into(), serde_json::json!(scope));
        let spec = TokenSpec {
            issuer: ISSUER.into(),
            subject: format!("user-{}", salt % 1000),
            audience: Some(AUDIENCE.into()),
            groups: vec!["staff".into(), "team-7".into(), "team-42".into()],
            ttl: Duration::from_secs(3600),
            kid: kid.map(str::to_owned),
            extra,
        };
        let t = mint(key, alg, &spec).expect("mint");
        if t.len() >= min_len {
            return t;
        }
        // Base64url turns 3 bytes of claims into 4 characters.
        scope_len += (min_len - t.len()) * 3 / 4 + 2;
    }
}

/// The JWKS with all four public keys.
pub fn jwks() -> JwkSet {
    let mut keys = Vec::new();
    for (file, alg, kid) in KEYS {
        keys.extend(jwks_for(&key_path(file), alg, kid).expect("jwks").keys);
    }
    JwkSet { keys }
}

/// What a request carries.
#[derive(Debug, Clone)]
pub enum Caller {
    Anonymous,
    Bearer(String),
    Peer(&'static str),
}

/// An Istio-shaped request: 20 headers, Envoy's merged `headers` map, a source socket address.
pub fn check_request(caller: &Caller, request_id: &str) -> CheckRequest {
    let mut b = CheckRequestBuilder::new("GET", PATH)
        .host(HOST)
        .id(request_id)
        .pseudo_headers()
        .source_address("10.1.2.3", 48522)
        .destination_address("10.1.9.9", 8080)
        .destination("spiffe://cluster.local/ns/shop/sa/orders");
    for (k, v) in [
        (":scheme", "http"),
        ("accept", "application/json, text/plain, */*"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
        ),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "10.1.2.3"),
        ("x-envoy-attempt-count", "1"),
        ("x-envoy-internal", "true"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
        ("traceparent", "00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01"),
        ("x-tenant", "acme"),
        ("x-request-id", request_id),
    ] {
        b = b.header(k, v);
    }
    match caller {
        Caller::Anonymous => b = b.header("cookie", "session=none; theme=dark"),
        Caller::Bearer(t) => b = b.bearer(t),
        Caller::Peer(p) => {
            let xfcc = format!("By=spiffe://cluster.local/ns/shop/sa/orders;Hash=4e1f9a3c5b2d;Subject=\"\";URI={p}");
            b = b.header("x-forwarded-client-cert", &xfcc).peer(p);
        }
    }
    b.build()
}

/// One gRPC message frame: uncompressed flag, big-endian length, protobuf body.
pub fn grpc_frame(req: &CheckRequest) -> Vec<u8> {
    let body = req.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Writes a policy dir (`n` policies), `jwks.json` and one config per token-cache size.
pub struct Fixture {
    pub dir: PathBuf,
}

impl Fixture {
    pub fn write(dir: &Path, n: usize) -> Fixture {
        let pdir = dir.join("policies");
        std::fs::create_dir_all(&pdir).expect("mkdir");
        for d in policy_docs(n) {
            std::fs::write(pdir.join(&d.origin), d.text).expect("write policy doc");
        }
        std::fs::write(dir.join("jwks.json"), serde_json::to_string_pretty(&jwks()).expect("json")).expect("jwks");
        Fixture { dir: dir.to_owned() }
    }

    /// A config as an operator would write it: JSON logs at info, admin port, policy watch on.
    pub fn config_yaml(&self, grpc: &str, unix: &Path, admin: &str, cache_entries: u64) -> String {
        format!(
            r#"listen:
  grpc: "{grpc}"
  unix: "{unix}"
  admin: "{admin}"
log:
  format: json
  level: info
policy:
  dir: policies
authn:
  issuers:
    - issuer: {ISSUER}
      jwks_file: jwks.json
      audiences: [{AUDIENCE}]
      algorithms: [RS256, ES256, EdDSA]
      claims_to_headers:
        email: x-portcullis-email
  token_cache:
    max_entries: {cache_entries}
  peer:
    trust_domains: [cluster.local]
headers:
  policy_ids: x-portcullis-policy
cedar:
  context_headers: [x-tenant]
"#,
            unix = unix.display()
        )
    }
}

/// A checker over a config file, with its policies loaded, as the server builds it.
pub fn checker(config: &Path) -> Checker {
    let cfg = Config::load(config).expect("bench config");
    checker_for(&cfg)
}

pub fn checker_for(cfg: &Config) -> Checker {
    let mut registry = prometheus_client::registry::Registry::default();
    let store = Arc::new(PolicyStore::new(cfg.policy.on_empty, &mut registry));
    if let Some(dir) = &cfg.policy.dir {
        files::load_into(dir, &store).expect("bench policies load");
    }
    Checker::new(cfg, store, &mut registry).expect("checker")
}

/// What the server does per check: normalize the wire request, then decide it.
pub async fn decide(checker: &Checker, req: &CheckRequest) -> Decision {
    let req_in = portcullis::proto::check_in(req);
    match RequestView::from_check(&req_in, &Limits::default()) {
        Ok(view) => checker.check(&view).await,
        Err(e) => portcullis::check::invalid_request(&e),
    }
}
