//! Shared helpers for the integration tests: a real sidecar started from a YAML config built in a
//! temp dir (policies copied from the demo, a JWKS made from the test key), token minting, a
//! CheckRequest builder, gRPC clients over TCP and the Unix socket, and readers for the answer.
#![allow(dead_code)] // each test binary uses a different subset

pub mod idp;
pub mod kube;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use portcullis::check::Checker;
use portcullis::client::CheckRequestBuilder;
use portcullis::config::{Config, Limits, MatrixParameters};
use portcullis::decision::Decision;
use portcullis::proto::auth::authorization_client::AuthorizationClient;
use portcullis::proto::auth::check_response::HttpResponse;
use portcullis::proto::auth::{CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse};
use portcullis::request::RequestView;
use portcullis::server::Running;
use portcullis::token::TokenSpec;
use prost_types::value::Kind;
use tonic::transport::Channel;

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "demo-api";
pub const KID: &str = "k1";
pub const HOST: &str = "shop.default.svc.cluster.local";
/// The shared sidecar config template (placeholders `${NAME}`), also read by tests/wire/run.sh.
pub const SIDECAR_YAML: &str = include_str!("../fixtures/sidecar.yaml");
/// The headers portcullis owns with that config, also read by tests/wire/test_wire.py.
const OWNED_HEADERS: &str = include_str!("../fixtures/owned-headers.txt");

/// Owned headers of one kind (`identity` or `strip`) from tests/fixtures/owned-headers.txt.
pub fn owned_headers(kind: &str) -> Vec<&'static str> {
    OWNED_HEADERS
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| *k == kind)
        .map(|(_, name)| name.trim())
        .collect()
}

/// Every identity header the test config makes portcullis set (and strip from clients).
pub fn identity_headers() -> Vec<&'static str> {
    owned_headers("identity")
}

/// The shared config with its placeholders filled in.
pub fn sidecar_yaml(vars: &[(&str, &str)]) -> String {
    let mut yaml = SIDECAR_YAML.to_owned();
    for (name, value) in vars {
        yaml = yaml.replace(&format!("${{{name}}}"), value);
    }
    assert!(!yaml.contains("${"), "a placeholder is left in the sidecar config:\n{yaml}");
    yaml
}

/// Upper bound on any wait in these tests; they never sleep for a fixed time to pass.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn key(name: &str) -> PathBuf {
    repo().join("tests/fixtures/keys").join(name)
}

/// Copies the demo policies into `dst`.
pub fn copy_demo_policies(dst: &Path) {
    std::fs::create_dir_all(dst).expect("create policy dir");
    for e in std::fs::read_dir(repo().join("examples/demo/policies")).expect("read demo policies") {
        let e = e.expect("dir entry");
        std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy policy file");
    }
}

/// A sidecar running in this process, with everything it reads in its own temp dir.
pub struct Sidecar {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub policy_dir: PathBuf,
}

impl Sidecar {
    /// The demo policies, unchanged.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// The demo policies, then `prepare` may change the policy directory before start.
    pub async fn start_with(prepare: impl FnOnce(&Path)) -> Self {
        Self::start_config(prepare, "", |_, _| {}).await
    }

    /// [`Sidecar::start_with`], then `edit` may change the parsed config (given the temp dir,
    /// for any extra files it needs) before start.
    pub async fn start_configured(prepare: impl FnOnce(&Path), edit: impl FnOnce(&Path, &mut Config)) -> Self {
        Self::start_config(prepare, "", edit).await
    }

    /// The demo policies and the shared config with `extra` top-level YAML appended (a section
    /// the shared config does not have, e.g. `limits:`).
    pub async fn start_extra(extra: &str) -> Self {
        Self::start_config(|_| {}, extra, |_, _| {}).await
    }

    async fn start_config(prepare: impl FnOnce(&Path), extra: &str, edit: impl FnOnce(&Path, &mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy_dir = dir.path().join("policies");
        copy_demo_policies(&policy_dir);
        prepare(&policy_dir);
        let jwks = portcullis::token::jwks_for(&key("rsa1.pem"), Algorithm::RS256, KID).expect("jwks");
        let jwks_path = dir.path().join("jwks.json");
        std::fs::write(&jwks_path, serde_json::to_vec(&jwks).expect("jwks json")).expect("write jwks");
        let sock = dir.path().join("authz.sock");
        let yaml = sidecar_yaml(&[
            ("GRPC", "127.0.0.1:0"),
            ("UNIX", &sock.display().to_string()),
            ("ADMIN", "127.0.0.1:0"),
            ("DIAGNOSTICS", "127.0.0.1:0"),
            ("POLICY_DIR", &policy_dir.display().to_string()),
            ("ISSUER", ISSUER),
            ("JWKS_FILE", &jwks_path.display().to_string()),
        ]) + extra;
        let mut cfg = Config::from_yaml(&yaml).expect("test config parses");
        edit(dir.path(), &mut cfg);
        cfg.validate().expect("test config is valid");
        let running = portcullis::server::start(cfg).await.expect("sidecar starts");
        Sidecar { running: Some(running), dir, policy_dir }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("still running")
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.running().grpc_addr.expect("grpc listener"))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().admin_addr.expect("admin listener"))
    }

    pub fn diagnostics_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().diagnostics_addr.expect("diagnostics listener"))
    }

    pub fn unix_path(&self) -> PathBuf {
        self.running().unix_path.clone().expect("unix listener")
    }

    pub async fn tcp(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::new(tcp_channel(&self.grpc_url()).await)
    }

    pub async fn uds(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::new(uds_channel(&self.unix_path()).await)
    }

    /// One check over TCP.
    pub async fn check(&self, req: CheckRequest) -> CheckResponse {
        let mut c = self.tcp().await;
        tokio::time::timeout(WAIT, c.check(req)).await.expect("check answered in time").expect("RPC ok").into_inner()
    }

    /// GET on the admin port: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::Client::new().get(self.admin_url(path)).timeout(WAIT).send().await.expect("admin answers");
        let status = r.status().as_u16();
        (status, r.text().await.expect("admin body"))
    }

    /// GET on the loopback diagnostics port: (status, body).
    pub async fn diagnostics_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::Client::new().get(self.diagnostics_url(path)).timeout(WAIT).send().await.expect("answers");
        let status = r.status().as_u16();
        (status, r.text().await.expect("diagnostics body"))
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            tokio::time::timeout(WAIT, r.shutdown()).await.expect("shutdown in time").expect("clean shutdown");
        }
    }
}

pub async fn tcp_channel(url: &str) -> Channel {
    tonic::transport::Endpoint::try_from(url.to_owned())
        .expect("endpoint")
        .connect_timeout(WAIT)
        .connect()
        .await
        .expect("connect over TCP")
}

pub async fn uds_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    tonic::transport::Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .expect("connect over the Unix socket")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// A token builder over the test issuer and key.
pub struct Tok {
    spec: TokenSpec,
    key: PathBuf,
}

pub fn token(sub: &str) -> Tok {
    Tok {
        spec: TokenSpec {
            issuer: ISSUER.into(),
            subject: sub.into(),
            audience: Some(AUDIENCE.into()),
            groups: Vec::new(),
            ttl: Duration::from_secs(600),
            kid: Some(KID.into()),
            extra: BTreeMap::new(),
        },
        key: key("rsa1.pem"),
    }
}

impl Tok {
    pub fn groups(mut self, g: &[&str]) -> Self {
        self.spec.groups = g.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn claim(mut self, k: &str, v: impl Into<serde_json::Value>) -> Self {
        self.spec.extra.insert(k.into(), v.into());
        self
    }
    /// Expired well past the leeway.
    pub fn expired(self) -> Self {
        let t = now();
        self.claim("exp", t - 600).claim("iat", t - 1200).claim("nbf", t - 1200)
    }
    pub fn signed_with(mut self, key_name: &str) -> Self {
        self.key = key(key_name);
        self
    }
    pub fn mint(self) -> String {
        portcullis::token::mint(&self.key, Algorithm::RS256, &self.spec).expect("mint")
    }
}

/// An unsigned (`alg: none`) token with otherwise valid claims.
pub fn alg_none_token(sub: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": KID});
    let t = now();
    let claims = serde_json::json!({"iss": ISSUER, "sub": sub, "aud": AUDIENCE, "iat": t, "exp": t + 600});
    format!("{}.{}.", b64.encode(header.to_string()), b64.encode(claims.to_string()))
}

/// An Istio-shaped request: the one builder (`portcullis::client`), with this suite's defaults.
pub type Req = CheckRequestBuilder;

/// A request to [`HOST`] from 10.1.2.3 to the `shop` workload, pseudo-headers in the merged map.
pub fn req(method: &str, path: &str) -> Req {
    CheckRequestBuilder::new(method, path)
        .host(HOST)
        .pseudo_headers()
        .source_ip("10.1.2.3")
        .destination("spiffe://cluster.local/ns/default/sa/shop")
}

// ---- reading the answer ---------------------------------------------------------------------

pub fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().expect("status is always set").code
}

pub fn is_allowed(r: &CheckResponse) -> bool {
    code(r) == 0 && matches!(r.http_response, Some(HttpResponse::OkResponse(_)))
}

/// The HTTP status Envoy would send: 200 for allow.
pub fn http_status(r: &CheckResponse) -> i32 {
    match &r.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map(|s| s.code).unwrap_or(403),
        _ => panic!("no http_response in {r:?}"),
    }
}

pub fn ok(r: &CheckResponse) -> &OkHttpResponse {
    match &r.http_response {
        Some(HttpResponse::OkResponse(o)) => o,
        other => panic!("expected ok_response, got {other:?}"),
    }
}

pub fn denied(r: &CheckResponse) -> &DeniedHttpResponse {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d,
        other => panic!("expected denied_response, got {other:?}"),
    }
}

/// A string field of the dynamic metadata.
pub fn meta(r: &CheckResponse, k: &str) -> String {
    match r.dynamic_metadata.as_ref().and_then(|m| m.fields.get(k)).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("metadata `{k}` is not a string: {other:?}"),
    }
}

/// The determining policy ids in the dynamic metadata.
pub fn policy_ids(r: &CheckResponse) -> Vec<String> {
    match r.dynamic_metadata.as_ref().and_then(|m| m.fields.get("policy_ids")).and_then(|v| v.kind.as_ref()) {
        Some(Kind::ListValue(l)) => l
            .values
            .iter()
            .map(|v| match &v.kind {
                Some(Kind::StringValue(s)) => s.clone(),
                other => panic!("policy id is not a string: {other:?}"),
            })
            .collect(),
        other => panic!("policy_ids is not a list: {other:?}"),
    }
}

/// Upstream headers set on allow, as name → value (asserting every one overwrites).
pub fn upstream_headers(r: &CheckResponse) -> BTreeMap<String, String> {
    use portcullis::proto::core::header_value_option::HeaderAppendAction;
    let mut out = BTreeMap::new();
    for h in &ok(r).headers {
        assert_eq!(h.append, Some(false), "identity header must set append=false: {h:?}");
        assert_eq!(
            h.append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            "identity header must overwrite: {h:?}"
        );
        let hv = h.header.as_ref().expect("header set");
        assert!(out.insert(hv.key.clone(), hv.value.clone()).is_none(), "header {} set twice", hv.key);
    }
    out
}

/// A header of the denied response.
pub fn denied_header(r: &CheckResponse, name: &str) -> Option<String> {
    denied(r).headers.iter().filter_map(|h| h.header.as_ref()).find(|h| h.key == name).map(|h| h.value.clone())
}

/// What a poll may return: `true`, or `Some(value)`, once the awaited state holds.
pub trait Ready {
    type Out;
    fn ready(self) -> Option<Self::Out>;
}

impl Ready for bool {
    type Out = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Out = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// The one poller: calls `f` every 20 ms until it is ready, or panics after `limit`.
pub async fn eventually<R: Ready>(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> R) -> R::Out {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await.ready() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Decides one wire request offline as the server does: normalize (default limits), then check.
pub async fn decide(checker: &Checker, req: &CheckRequest) -> Decision {
    decide_with(checker, req, &Limits::default(), MatrixParameters::Refuse).await
}

/// [`decide`] under a config's request limits and matrix-parameter mode.
pub async fn decide_with(checker: &Checker, req: &CheckRequest, limits: &Limits, matrix: MatrixParameters) -> Decision {
    let req_in = portcullis::proto::check_in(req);
    match RequestView::from_check_with(&req_in, limits, matrix) {
        Ok(view) => checker.check(&view).await,
        Err(e) => portcullis::check::invalid_request(&e),
    }
}
