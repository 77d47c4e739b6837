//! Shutdown loses nothing. The real binary gets SIGTERM: readiness and gRPC health go NOT_SERVING
//! at once, yet checks sent during `listen.drain_delay` (on new and existing connections, over TCP
//! and the Unix socket) are answered; then it exits 0. In process: a check that is in flight
//! (waiting for a key set) when the listeners close still completes with its decision.
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::*;
use jsonwebtoken::Algorithm;
use portcullis::config::Config;
use portcullis::proto::auth::authorization_client::AuthorizationClient;
use portcullis::token::TokenSpec;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Long enough for the loop below to send many rounds of checks on a loaded machine.
const DRAIN_DELAY: &str = "3s";

struct Binary {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Binary {
    /// The first JSON log line whose message is `message`.
    fn wait_for(&self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) if v["message"] == message => return v,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no log line {message:?} within {WAIT:?}");
    }

    fn addr(&self, message: &str) -> SocketAddr {
        let v = self.wait_for(message);
        v["addr"].as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no addr in {v}"))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_binary(dir: &std::path::Path) -> Binary {
    let policies = dir.join("policies");
    copy_demo_policies(&policies);
    let config = format!(
        r#"
listen:
  grpc: "127.0.0.1:0"
  unix: "{sock}"
  admin: "127.0.0.1:0"
  diagnostics: null
  drain_delay: {DRAIN_DELAY}
  drain_timeout: 5s
log:
  format: json
  level: info
policy:
  dir: "{policies}"
"#,
        sock = dir.join("authz.sock").display(),
        policies = policies.display(),
    );
    std::fs::write(dir.join("config.yaml"), config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(dir.join("config.yaml"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let v = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    Binary { child, lines }
}

async fn readyz(admin: SocketAddr) -> Option<u16> {
    let r = reqwest::Client::new().get(format!("http://{admin}/readyz")).timeout(WAIT).send().await.ok()?;
    Some(r.status().as_u16())
}

/// Connects without retrying: `None` once the listener is closed.
async fn connect(url: &str) -> Option<Channel> {
    Endpoint::try_from(url.to_owned()).expect("url").connect_timeout(WAIT).connect().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_answering_through_the_drain_delay_while_not_serving_then_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bin = spawn_binary(dir.path());
    let grpc = format!("http://{}", bin.addr("ext_authz gRPC listening on TCP"));
    let admin = bin.addr("admin HTTP listening");
    eventually(WAIT, "ready", async || readyz(admin).await == Some(200)).await;
    let public = req("GET", "/public/a");
    // A connection opened before the signal, as Envoy's would be.
    let mut existing = AuthorizationClient::new(tcp_channel(&grpc).await);
    assert!(is_allowed(existing.check(public.build()).await.expect("rpc").get_ref()));
    let mut health_existing = HealthClient::new(tcp_channel(&grpc).await);

    let pid = bin.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    // Readiness goes false at once (the admin port keeps answering so kubelet can see it).
    eventually(WAIT, "/readyz to say 503", async || readyz(admin).await == Some(503)).await;

    // Until the listeners close: every round opens new connections (TCP and Unix) and asks
    // for health and a decision; whatever is answered is NOT_SERVING and the right decision.
    let sock = dir.path().join("authz.sock");
    let mut rounds = 0;
    let deadline = Instant::now() + WAIT * 2;
    loop {
        assert!(Instant::now() < deadline, "the listeners never closed");
        let Some(ch) = connect(&grpc).await else { break };
        let Ok(h) = HealthClient::new(ch.clone()).check(HealthCheckRequest { service: String::new() }).await else {
            break;
        };
        assert_eq!(h.get_ref().status, ServingStatus::NotServing as i32, "health while draining");
        let Ok(fresh) = AuthorizationClient::new(ch).check(public.build()).await else { break };
        assert!(is_allowed(fresh.get_ref()), "{fresh:?}");
        let Ok(denied) = AuthorizationClient::new(ch_unix(&sock).await).check(req("GET", "/api/orders").build()).await
        else {
            break;
        };
        assert!(!is_allowed(denied.get_ref()), "anonymous on /api is still denied: {denied:?}");
        let Ok(old) = existing.check(public.build()).await else { break };
        assert!(is_allowed(old.get_ref()), "{old:?}");
        if let Ok(h) = health_existing.check(HealthCheckRequest { service: String::new() }).await {
            assert_eq!(h.get_ref().status, ServingStatus::NotServing as i32, "health on an old connection");
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Without the delay the listeners close with readiness and not one round is answered.
    assert!(rounds >= 3, "only {rounds} rounds answered during the drain delay");

    bin.wait_for("stopped");
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(st)) = bin.child.try_wait() {
                return st;
            }
            assert!(Instant::now() < deadline, "portcullis did not exit after the drain");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("join");
    assert!(exited.success(), "exit status {exited}");
}

/// A Unix-socket channel, or a never-connecting one once the socket is gone (the RPC then fails).
async fn ch_unix(path: &std::path::Path) -> Channel {
    let path = path.to_owned();
    Endpoint::try_from("http://localhost").expect("endpoint").connect_with_connector_lazy(tower::service_fn(
        move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
        },
    ))
}

/// A JWKS endpoint that answers only while its gate is open, and counts requests.
struct GatedJwks {
    url: String,
    fetches: Arc<AtomicUsize>,
    open: tokio::sync::watch::Sender<bool>,
    keys: Arc<std::sync::Mutex<String>>,
}

async fn gated_jwks(keys: serde_json::Value) -> GatedJwks {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (open, gate) = tokio::sync::watch::channel(true);
    let keys = Arc::new(std::sync::Mutex::new(keys.to_string()));
    let (f, body) = (fetches.clone(), keys.clone());
    let app = Router::new().route(
        "/jwks",
        get(move || {
            let (f, mut gate, body) = (f.clone(), gate.clone(), body.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                let _ = gate.wait_for(|o| *o).await;
                let body = body.lock().expect("keys").clone();
                ([("content-type", "application/json")], body)
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    GatedJwks { url, fetches, open, keys }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_flight_when_the_listeners_close_completes_with_its_decision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    copy_demo_policies(&policies);
    // The provider serves k1, then rotates in k2: the sidecar fetches again when a token needs it.
    let k1_only =
        serde_json::to_value(portcullis::token::jwks_for(&key("rsa1.pem"), Algorithm::RS256, KID).expect("jwks"))
            .expect("json");
    let k2 = serde_json::to_value(portcullis::token::jwks_for(&key("rsa2.pem"), Algorithm::RS256, "k2").expect("jwks"))
        .expect("json");
    let mut keys = k1_only.clone();
    keys["keys"].as_array_mut().expect("keys").extend(k2["keys"].as_array().expect("keys").iter().cloned());
    let idp = gated_jwks(k1_only).await;
    let yaml = format!(
        r#"
listen: {{grpc: "127.0.0.1:0", admin: null, diagnostics: null, drain_delay: 0s, drain_timeout: 10s}}
policy: {{dir: "{policies}"}}
authn:
  jwks: {{unknown_kid_refresh_interval: 0s, fetch_timeout: 10s}}
  issuers:
    - issuer: {ISSUER}
      jwks_uri: "{jwks}"
      allow_insecure_http: true
      audiences: [{AUDIENCE}]
      algorithms: [RS256]
"#,
        policies = policies.display(),
        jwks = idp.url,
    );
    let cfg = Config::from_yaml(&yaml).expect("parses");
    cfg.validate().expect("valid");
    let running = portcullis::server::start(cfg).await.expect("starts");
    let grpc = format!("http://{}", running.grpc_addr.expect("tcp"));
    let mut client = AuthorizationClient::new(tcp_channel(&grpc).await);
    // Keys warmed up and policies live: a k1 token is allowed.
    let k1 = token("alice").mint();
    eventually(WAIT, "an allow with the warmed-up key", async || {
        client.check(req("GET", "/api/orders").bearer(&k1).build()).await.is_ok_and(|r| is_allowed(r.get_ref()))
    })
    .await;

    // A k2 token makes the sidecar fetch the key set, which the provider now holds back.
    *idp.keys.lock().expect("keys") = keys.to_string();
    idp.open.send_replace(false);
    let before = idp.fetches.load(Ordering::SeqCst);
    let spec = TokenSpec {
        issuer: ISSUER.into(),
        subject: "alice".into(),
        audience: Some(AUDIENCE.into()),
        groups: Vec::new(),
        ttl: Duration::from_secs(600),
        kid: Some("k2".into()),
        extra: Default::default(),
    };
    let k2_token = portcullis::token::mint(&key("rsa2.pem"), Algorithm::RS256, &spec).expect("mint");
    let in_flight = {
        let mut c = client.clone();
        let r = req("GET", "/api/orders").bearer(&k2_token).id("in-flight").build();
        tokio::spawn(async move { c.check(r).await })
    };
    eventually(WAIT, "the check to be waiting on the key set", async || idp.fetches.load(Ordering::SeqCst) > before)
        .await;

    // Shut down while it waits; the listener closes (new connections are refused) ...
    let stopping = tokio::spawn(running.shutdown());
    eventually(WAIT, "the listener to close", async || connect(&grpc).await.is_none()).await;
    assert!(!in_flight.is_finished(), "the check was answered before the key set arrived");
    // ... and once the key set arrives, the check that was in flight gets its real decision.
    idp.open.send_replace(true);
    let answered = tokio::time::timeout(WAIT, in_flight).await.expect("answered").expect("join").expect("RPC ok");
    assert!(is_allowed(answered.get_ref()), "{answered:?}");
    tokio::time::timeout(WAIT, stopping).await.expect("shutdown in time").expect("join").expect("clean shutdown");
}
