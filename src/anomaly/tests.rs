use super::*;
use crate::client::CheckRequestBuilder;
use crate::config::Limits;

fn with_view<T>(b: CheckRequestBuilder, f: impl FnOnce(&RequestView<'_>) -> T) -> T {
    let req = b.build();
    let req_in = crate::proto::check_in(&req);
    let view = RequestView::from_check(&req_in, &Limits::default()).expect("valid request");
    f(&view)
}

fn req() -> CheckRequestBuilder {
    CheckRequestBuilder::new("GET", "/x").host("h.test").source_ip("10.0.0.9")
}

#[test]
fn the_tracker_never_exceeds_its_capacity() {
    let mut t = Tracker::new(10_000, 20);
    for i in 0..1_000_000u32 {
        t.record(&format!("ip:{i}"), "invalid_signature", 0, 0);
        assert!(t.len() <= 10_000);
    }
    assert_eq!(t.len(), 10_000);
    assert_eq!(t.index.len(), t.slots.len());
    assert_eq!(t.order.len(), t.slots.len());
}

#[test]
fn a_heavy_hitter_survives_a_flood_of_distinct_keys_and_crosses_once_per_window() {
    let mut t = Tracker::new(100, 5);
    let mut crossings = 0;
    for i in 0..10_000u32 {
        t.record(&format!("noise:{i}"), "r", 0, 0);
        if i % 50 == 0 && t.record("ip:attacker", "invalid_signature", 0, 0) {
            crossings += 1;
        }
    }
    assert_eq!(crossings, 1, "one crossing per key and window");
    assert!(t.is_over("ip:attacker", 0));
    assert_eq!(t.over_count(0), 1);
    // The next window: cooled down, counted afresh, and it may cross again.
    assert!(!t.is_over("ip:attacker", 1));
    assert_eq!(t.over_count(1), 0);
    let again = (0..5).filter(|_| t.record("ip:attacker", "r", 1, 1)).count();
    assert_eq!(again, 1);
}

#[test]
fn an_evicted_count_never_locks_out_a_newcomer() {
    // Both entries are over the threshold; a newcomer evicts one and inherits its count as
    // possible error, so its own single failure is not "over".
    let mut t = Tracker::new(2, 3);
    for _ in 0..5 {
        t.record("ip:a", "r", 0, 0);
        t.record("ip:b", "r", 0, 0);
    }
    assert_eq!(t.over_count(0), 2);
    assert!(!t.record("ip:innocent", "r", 0, 0));
    assert!(!t.is_over("ip:innocent", 0));
    assert_eq!(t.over_count(0), 1, "the evicted key no longer counts");
    // Entries of an older window are evicted first and pass on nothing.
    let mut t = Tracker::new(2, 3);
    for _ in 0..9 {
        t.record("ip:old", "r", 0, 0);
    }
    t.record("ip:new", "r", 1, 1);
    t.record("ip:other", "r", 1, 1);
    assert!(t.index.contains_key("ip:new") && !t.index.contains_key("ip:old"));
}

#[test]
fn reasons_are_bounded() {
    let mut t = Tracker::new(4, 100);
    for r in ["a", "b", "c", "d", "e", "f", "a"] {
        t.record("k", r, 0, 0);
    }
    let e = &t.top(1, Kind::Source, 0, 0)[0];
    assert_eq!(e.reasons.len(), MAX_REASONS + 1);
    assert_eq!(e.reasons.get("a"), Some(&2));
    assert_eq!(e.reasons.get("other"), Some(&2));
    assert_eq!(e.count, 7);
}

#[test]
fn warn_lines_are_rate_limited_and_report_what_they_suppressed() {
    let mut g = WarnGate::default();
    let admitted = (0..25).filter(|_| g.admit(1).is_some()).count();
    assert_eq!(admitted, WARN_BURST as usize);
    let next_period = WARN_PERIOD.as_millis() as u64 + 1;
    assert_eq!(g.admit(next_period), Some(15));
    assert_eq!(g.admit(next_period), Some(0));
}

#[test]
fn forwarded_for_reads_only_the_trusted_hops() {
    let xff = |v: &str| req().header("x-forwarded-for", v);
    let key = |b, hops| with_view(b, |v| source_key(v, ThrottleKey::ForwardedFor, hops));
    // The client controls everything left of what the trusted proxies appended.
    assert_eq!(key(xff("6.6.6.6, 1.1.1.1, 2.2.2.2"), 1).as_deref(), Some("ip:2.2.2.2"));
    assert_eq!(key(xff("6.6.6.6, 1.1.1.1, 2.2.2.2"), 2).as_deref(), Some("ip:1.1.1.1"));
    // Too few entries, or not an address: the connecting address, never the forged entry.
    assert_eq!(key(xff("6.6.6.6"), 2).as_deref(), Some("ip:10.0.0.9"));
    assert_eq!(key(xff("6.6.6.6, evil"), 1).as_deref(), Some("ip:10.0.0.9"));
    assert_eq!(key(req(), 1).as_deref(), Some("ip:10.0.0.9"));
    // source_ip ignores the header entirely.
    let k = with_view(xff("1.1.1.1"), |v| source_key(v, ThrottleKey::SourceIp, 1));
    assert_eq!(k.as_deref(), Some("ip:10.0.0.9"));
}

#[test]
fn peer_and_ipv6_keys() {
    let k = with_view(req().peer("spiffe://cluster.local/ns/a/sa/b"), |v| source_key(v, ThrottleKey::Peer, 1));
    assert_eq!(k.as_deref(), Some("peer:spiffe://cluster.local/ns/a/sa/b"));
    let k = with_view(req(), |v| source_key(v, ThrottleKey::Peer, 1));
    assert_eq!(k.as_deref(), Some("ip:10.0.0.9"), "no peer: the source address");
    let v6 = CheckRequestBuilder::new("GET", "/x").host("h.test").source_ip("2001:db8:1:2:aaaa::1");
    let k = with_view(v6, |v| source_key(v, ThrottleKey::SourceIp, 1));
    assert_eq!(k.as_deref(), Some("ip:2001:db8:1:2::/64"));
}

#[test]
fn claimed_identities_are_read_unverified_and_never_hold_the_credential() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = b64.encode(r#"{"iss":"https://idp.test","sub":"alice\u0000x"}"#);
    let forged = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.Zm9yZ2Vk");
    let headers = CredentialHeaders { token: vec!["authorization".into()], api_key: Some("x-api-key".into()) };
    let id = with_view(req().bearer(&forged), |v| claimed_identity(v, &headers));
    assert_eq!(id.as_deref(), Some("jwt:https://idp.test|alice?x"));
    let id = with_view(req().header("x-api-key", "super-secret-key"), |v| claimed_identity(v, &headers));
    let id = id.expect("api key prefix");
    assert!(id.starts_with("key:") && id.len() == 12 && !id.contains("secret"), "{id}");
    // Garbage and oversized claims: nothing, or a bounded key.
    assert_eq!(with_view(req().bearer("not-a-jwt"), |v| claimed_identity(v, &headers)), None);
    let huge = b64.encode(format!(r#"{{"iss":"x","sub":"{}"}}"#, "s".repeat(2000)));
    let id = with_view(req().bearer(&format!("a.{huge}.b")), |v| claimed_identity(v, &headers));
    let id = id.expect("bounded");
    assert!(id.len() <= MAX_KEY_BYTES + 16 && id.starts_with("jwt:x|sss"), "{id}");
    let huge = b64.encode(format!(r#"{{"iss":"x","sub":"{}"}}"#, "s".repeat(MAX_PAYLOAD_CHARS)));
    let id = with_view(req().bearer(&format!("a.{huge}.b")), |v| claimed_identity(v, &headers));
    assert_eq!(id.as_deref(), Some("jwt:?|(oversized claims)"), "not parsed, one shared signal");
}

/// Log lines written while `f` runs (this thread only).
fn captured(f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let sub = tracing_subscriber::fmt().with_writer(move || out.clone()).with_ansi(false).finish();
    tracing::subscriber::with_default(sub, f);
    let bytes = buf.0.lock().expect("buffer").clone();
    String::from_utf8(bytes).expect("utf-8")
}

#[test]
fn one_warn_line_per_crossing_and_no_credential_in_it() {
    let cfg = ThrottleConfig { enabled: true, max_failures: 3, ..ThrottleConfig::default() };
    let headers = CredentialHeaders { token: vec!["authorization".into()], api_key: Some("x-api-key".into()) };
    let a = Anomalies::new(&cfg, headers, &mut Registry::default());
    let logs = captured(|| {
        for ip in ["10.0.0.1", "10.0.0.2"] {
            let b =
                CheckRequestBuilder::new("GET", "/x").host("h.test").source_ip(ip).header("x-api-key", "hunter2-key");
            for _ in 0..10 {
                with_view(b.clone(), |v| a.record_failure(v, "invalid_api_key"));
            }
        }
    });
    let warns: Vec<&str> = logs.lines().filter(|l| l.contains("crossed the threshold")).collect();
    // Two sources cross, and the one API key they share crosses once.
    assert_eq!(warns.len(), 3, "{logs}");
    assert_eq!(warns.iter().filter(|l| l.contains("ip:10.0.0.1")).count(), 1, "{logs}");
    assert_eq!(warns.iter().filter(|l| l.contains("kind=\"identity\"")).count(), 1, "{logs}");
    assert!(!logs.contains("hunter2"), "{logs}");
    let r = a.report(10);
    assert_eq!((r.sources_over_threshold, r.identities_over_threshold), (2, 1));
    assert_eq!(r.identities[0].count, 20);
}
