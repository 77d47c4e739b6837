//! Writes everything `scripts/bench.sh` needs into one directory: the policy dir (a few hundred
//! policies), `jwks.json` (four keys), four server configs (token cache on; off, so every check
//! verifies a signature; on with the decision log off; on with every check traced), and one
//! pre-encoded gRPC frame per scenario for `h2load -d`.
//!
//! `cargo run --release --example bench_setup -- <dir> <tcp-addr> <unix-path> <admin-addr> [policies]`
#[path = "../benches/support/mod.rs"]
mod support;

use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use support::{Caller, Fixture, PEER, check_request, grpc_frame, key_path, token, token_with};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, grpc, unix, admin, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: bench_setup <dir> <tcp-addr> <unix-path> <admin-addr> [policies]");
    };
    let n: usize = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(300);
    let dir = PathBuf::from(dir);
    let fx = Fixture::write(&dir, n);
    let unix = PathBuf::from(unix);
    std::fs::write(dir.join("cached.yaml"), fx.config_yaml(grpc, &unix, admin, 10_000))?;
    std::fs::write(dir.join("nocache.yaml"), fx.config_yaml(grpc, &unix, admin, 0))?;
    // The same as cached.yaml without the per-check decision log line, to price that line.
    let quiet = fx.config_yaml(grpc, &unix, admin, 10_000).replace("level: info", "level: warn");
    std::fs::write(dir.join("cached-quiet.yaml"), quiet)?;
    // cached.yaml with a span for every check (no incoming trace: roots, sampled at 100%), sent to
    // an OTLP collector on 127.0.0.1:4317 if one runs; without one, spans are dropped and counted.
    let traced = format!(
        "{}telemetry:\n  traces:\n    enabled: true\n    endpoint: http://127.0.0.1:4317\n    sampler_ratio: 1.0\n",
        fx.config_yaml(grpc, &unix, admin, 10_000)
    );
    std::fs::write(dir.join("cached-traced.yaml"), traced)?;
    // Forged tokens: without the negative cache every one is verified (what a flood of distinct
    // forgeries costs); with the pre-authentication throttle on, a source is turned away with a 429
    // before any verification once it has failed `max_failures` times.
    let uncached_refusals =
        fx.config_yaml(grpc, &unix, admin, 10_000).replacen("authn:\n", "authn:\n  negative_cache_ttl: 0s\n", 1);
    std::fs::write(dir.join("forged-nocache.yaml"), &uncached_refusals)?;
    let throttled = uncached_refusals.replacen(
        "authn:\n",
        "authn:\n  throttle: {enabled: true, key: source_ip, max_failures: 20, window: 1h}\n",
        1,
    );
    std::fs::write(dir.join("forged-throttled.yaml"), throttled)?;

    // A well-formed RS256 token of a trusted issuer that names the kid of one published key but is
    // signed with the other: its signature does not verify.
    let forged = token_with(&key_path("rsa2.pem"), Algorithm::RS256, Some("rsa-1"), 4, 800);
    let frames = [
        ("anonymous", Caller::Anonymous),
        ("jwt-forged", Caller::Bearer(forged)),
        ("jwt-rs256", Caller::Bearer(token(Algorithm::RS256, 1))),
        ("jwt-es256", Caller::Bearer(token(Algorithm::ES256, 2))),
        ("jwt-eddsa", Caller::Bearer(token(Algorithm::EdDSA, 3))),
        ("spiffe", Caller::Peer(PEER)),
    ];
    for (name, caller) in frames {
        let req = check_request(&caller, "5f0c8a1e-3b7d-4c2a-9e61-0d2b8f4a7c13");
        let frame = grpc_frame(&req);
        if let Caller::Bearer(t) = &caller {
            println!("{name}: token {} bytes, frame {} bytes", t.len(), frame.len());
        } else {
            println!("{name}: frame {} bytes", frame.len());
        }
        std::fs::write(dir.join(format!("{name}.bin")), frame)?;
    }
    println!("wrote {} ({n} policies)", dir.display());
    Ok(())
}
