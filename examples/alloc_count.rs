//! Heap allocations per check: a counting global allocator around the system one, over the same
//! pipeline the gRPC handler runs (normalize → authenticate → Cedar → decision → render), on the
//! bench fixture (300 policies). The prost decode and tonic framing are not counted.
//!
//! `cargo run --release --example alloc_count`
#[path = "../benches/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use jsonwebtoken::Algorithm;
use portcullis::config::HeaderNames;
use portcullis::response;
use support::{Caller, Fixture, PEER, check_request, token};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fx = Fixture::write(dir.path(), 300);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let opts = portcullis::server::response_options(&HeaderNames {
        policy_ids: Some("x-portcullis-policy".into()),
        ..HeaderNames::default()
    });
    const N: u64 = 2000;
    println!("{:<28} {:>12} {:>14}", "scenario", "allocs/check", "bytes/check");
    for (name, cache, caller) in [
        ("anonymous (denied)", 10_000, Caller::Anonymous),
        ("jwt RS256 cached", 10_000, Caller::Bearer(token(Algorithm::RS256, 1))),
        ("jwt RS256 uncached", 0, Caller::Bearer(token(Algorithm::RS256, 1))),
        ("spiffe peer", 10_000, Caller::Peer(PEER)),
    ] {
        let cfg_path = dir.path().join(format!("c{cache}.yaml"));
        let unix = dir.path().join("unused.sock");
        std::fs::write(&cfg_path, fx.config_yaml("127.0.0.1:0", &unix, "127.0.0.1:0", cache))?;
        let checker = support::checker(&cfg_path);
        let req = check_request(&caller, "5f0c8a1e-3b7d-4c2a-9e61-0d2b8f4a7c13");
        let one = || {
            let d = rt.block_on(support::decide(&checker, &req));
            std::hint::black_box(response::render(&d, &opts));
            d.is_allowed()
        };
        // Warm up: JWKS read, token cache filled, lazy statics.
        for _ in 0..50 {
            one();
        }
        let (a0, b0) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
        for _ in 0..N {
            one();
        }
        let (a1, b1) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
        println!("{name:<28} {:>12} {:>14}   allowed={}", (a1 - a0) / N, (b1 - b0) / N, one());
    }
    Ok(())
}
