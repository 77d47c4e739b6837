//! The decision log of the real binary: `portcullis serve` runs as a child process with JSON logs,
//! is called over its Unix socket, and its stderr is read as an operator's log collector would.
//! Lines are written by a background thread (src/telemetry.rs): they must still arrive while the
//! server runs, be flushed on shutdown, and never contain a token.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use portcullis::proto::auth::authorization_client::AuthorizationClient;

struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<serde_json::Value>,
}

impl Server {
    /// Log lines (as JSON) until `pred` holds for one of them, or panics after the wait.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no log line {what} within {WAIT:?}; saw {:#?}", self.seen);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path) -> Server {
    let policies = dir.join("policies");
    copy_demo_policies(&policies);
    let jwks = portcullis::token::jwks_for(&key("rsa1.pem"), Algorithm::RS256, KID).expect("jwks");
    std::fs::write(dir.join("jwks.json"), serde_json::to_vec(&jwks).expect("json")).expect("write jwks");
    let config = format!(
        r#"
listen:
  grpc: "127.0.0.1:0"
  unix: "{sock}"
  admin: "127.0.0.1:0"
  diagnostics: "127.0.0.1:0"
  drain_timeout: 2s
log:
  format: json
  level: info
policy:
  dir: "{policies}"
authn:
  issuers:
    - issuer: {ISSUER}
      jwks_file: "{jwks}"
      audiences: [{AUDIENCE}]
      algorithms: [RS256]
"#,
        sock = dir.join("authz.sock").display(),
        policies = policies.display(),
        jwks = dir.join("jwks.json").display(),
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
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Server { child, lines, seen: Vec::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_lines_arrive_while_serving_are_flushed_at_exit_and_never_hold_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path());
    server.wait_for("saying the Unix socket listens", |v| {
        v["message"].as_str().is_some_and(|m| m.contains("listening on Unix socket"))
    });
    let mut client = AuthorizationClient::new(uds_channel(&dir.path().join("authz.sock")).await);

    let good = token("alice").mint();
    let forged = token("alice").signed_with("rsa2.pem").mint();
    let allowed = client.check(req("GET", "/api/orders").bearer(&good).id("rid-good").build()).await.expect("rpc");
    assert!(is_allowed(allowed.get_ref()), "{allowed:?}");
    let denied = client.check(req("GET", "/api/orders").bearer(&forged).id("rid-forged").build()).await.expect("rpc");
    assert!(!is_allowed(denied.get_ref()), "{denied:?}");

    // Both decisions are logged while the server keeps running (nothing waits for shutdown).
    let is_decision = |rid: &'static str| {
        move |v: &serde_json::Value| v["target"] == "portcullis::decision" && v["request_id"] == rid
    };
    let allow = server.wait_for("for rid-good", is_decision("rid-good"));
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["principal"], r#"User::"alice""#);
    let deny = server.wait_for("for rid-forged", is_decision("rid-forged"));
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["status"], 401);

    // SIGTERM: the server drains and says so; the line is written out before the process ends.
    let pid = server.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    server.wait_for("saying the server stopped", |v| v["message"] == "stopped");
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(st)) = server.child.try_wait() {
                return (st, server);
            }
            assert!(Instant::now() < deadline, "portcullis did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("join");
    let (status, mut server) = exited;
    assert!(status.success(), "exit status {status}");
    // Drain whatever else was written, then look for any trace of either token.
    while let Ok(line) = server.lines.recv_timeout(Duration::from_millis(200)) {
        server.seen.push(serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line)));
    }
    let all = serde_json::to_string(&server.seen).expect("json");
    for t in [&good, &forged] {
        let signature = t.rsplit('.').next().expect("signature");
        assert!(!all.contains(signature), "a token signature was logged");
    }
}
