//! The dev-only token minter cannot be mistaken for production: `portcullis token` refuses to
//! run without `--dev` / `PORTCULLIS_DEV=1`, and `serve` warns loudly when an issuer trusts the
//! committed demo key. Runs the real binary.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const DEMO_KEY: &str = "examples/demo/keys/demo-signing-key.pem";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn token(args: &[&str], dev_env: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("token").args(args).env_remove("PORTCULLIS_DEV").env_remove("PORTCULLIS_TOKEN_KEY");
    if let Some(v) = dev_env {
        cmd.env("PORTCULLIS_DEV", v);
    }
    let out = cmd.output().expect("binary runs");
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn is_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.trim().split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty())
}

#[test]
fn token_refuses_to_mint_without_an_explicit_dev_flag() {
    for env in [None, Some("0"), Some("false")] {
        let r = token(&["--key", DEMO_KEY], env);
        assert_eq!(r.code, 2, "PORTCULLIS_DEV={env:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.is_empty(), "no token may be printed: {}", r.stdout);
        assert!(r.stderr.contains("--dev") && r.stderr.contains("PORTCULLIS_DEV=1"), "{}", r.stderr);
    }
    // --jwks is refused too: the same command, the same key.
    let r = token(&["--key", DEMO_KEY, "--jwks"], None);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
}

#[test]
fn token_mints_with_dev_flag_or_environment() {
    let r = token(&["--dev", "--key", DEMO_KEY], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(is_jwt(&r.stdout), "{}", r.stdout);
    let r = token(&["--key", DEMO_KEY], Some("1"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(is_jwt(&r.stdout), "{}", r.stdout);
}

/// Starts `serve` with one issuer whose `jwks_file` is `jwks`, and returns its log lines up to
/// the gRPC listener's start (the demo-key warning comes before it).
fn serve_logs(dir: &std::path::Path, jwks: &std::path::Path) -> Vec<String> {
    let policies = std::fs::canonicalize("examples/demo/policies").expect("demo policies");
    let config = format!(
        r#"
listen:
  grpc: "127.0.0.1:0"
  admin: "127.0.0.1:0"
  diagnostics: null
  drain_delay: 0s
log:
  format: json
  level: info
policy:
  dir: "{policies}"
authn:
  issuers:
    - issuer: https://demo.portcullis.dev
      jwks_file: "{jwks}"
      audiences: [demo-api]
"#,
        policies = policies.display(),
        jwks = jwks.display(),
    );
    let cfg = dir.join("config.yaml");
    std::fs::write(&cfg, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        let done = line.contains("ext_authz gRPC listening");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines.iter().any(|l| l.contains("ext_authz gRPC listening")), "server did not start: {lines:?}");
    lines
}

#[test]
fn serve_warns_loudly_when_an_issuer_trusts_the_demo_key_and_only_then() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = std::fs::canonicalize("examples/demo/jwks.json").expect("demo jwks");
    let lines = serve_logs(dir.path(), &demo);
    let warned: Vec<&String> = lines.iter().filter(|l| l.contains("DEMO KEY TRUSTED")).collect();
    assert_eq!(warned.len(), 1, "{lines:?}");
    assert!(warned[0].contains("WARN") && warned[0].contains("https://demo.portcullis.dev"), "{}", warned[0]);

    // Another key: no warning.
    let other = token(&["--dev", "--key", "tests/fixtures/keys/rsa1.pem", "--jwks"], None);
    assert_eq!(other.code, 0, "{}", other.stderr);
    let other_jwks = dir.path().join("other.json");
    std::fs::write(&other_jwks, other.stdout).expect("write jwks");
    let lines = serve_logs(dir.path(), &other_jwks);
    assert!(!lines.iter().any(|l| l.contains("DEMO KEY TRUSTED")), "{lines:?}");
}
