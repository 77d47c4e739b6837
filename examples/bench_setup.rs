//! Writes everything `scripts/bench.sh` needs into one directory: the policy dir (a few hundred
//! policies), one more policy dir per extra policy count (`policies-<n>`), `jwks.json` (four keys),
//! the server configs (token cache on; off, so every check verifies a signature; on with the
//! decision log off; on with every check traced; with an API client; forged-token variants; one
//! per extra policy count), one pre-encoded gRPC frame per scenario for `h2load -d`, and an
//! OPA-Envoy policy with the same JWT allow (`opa/`, used only when `OPA_ENVOY` is set).
//!
//! `cargo run --release --example bench_setup -- <dir> <tcp-addr> <unix-path> <admin-addr> [policies [more counts...]]`
//!
//! Every policy dir holds exactly its count of policies: the fixture's, one of which is replaced
//! by `api-clients-read` (the rule the API-key scenario hits).
#[path = "../benches/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use jsonwebtoken::Algorithm;
use sha2::{Digest as _, Sha256};
use support::{
    AUDIENCE, Caller, Fixture, HOST, ISSUER, PATH, PEER, check_request, grpc_frame, key_path, policy_docs, token,
    token_with,
};

/// The API client of the "API key, allowed" scenario (a bench fixture, not a secret).
const API_CLIENT: &str = "bench-ci";
const API_KEY: &str = "bench-key-0f3c9a7e52d14b8c9e0a6d1f4b7c2e85";
const API_CLIENT_POLICY: &str = r#"@id("api-clients-read")
permit (principal is ApiClient in Group::"staff", action in Action::"read", resource)
when { resource.path like "/api/*" };
"#;

/// A policy dir of exactly `n` policies: the fixture's first `n - 1` and `api-clients-read`.
fn write_policies(dir: &Path, n: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for d in policy_docs(n - 1) {
        std::fs::write(dir.join(&d.origin), d.text)?;
    }
    std::fs::write(dir.join("api-clients.cedar"), API_CLIENT_POLICY)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, grpc, unix, admin, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: bench_setup <dir> <tcp-addr> <unix-path> <admin-addr> [policies [more counts...]]");
    };
    let counts = rest.iter().map(|s| s.parse::<usize>()).collect::<Result<Vec<_>, _>>()?;
    // At least the four rules the scenarios hit and the API client's.
    if let Some(c) = counts.iter().find(|&&c| c < 5) {
        anyhow::bail!("policy count {c}: at least 5");
    }
    let n = counts.first().copied().unwrap_or(300);
    let dir = PathBuf::from(dir);
    let fx = Fixture::write(&dir, n);
    write_policies(&dir.join("policies"), n)?;
    let unix = PathBuf::from(unix);
    let cached = fx.config_yaml(grpc, &unix, admin, 10_000);
    std::fs::write(dir.join("cached.yaml"), &cached)?;
    std::fs::write(dir.join("nocache.yaml"), fx.config_yaml(grpc, &unix, admin, 0))?;
    // The same as cached.yaml without the per-check decision log line, to price that line.
    let quiet = cached.replace("level: info", "level: warn");
    std::fs::write(dir.join("cached-quiet.yaml"), quiet)?;
    // cached.yaml with a span for every check (no incoming trace: roots, sampled at 100%), sent to
    // an OTLP collector on 127.0.0.1:4317 if one runs; without one, spans are dropped and counted.
    let traced = format!(
        "{cached}telemetry:\n  traces:\n    enabled: true\n    endpoint: http://127.0.0.1:4317\n    sampler_ratio: 1.0\n"
    );
    std::fs::write(dir.join("cached-traced.yaml"), traced)?;
    // cached.yaml with one API client (in group `staff`), known by its key's digest only.
    let digest = hex::encode(Sha256::digest(API_KEY.as_bytes()));
    let apikey = cached.replacen(
        "authn:\n",
        &format!("authn:\n  api_keys:\n    keys: [{{client: {API_CLIENT}, sha256: {digest}, groups: [staff]}}]\n"),
        1,
    );
    std::fs::write(dir.join("cached-apikey.yaml"), apikey)?;
    // cached.yaml over another policy count.
    for &c in counts.iter().skip(1) {
        write_policies(&dir.join(format!("policies-{c}")), c)?;
        let other = cached.replacen("  dir: policies\n", &format!("  dir: policies-{c}\n"), 1);
        anyhow::ensure!(other != cached, "cached.yaml has no `dir: policies` line");
        std::fs::write(dir.join(format!("cached-p{c}.yaml")), other)?;
    }
    // Forged tokens: without the negative cache every one is verified (what a flood of distinct
    // forgeries costs); with the pre-authentication throttle on, a source is turned away with a 429
    // before any verification once it has failed `max_failures` times.
    let uncached_refusals = cached.replacen("authn:\n", "authn:\n  negative_cache_ttl: 0s\n", 1);
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
    let rs256 = token(Algorithm::RS256, 1);
    let frames = [
        ("anonymous", Caller::Anonymous),
        ("jwt-forged", Caller::Bearer(forged)),
        ("jwt-rs256", Caller::Bearer(rs256.clone())),
        ("jwt-es256", Caller::Bearer(token(Algorithm::ES256, 2))),
        ("jwt-eddsa", Caller::Bearer(token(Algorithm::EdDSA, 3))),
        ("spiffe", Caller::Peer(PEER)),
        // The anonymous request (cookie, no token, no peer) plus the API client's key.
        ("apikey", Caller::Anonymous),
    ];
    for (name, caller) in frames {
        let mut req = check_request(&caller, "5f0c8a1e-3b7d-4c2a-9e61-0d2b8f4a7c13");
        if name == "apikey" {
            let http = req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut());
            let Some(http) = http else { anyhow::bail!("bench request without attributes.request.http") };
            http.headers.insert("x-api-key".into(), API_KEY.into());
        }
        let frame = grpc_frame(&req);
        if let Caller::Bearer(t) = &caller {
            println!("{name}: token {} bytes, frame {} bytes", t.len(), frame.len());
        } else {
            println!("{name}: frame {} bytes", frame.len());
        }
        std::fs::write(dir.join(format!("{name}.bin")), frame)?;
    }
    write_opa(&dir.join("opa"), grpc, &rs256)?;
    println!("wrote {} ({})", dir.display(), counts_text(n, &counts));
    Ok(())
}

fn counts_text(n: usize, counts: &[usize]) -> String {
    let extra: Vec<String> = counts.iter().skip(1).map(|c| format!("policies-{c}/")).collect();
    if extra.is_empty() {
        format!("policies/: {n} policies")
    } else {
        format!("policies/: {n} policies; also {}", extra.join(", "))
    }
}

/// OPA-Envoy's equivalent of the cached-JWT allow: the RS256 token must verify against the same
/// RSA keys, for the same issuer and audience, on a read of `/api/*`; anything else is denied.
/// `request.yaml` and `token` let `portcullis check --server` confirm both answers before a run.
fn write_opa(dir: &Path, grpc: &str, rs256: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let rsa = support::jwks()
        .keys
        .into_iter()
        .filter(|k| k.common.key_id.as_deref().is_some_and(|id| id.starts_with("rsa-")));
    let jwks = serde_json::to_string(&serde_json::json!({ "keys": rsa.collect::<Vec<_>>() }))?;
    let rego = format!(
        r#"package portcullis.bench

import rego.v1

default allow := false

jwks := `{jwks}`

bearer := t if {{
	v := input.attributes.request.http.headers.authorization
	startswith(v, "Bearer ")
	t := substring(v, 7, -1)
}}

allow if {{
	[valid, _, _] := io.jwt.decode_verify(bearer, {{"cert": jwks, "iss": "{ISSUER}", "aud": "{AUDIENCE}"}})
	valid
	input.attributes.request.http.method in {{"GET", "HEAD"}}
	startswith(input.attributes.request.http.path, "/api/")
}}
"#
    );
    std::fs::write(dir.join("policy.rego"), rego)?;
    let config = format!(
        "plugins:\n  envoy_ext_authz_grpc:\n    addr: \"{grpc}\"\n    path: portcullis/bench/allow\ndecision_logs:\n  console: false\n"
    );
    std::fs::write(dir.join("config.yaml"), config)?;
    std::fs::write(dir.join("request.yaml"), format!("method: GET\npath: \"{PATH}\"\nhost: {HOST}\n"))?;
    std::fs::write(dir.join("token"), rs256)?;
    Ok(())
}
