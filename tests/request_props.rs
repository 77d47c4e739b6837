//! Property tests of path and host canonicalization (issue 10). Each property runs 10,000 cases
//! by default; `PROPTEST_CASES` overrides it (`scripts/fuzz.sh` runs 1,000,000).
//!
//! The reference path canonicalizer below is written independently of `src/request.rs`: RFC 3986
//! §5.2.4 `remove_dot_segments` as the RFC states it (string buffers, rules A–E), then slash
//! merging, after the same decoding of unreserved percent-escapes.
use std::net::{Ipv4Addr, Ipv6Addr};

use portcullis::config::MatrixParameters;
use portcullis::request::{RequestError, normalize_host, normalize_path};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PtConfig, TestRunner};

fn config() -> PtConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    // No regression files written into the source tree; a failure prints its minimal input.
    PtConfig { cases, failure_persistence: None, ..PtConfig::default() }
}

// ---- generators -------------------------------------------------------------------------------

/// One piece of a path segment: mostly ordinary text, sometimes escapes, parameters and junk.
fn atom() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => "[a-zA-Z0-9_~-]{1,6}",
        4 => Just("é".to_owned()),
        4 => Just("日本".to_owned()),
        // Escapes of unreserved characters (decoded), in both hex cases.
        6 => prop::sample::select(vec!["%61", "%41", "%7e", "%7E", "%2d", "%2D", "%5f", "%30", "%2e", "%2E"])
            .prop_map(str::to_owned),
        // Escapes of reserved / non-ASCII bytes (kept, upper-cased).
        5 => prop::sample::select(vec!["%3f", "%3F", "%23", "%25", "%20", "%c3%a9", "%C3%A9", "%2c", "%40"])
            .prop_map(str::to_owned),
        2 => Just(".".to_owned()),
        // Hostile: parameters, encoded separators, bad escapes, controls, fragments.
        1 => prop::sample::select(vec![";", ";x", ";v=1", "%3B", "%3b", ";jsessionid=1"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["%2F", "%2f", "%5C", "%5c", "\\", "%00", "%1f", "%zz", "%", "%4", "#", "?"])
            .prop_map(str::to_owned),
    ]
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(String::new()),
        3 => Just(".".to_owned()),
        3 => Just("..".to_owned()),
        1 => prop::sample::select(vec!["%2e", "%2E%2e", ".%2e", "%2e."]).prop_map(str::to_owned),
        20 => prop::collection::vec(atom(), 1..4).prop_map(|v| v.concat()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..8), any::<bool>()).prop_map(|(segs, trailing)| {
        let mut p = format!("/{}", segs.join("/"));
        if trailing {
            p.push('/');
        }
        p
    })
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => "[a-zA-Z][a-zA-Z0-9_-]{0,8}",
        2 => "[0-9]{1,4}",
        1 => "0[xX][0-9a-fA-F]{0,4}",
        1 => Just(String::new()),
        1 => "[a-z]{64}",
    ]
}

fn host() -> impl Strategy<Value = String> {
    let port = prop_oneof![
        6 => Just(String::new()),
        3 => (1u32..=65535).prop_map(|p| format!(":{p}")),
        1 => prop::sample::select(vec![":", ":0", ":65536", ":+1", ":08x", ":999999"]).prop_map(str::to_owned),
    ];
    let name = prop_oneof![
        8 => (prop::collection::vec(label(), 1..5), any::<bool>()).prop_map(|(l, dot)| {
            let mut h = l.join(".");
            if dot {
                h.push('.');
            }
            h
        }),
        3 => any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
        3 => any::<Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
        1 => (any::<Ipv6Addr>(), "[a-z:]{0,4}").prop_map(|(ip, junk)| format!("[{ip}]{junk}")),
        1 => "\\[[0-9a-fA-F:.a-z%]{0,20}\\]",
        1 => "[ -~]{0,12}",
    ];
    (name, port).prop_map(|(n, p)| format!("{n}{p}"))
}

// ---- the independent reference ----------------------------------------------------------------

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escapes of unreserved characters (and `%3B` to `;`); upper-cases the others.
fn reference_decode(p: &str) -> String {
    let mut out = String::new();
    let mut rest = p;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let hex = &rest[i + 1..i + 3];
        let v = u8::from_str_radix(hex, 16).expect("accepted paths have valid escapes");
        if unreserved(v) || v == b';' {
            out.push(v as char);
        } else {
            out.push('%');
            out.push_str(&hex.to_ascii_uppercase());
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out
}

/// RFC 3986 §5.2.4, step by step.
fn remove_dot_segments(input: &str) -> String {
    fn pop_last(out: &mut String) {
        match out.rfind('/') {
            Some(i) => out.truncate(i),
            None => out.clear(),
        }
    }
    let mut input = input.to_owned();
    let mut output = String::new();
    while !input.is_empty() {
        if input.starts_with("../") {
            input.drain(..3);
        } else if input.starts_with("./") {
            input.drain(..2);
        } else if input.starts_with("/./") {
            input.replace_range(..3, "/");
        } else if input == "/." {
            input = "/".into();
        } else if input.starts_with("/../") {
            input.replace_range(..4, "/");
            pop_last(&mut output);
        } else if input == "/.." {
            input = "/".into();
            pop_last(&mut output);
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            output.push_str(&input[..end]);
            input.drain(..end);
        }
    }
    output
}

fn merge_slashes(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

fn reference(p: &str, strip: bool) -> String {
    let decoded = reference_decode(p);
    let decoded = if strip {
        decoded.split('/').map(|s| s.split(';').next().unwrap_or("")).collect::<Vec<_>>().join("/")
    } else {
        decoded
    };
    merge_slashes(&remove_dot_segments(&decoded))
}

fn check_shape(out: &str) -> Result<(), TestCaseError> {
    prop_assert!(out.starts_with('/'), "{out}");
    prop_assert!(!out.contains("//"), "{out}");
    prop_assert!(!out.contains("/./") && !out.contains("/../"), "{out}");
    prop_assert!(!out.ends_with("/.") && !out.ends_with("/.."), "{out}");
    prop_assert!(!out.split('/').any(|s| s == "." || s == ".."), "{out}");
    let upper = out.to_ascii_uppercase();
    prop_assert!(!upper.contains("%2F") && !upper.contains("%5C") && !out.contains('\\'), "{out}");
    prop_assert!(!out.contains(';') && !upper.contains("%3B") && !out.contains('#'), "{out}");
    Ok(())
}

// ---- path properties --------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// (a) Canonical paths are fixed points; (b) their shape; (c) they equal the reference.
    #[test]
    fn accepted_paths_are_canonical_and_match_rfc_3986(p in path()) {
        for (mode, strip) in [(MatrixParameters::Refuse, false), (MatrixParameters::Strip, true)] {
            if let Ok(out) = normalize_path(&p, mode) {
                prop_assert_eq!(normalize_path(&out, mode), Ok(out.clone()), "not idempotent: {}", p);
                check_shape(&out)?;
                prop_assert_eq!(&out, &reference(&p, strip), "differs from RFC 3986 + merge: {}", p);
            }
        }
    }

    /// Refusals are for a reason the generator put there, and the two modes agree on everything
    /// but parameters.
    #[test]
    fn refusals_have_a_cause(p in path()) {
        let refuse = normalize_path(&p, MatrixParameters::Refuse);
        let strip = normalize_path(&p, MatrixParameters::Strip);
        let has_param = reference_decode_lossy(&p).contains(';');
        if !has_param {
            prop_assert_eq!(&refuse, &strip, "{}", p);
        }
        if refuse == Err(RequestError::PathParameter) {
            prop_assert!(has_param, "{}", p);
        }
        if let Ok(out) = &refuse {
            prop_assert!(!has_param);
            prop_assert_eq!(Ok(out), strip.as_ref());
        }
        if refuse == Err(RequestError::AmbiguousDotSegment) {
            // Merging first and resolving second would have given something else, or the same:
            // either way the `..` came after an empty segment.
            prop_assert!(p.contains("//") || has_param, "{}", p);
        }
    }

    /// (d) Nothing panics, whatever the input.
    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>(), b in "/[ -~]{0,40}") {
        let rooted = format!("/{s}");
        for input in [s.as_str(), b.as_str(), rooted.as_str()] {
            for mode in [MatrixParameters::Refuse, MatrixParameters::Strip] {
                if let Ok(out) = normalize_path(input, mode) {
                    check_shape(&out)?;
                    prop_assert_eq!(normalize_path(&out, mode), Ok(out.clone()));
                }
            }
            let _ = normalize_host(input);
        }
    }
}

/// Decodes for the "has a parameter" question without requiring valid escapes.
fn reference_decode_lossy(p: &str) -> String {
    p.replace("%3B", ";").replace("%3b", ";")
}

/// (e) The generator is mostly acceptable input, so the properties above are not vacuous.
#[test]
fn most_generated_paths_are_accepted() {
    let mut runner = TestRunner::deterministic();
    let strategy = path();
    let n = 5_000;
    let mut accepted = 0;
    let mut refused_ambiguous = 0;
    for _ in 0..n {
        let p = strategy.new_tree(&mut runner).expect("generate").current();
        match normalize_path(&p, MatrixParameters::Refuse) {
            Ok(_) => accepted += 1,
            Err(RequestError::AmbiguousDotSegment) => refused_ambiguous += 1,
            Err(_) => {}
        }
    }
    eprintln!("{accepted} of {n} generated paths accepted, {refused_ambiguous} refused as ambiguous");
    assert!(accepted * 2 >= n, "only {accepted} of {n} generated paths accepted");
    // Each refusal class the generator aims at is actually reached.
    assert!(refused_ambiguous > 0);
}

/// (e) Spellings the contract accepts, each equal to its canonical form.
#[test]
fn the_accepted_spellings_are_accepted_and_equal() {
    for (canonical, spelling) in [
        ("/a", "/%61"),
        ("/A", "/%41"),
        ("/~x", "/%7Ex"),
        ("/~x", "/%7ex"),
        ("/a/b", "/a/./b"),
        ("/a/b", "/a/x/../b"),
        ("/a/b", "/a/x/%2e%2E/b"),
        ("/a/b", "/a//b"),
        ("/a/b", "//a///b"),
        ("/a/b/", "/a/b/"),
        ("/a/b/", "/a/b//"),
        ("/a/", "/a/."),
        ("/a/", "/a/b/.."),
        ("/", "/a/.."),
        ("/a%3Fb", "/a%3fb"),
        ("/caf%C3%A9", "/caf%c3%a9"),
        ("/café", "/café"),
    ] {
        assert_eq!(normalize_path(spelling, MatrixParameters::Refuse).as_deref(), Ok(canonical), "{spelling}");
        assert_eq!(reference(spelling, false), canonical, "reference disagrees on {spelling}");
    }
}

// ---- host properties --------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Accepted hosts re-parse to themselves and have the grammar's shape; bracketed input is
    /// accepted only when std parses it as IPv6, and comes back as std prints it.
    #[test]
    fn accepted_hosts_are_canonical(h in host()) {
        let Ok(out) = normalize_host(&h) else { return Ok(()) };
        // An absent host (proxyless gRPC sends none) stays absent; nothing else is empty.
        prop_assert_eq!(out.is_empty(), h.is_empty(), "{}", h);
        if out.is_empty() {
            return Ok(());
        }
        if let Some(rest) = h.strip_prefix('[') {
            let inner = rest.split(']').next().unwrap_or("");
            let ip: Ipv6Addr = inner.parse().map_err(|_| TestCaseError::fail(format!("not IPv6: {h}")))?;
            prop_assert_eq!(&out, &ip.to_string());
            prop_assert_eq!(normalize_host(&format!("[{out}]")), Ok(out.clone()));
            return Ok(());
        }
        prop_assert_eq!(normalize_host(&out), Ok(out.clone()), "not a fixed point: {}", h);
        prop_assert!(!out.is_empty() && !out.ends_with('.') && !out.contains(':'), "{}", out);
        prop_assert_eq!(out.to_ascii_lowercase(), out.clone());
        let last = out.rsplit('.').next().unwrap_or("");
        if last.bytes().all(|b| b.is_ascii_digit()) {
            // A numeric-looking host is only ever the canonical dotted quad.
            let ip: Ipv4Addr = out.parse().map_err(|_| TestCaseError::fail(format!("not IPv4: {h}")))?;
            prop_assert_eq!(ip.to_string(), out);
        }
    }

    /// Every IP address is accepted in its canonical spelling, with or without a port.
    #[test]
    fn addresses_are_accepted(v4 in any::<Ipv4Addr>(), v6 in any::<Ipv6Addr>(), port in 1u16..) {
        prop_assert_eq!(normalize_host(&v4.to_string()), Ok(v4.to_string()));
        prop_assert_eq!(normalize_host(&format!("{v4}:{port}")), Ok(v4.to_string()));
        prop_assert_eq!(normalize_host(&format!("[{v6}]")), Ok(v6.to_string()));
        prop_assert_eq!(normalize_host(&format!("[{v6}]:{port}")), Ok(v6.to_string()));
        // The same numbers in a form WHATWG would also read as an address are refused.
        let n = u32::from(v4);
        prop_assert_eq!(normalize_host(&n.to_string()), Err(RequestError::BadHost));
        prop_assert_eq!(normalize_host(&format!("0x{n:x}")), Err(RequestError::BadHost));
    }

    /// No panic on arbitrary bytes that form a string.
    #[test]
    fn arbitrary_hosts_never_panic(s in any::<String>()) {
        if let Ok(out) = normalize_host(&s) {
            let again = if out.contains(':') { format!("[{out}]") } else { out.clone() };
            prop_assert_eq!(normalize_host(&again), Ok(out));
        }
    }
}
