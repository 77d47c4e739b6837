//! Memory under a token flood: one million distinct valid tokens through the checker's
//! authentication stage (the one that owns the verified-token cache), printing RSS as it goes.
//! The cache is bounded (`token_cache.max_entries`), so RSS must level off once the cache is
//! full instead of growing with the number of tokens. Every 100th token also goes through the
//! whole check, so the rest of the pipeline sees the flood too.
//!
//! Tokens are HS256 so that minting a million of them takes seconds; the cache entry (the
//! verified identity) is the same whatever the algorithm.
//!
//! `cargo run --release --example token_flood -- [tokens] [cache-entries]`
#[path = "../benches/support/mod.rs"]
mod support;

use std::time::Instant;

use jsonwebtoken::Algorithm;
use portcullis::config::Limits;
use portcullis::request::RequestView;
use support::{Caller, Fixture, check_request, token_with};

/// The binary's allocator (`src/main.rs`): RSS is the shipped server's only with the allocator
/// it ships (glibc malloc fragments differently under this churn).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let total: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let cache: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let fx = Fixture::write(dir.path(), 300);
    let secret = dir.path().join("hmac.secret");
    std::fs::write(&secret, "bench-hmac-secret-0123456789abcdef0123456789abcdef")?;
    let yaml = fx
        .config_yaml("127.0.0.1:0", &dir.path().join("unused.sock"), "127.0.0.1:0", cache)
        .replace("      jwks_file: jwks.json\n", &format!("      hmac_secret_file: {}\n", secret.display()))
        .replace("algorithms: [RS256, ES256, EdDSA]", "algorithms: [HS256]");
    let cfg_path = dir.path().join("flood.yaml");
    std::fs::write(&cfg_path, yaml)?;
    let checker = support::checker(&cfg_path);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let limits = Limits::default();

    println!("token flood: {total} distinct tokens, token_cache.max_entries = {cache}");
    println!("{:>10} {:>10} {:>10} {:>9}", "tokens", "rss_kib", "hwm_kib", "tokens/s");
    let start = Instant::now();
    let mut last = Instant::now();
    let step = (total / 10).max(1);
    let mut denied = 0u64;
    for i in 0..total {
        let t = token_with(&secret, Algorithm::HS256, None, i, 800);
        let req = check_request(&Caller::Bearer(t), "flood");
        let accepted = if i % 100 == 0 {
            rt.block_on(support::decide(&checker, &req)).is_allowed()
        } else {
            let req_in = portcullis::proto::check_in(&req);
            let view = RequestView::from_check(&req_in, &limits)?;
            matches!(rt.block_on(checker.authenticator().authenticate(&view)), Ok(ids) if ids.jwt.is_some())
        };
        if !accepted {
            denied += 1;
        }
        if (i + 1) % step == 0 {
            let rate = step as f64 / last.elapsed().as_secs_f64();
            last = Instant::now();
            println!("{:>10} {:>10} {:>10} {:>9.0}", i + 1, rss_kib("VmRSS:"), rss_kib("VmHWM:"), rate);
        }
    }
    println!("done in {:.1}s; {denied} denied (must be 0)", start.elapsed().as_secs_f64());
    anyhow::ensure!(denied == 0, "valid tokens were denied");
    Ok(())
}
