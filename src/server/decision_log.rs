//! The decision line (schema: docs/observability.md, "Decision log"). With JSON logs the check
//! hands the writer thread the decision itself (moved, not cloned, with the time it was made) and
//! the thread formats the line: the field names and level are static bytes, the values are
//! escaped exactly as `tracing-subscriber`'s JSON formatter escapes them, so the line is the one
//! `tracing::info!` would write. Text logs (for people at a terminal) go through `tracing`.
//! Never a credential: identities are the verified ones, request facts the normalized ones, no
//! header value.
use std::borrow::Cow;
use std::io::Write as _;
use std::time::SystemTime;

use crate::config::SubjectLog;
use crate::decision::Decision;
use crate::telemetry::DeferredLine;

/// One decision line, formatted by the log writer thread.
pub(super) struct DecisionLine {
    pub(super) at: SystemTime,
    pub(super) decision: Decision,
    pub(super) latency_us: u64,
    pub(super) subject_log: SubjectLog,
}

/// The one decision log line per check. Filtered out (e.g. `level: warn`): nothing is done.
pub(super) fn log_decision(d: Decision, latency_us: u64, subject_log: SubjectLog) {
    if !tracing::enabled!(target: "portcullis::decision", tracing::Level::INFO) {
        return;
    }
    match crate::telemetry::deferred_lines() {
        Some(sink) => sink.push(Box::new(DecisionLine { at: SystemTime::now(), decision: d, latency_us, subject_log })),
        None => log_via_tracing(&d, latency_us, subject_log),
    }
}

/// The subject and principal as logged (`log.subject`), control characters escaped.
fn logged_identity(d: &Decision, subject_log: SubjectLog) -> (Option<Cow<'_, str>>, Cow<'_, str>) {
    let a = d.audit();
    let hash = subject_log == SubjectLog::Hash;
    let subject = a.subject.as_deref().map(|s| if hash { Cow::Owned(subject_hash(s)) } else { printable(s) });
    let principal = match (&subject, hash && a.principal_is_subject && !d.principal().is_empty()) {
        (Some(h), true) => Cow::Owned(format!("{}::\"{h}\"", principal_type(d.principal()))),
        _ => printable(d.principal()),
    };
    (subject, principal)
}

/// The line through `tracing` (text logs, or no writer thread installed, as in tests).
pub(super) fn log_via_tracing(d: &Decision, latency_us: u64, subject_log: SubjectLog) {
    let a = d.audit();
    let (subject, principal) = logged_identity(d, subject_log);
    tracing::info!(
        target: "portcullis::decision",
        request_id = %d.request_id(),
        trace_id = a.trace_id.map(|t| tracing::field::display(TraceId(t))),
        source_ip = a.source_ip.map(tracing::field::display),
        peer = a.peer.as_deref(),
        issuer = a.issuer.as_deref(),
        subject = subject.as_deref(),
        api_client = a.api_client.as_deref(),
        principal = %principal,
        authn = a.authn.as_str(),
        token_cache = a.token_cache,
        method = (!a.method.is_empty()).then_some(a.method.as_str()),
        host = (!a.host.is_empty()).then_some(a.host.as_str()),
        path = (!a.path.is_empty()).then_some(a.path.as_str()),
        action = %d.action(),
        resource = %d.resource(),
        decision = d.verdict(),
        status = d.http_status(),
        reason = d.reason(),
        policies = ?d.policies(),
        policy_version = a.policy_version.as_deref(),
        latency_us = latency_us,
    );
}

impl DeferredLine for DecisionLine {
    fn write_line(&self, out: &mut Vec<u8>) {
        write_json_line(&self.decision, self.at, self.latency_us, self.subject_log, out);
    }
}

/// Appends `d`'s JSON decision line (newline included) as the writer thread formats it. Public
/// (hidden) only for the `decision_log/json_line` bench.
#[doc(hidden)]
pub fn write_json_line(d: &Decision, at: SystemTime, latency_us: u64, subject_log: SubjectLog, out: &mut Vec<u8>) {
    {
        let a = d.audit();
        let (subject, principal) = logged_identity(d, subject_log);
        out.extend_from_slice(b"{\"timestamp\":\"");
        let _ = write!(out, "{}", Rfc3339(at));
        out.extend_from_slice(b"\",\"level\":\"INFO\"");
        string(out, b",\"request_id\":", d.request_id());
        if let Some(t) = a.trace_id {
            display(out, b",\"trace_id\":", TraceId(t));
        }
        if let Some(ip) = a.source_ip {
            display(out, b",\"source_ip\":", ip);
        }
        optional(out, b",\"peer\":", a.peer.as_deref());
        optional(out, b",\"issuer\":", a.issuer.as_deref());
        optional(out, b",\"subject\":", subject.as_deref());
        optional(out, b",\"api_client\":", a.api_client.as_deref());
        string(out, b",\"principal\":", &principal);
        string(out, b",\"authn\":", a.authn.as_str());
        optional(out, b",\"token_cache\":", a.token_cache);
        optional(out, b",\"method\":", Some(a.method.as_str()).filter(|s| !s.is_empty()));
        optional(out, b",\"host\":", Some(a.host.as_str()).filter(|s| !s.is_empty()));
        optional(out, b",\"path\":", Some(a.path.as_str()).filter(|s| !s.is_empty()));
        string(out, b",\"action\":", d.action());
        string(out, b",\"resource\":", d.resource());
        string(out, b",\"decision\":", d.verdict());
        let _ = write!(out, ",\"status\":{}", d.http_status());
        string(out, b",\"reason\":", d.reason());
        out.extend_from_slice(b",\"policies\":");
        let _ = serde_json::to_writer(&mut *out, &format_args!("{:?}", d.policies()));
        optional(out, b",\"policy_version\":", a.policy_version.as_deref());
        let _ = write!(out, ",\"latency_us\":{}", latency_us);
        out.extend_from_slice(b",\"target\":\"portcullis::decision\"}\n");
    }
}

/// `key` (`,"name":`) and a JSON string, escaped as serde_json (and so tracing-subscriber) does.
fn string(out: &mut Vec<u8>, key: &[u8], v: &str) {
    out.extend_from_slice(key);
    let _ = serde_json::to_writer(&mut *out, v);
}

/// A field left out of the line when absent, as `tracing` leaves out a `None`.
fn optional(out: &mut Vec<u8>, key: &[u8], v: Option<&str>) {
    if let Some(v) = v {
        string(out, key, v);
    }
}

/// A `%`-formatted field: its `Display` output as a JSON string, without an intermediate `String`.
fn display(out: &mut Vec<u8>, key: &[u8], v: impl std::fmt::Display) {
    out.extend_from_slice(key);
    let _ = serde_json::to_writer(&mut *out, &format_args!("{v}"));
}

/// A trace id as 32 lower-case hex digits, formatted only when the line is written.
struct TraceId(u128);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A time as tracing-subscriber's default timer writes it: RFC 3339, UTC, microseconds.
struct Rfc3339(SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (secs, nanos) = match self.0.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                match d.subsec_nanos() {
                    0 => (-(d.as_secs() as i64), 0),
                    n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
                }
            }
        };
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        if year > 9999 {
            write!(f, "+{year}")?;
        } else if year < 0 {
            write!(f, "{year:05}")?;
        } else {
            write!(f, "{year:04}")?;
        }
        write!(f, "-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z", rem / 3600, rem / 60 % 60, rem % 60, nanos / 1_000)
    }
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `sha256:` and the first 16 hex digits of SHA-256(subject) (`log.subject: hash`).
fn subject_hash(subject: &str) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(&sha2::Sha256::digest(subject.as_bytes())[..8]))
}

/// `User` from `User::"alice"`.
fn principal_type(principal: &str) -> &str {
    principal.rfind("::\"").map_or(principal, |i| &principal[..i])
}

/// A value as logged: control characters escaped, so a text line stays one line.
fn printable(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) { Cow::Owned(s.escape_debug().to_string()) } else { Cow::Borrowed(s) }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::decision::{Allow, Audit, AuthnMethods, Deny, Status};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line `tracing-subscriber`'s JSON formatter writes for `d`, as `telemetry` configures it.
    fn via_tracing(d: &Decision, subject_log: SubjectLog) -> String {
        let cap = Capture::default();
        let w = cap.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, || log_via_tracing(d, 1234, subject_log));
        String::from_utf8(cap.0.lock().unwrap().clone()).unwrap()
    }

    /// The line the writer thread formats for `d`.
    fn deferred(d: Decision, subject_log: SubjectLog, at: SystemTime) -> String {
        let mut out = Vec::new();
        DecisionLine { at, decision: d, latency_us: 1234, subject_log }.write_line(&mut out);
        String::from_utf8(out).unwrap()
    }

    /// Both lines for `d`, the tracing one with the deferred one's timestamp (taken later).
    fn both(d: Decision, subject_log: SubjectLog) -> (String, String) {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_062_336_908_900);
        let traced = via_tracing(&d, subject_log);
        let ours = deferred(d, subject_log, at);
        let rest = traced.strip_prefix("{\"timestamp\":\"").and_then(|r| r.split_once('"')).expect("timestamp").1;
        (format!("{{\"timestamp\":\"2026-11-30T18:12:16.908900Z\"{rest}"), ours)
    }

    fn full_audit() -> Audit {
        Audit {
            trace_id: Some(0x4bf92f3577b34da6a3ce929d0e0e4736),
            source_ip: Some("10.0.3.17".parse::<IpAddr>().unwrap()),
            peer: Some("spiffe://cluster.local/ns/frontend/sa/web".into()),
            issuer: Some("https://idp.example/\"q\"".into()),
            subject: Some("al\"ice\u{1}\n\\é".into()),
            api_client: Some("batch".into()),
            principal_is_subject: true,
            method: "GET".into(),
            host: "shop.example".into(),
            path: "/api/é/\"x\"".into(),
            authn: AuthnMethods { jwt: true, mtls: true, api_key: true },
            token_cache: Some("hit"),
            policy_version: Some("daff7d677109".into()),
        }
    }

    #[test]
    fn a_deferred_line_is_byte_identical_to_the_tracing_one() {
        let allow = Decision::Allow(Allow {
            principal: "User::\"al\\\"ice\u{1}\"".into(),
            action: "Action::\"GET\"".into(),
            resource: "Route::\"shop.example/api\"".into(),
            policies: vec!["users-read-api".into(), "we\"ird\u{7}".into()],
            upstream_headers: vec![("x-portcullis-subject".into(), "secret-looking".into())],
            remove_headers: vec!["authorization".into()],
            request_id: "r-1".into(),
            shadow: None,
            audit: full_audit(),
        });
        let mut v6 = Deny::new(Status::Forbidden, "no_permit", "");
        v6.audit = Audit { source_ip: Some("::1".parse().unwrap()), ..Audit::default() };
        let cases: [Decision; 4] = [
            allow.clone(),
            Decision::deny(Status::BadRequest, "path_fragment", "7f9c2a1e-400"),
            v6.into(),
            Deny { audit: full_audit(), ..Deny::new(Status::Unauthorized, "bad_signature", "r-3") }.into(),
        ];
        for d in cases {
            for mode in [SubjectLog::Plain, SubjectLog::Hash] {
                let (traced, ours) = both(d.clone(), mode);
                assert_eq!(ours, traced, "{mode:?}");
                assert!(ours.ends_with('\n') && ours.matches('\n').count() == 1);
                serde_json::from_str::<serde_json::Value>(&ours).expect("one JSON object");
            }
        }
        // The hashed subject also hides it in the principal, and headers never reach the line.
        let (_, hashed) = both(allow, SubjectLog::Hash);
        assert!(!hashed.contains("al\\\"ice") && hashed.contains("\"principal\":\"User::\\\"sha256:"), "{hashed}");
        assert!(!hashed.contains("secret-looking") && !hashed.contains("authorization"), "{hashed}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_microseconds() {
        let at = |micros: u64| Rfc3339(SystemTime::UNIX_EPOCH + Duration::from_micros(micros)).to_string();
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(1_709_168_461_000_007), "2024-02-29T01:01:01.000007Z");
        assert_eq!(at(1_796_062_336_908_900), "2026-11-30T18:12:16.908900Z");
        assert_eq!(at(253_402_300_799_999_999), "9999-12-31T23:59:59.999999Z");
        let before = Rfc3339(SystemTime::UNIX_EPOCH - Duration::from_micros(1)).to_string();
        assert_eq!(before, "1969-12-31T23:59:59.999999Z");
    }
}
