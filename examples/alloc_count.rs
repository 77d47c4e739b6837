//! Heap allocations per check: a counting global allocator around the system one, over the same
//! pipeline the gRPC handler runs, stage by stage: normalize (`RequestView`), decide
//! (authenticate → Cedar → `Decision`), and finish (metrics, the decision line handed to the log
//! writer, render). Fixture: the bench policies (300), JSON decision lines at `info` on stderr
//! (run with `2>/dev/null`). The prost decode, tonic framing and the log writer thread's own
//! formatting are not counted (the writer's allocations are counted but happen off the check, so
//! they show up as noise, not per check: see the `log` column with the writer parked).
//!
//! `cargo run --release --example alloc_count 2>/dev/null`
#[path = "../benches/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use portcullis::config::{HeaderNames, Limits, LogConfig, LogFormat};
use portcullis::request::RequestView;
use support::{Caller, Fixture, PEER, check_request, token};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Only the measuring thread counts, so the log writer thread's work stays out of the figures.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count(size: usize) {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and bytes counted while `f` runs.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    let (a0, b0) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    COUNTED.with(|c| c.set(true));
    let out = f();
    COUNTED.with(|c| c.set(false));
    (out, ALLOCS.load(Ordering::Relaxed) - a0, BYTES.load(Ordering::Relaxed) - b0)
}

/// The API key the config below knows (client `batch`).
const API_KEY: &str = "bench-batch-key";

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fx = Fixture::write(dir.path(), 300);
    // API clients may read the API, so the API-key row is an allow like the others.
    std::fs::write(
        dir.path().join("policies/api-clients.cedar"),
        "@id(\"api-clients-read\")\npermit (principal is ApiClient, action in Action::\"read\", resource) when { resource.path like \"/api/*\" };\n",
    )?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let opts = portcullis::server::response_options(&HeaderNames {
        policy_ids: Some("x-portcullis-policy".into()),
        ..HeaderNames::default()
    });
    let log_cfg = LogConfig { format: LogFormat::Json, level: "info".into(), ..LogConfig::default() };
    let _log = portcullis::server::init_logging(&log_cfg);
    let metrics = portcullis::metrics::CheckMetrics::register(&mut prometheus_client::registry::Registry::default());
    let key_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(API_KEY.as_bytes()));
    const N: u64 = 2000;
    println!(
        "{:<22} {:>9} {:>7} {:>7} {:>7} {:>11} {:>12}",
        "scenario", "normalize", "decide", "finish", "total", "bytes/check", "decision"
    );
    for (name, cache, caller) in [
        ("anonymous (401)", 10_000, Caller::Anonymous),
        ("jwt RS256 cached", 10_000, Caller::Bearer(token(Algorithm::RS256, 1))),
        ("jwt RS256 uncached", 0, Caller::Bearer(token(Algorithm::RS256, 1))),
        ("spiffe peer", 10_000, Caller::Peer(PEER)),
        ("api key", 10_000, Caller::Anonymous),
    ] {
        let cfg_path = dir.path().join(format!("c{cache}-{}.yaml", name.len()));
        let unix = dir.path().join("unused.sock");
        let mut yaml = fx.config_yaml("127.0.0.1:0", &unix, "127.0.0.1:0", cache);
        yaml = yaml.replace(
            "  token_cache:",
            &format!("  api_keys:\n    keys:\n      - {{client: batch, sha256: \"{key_sha}\"}}\n  token_cache:"),
        );
        std::fs::write(&cfg_path, yaml)?;
        let checker = support::checker(&cfg_path);
        let mut req = check_request(&caller, "5f0c8a1e-3b7d-4c2a-9e61-0d2b8f4a7c13");
        if name == "api key" {
            let http = req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut());
            let http = http.expect("bench request has HTTP attributes");
            match http.header_map.as_mut() {
                Some(m) => m.headers.push(portcullis::proto::core::HeaderValue {
                    key: "x-api-key".into(),
                    value: API_KEY.into(),
                    raw_value: Vec::new(),
                }),
                None => {
                    http.headers.insert("x-api-key".into(), API_KEY.into());
                }
            }
        }
        let limits = Limits::default();
        let mut sums = [0u64; 4];
        let mut verdict = String::new();
        let mut one = |sums: &mut [u64; 4]| {
            let req_in = portcullis::proto::check_in(&req);
            let (view, a_norm, b_norm) = counted(|| RequestView::from_check(&req_in, &limits));
            let view = view.expect("bench request normalizes");
            let (d, a_dec, b_dec) = counted(|| rt.block_on(checker.check(&view)));
            verdict = format!("{} {}", d.verdict(), d.http_status());
            let (resp, a_fin, b_fin) = counted(|| {
                portcullis::server::finish_check(&metrics, &opts, log_cfg.subject, d, Duration::from_micros(42))
            });
            std::hint::black_box(resp);
            sums[0] += a_norm;
            sums[1] += a_dec;
            sums[2] += a_fin;
            sums[3] += b_norm + b_dec + b_fin;
        };
        // Warm up: JWKS read, token cache filled, lazy statics.
        for _ in 0..50 {
            one(&mut [0; 4]);
        }
        for _ in 0..N {
            one(&mut sums);
        }
        let [n, d, f, b] = sums.map(|s| s / N);
        println!("{name:<22} {n:>9} {d:>7} {f:>7} {:>7} {b:>11} {verdict:>12}", n + d + f);
    }
    Ok(())
}
