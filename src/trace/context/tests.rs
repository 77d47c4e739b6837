use super::*;

fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
    move |n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
}

fn remote_ids(p: Parent) -> (String, String, bool) {
    match p {
        Parent::Remote(sc) => (sc.trace_id().to_string(), sc.span_id().to_string(), sc.is_sampled()),
        other => panic!("expected a remote parent, got {other:?}"),
    }
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn w3c_traceparent_and_tracestate_are_read() {
    let p = parent(headers(&[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")]));
    let Parent::Remote(sc) = p else { panic!("{p:?}") };
    assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
    assert!(sc.is_sampled() && sc.is_remote());
    assert_eq!(sc.trace_state().get("congo"), Some("t61rcWkgMzE"));
    let unsampled = TP.replace("-01", "-00");
    assert!(!remote_ids(parent(headers(&[("traceparent", &unsampled)]))).2);
}

#[test]
fn malformed_traceparent_is_no_parent() {
    let long = format!("{TP}{}", "0".repeat(300));
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        &long,
    ] {
        assert_eq!(parent(headers(&[("traceparent", bad)])), Parent::None, "{bad}");
    }
    // A bad tracestate does not cost the parent.
    let p = parent(headers(&[("traceparent", TP), ("tracestate", "=,,not valid")]));
    assert_eq!(remote_ids(p).1, "00f067aa0ba902b7");
}

#[test]
fn b3_single_and_multi_are_read() {
    let (t, s, sampled) =
        remote_ids(parent(headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")])));
    assert_eq!((t.as_str(), s.as_str(), sampled), ("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", true));
    // A 64-bit trace id is left-padded; no sampling state is "deferred", followed as sampled.
    let (t, _, sampled) = remote_ids(parent(headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")])));
    assert_eq!((t.as_str(), sampled), ("0000000000000000a3ce929d0e0e4736", true));
    assert!(!remote_ids(parent(headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0")]))).2);
    assert_eq!(parent(headers(&[("b3", "0")])), Parent::Unsampled);
    assert_eq!(parent(headers(&[("b3", "1")])), Parent::None);

    let multi = [
        ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-sampled", "1"),
    ];
    let (t, s, sampled) = remote_ids(parent(headers(&multi)));
    assert_eq!((t.as_str(), s.as_str(), sampled), ("463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312", true));
    let unsampled = [multi[0], multi[1], ("x-b3-sampled", "0")];
    assert!(!remote_ids(parent(headers(&unsampled))).2);
    let debug = [multi[0], multi[1], ("x-b3-sampled", "0"), ("x-b3-flags", "1")];
    assert!(remote_ids(parent(headers(&debug))).2);
    assert_eq!(parent(headers(&[("x-b3-sampled", "0")])), Parent::Unsampled);
    // W3C wins over B3 when both are present.
    let both = [("traceparent", TP), multi[0], multi[1]];
    assert_eq!(remote_ids(parent(headers(&both))).1, "00f067aa0ba902b7");
}

#[test]
fn malformed_b3_is_no_parent() {
    for bad in [
        "x",
        "80f198ee56343ba864fe8b2a57d3eff7",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd-1",
        "80f198ee56343ba8-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
        "80f198ee56343ba8-e457b5a2e4d86bd1-1-zz",
        "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
        "80f198ee56343ba864fe8b2a57d3eff-e457b5a2e4d86bd1",
    ] {
        assert_eq!(parent(headers(&[("b3", bad)])), Parent::None, "{bad}");
    }
    let bad_trace = [("x-b3-traceid", "zz"), ("x-b3-spanid", "a2fb4a1d1a96d312")];
    let short_span = [("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d31")];
    let bad_sampled =
        [("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d312"), ("x-b3-sampled", "2")];
    assert_eq!(parent(headers(&bad_trace)), Parent::None);
    assert_eq!(parent(headers(&short_span)), Parent::None);
    assert_eq!(parent(headers(&bad_sampled)), Parent::None);
}

/// A request whose raw headers are `pairs` (in `header_map`, as Envoy sends them).
fn request(pairs: &[(&str, &str)]) -> CheckRequestIn {
    use crate::proto::auth::attribute_context::{HttpRequest, Request};
    use crate::proto::auth::{AttributeContext, CheckRequest};
    use crate::proto::core::{HeaderMap, HeaderValue};
    let headers =
        pairs.iter().map(|(k, v)| HeaderValue { key: (*k).into(), value: (*v).into(), ..Default::default() }).collect();
    crate::proto::check_in(&CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest { header_map: Some(HeaderMap { headers }), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
}

/// The decision log's trace id skips `tracestate` but must read what the span's parent reads:
/// W3C before B3, B3 single before multi, malformed or repeated context as none.
#[test]
fn the_logged_trace_id_is_the_parents() {
    let b3_multi = [("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"), ("x-b3-spanid", "e457b5a2e4d86bd1")];
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("traceparent", TP)],
        vec![("traceparent", TP), ("tracestate", "=,,not valid")],
        vec![("traceparent", TP), ("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")],
        vec![("traceparent", "00-zz-00f067aa0ba902b7-01"), ("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")],
        vec![("traceparent", TP), ("traceparent", TP)],
        vec![("b3", "0")],
        vec![("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0")],
        vec![("b3", "not-b3"), b3_multi[0], b3_multi[1]],
        b3_multi.to_vec(),
        vec![b3_multi[0]],
    ];
    let mut seen = 0;
    for pairs in cases {
        let req = request(&pairs);
        let want = match parent(|n| raw_header(&req, n)) {
            Parent::Remote(sc) => Some(u128::from_be_bytes(sc.trace_id().to_bytes())),
            Parent::Unsampled | Parent::None => None,
        };
        assert_eq!(request_trace_id(&req), want, "{pairs:?}");
        seen += usize::from(want.is_some());
    }
    assert_eq!(seen, 7, "the cases cover ids from every source");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 2048, failure_persistence: None, ..proptest::prelude::ProptestConfig::default()
    })]

    /// The ids are read by our own hex loop: the same ids as opentelemetry's `from_hex` for
    /// every string of hex digits (either case) of the lengths the parsers pass, and none for
    /// a sign, a space or any other character.
    #[test]
    fn ids_are_read_as_from_hex_reads_them(
        trace in "[0-9a-fA-F]{1,32}",
        span in "[0-9a-fA-F]{1,16}",
        junk in "[+ \\-xg.]",
        at in 0usize..16,
    ) {
        let sc = remote(&trace, &span, true);
        let want_trace = TraceId::from_hex(&trace.to_ascii_lowercase()).ok().filter(|t| *t != TraceId::INVALID);
        let want_span = SpanId::from_hex(&span.to_ascii_lowercase()).ok().filter(|s| *s != SpanId::INVALID);
        proptest::prop_assert_eq!(sc.as_ref().map(|c| c.trace_id()), want_trace.filter(|_| want_span.is_some()));
        proptest::prop_assert_eq!(sc.as_ref().map(|c| c.span_id()), want_span.filter(|_| want_trace.is_some()));
        let mut bad = span.clone();
        bad.insert_str(at.min(bad.len()), &junk);
        proptest::prop_assert!(remote(&trace, &bad, true).is_none());
        let signed = format!("{junk}{trace}");
        proptest::prop_assert!(hex_value(&signed).is_none());
    }
}
