//! The decision line (schema: docs/observability.md, "Decision log"). With JSON logs the check
//! hands the writer thread the decision itself (moved, not cloned, with the time it was made) and
//! the thread formats the line: the field names and level are static bytes, the values are
//! escaped exactly as `tracing-subscriber`'s JSON formatter escapes them, so the line is the one
//! `tracing::info!` would write. Text logs (for people at a terminal) go through `tracing`.
//! Never a credential: identities are the verified ones, request facts the normalized ones, no
//! header value.
use std::borrow::Cow;
use std::cell::Cell;
use std::io::Write as _;
use std::net::IpAddr;
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
        method = Some(a.request.method()).filter(|s| !s.is_empty()),
        host = Some(a.request.host()).filter(|s| !s.is_empty()),
        path = Some(a.request.path()).filter(|s| !s.is_empty()),
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
    let a = d.audit();
    let (subject, principal) = logged_identity(d, subject_log);
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, at);
    out.extend_from_slice(b"\",\"level\":\"INFO\"");
    string(out, b",\"request_id\":", d.request_id());
    if let Some(t) = a.trace_id {
        out.extend_from_slice(b",\"trace_id\":\"");
        trace_id(out, t);
        out.push(b'"');
    }
    if let Some(ip) = a.source_ip {
        out.extend_from_slice(b",\"source_ip\":\"");
        ip_addr(out, ip);
        out.push(b'"');
    }
    optional(out, b",\"peer\":", a.peer.as_deref());
    optional(out, b",\"issuer\":", a.issuer.as_deref());
    optional(out, b",\"subject\":", subject.as_deref());
    optional(out, b",\"api_client\":", a.api_client.as_deref());
    string(out, b",\"principal\":", &principal);
    string(out, b",\"authn\":", a.authn.as_str());
    optional(out, b",\"token_cache\":", a.token_cache);
    optional(out, b",\"method\":", Some(a.request.method()).filter(|s| !s.is_empty()));
    optional(out, b",\"host\":", Some(a.request.host()).filter(|s| !s.is_empty()));
    optional(out, b",\"path\":", Some(a.request.path()).filter(|s| !s.is_empty()));
    string(out, b",\"action\":", d.action());
    string(out, b",\"resource\":", d.resource());
    string(out, b",\"decision\":", d.verdict());
    out.extend_from_slice(b",\"status\":");
    uint(out, u64::from(d.http_status()));
    string(out, b",\"reason\":", d.reason());
    out.extend_from_slice(b",\"policies\":");
    policies(out, d.policies());
    optional(out, b",\"policy_version\":", a.policy_version.as_deref());
    out.extend_from_slice(b",\"latency_us\":");
    uint(out, latency_us);
    out.extend_from_slice(b",\"target\":\"portcullis::decision\"}\n");
}

/// `key` (`,"name":`) and a JSON string, escaped as serde_json (and so tracing-subscriber) does.
fn string(out: &mut Vec<u8>, key: &[u8], v: &str) {
    out.extend_from_slice(key);
    json_str(out, v);
}

/// A field left out of the line when absent, as `tracing` leaves out a `None`.
fn optional(out: &mut Vec<u8>, key: &[u8], v: Option<&str>) {
    if let Some(v) = v {
        string(out, key, v);
    }
}

/// `v` as a JSON string, quotes included, escaped exactly as serde_json escapes it: `"` and `\`
/// with a backslash, `\b \t \n \f \r` short, every other byte below 0x20 as `\u00XX` (lower-case
/// hex); everything else (DEL, non-ASCII) as is. Runs that need nothing are found eight bytes at
/// a time and copied in one go (a decision line is ~600 bytes, nearly all of them plain).
fn json_str(out: &mut Vec<u8>, v: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = v.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut at = 0;
    while let Some(rest) = b.get(at..) {
        let run = plain_run(rest);
        out.extend_from_slice(&rest[..run]);
        at += run;
        let Some(&c) = b.get(at) else { break };
        at += 1;
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            b'\t' => b't',
            b'\n' => b'n',
            0x0c => b'f',
            b'\r' => b'r',
            _ => {
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]]);
                continue;
            }
        };
        out.extend_from_slice(&[b'\\', short]);
    }
    out.push(b'"');
}

/// How many leading bytes of `b` JSON takes as they are (none below 0x20, no `"` or `\`).
fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Exact for "any byte of the word": a borrow only ever runs up from a byte that matched.
    let zero_byte = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS != 0;
    let below_space = |w: u64| w.wrapping_sub(ONES * 0x20) & !w & HIGHS != 0;
    let mut n = 0;
    for chunk in b.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_ne_bytes(word);
        if below_space(w) || zero_byte(w ^ (ONES * u64::from(b'"'))) || zero_byte(w ^ (ONES * u64::from(b'\\'))) {
            break;
        }
        n += 8;
    }
    n + b[n..].iter().take_while(|&&c| c >= 0x20 && c != b'"' && c != b'\\').count()
}

/// The policy ids as tracing writes a `?`-formatted `&[String]`: its `Debug` text as a JSON
/// string. Ids of printable ASCII without `"` or `\` (the usual ones) are their own `Debug` text
/// and need no JSON escaping, so they are copied; anything else goes through `Debug` and
/// serde_json as tracing does.
fn policies(out: &mut Vec<u8>, ids: &[String]) {
    let plain = |id: &String| id.bytes().all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\');
    if !ids.iter().all(plain) {
        let _ = serde_json::to_writer(&mut *out, &format_args!("{ids:?}"));
        return;
    }
    out.extend_from_slice(b"\"[");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"\\\"");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\\\"");
    }
    out.extend_from_slice(b"]\"");
}

/// `v` in decimal, without `core::fmt`.
fn uint(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A trace id as 32 lower-case hex digits (what `{:032x}` writes), without `core::fmt`.
fn trace_id(out: &mut Vec<u8>, t: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((t >> (124 - 4 * i)) & 0xf) as usize];
    }
    out.extend_from_slice(&digits);
}

/// An address as its `Display` writes it (no escaping needed: digits, hex, `.` and `:`). IPv4
/// without `core::fmt`; IPv6 (zero-run compression, embedded IPv4) through its own `Display`,
/// straight into the line.
fn ip_addr(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                uint(out, u64::from(o));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A trace id as `tracing` displays it for text logs: 32 lower-case hex digits.
struct TraceId(u128);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The longest date-and-time-to-the-second prefix: `+` and a 19-digit year, then
/// `-MM-DDTHH:MM:SS.`.
const SECOND_PREFIX_MAX: usize = 40;

thread_local! {
    /// The last second the (single) writer thread formatted, and its prefix: lines come many
    /// per second, so the date arithmetic and `core::fmt` run once a second, not once a line.
    static LAST_SECOND: Cell<(i64, [u8; SECOND_PREFIX_MAX], usize)> =
        const { Cell::new((i64::MIN, [0; SECOND_PREFIX_MAX], 0)) };
}

/// A time as tracing-subscriber's default timer writes it: RFC 3339, UTC, microseconds.
fn timestamp(out: &mut Vec<u8>, at: SystemTime) {
    let (secs, nanos) = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
            }
        }
    };
    let (cached, mut prefix, mut len) = LAST_SECOND.get();
    if cached != secs {
        (prefix, len) = second_prefix(secs);
        LAST_SECOND.set((secs, prefix, len));
    }
    out.extend_from_slice(&prefix[..len]);
    let micros = nanos / 1_000;
    let mut digits = [b'0'; 6];
    let mut v = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the epoch (a year past 9999 with `+`, before 0 with
/// `-` and five characters, as the `time` crate's RFC 3339 writer in tracing-subscriber does).
fn second_prefix(secs: i64) -> ([u8; SECOND_PREFIX_MAX], usize) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let mut buf = [0u8; SECOND_PREFIX_MAX];
    let mut w = &mut buf[..];
    let _ = if year > 9999 {
        write!(w, "+{year}")
    } else if year < 0 {
        write!(w, "{year:05}")
    } else {
        write!(w, "{year:04}")
    };
    let _ = write!(w, "-{month:02}-{day:02}T{:02}:{:02}:{:02}.", rem / 3600, rem / 60 % 60, rem % 60);
    let len = SECOND_PREFIX_MAX - w.len();
    (buf, len)
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
    // Printable ASCII (the usual value) is settled by its bytes, without decoding characters.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) || !s.chars().any(char::is_control) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.escape_debug().to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::decision::{Allow, Audit, AuthnMethods, Deny, RequestLine, Status};

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
            request: RequestLine::new("GET", "shop.example", "/api/é/\"x\""),
            authn: AuthnMethods { jwt: true, mtls: true, api_key: true },
            token_cache: Some("hit"),
            policy_version: Some("daff7d677109".into()),
        }
    }

    /// Every byte class a value can hold: quotes, backslashes, each control character (short
    /// escapes and `\u00XX`), DEL, non-ASCII (2-, 3- and 4-byte, U+2028, a BOM).
    const HOSTILE: &str = "q\"b\\s/\u{0}\u{1}\u{7}\u{8}\t\n\u{b}\u{c}\r\u{1b}\u{1f} \u{7f}é\u{2028}\u{feff}😀";

    /// A decision with `v` in every string field the line carries (an empty `v`: every one
    /// present and empty), with an IPv4-mapped IPv6 source.
    fn hostile(v: &str) -> Decision {
        let audit = Audit {
            trace_id: Some(1),
            source_ip: Some("::ffff:10.1.2.3".parse().unwrap()),
            peer: Some(v.into()),
            issuer: Some(v.into()),
            subject: Some(v.into()),
            api_client: Some(v.into()),
            principal_is_subject: true,
            request: RequestLine::new(v, v, v),
            authn: AuthnMethods { jwt: true, mtls: false, api_key: true },
            token_cache: Some("miss"),
            policy_version: Some(v.into()),
        };
        Decision::Deny(Deny {
            principal: format!("User::\"{v}\"").into(),
            action: v.into(),
            resource: v.into(),
            policies: vec![v.into(), String::new(), "plain-id 'q' ~{}".into()].into(),
            audit,
            ..Deny::new(Status::Forbidden, "no_permit", v)
        })
    }

    #[test]
    fn a_deferred_line_is_byte_identical_to_the_tracing_one() {
        let allow = Decision::Allow(Allow {
            principal: "User::\"al\\\"ice\u{1}\"".into(),
            action: "Action::\"GET\"".into(),
            resource: "Route::\"shop.example/api\"".into(),
            policies: vec!["users-read-api".into(), "we\"ird\u{7}".into()].into(),
            upstream_headers: vec![("x-portcullis-subject".into(), "secret-looking".into())].into(),
            remove_headers: vec![bytes::Bytes::from("authorization")].into(),
            request_id: "r-1".into(),
            shadow: None,
            audit: full_audit(),
        });
        let mut v6 = Deny::new(Status::Forbidden, "no_permit", "");
        v6.audit = Audit { source_ip: Some("::1".parse().unwrap()), ..Audit::default() };
        let cases = [
            allow.clone(),
            Decision::deny(Status::BadRequest, "path_fragment", "7f9c2a1e-400"),
            v6.into(),
            Deny { audit: full_audit(), ..Deny::new(Status::Unauthorized, "bad_signature", "r-3") }.into(),
            // Every optional field absent, every string empty.
            Decision::deny(Status::Unavailable, "overloaded", ""),
            hostile(HOSTILE),
            hostile(""),
            hostile(&"\"\\\u{0}é\u{2028}x".repeat(20_000)),
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
        let at = |micros: i64| {
            let t = if micros >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_micros(micros as u64)
            } else {
                SystemTime::UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
            };
            let mut out = Vec::new();
            timestamp(&mut out, t);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(1_709_168_461_000_007), "2024-02-29T01:01:01.000007Z");
        assert_eq!(at(1_796_062_336_908_900), "2026-11-30T18:12:16.908900Z");
        // The same second again (its prefix reused), the next one, and back: never stale.
        assert_eq!(at(1_796_062_336_000_001), "2026-11-30T18:12:16.000001Z");
        assert_eq!(at(1_796_062_337_000_000), "2026-11-30T18:12:17.000000Z");
        assert_eq!(at(1_796_062_336_999_999), "2026-11-30T18:12:16.999999Z");
        assert_eq!(at(253_402_300_799_999_999), "9999-12-31T23:59:59.999999Z");
        assert_eq!(at(253_402_300_800_000_000), "+10000-01-01T00:00:00.000000Z");
        assert_eq!(at(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(at(-1_000_000), "1969-12-31T23:59:59.000000Z");
    }

    #[test]
    fn json_strings_escape_as_serde_json_does() {
        let long = "é\u{1}\"x".repeat(5000);
        let mut every_byte = String::new();
        for c in (0u8..=0x7f).map(char::from).chain(['\u{80}', '\u{2028}', '\u{feff}', '😀']) {
            every_byte.push(c);
        }
        for v in ["", "plain", "\"", "\\", "\u{0}", "\u{1f}\u{7f}", "a\"b\\c\nd", &every_byte, &long] {
            let mut ours = Vec::new();
            json_str(&mut ours, v);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(v).unwrap(), "{v:?}");
        }
        // Each byte that needs escaping, and its neighbours, at every offset of a word and
        // next to non-ASCII bytes (a borrow across bytes must not hide or invent a match).
        for c in (0u8..0x20).chain([b'"', b'\\', 0x21, 0x5b, 0x5d, 0x7f]).map(char::from).chain(['é', '\u{ffff}']) {
            for len in 0..20 {
                for at in 0..=len {
                    let mut v: String = "aé".repeat(len).chars().take(len).collect();
                    v.insert(v.char_indices().nth(at).map_or(v.len(), |(i, _)| i), c);
                    let mut ours = Vec::new();
                    json_str(&mut ours, &v);
                    assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&v).unwrap(), "{v:?}");
                }
            }
        }
        for n in [0u64, 7, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut ours = Vec::new();
            uint(&mut ours, n);
            assert_eq!(ours, n.to_string().as_bytes());
        }
        for t in [0u128, 1, 0x4bf92f3577b34da6a3ce929d0e0e4736, u128::MAX] {
            let mut ours = Vec::new();
            trace_id(&mut ours, t);
            assert_eq!(ours, format!("{t:032x}").as_bytes());
        }
        for ip in
            ["0.0.0.0", "255.255.255.255", "10.0.3.17", "::", "::1", "::ffff:10.0.0.1", "2001:db8::8:800:200c:417a"]
        {
            let ip: IpAddr = ip.parse().unwrap();
            let mut ours = Vec::new();
            ip_addr(&mut ours, ip);
            assert_eq!(ours, ip.to_string().as_bytes());
        }
    }
}
