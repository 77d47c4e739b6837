//! Soak driver (run by `scripts/soak.sh`): starts the `portcullis` binary on the benchmark
//! fixture (300 policies, `benches/support`), fills its verified-token cache, measures the
//! maximum closed-loop rate for a few seconds, then holds a paced load at a fraction of it for
//! `SOAK_SECONDS` with mixed traffic, while rotating a signing key and reloading the policy
//! every 10 s. Every answer is compared with the decision it must have.
//!
//! Traffic (per 20 requests): 10 cached bearer tokens (allow), 2 fresh EdDSA tokens signed with
//! the current rotation kid (allow, each verified once), 2 SPIFFE peers of the `frontend`
//! namespace (allow), 1 peer of another namespace (deny), 3 anonymous (deny), 2 forged tokens
//! (deny). Rotation publishes the next kid one period before it signs anything (as identity
//! providers do) and drops the one before; the fixture re-reads its JWKS file every few seconds.
//!
//! Every 10 s a line: rate, p99, errors, server RSS and open fds. At the end, start (first
//! windows) against end (last windows): RSS, fds and p99 must be within 10% (fds: or within 2),
//! wrong decisions and failed RPCs must be 0, and the server must still run; exit 1 otherwise.
//!
//! Env: SOAK_BIN (server binary), SOAK_SECONDS (600), SOAK_MEASURE_SECONDS (5), SOAK_LOAD (0.8),
//! SOAK_WORKERS (64), SOAK_OUT (directory for the server's log and the report).
#[path = "../benches/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::proto::auth::authorization_client::AuthorizationClient;
use portcullis::proto::auth::check_response::HttpResponse;
use portcullis::proto::auth::{CheckRequest, CheckResponse};
use support::{AUDIENCE, Caller, Fixture, ISSUER, KEYS, PEER, check_request, key_path, token, token_with};
use tonic::transport::Channel;

const PERIOD: Duration = Duration::from_secs(10);
const OTHER_PEER: &str = "spiffe://cluster.local/ns/billing/sa/batch";

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The JWKS file: the four fixture keys plus the rotation kids `ed-r{g}` and `ed-r{g+1}`.
fn write_jwks(dir: &Path, g: u64) -> anyhow::Result<()> {
    let mut set = support::jwks();
    for kid in [format!("ed-r{g}"), format!("ed-r{}", g + 1)] {
        set.keys.extend(portcullis::token::jwks_for(&key_path("ed25519.pem"), Algorithm::EdDSA, &kid)?.keys);
    }
    let tmp = dir.join(".jwks.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&set)?)?;
    std::fs::rename(tmp, dir.join("jwks.json"))?;
    Ok(())
}

/// The same policies with a different comment: a new snapshot version, the same decisions.
fn write_policies(dir: &Path, n: u64) -> anyhow::Result<()> {
    let pdir = dir.join("policies");
    let tmp = pdir.join(".policies.tmp");
    std::fs::write(&tmp, format!("{}\n// soak reload {n}\n", support::policies_text(300)))?;
    std::fs::rename(tmp, pdir.join("policies.cedar"))?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Allow,
    Deny,
}

/// Requests of the fixed kinds, built once; fresh tokens are minted per request.
struct Traffic {
    cached: Vec<CheckRequest>,
    forged: Vec<CheckRequest>,
    anonymous: CheckRequest,
    frontend: CheckRequest,
    other_peer: CheckRequest,
    ed: EncodingKey,
    rotation: AtomicU64,
    salt: AtomicU64,
}

impl Traffic {
    fn new() -> anyhow::Result<Self> {
        let (rsa2, _, _) = KEYS[1];
        Ok(Self {
            cached: (0..50).map(|i| check_request(&Caller::Bearer(token(Algorithm::RS256, i)), "soak")).collect(),
            // rsa-1's kid, rsa-2's signature.
            forged: (0..20)
                .map(|i| {
                    let t = token_with(&key_path(rsa2), Algorithm::RS256, Some("rsa-1"), 1000 + i, 800);
                    check_request(&Caller::Bearer(t), "soak")
                })
                .collect(),
            anonymous: check_request(&Caller::Anonymous, "soak"),
            frontend: check_request(&Caller::Peer(PEER), "soak"),
            other_peer: check_request(&Caller::Peer(OTHER_PEER), "soak"),
            ed: EncodingKey::from_ed_pem(&std::fs::read(key_path("ed25519.pem"))?)?,
            rotation: AtomicU64::new(0),
            salt: AtomicU64::new(0),
        })
    }

    fn fresh(&self) -> CheckRequest {
        let salt = self.salt.fetch_add(1, Ordering::Relaxed);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(format!("ed-r{}", self.rotation.load(Ordering::Relaxed)));
        let now = unix_now();
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": format!("fresh-{}", salt % 1000), "iat": now, "nbf": now,
            "exp": now + 3600, "jti": format!("soak-{salt}"), "groups": ["staff"],
        });
        let t = jsonwebtoken::encode(&header, &claims, &self.ed).expect("sign a fresh token");
        check_request(&Caller::Bearer(t), "soak")
    }

    fn pick(&self, i: u64) -> (CheckRequest, Want) {
        let n = i as usize;
        match i % 20 {
            0..=9 => (self.cached[n % self.cached.len()].clone(), Want::Allow),
            10 | 11 => (self.fresh(), Want::Allow),
            12 | 13 => (self.frontend.clone(), Want::Allow),
            14 => (self.other_peer.clone(), Want::Deny),
            15..=17 => (self.anonymous.clone(), Want::Deny),
            _ => (self.forged[n % self.forged.len()].clone(), Want::Deny),
        }
    }
}

fn decision(r: &CheckResponse) -> Option<Want> {
    match (&r.http_response, r.status.as_ref().map(|s| s.code)) {
        (Some(HttpResponse::OkResponse(_)), Some(0)) => Some(Want::Allow),
        (Some(HttpResponse::DeniedResponse(_)), Some(c)) if c != 0 => Some(Want::Deny),
        _ => None,
    }
}

#[derive(Default)]
struct Window {
    latencies_us: Vec<u32>,
    ok: u64,
    wrong: u64,
    failed: u64,
}

struct Shared {
    traffic: Traffic,
    channels: Vec<Channel>,
    window: Mutex<Window>,
    next: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    async fn one(&self) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let (req, want) = self.traffic.pick(i);
        let mut client = AuthorizationClient::new(self.channels[i as usize % self.channels.len()].clone());
        let t0 = Instant::now();
        let res = tokio::time::timeout(Duration::from_secs(5), client.check(req)).await;
        let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
        let Ok(mut w) = self.window.lock() else { return };
        match res {
            Ok(Ok(r)) if decision(r.get_ref()) == Some(want) => w.ok += 1,
            Ok(Ok(_)) => w.wrong += 1,
            _ => w.failed += 1,
        }
        w.latencies_us.push(us);
    }

    fn take(&self) -> Window {
        self.window.lock().map(|mut w| std::mem::take(&mut *w)).unwrap_or_default()
    }
}

fn p99_ms(lat: &mut [u32]) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    lat.sort_unstable();
    let idx = ((lat.len() as f64) * 0.99).ceil() as usize;
    f64::from(lat[idx.clamp(1, lat.len()) - 1]) / 1000.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

struct Sample {
    rps: f64,
    p99_ms: f64,
    rss_kib: u64,
    fds: u64,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(admin: &str, server: &mut Server) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.0.try_wait()? {
            anyhow::bail!("the server exited during start-up: {status}");
        }
        if let Ok(r) = reqwest::get(format!("http://{admin}/readyz")).await
            && r.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the server did not become ready within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Absolute: the server runs in the fixture's directory.
    let bin = std::fs::canonicalize(env("SOAK_BIN", PathBuf::from("target/release/portcullis")))?;
    let seconds: u64 = env("SOAK_SECONDS", 600);
    let measure: u64 = env("SOAK_MEASURE_SECONDS", 5);
    let load: f64 = env("SOAK_LOAD", 0.8);
    let workers: usize = env("SOAK_WORKERS", 64);
    let out: PathBuf = env("SOAK_OUT", PathBuf::from("target/soak"));
    std::fs::create_dir_all(&out)?;

    let dir = tempfile::tempdir()?;
    let fx = Fixture::write(dir.path(), 300);
    write_jwks(dir.path(), 0)?;
    let (grpc, admin) = (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
    // Decision lines at `info` would fill the disk in a long run; warnings and errors are kept.
    let yaml = fx
        .config_yaml(&grpc, &dir.path().join("soak.sock"), &admin, 10_000)
        .replace("  level: info", "  level: warn")
        .replace(&format!("  admin: \"{admin}\"\n"), &format!("  admin: \"{admin}\"\n  diagnostics: null\n"))
        .replace("  token_cache:\n", "  jwks: {min_ttl: 1s, default_ttl: 5s}\n  token_cache:\n");
    let cfg = dir.path().join("soak.yaml");
    std::fs::write(&cfg, yaml)?;
    let log = std::fs::File::create(out.join("server.log"))?;
    let mut server = Server(
        Command::new(&bin)
            .args(["serve", "--config"])
            .arg(&cfg)
            .current_dir(dir.path())
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", bin.display()))?,
    );
    let pid = server.0.id();
    wait_ready(&admin, &mut server).await?;

    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(tonic::transport::Endpoint::try_from(format!("http://{grpc}"))?.connect().await?);
    }
    let shared = Arc::new(Shared {
        traffic: Traffic::new()?,
        channels,
        window: Mutex::new(Window::default()),
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });

    // Warm-up: fill the verified-token cache (10,000 entries), so RSS at the start is not
    // measured on an empty cache.
    let t0 = Instant::now();
    let fill: Vec<_> = (0..8)
        .map(|_| {
            let s = shared.clone();
            tokio::spawn(async move {
                for _ in 0..1300 {
                    let mut c = AuthorizationClient::new(s.channels[0].clone());
                    let _ = c.check(s.traffic.fresh()).await;
                }
            })
        })
        .collect();
    for f in fill {
        f.await?;
    }
    println!("warm-up: 10400 fresh tokens in {:.1}s", t0.elapsed().as_secs_f64());

    // Maximum: closed loop, every worker sends as soon as its last answer came.
    let until = Instant::now() + Duration::from_secs(measure);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let s = shared.clone();
            tokio::spawn(async move {
                while Instant::now() < until {
                    s.one().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let m = shared.take();
    let max = (m.ok + m.wrong + m.failed) as f64 / measure as f64;
    let target = (max * load).max(1.0);
    println!("max: {max:.0} checks/s closed loop ({workers} workers); soak at {target:.0}/s for {seconds}s");
    let (mut wrong, mut failed) = (m.wrong, m.failed);

    // Rotation and reload, every period.
    let side = {
        let (s, d) = (shared.clone(), dir.path().to_owned());
        tokio::spawn(async move {
            let mut g = 0;
            while !s.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(PERIOD).await;
                g += 1;
                // Publish ed-r{g+1} ahead, drop ed-r{g-1}, sign with ed-r{g} (published a period ago).
                if let Err(e) = write_jwks(&d, g) {
                    eprintln!("rotation {g}: {e}");
                }
                s.traffic.rotation.store(g, Ordering::Relaxed);
                if let Err(e) = write_policies(&d, g) {
                    eprintln!("policy reload {g}: {e}");
                }
            }
        })
    };

    // Paced load: each worker sends at target / workers per second.
    let every = Duration::from_secs_f64(workers as f64 / target);
    let load_tasks: Vec<_> = (0..workers)
        .map(|_| {
            let s = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !s.stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    s.one().await;
                }
            })
        })
        .collect();

    println!(
        "{:>6} {:>9} {:>9} {:>7} {:>7} {:>10} {:>5}",
        "t_s", "checks/s", "p99_ms", "wrong", "failed", "rss_kib", "fds"
    );
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut server_died = false;
    for _ in 0..seconds.div_ceil(PERIOD.as_secs()).max(1) {
        tokio::time::sleep(PERIOD).await;
        let mut w = shared.take();
        let n = w.latencies_us.len() as f64;
        let s = Sample {
            rps: n / PERIOD.as_secs_f64(),
            p99_ms: p99_ms(&mut w.latencies_us),
            rss_kib: rss_kib(pid),
            fds: fds(pid),
        };
        (wrong, failed) = (wrong + w.wrong, failed + w.failed);
        println!(
            "{:>6} {:>9.0} {:>9.2} {:>7} {:>7} {:>10} {:>5}",
            started.elapsed().as_secs(),
            s.rps,
            s.p99_ms,
            w.wrong,
            w.failed,
            s.rss_kib,
            s.fds
        );
        samples.push(s);
        if server.0.try_wait()?.is_some() {
            server_died = true;
            break;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in load_tasks {
        let _ = t.await;
    }
    let last = shared.take();
    (wrong, failed) = (wrong + last.wrong, failed + last.failed);
    side.abort();

    // Start and end: the mean of the first and of the last third (at most three windows each),
    // so one noisy window on a shared machine does not decide alone.
    let k = (samples.len() / 3).clamp(1, 3);
    let mean = |xs: &[Sample], f: fn(&Sample) -> f64| xs.iter().map(f).sum::<f64>() / xs.len().max(1) as f64;
    let (head, tail) = (&samples[..k.min(samples.len())], &samples[samples.len().saturating_sub(k)..]);
    let mut violations = Vec::new();
    let mut row = |what: &str, f: fn(&Sample) -> f64, slack: f64| {
        let (a, b) = (mean(head, f), mean(tail, f));
        let change = if a > 0.0 { (b - a) / a * 100.0 } else { 0.0 };
        println!("{what:>8}: start {a:>10.2}  end {b:>10.2}  ({change:+.1}%)");
        if b > a * 1.10 && b > a + slack {
            violations.push(format!("{what} grew {change:+.1}% (limit +10%)"));
        }
    };
    row("rss_kib", |s| s.rss_kib as f64, 0.0);
    row("fds", |s| s.fds as f64, 2.0);
    row("p99_ms", |s| s.p99_ms, 0.0);
    println!("wrong decisions: {wrong}, failed RPCs: {failed}");
    if wrong > 0 {
        violations.push(format!("{wrong} wrong decisions"));
    }
    if failed > 0 {
        violations.push(format!("{failed} failed RPCs"));
    }
    if server_died {
        violations.push("the server exited".into());
    }
    let metrics = reqwest::get(format!("http://{admin}/metrics")).await?.text().await.unwrap_or_default();
    for l in metrics.lines().filter(|l| {
        l.starts_with("portcullis_policy_reloads_total")
            || l.starts_with("portcullis_authn_jwt_jwks_fetches_total")
            || l.starts_with("portcullis_authn_jwt_token_negative_cache_lookups_total")
    }) {
        println!("  {l}");
    }
    if violations.is_empty() {
        println!("SOAK OK");
        Ok(())
    } else {
        println!("SOAK FAILED: {}", violations.join("; "));
        std::process::exit(1);
    }
}
