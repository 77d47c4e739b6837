//! A real HTTP identity provider on 127.0.0.1 for the JWT tests: OIDC discovery plus a JWKS
//! whose keys, failure mode and latency can be switched while it runs, and which counts fetches.
//! Also the token-crafting helpers (any header, any claims, signed with the fixture keys).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use portcullis::authn::Authenticator;
use portcullis::client::CheckRequestBuilder;
use portcullis::config::Config;
use portcullis::proto::auth::CheckRequest;
use portcullis::request::RequestView;

/// How the provider answers JWKS requests.
#[derive(Debug, Clone)]
pub enum Mode {
    /// The current key set.
    Normal,
    /// HTTP 500.
    Fail500,
    /// 200 with a body that is not a JWKS.
    Garbage,
    /// Sleeps this long before answering normally.
    Slow(Duration),
    /// A syntactically valid JWKS of about this many bytes, with Content-Length.
    Oversized(usize),
    /// The same, streamed in chunks without Content-Length.
    OversizedChunked(usize),
    /// Accepts the request and never answers.
    Hang,
}

struct IdpState {
    issuer: String,
    keys: Mutex<Vec<Value>>,
    mode: Mutex<Mode>,
    cache_control: Mutex<Option<String>>,
    delay: Mutex<Duration>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    /// Where `/redirect` sends its caller (any URL, any origin).
    redirect_to: Mutex<Option<String>>,
    /// A `jwks_uri` the discovery document names instead of this provider's own.
    discovered_jwks_uri: Mutex<Option<String>>,
}

/// A running provider; stops when dropped.
pub struct Idp {
    pub issuer: String,
    pub addr: SocketAddr,
    state: Arc<IdpState>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    /// Starts on an ephemeral 127.0.0.1 port serving `keys` (JWK JSON objects).
    pub async fn start(keys: Vec<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind idp");
        let addr = listener.local_addr().expect("idp addr");
        let issuer = format!("http://{addr}");
        let state = Arc::new(IdpState {
            issuer: issuer.clone(),
            keys: Mutex::new(keys),
            mode: Mutex::new(Mode::Normal),
            cache_control: Mutex::new(None),
            delay: Mutex::new(Duration::ZERO),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            redirect_to: Mutex::new(None),
            discovered_jwks_uri: Mutex::new(None),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/redirect", get(redirect))
            .route("/hops/{n}", get(hops))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { issuer, addr, state, task }
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// `Cache-Control` sent with the JWKS; `None` sends none.
    pub fn set_cache_control(&self, v: Option<&str>) {
        *self.state.cache_control.lock().unwrap() = v.map(str::to_owned);
    }

    /// Extra latency on every normal JWKS answer (to make concurrent callers pile up).
    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    /// Makes `/redirect` answer 302 to `url`.
    pub fn set_redirect(&self, url: &str) {
        *self.state.redirect_to.lock().unwrap() = Some(url.to_owned());
    }

    /// Makes the discovery document name `uri` as its `jwks_uri`.
    pub fn set_discovered_jwks_uri(&self, uri: &str) {
        *self.state.discovered_jwks_uri.lock().unwrap() = Some(uri.to_owned());
    }

    /// A URL on this provider that redirects (same origin, relative `Location`) `n` times
    /// before the JWKS answers.
    pub fn jwks_after_hops(&self, n: usize) -> String {
        format!("{}/hops/{n}", self.issuer)
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn discovery(State(s): State<Arc<IdpState>>) -> Response {
    s.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    let jwks_uri = s.discovered_jwks_uri.lock().unwrap().clone().unwrap_or_else(|| format!("{}/jwks", s.issuer));
    axum::Json(json!({
        "issuer": s.issuer,
        "jwks_uri": jwks_uri,
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<IdpState>>) -> Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let mode = s.mode.lock().unwrap().clone();
    let delay = *s.delay.lock().unwrap();
    match mode {
        Mode::Fail500 => return (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response(),
        Mode::Garbage => return (StatusCode::OK, "<html><body>login</body></html>").into_response(),
        Mode::Oversized(n) => return axum::Json(padded_jwks(&s, n)).into_response(),
        Mode::OversizedChunked(n) => {
            let body = serde_json::to_vec(&padded_jwks(&s, n)).unwrap();
            let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
                body.chunks(4096).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
            let stream = futures::stream::iter(chunks);
            return Response::new(axum::body::Body::from_stream(stream));
        }
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Normal => {}
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let keys = s.keys.lock().unwrap().clone();
    let mut headers = HeaderMap::new();
    if let Some(cc) = s.cache_control.lock().unwrap().clone() {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_str(&cc).unwrap());
    }
    (headers, axum::Json(json!({ "keys": keys }))).into_response()
}

async fn redirect(State(s): State<Arc<IdpState>>) -> Response {
    let to = s.redirect_to.lock().unwrap().clone().unwrap_or_else(|| "/jwks".into());
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

async fn hops(State(s): State<Arc<IdpState>>, axum::extract::Path(n): axum::extract::Path<usize>) -> Response {
    match n {
        0 => jwks(State(s)).await,
        n => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, format!("/hops/{}", n - 1))]).into_response(),
    }
}

/// The real keys plus enough padding to reach `n` bytes: only the size is wrong with it.
fn padded_jwks(s: &IdpState, n: usize) -> Value {
    let keys = s.keys.lock().unwrap().clone();
    json!({ "keys": keys, "padding": "x".repeat(n) })
}

// ---------------------------------------------------------------------------------------------
// Keys and tokens

pub fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys").join(name)
}

/// A fixture private key with its public JWK.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub file: PathBuf,
    /// Public JWK (with `kid`, `alg`, `use: sig`).
    pub jwk: Value,
}

impl TestKey {
    /// `name` is a file under tests/fixtures/keys.
    pub fn load(name: &str, alg: Algorithm, kid: &str) -> Self {
        let file = key_path(name);
        let set = portcullis::token::jwks_for(&file, alg, kid).expect("jwks_for");
        let jwk = serde_json::to_value(&set.keys[0]).expect("jwk json");
        Self { kid: kid.to_owned(), alg, file, jwk }
    }

    pub fn rsa1() -> Self {
        Self::load("rsa1.pem", Algorithm::RS256, "rsa1")
    }
    pub fn rsa2() -> Self {
        Self::load("rsa2.pem", Algorithm::RS256, "rsa2")
    }
    pub fn ec256() -> Self {
        Self::load("ec256.pem", Algorithm::ES256, "ec1")
    }
    pub fn ed25519() -> Self {
        Self::load("ed25519.pem", Algorithm::EdDSA, "ed1")
    }

    fn encoding_key(&self) -> EncodingKey {
        let pem = std::fs::read(&self.file).expect("read key");
        match self.alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).expect("ec key"),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).expect("ed key"),
            _ => EncodingKey::from_rsa_pem(&pem).expect("rsa key"),
        }
    }

    /// The usual header: `alg`, `kid`, `typ`.
    pub fn header(&self) -> Value {
        json!({ "alg": alg_name(self.alg), "kid": self.kid, "typ": "JWT" })
    }

    /// A correctly signed token with the usual header.
    pub fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }

    /// Signs exactly this header and these claims with this key under the header's algorithm
    /// (or this key's algorithm when the header names one we cannot sign with).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let alg = header.get("alg").and_then(Value::as_str).and_then(parse_alg).unwrap_or(self.alg);
        sign_raw(header, claims, &self.encoding_key(), alg)
    }
}

pub fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        _ => panic!("no name for {a:?}"),
    }
}

fn parse_alg(s: &str) -> Option<Algorithm> {
    portcullis::config::JwtAlgorithm::from_name(s).map(portcullis::authn::jwt::algorithm)
}

/// `b64(header).b64(claims).sig` with the signature made by `key` under `alg`.
pub fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("sign");
    format!("{input}.{sig}")
}

pub fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims valid for five minutes.
pub fn claims(iss: &str, aud: &str, sub: &str) -> Value {
    let n = now();
    json!({ "iss": iss, "aud": aud, "sub": sub, "iat": n, "nbf": n, "exp": n + 300 })
}

// ---------------------------------------------------------------------------------------------
// Requests and config

/// A check request whose headers go into the raw `header_map`, so duplicates survive.
pub fn check_request(headers: &[(&str, &str)]) -> CheckRequest {
    let mut b = CheckRequestBuilder::new("GET", "/api/things").host("api.example.com").id("req-1").scheme("https");
    for (k, v) in headers {
        b = b.header(k, v);
    }
    b.build_header_map(false)
}

pub fn bearer(token: &str) -> CheckRequest {
    check_request(&[("authorization", &format!("Bearer {token}"))])
}

/// Config from YAML for the `authn:` section; a throwaway policy dir is named but not read.
pub fn config(authn_yaml: &str) -> Config {
    let text = format!("policy: {{dir: /nonexistent}}\nauthn:\n{authn_yaml}");
    let cfg = Config::from_yaml(&text).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
    cfg.validate().expect("valid config");
    cfg
}

/// JWKS settings with tiny durations, so tests of lifetimes run in seconds.
pub const FAST_JWKS: &str = "  jwks:
    min_ttl: 1s
    default_ttl: 1s
    max_ttl: 1s
    max_stale: 2s
    unknown_kid_refresh_interval: 200ms
    fetch_timeout: 1s
    max_response_bytes: 65536
";

/// Authenticates one wire request.
pub async fn authn(
    a: &Authenticator,
    req: &CheckRequest,
) -> Result<portcullis::authn::Identities, portcullis::authn::AuthnError> {
    let cfg_limits = portcullis::config::Limits::default();
    let req_in = portcullis::proto::check_in(req);
    let view = RequestView::from_check(&req_in, &cfg_limits).expect("request normalizes");
    a.authenticate(&view).await
}
