//! A stalled log sink is not an authorization outage. The real binary runs with stdout and stderr
//! going into pipes that the test stops reading (as a stuck collector or a full disk would), and
//! is driven until its log queue overflows. In both `log.on_full` modes checks keep being answered
//! with their decisions, the lost lines are counted in `portcullis_log_dropped_total`, a WARN
//! reports them once the sink moves again, and SIGTERM still ends the process.
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use portcullis::proto::auth::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

/// Far more than the queue (8192 lines) plus a pipe buffer (64 KiB) of decision lines.
const MAX_CHECKS: usize = 100_000;
const BATCH: usize = 64;

struct Stalled {
    child: Child,
    /// The read end of stderr, not read while the sink is meant to be stalled.
    stderr: Option<BufReader<ChildStderr>>,
    admin: SocketAddr,
    sock: PathBuf,
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary, reads its log only until the admin port is known, then stops reading.
fn start(dir: &Path, on_full: &str) -> Stalled {
    let policies = dir.join("policies");
    copy_demo_policies(&policies);
    let sock = dir.join("authz.sock");
    let config = format!(
        r#"
listen:
  grpc: null
  unix: "{sock}"
  admin: "127.0.0.1:0"
  diagnostics: null
  drain_delay: 0s
  drain_timeout: 2s
log:
  format: json
  level: info
  on_full: {on_full}
  block_timeout: 20ms
  dropped_warn_interval: 200ms
policy:
  dir: "{policies}"
"#,
        sock = sock.display(),
        policies = policies.display(),
    );
    std::fs::write(dir.join("config.yaml"), config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(dir.join("config.yaml"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut line = String::new();
    let admin = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).expect("read log") > 0, "portcullis exited before listening");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "admin HTTP listening" {
            break v["addr"].as_str().and_then(|a| a.parse().ok()).expect("admin addr");
        }
    };
    Stalled { child, stderr: Some(stderr), admin, sock }
}

async fn metric(admin: SocketAddr, name: &str) -> Option<u64> {
    let text = reqwest::Client::new()
        .get(format!("http://{admin}/metrics"))
        .timeout(WAIT)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// `n` checks at once; each must be answered (within WAIT) with its decision.
async fn burst(client: &AuthorizationClient<Channel>, n: usize) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut c = client.clone();
        // Alternate an allow and a deny so a wrong answer cannot hide.
        let (path, allow) = if i % 2 == 0 { ("/public/a", true) } else { ("/api/orders", false) };
        set.spawn(async move {
            let r = tokio::time::timeout(WAIT, c.check(req("GET", path).build()))
                .await
                .expect("a check was not answered while the log sink is stalled")
                .expect("RPC ok");
            assert_eq!(is_allowed(r.get_ref()), allow, "{path}: {r:?}");
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("check task");
    }
}

/// Sends checks until the binary reports dropped log lines, then shows it still answers.
async fn overflow_and_keep_answering(s: &Stalled) -> u64 {
    let client = AuthorizationClient::new(uds_channel(&s.sock).await);
    eventually(WAIT, "policies loaded", async || {
        client.clone().check(req("GET", "/public/a").build()).await.is_ok_and(|r| is_allowed(r.get_ref()))
    })
    .await;
    let mut sent = 0;
    let dropped = loop {
        assert!(sent < MAX_CHECKS, "no log line dropped after {sent} checks with a stalled sink");
        for _ in 0..8 {
            burst(&client, BATCH).await;
            sent += BATCH;
        }
        if let Some(d) = metric(s.admin, "portcullis_log_dropped_total").await.filter(|d| *d > 0) {
            break d;
        }
    };
    // The sink is still stalled and the queue full: checks are still answered.
    burst(&client, 4 * BATCH).await;
    let later = metric(s.admin, "portcullis_log_dropped_total").await.expect("metric");
    assert!(later > dropped, "lines dropped while stalled are counted ({dropped} then {later})");
    later
}

fn wait_exit(mut s: Stalled) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(st)) = s.child.try_wait() {
            return st;
        }
        assert!(Instant::now() < deadline, "portcullis did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_mode_answers_checks_counts_lost_lines_and_warns_once_the_sink_moves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = start(dir.path(), "drop");
    let dropped = overflow_and_keep_answering(&s).await;

    // The collector catches up: a WARN says how many lines were lost.
    let stderr = s.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let warn = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("a WARN about dropped lines once the sink moves");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"].as_str().is_some_and(|m| m.starts_with("log lines dropped")) {
            break v;
        }
    };
    assert_eq!(warn["level"], "WARN", "{warn}");
    assert!(warn["dropped_total"].as_u64().is_some_and(|t| t >= dropped), "{warn} (metric said {dropped})");

    let pid = s.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = tokio::task::spawn_blocking(move || wait_exit(s)).await.expect("join");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_mode_answers_checks_counts_lost_lines_and_sigterm_still_ends_a_stalled_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path(), "block");
    overflow_and_keep_answering(&s).await;

    // Still stalled (nobody ever reads stderr): SIGTERM drains and the process exits 0; the
    // last log lines cannot be written and do not hold it.
    let pid = s.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = tokio::task::spawn_blocking(move || wait_exit(s)).await.expect("join");
    assert!(status.success(), "exit status {status}");
}
