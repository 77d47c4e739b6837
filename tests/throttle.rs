//! Pre-authentication throttling and attack signals over real gRPC: a flood of forged tokens
//! from one source turns into 429 + Retry-After after `authn.throttle.max_failures`, before any
//! verification, while valid callers from other sources keep being allowed; without the
//! config nothing is throttled; each crossing shows once in the metrics and `/anomalies`.
mod common;

use std::time::Duration;

use common::*;

const ATTACKER: &str = "10.6.6.6";
const MAX_FAILURES: u32 = 5;

/// The shared sidecar with `authn.throttle` set by `enabled` (a window no test outlives).
async fn sidecar(enabled: bool) -> Sidecar {
    Sidecar::start_configured(
        |_| {},
        |_, cfg| {
            let t = &mut cfg.authn.throttle;
            t.enabled = enabled;
            t.max_failures = MAX_FAILURES;
            t.window = Duration::from_secs(3600);
        },
    )
    .await
}

fn forged() -> String {
    token("mallory").signed_with("rsa2.pem").mint()
}

fn from(ip: &str, bearer: &str) -> portcullis::proto::auth::CheckRequest {
    req("GET", "/api/orders/42").source_ip(ip).bearer(bearer).build()
}

/// The value of the metric line starting with `series` (then a space), 0 when absent.
async fn metric(s: &Sidecar, series: &str) -> f64 {
    let (code, body) = s.admin_get("/metrics").await;
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("metric value"))
        .unwrap_or(0.0)
}

async fn anomalies(s: &Sidecar) -> serde_json::Value {
    let (code, body) = s.diagnostics_get("/anomalies?limit=5").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

const CROSSINGS: &str = "portcullis_anomaly_crossings_total{kind=\"source\"}";
const OVER: &str = "portcullis_anomaly_sources_over_threshold";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_token_flood_turns_into_429_while_other_sources_are_allowed() {
    let s = sidecar(true).await;
    let (bad, alice) = (forged(), token("alice").mint());

    for i in 0..MAX_FAILURES {
        let r = s.check(from(ATTACKER, &bad)).await;
        assert_eq!(http_status(&r), 401, "failure {i} is still verified: {r:?}");
        // A legitimate caller elsewhere is never affected.
        assert!(is_allowed(&s.check(from("10.1.2.3", &alice)).await));
    }
    for _ in 0..20 {
        let r = s.check(from(ATTACKER, &bad)).await;
        assert_eq!(http_status(&r), 429, "{r:?}");
        let wait: u64 = denied_header(&r, "retry-after").expect("Retry-After").parse().expect("seconds");
        assert!((1..=3600).contains(&wait), "{wait}");
        assert!(is_allowed(&s.check(from("10.1.2.3", &alice)).await));
    }
    // Decided before any credential is read: even a valid token from that source waits.
    assert_eq!(http_status(&s.check(from(ATTACKER, &alice)).await), 429);
    // The same identity from another source is keyed by that source, never by its claim.
    assert_eq!(http_status(&s.check(from("10.7.7.7", &bad)).await), 401);

    // One crossing, however long the flood lasts; throttled checks are not failures.
    assert_eq!(metric(&s, CROSSINGS).await, 1.0);
    assert_eq!(metric(&s, OVER).await, 1.0);
    assert_eq!(metric(&s, "portcullis_anomaly_throttled_total").await, 21.0);
    let a = anomalies(&s).await;
    assert_eq!(a["throttling"], true);
    assert_eq!(a["sources_over_threshold"], 1);
    let top = &a["sources"][0];
    assert_eq!(top["key"], format!("ip:{ATTACKER}"), "{a}");
    assert_eq!(top["count"], MAX_FAILURES);
    assert_eq!(top["over_threshold"], true);
    assert_eq!(top["reasons"]["bad_signature"], MAX_FAILURES, "{top}");
    assert!(top["first_seen"].as_str().is_some_and(|t| t.ends_with('Z')), "{top}");
    // The claimed identity is tracked (unverified, a signal only), never the token.
    let ids = &a["identities"][0];
    assert_eq!(ids["key"], format!("jwt:{ISSUER}|mallory"), "{a}");
    assert_eq!(ids["count"], MAX_FAILURES + 1);
    assert!(!a.to_string().contains(&bad[..20]), "no token material in /anomalies");

    // A second source crossing is a second crossing.
    for _ in 0..MAX_FAILURES {
        assert_eq!(http_status(&s.check(from("10.8.8.8", &bad)).await), 401);
    }
    assert_eq!(http_status(&s.check(from("10.8.8.8", &bad)).await), 429);
    assert_eq!(metric(&s, CROSSINGS).await, 2.0);
    assert_eq!(metric(&s, OVER).await, 2.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_config_nothing_is_throttled_but_the_signal_is_kept() {
    let s = sidecar(false).await;
    let bad = forged();
    for _ in 0..4 * MAX_FAILURES {
        assert_eq!(http_status(&s.check(from(ATTACKER, &bad)).await), 401);
    }
    assert!(is_allowed(&s.check(from(ATTACKER, &token("alice").mint())).await));
    assert_eq!(metric(&s, CROSSINGS).await, 1.0, "tracking is on, once per crossing");
    assert_eq!(metric(&s, OVER).await, 1.0);
    assert_eq!(metric(&s, "portcullis_anomaly_throttled_total").await, 0.0);
    let a = anomalies(&s).await;
    assert_eq!(a["throttling"], false);
    assert_eq!(a["sources"][0]["count"], 4 * MAX_FAILURES);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_are_on_the_diagnostics_port_only() {
    let s = sidecar(true).await;
    let (code, _) = s.admin_get("/anomalies").await;
    assert_eq!(code, 404, "the pod-network admin port does not serve /anomalies");
    let a = anomalies(&s).await;
    assert_eq!(a["sources"].as_array().map(Vec::len), Some(0));
    s.stop().await;
}
