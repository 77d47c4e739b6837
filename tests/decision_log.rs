//! The decision log of the real binary: `portcullis serve` runs as a child process with JSON logs,
//! is called over its Unix socket, and its stderr is read as an operator's log collector would.
//! Lines are written by a background thread (src/telemetry.rs): they must still arrive while the
//! server runs, be flushed on shutdown, and never contain a token. Every outcome's line carries
//! the audit fields docs/observability.md documents, and no credential of any kind.
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

/// The API key the config knows (client `batch`): sha256("demo-batch-key").
const API_KEY: &str = "demo-batch-key";
const COOKIE: &str = "session=c00k1e-s3cret-value";
const PEER: &str = "spiffe://cluster.local/ns/frontend/sa/web";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The server on the demo policies with `log` settings `log_extra` and top-level `extra` YAML.
fn start(dir: &std::path::Path) -> Server {
    start_with(dir, "", "")
}

fn start_with(dir: &std::path::Path, log_extra: &str, extra: &str) -> Server {
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
{log_extra}
policy:
  dir: "{policies}"
authn:
  issuers:
    - issuer: {ISSUER}
      jwks_file: "{jwks}"
      audiences: [{AUDIENCE}]
      algorithms: [RS256]
  peer:
    trust_domains: [cluster.local]
  api_keys:
    header: x-api-key
    keys:
      - client: batch
        sha256: "74045098110de75482c9e34a190dab5a1dd308be1ed6e16fee2dc05e01152d74"
{extra}
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

/// Every credential the audit tests send: none may appear in any log line.
fn assert_no_secret(lines: &[serde_json::Value], secrets: &[&str]) {
    let all = serde_json::to_string(lines).expect("json");
    for s in secrets {
        assert!(!all.contains(s), "a credential was logged: {s}");
    }
}

/// The fields every decision line has, whatever the outcome.
fn assert_always(v: &serde_json::Value, rid: &str, status: u64, reason: &str) {
    assert_eq!(v["request_id"], rid, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert_eq!(v["decision"], if status == 200 { "allow" } else { "deny" }, "{v}");
    for f in ["principal", "action", "resource", "authn", "policies"] {
        assert!(v[f].is_string(), "{f} missing: {v}");
    }
    assert!(v["latency_us"].is_u64(), "{v}");
    assert_eq!(v["source_ip"], "10.1.2.3", "{v}");
}

fn absent(v: &serde_json::Value, fields: &[&str]) {
    for f in fields {
        assert!(v.get(*f).is_none(), "{f} should be absent: {v}");
    }
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_logs_who_what_why_and_never_a_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start_with(dir.path(), "", "rate_limit: {requests_per_second: 1, burst: 1}");
    server.wait_for("saying the Unix socket listens", |v| {
        v["message"].as_str().is_some_and(|m| m.contains("listening on Unix socket"))
    });
    let mut client = AuthorizationClient::new(uds_channel(&dir.path().join("authz.sock")).await);
    let good = token("alice").mint();
    let bob = token("bob").mint();
    let carol = token("carol").mint();
    let forged = token("mallory").signed_with("rsa2.pem").mint();
    let bad_key = "not-a-known-k3y";
    let base = |m: &str, p: &str, rid: &str| req(m, p).id(rid).header("cookie", COOKIE);
    let mut send = async |r: Req, want: i32| {
        let resp = client.check(r.build()).await.expect("rpc").into_inner();
        let got = if is_allowed(&resp) { 200 } else { http_status(&resp) };
        assert_eq!(got, want, "{resp:?}");
    };
    send(base("GET", "/api/orders", "rid-allow").bearer(&good).peer(PEER).header("traceparent", TRACEPARENT), 200)
        .await;
    send(base("POST", "/api/jobs", "rid-key").header("x-api-key", API_KEY), 200).await;
    // Not normalizable (a fragment in the path), with every credential kind on it: a 400.
    let b3 = format!("{TRACE_ID}-00f067aa0ba902b7-1");
    let r400 = base("GET", "/api/orders#frag", "rid-400").bearer(&good).header("x-api-key", API_KEY).peer(PEER);
    send(r400.header("b3", &b3), 400).await;
    let forged_req = base("GET", "/api/orders", "rid-forged").bearer(&forged);
    send(forged_req.header("x-b3-traceid", TRACE_ID).header("x-b3-spanid", "00f067aa0ba902b7"), 401).await;
    send(base("GET", "/api/orders", "rid-badkey").header("x-api-key", bad_key), 401).await;
    send(base("GET", "/admin/panel", "rid-403").bearer(&bob), 403).await;
    // The rate limit allows one check a second per caller: carol is turned away within a few.
    let mut limited = None;
    for i in 0..20 {
        let rid = format!("rid-carol-{i}");
        let resp = client.check(base("GET", "/api/orders", &rid).bearer(&carol).build()).await.expect("rpc");
        if http_status(resp.get_ref()) == 429 {
            limited = Some(rid);
            break;
        }
    }
    let limited = limited.expect("carol was never rate limited");

    let line = |server: &mut Server, rid: String| {
        server.wait_for(&format!("for {rid}"), move |v| v["target"] == "portcullis::decision" && v["request_id"] == rid)
    };
    let allow = line(&mut server, "rid-allow".into());
    assert_always(&allow, "rid-allow", 200, "allowed");
    assert_eq!(allow["trace_id"], TRACE_ID);
    assert_eq!(allow["peer"], PEER);
    assert_eq!(allow["issuer"], ISSUER);
    assert_eq!(allow["subject"], "alice");
    assert_eq!(allow["principal"], r#"User::"alice""#);
    assert_eq!(allow["authn"], "jwt,mtls");
    // alice's first check: her token was looked up in the verified-token cache and missed.
    assert_eq!(allow["token_cache"], "miss");
    assert_eq!((allow["method"].as_str(), allow["host"].as_str()), (Some("GET"), Some(HOST)));
    assert_eq!(allow["path"], "/api/orders");
    assert!(allow["action"].as_str().is_some_and(|a| a.contains("GET")), "{allow}");
    assert!(allow["resource"].as_str().is_some_and(|r| !r.is_empty()), "{allow}");
    assert!(allow["policies"].as_str().is_some_and(|p| p.contains("users-read-api")), "{allow}");
    let version = allow["policy_version"].as_str().expect("policy_version").to_owned();
    assert!(!version.is_empty());
    absent(&allow, &["api_client"]);

    let key = line(&mut server, "rid-key".into());
    assert_always(&key, "rid-key", 200, "allowed");
    assert_eq!((key["api_client"].as_str(), key["authn"].as_str()), (Some("batch"), Some("api_key")));
    assert_eq!(key["principal"], r#"ApiClient::"batch""#);
    absent(&key, &["issuer", "subject", "trace_id", "peer", "token_cache"]);

    // A 400: only the transport facts; nothing parsed from the request, no identity.
    let bad = line(&mut server, "rid-400".into());
    assert_always(&bad, "rid-400", 400, "path_fragment");
    assert_eq!((bad["trace_id"].as_str(), bad["peer"].as_str()), (Some(TRACE_ID), Some(PEER)));
    assert_eq!((bad["principal"].as_str(), bad["authn"].as_str()), (Some(""), Some("")));
    assert_eq!(bad["policy_version"], version.as_str());
    absent(&bad, &["method", "host", "path", "issuer", "subject", "api_client", "token_cache"]);

    // A refused token: the request's facts, but its claimed issuer and subject are not logged.
    let forged_line = line(&mut server, "rid-forged".into());
    assert_always(&forged_line, "rid-forged", 401, "bad_signature");
    assert_eq!(forged_line["trace_id"], TRACE_ID);
    assert_eq!((forged_line["method"].as_str(), forged_line["path"].as_str()), (Some("GET"), Some("/api/orders")));
    assert_eq!(forged_line["authn"], "");
    assert_eq!(forged_line["token_cache"], "miss");
    absent(&forged_line, &["issuer", "subject", "api_client", "peer"]);
    let badkey = line(&mut server, "rid-badkey".into());
    assert_always(&badkey, "rid-badkey", 401, "invalid_api_key");
    absent(&badkey, &["api_client", "subject", "trace_id"]);

    let forbidden = line(&mut server, "rid-403".into());
    assert_always(&forbidden, "rid-403", 403, "forbidden_by_policy");
    assert_eq!((forbidden["subject"].as_str(), forbidden["authn"].as_str()), (Some("bob"), Some("jwt")));
    assert!(forbidden["policies"].as_str().is_some_and(|p| p.contains("admin-area-admins-only")), "{forbidden}");
    assert_eq!(forbidden["path"], "/admin/panel");

    let throttled = line(&mut server, limited.clone());
    assert_always(&throttled, &limited, 429, "rate_limited");
    assert_eq!((throttled["subject"].as_str(), throttled["issuer"].as_str()), (Some("carol"), Some(ISSUER)));
    assert_eq!(throttled["policy_version"], version.as_str());
    // carol's token was verified on her first check: every later one is a cache hit.
    assert_eq!(throttled["token_cache"], "hit");

    let good_sig = good.rsplit('.').next().expect("signature");
    let forged_sig = forged.rsplit('.').next().expect("signature");
    assert_no_secret(
        &server.seen,
        &[&good, &forged, &bob, &carol, good_sig, forged_sig, API_KEY, bad_key, "c00k1e-s3cret-value"],
    );
}

/// A check shed over `limits.max_in_flight`, and a check with no policy set loaded: both 503s
/// carry the audit fields; with `log.subject: hash` the subject is only ever a digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_and_no_policy_503s_are_audited_and_subjects_can_be_hashed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A policy set that does not parse: no snapshot, every check that is decided is a 503.
    std::fs::create_dir_all(dir.path().join("policies")).expect("mkdir");
    std::fs::write(dir.path().join("policies/zz-broken.cedar"), "permit (principal, action").expect("write");
    let mut server = start_with(dir.path(), "  subject: hash", "limits: {max_in_flight: 1}");
    server.wait_for("saying the Unix socket listens", |v| {
        v["message"].as_str().is_some_and(|m| m.contains("listening on Unix socket"))
    });
    let channel = uds_channel(&dir.path().join("authz.sock")).await;
    let dave = token("dave-the-subject").mint();
    let request = |rid: &str| {
        req("GET", "/api/orders").id(rid).bearer(&dave).peer(PEER).header("traceparent", TRACEPARENT).build()
    };
    let resp = AuthorizationClient::new(channel.clone()).check(request("rid-nopolicy")).await.expect("rpc");
    assert_eq!(http_status(resp.get_ref()), 503, "{resp:?}");

    // One slot: a burst of concurrent checks has some shed (counted, never timed).
    let mut shed = None;
    'rounds: for round in 0..100 {
        let calls = (0..32).map(|i| {
            let mut c = AuthorizationClient::new(channel.clone());
            let rid = format!("rid-burst-{round}-{i}");
            let r = request(&rid);
            async move { (rid, c.check(r).await.expect("rpc").into_inner()) }
        });
        for (rid, resp) in futures::future::join_all(calls).await {
            if denied(&resp).body.contains("overloaded") {
                shed = Some(rid);
                break 'rounds;
            }
        }
    }
    let shed = shed.expect("no check was shed at max_in_flight: 1");

    let hashed = {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(&sha2::Sha256::digest(b"dave-the-subject")[..8]))
    };
    let nopolicy = server.wait_for("for rid-nopolicy", |v| v["request_id"] == "rid-nopolicy");
    assert_always(&nopolicy, "rid-nopolicy", 503, "no_policy");
    assert_eq!((nopolicy["subject"].as_str(), nopolicy["issuer"].as_str()), (Some(hashed.as_str()), Some(ISSUER)));
    assert_eq!((nopolicy["trace_id"].as_str(), nopolicy["peer"].as_str()), (Some(TRACE_ID), Some(PEER)));
    assert_eq!(nopolicy["authn"], "jwt,mtls");
    assert_eq!(nopolicy["path"], "/api/orders");
    absent(&nopolicy, &["policy_version"]);

    let shed_line = server.wait_for("for the shed check", |v| v["request_id"] == shed.as_str());
    assert_always(&shed_line, &shed, 503, "overloaded");
    assert_eq!((shed_line["trace_id"].as_str(), shed_line["peer"].as_str()), (Some(TRACE_ID), Some(PEER)));
    absent(&shed_line, &["method", "host", "path", "issuer", "subject"]);

    let sig = dave.rsplit('.').next().expect("signature");
    assert_no_secret(&server.seen, &[&dave, sig, "dave-the-subject", "c00k1e-s3cret-value"]);
}

/// `log.subject: hash`: an allowed user's subject and `User` principal are the digest; the
/// subject itself is in no line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_subjects_replace_the_subject_and_the_user_principal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start_with(dir.path(), "  subject: hash", "");
    server.wait_for("saying the Unix socket listens", |v| {
        v["message"].as_str().is_some_and(|m| m.contains("listening on Unix socket"))
    });
    let mut client = AuthorizationClient::new(uds_channel(&dir.path().join("authz.sock")).await);
    let tok = token("erin-the-subject").mint();
    let r = client.check(req("GET", "/api/orders").id("rid-hashed").bearer(&tok).build()).await.expect("rpc");
    assert!(is_allowed(r.get_ref()), "{r:?}");
    let hashed = {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(&sha2::Sha256::digest(b"erin-the-subject")[..8]))
    };
    let line = server.wait_for("for rid-hashed", |v| v["request_id"] == "rid-hashed");
    assert_always(&line, "rid-hashed", 200, "allowed");
    assert_eq!(line["subject"], hashed.as_str());
    assert_eq!(line["principal"], format!(r#"User::"{hashed}""#));
    assert_eq!((line["issuer"].as_str(), line["authn"].as_str()), (Some(ISSUER), Some("jwt")));
    assert_no_secret(&server.seen, &["erin-the-subject", &tok]);
}
