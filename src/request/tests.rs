//! Unit tests of request normalization: every attack string of the security contract.
use super::*;
use crate::proto::auth::attribute_context::{HttpRequest, Request};
use crate::proto::auth::{AttributeContext, CheckRequest};
use crate::proto::core::{HeaderMap, HeaderValue};

fn norm(p: &str) -> Result<String, RequestError> {
    normalize_path(p, MatrixParameters::Refuse)
}

fn strip(p: &str) -> Result<String, RequestError> {
    normalize_path(p, MatrixParameters::Strip)
}

#[test]
fn dot_segments_and_duplicate_slashes_collapse() {
    assert_eq!(norm("/a/b/./c/../d").unwrap(), "/a/b/d");
    assert_eq!(norm("/a//b/./c/d").unwrap(), "/a/b/c/d");
    assert_eq!(norm("/").unwrap(), "/");
    assert_eq!(norm("//").unwrap(), "/");
    assert_eq!(norm("/a/b/").unwrap(), "/a/b/");
    assert_eq!(norm("/a//").unwrap(), "/a/");
    assert_eq!(norm("/a/./b").unwrap(), "/a/b");
    assert_eq!(norm("/a/x/../b").unwrap(), "/a/b");
    assert_eq!(norm("/a/x/./../b/").unwrap(), "/a/b/");
    assert_eq!(norm("//a").unwrap(), "/a");
}

#[test]
fn a_trailing_dot_segment_leaves_a_trailing_slash_as_rfc_3986_does() {
    assert_eq!(norm("/a/.").unwrap(), "/a/");
    assert_eq!(norm("/a/b/..").unwrap(), "/a/");
    assert_eq!(norm("/a/..").unwrap(), "/");
    assert_eq!(norm("/.").unwrap(), "/");
}

#[test]
fn a_dot_dot_after_an_empty_segment_is_refused_not_guessed() {
    // RFC 3986 and Envoy give /a/b; a slash-merging server gives /b.
    assert_eq!(norm("/a//../b"), Err(RequestError::AmbiguousDotSegment));
    assert_eq!(norm("//../b"), Err(RequestError::AmbiguousDotSegment));
    assert_eq!(norm("/a//b/c/../d"), Err(RequestError::AmbiguousDotSegment));
    assert_eq!(norm("/a//%2e%2e/b"), Err(RequestError::AmbiguousDotSegment));
    assert_eq!(norm("/a//./b/.."), Err(RequestError::AmbiguousDotSegment));
    assert_eq!(RequestError::AmbiguousDotSegment.label(), "ambiguous_dot_segment");
    // Without a later `..`, duplicate slashes are merged as before.
    assert_eq!(norm("/a//b/./c").unwrap(), "/a/b/c");
}

#[test]
fn encoded_dots_are_resolved_after_decoding() {
    assert_eq!(norm("/public/%2e%2e/admin").unwrap(), "/admin");
    assert_eq!(norm("/public/%2E./admin").unwrap(), "/admin");
    assert_eq!(norm("/%61dmin").unwrap(), "/admin");
    assert_eq!(norm("/%41%7e%2D").unwrap(), "/A~-");
}

#[test]
fn ambiguous_paths_are_refused() {
    assert_eq!(norm("/public%2fadmin"), Err(RequestError::EncodedSeparator));
    assert_eq!(norm("/public%5Cadmin"), Err(RequestError::EncodedSeparator));
    assert_eq!(norm("/public\\admin"), Err(RequestError::Backslash));
    assert_eq!(norm("/a%00b"), Err(RequestError::BadEscape));
    assert_eq!(norm("/a%zz"), Err(RequestError::BadEscape));
    assert_eq!(norm("/a%2"), Err(RequestError::BadEscape));
    assert_eq!(norm("/../etc"), Err(RequestError::AboveRoot));
    assert_eq!(norm("/a/../../etc"), Err(RequestError::AboveRoot));
    assert_eq!(norm("relative"), Err(RequestError::BadPath));
    assert_eq!(norm(""), Err(RequestError::BadPath));
    assert_eq!(norm("/a b"), Err(RequestError::BadPath));
    assert_eq!(norm("/public/..;/admin"), Err(RequestError::DotSegmentParameter));
    assert_eq!(norm("/public/%2e%2e;x=1/admin"), Err(RequestError::DotSegmentParameter));
    assert_eq!(norm("/a/.;/b"), Err(RequestError::DotSegmentParameter));
}

#[test]
fn matrix_parameters_are_refused_by_default() {
    // `forbid … like "/internal/*"` would not match, while Tomcat serves /internal/secrets.
    assert_eq!(norm("/internal;x/secrets"), Err(RequestError::PathParameter));
    assert_eq!(norm("/api/tenants;x/a"), Err(RequestError::PathParameter));
    assert_eq!(norm("/a;v=1/b;c"), Err(RequestError::PathParameter));
    assert_eq!(norm("/a/b;"), Err(RequestError::PathParameter));
    assert_eq!(norm("/a/;x/b"), Err(RequestError::PathParameter));
    assert_eq!(norm("/internal%3bx/secrets"), Err(RequestError::PathParameter));
    assert_eq!(norm("/internal%3Bx/secrets"), Err(RequestError::PathParameter));
    // An encoded `;` after `..` is the dot-segment case, in both modes.
    assert_eq!(norm("/a/..%3B/b"), Err(RequestError::DotSegmentParameter));
    assert_eq!(norm("/a/..%3bx/b"), Err(RequestError::DotSegmentParameter));
    assert_eq!(RequestError::PathParameter.label(), "path_parameter");
}

#[test]
fn strip_mode_shows_policies_what_servlet_containers_route_on() {
    assert_eq!(strip("/internal;x/secrets").unwrap(), "/internal/secrets");
    assert_eq!(strip("/api/tenants;x/a").unwrap(), "/api/tenants/a");
    assert_eq!(strip("/a;v=1/b;c").unwrap(), "/a/b");
    assert_eq!(strip("/a%3Bjsessionid=1/b").unwrap(), "/a/b");
    assert_eq!(strip("/a/b;x=1/").unwrap(), "/a/b/");
    // Stripped dot segments are still dot segments with parameters.
    assert_eq!(strip("/public/..;/admin"), Err(RequestError::DotSegmentParameter));
    assert_eq!(strip("/a/..%3B/b"), Err(RequestError::DotSegmentParameter));
    assert_eq!(strip("/a/.;x/b"), Err(RequestError::DotSegmentParameter));
    // A segment that is only parameters is empty: a later `..` is ambiguous.
    assert_eq!(strip("/a/;x/../b"), Err(RequestError::AmbiguousDotSegment));
    assert_eq!(strip("/a/;x/b").unwrap(), "/a/b");
}

#[test]
fn a_fragment_is_refused() {
    assert_eq!(norm("/public#x"), Err(RequestError::PathFragment));
    assert_eq!(norm("/a/#/../admin"), Err(RequestError::PathFragment));
    // Encoded, `#` is data and stays encoded.
    assert_eq!(norm("/a%23b").unwrap(), "/a%23b");
}

#[test]
fn reserved_escapes_stay_encoded_and_canonical() {
    assert_eq!(norm("/a%3fb").unwrap(), "/a%3Fb");
    assert_eq!(norm("/a%2cb%c3%a9").unwrap(), "/a%2Cb%C3%A9");
    assert_eq!(norm("/caf\u{e9}").unwrap(), "/caf\u{e9}");
}

#[test]
fn host_loses_port_and_case() {
    assert_eq!(normalize_host("API.Example.com:8443").unwrap(), "api.example.com");
    assert_eq!(normalize_host("[::1]:80").unwrap(), "::1");
    assert_eq!(normalize_host("[::1]").unwrap(), "::1");
    assert_eq!(normalize_host("[0:0:0:0:0:0:0:1]").unwrap(), "::1");
    assert_eq!(normalize_host("[2001:DB8::1]:443").unwrap(), "2001:db8::1");
    assert_eq!(normalize_host("10.0.0.1:8080").unwrap(), "10.0.0.1");
    assert_eq!(normalize_host("my_svc.ns").unwrap(), "my_svc.ns");
    assert_eq!(normalize_host("123.example.com").unwrap(), "123.example.com");
    assert_eq!(normalize_host("").unwrap(), "");
}

#[test]
fn a_trailing_dot_is_removed_so_a_host_forbid_still_matches() {
    assert_eq!(normalize_host("admin.example.com.").unwrap(), "admin.example.com");
    assert_eq!(normalize_host("Admin.Example.com.:443").unwrap(), "admin.example.com");
    assert_eq!(normalize_host("1.2.3.4.").unwrap(), "1.2.3.4");
    assert_eq!(normalize_host("admin.example.com.."), Err(RequestError::BadHost));
    assert_eq!(normalize_host("."), Err(RequestError::BadHost));
}

#[test]
fn brackets_hold_only_an_ipv6_address_and_only_a_port_follows() {
    assert_eq!(normalize_host("[admin.example.com]"), Err(RequestError::BadHost));
    assert_eq!(normalize_host("[::1]junk"), Err(RequestError::BadHost));
    assert_eq!(normalize_host("[::1]:"), Err(RequestError::BadHost));
    assert_eq!(normalize_host("[::1]:80x"), Err(RequestError::BadHost));
    assert_eq!(normalize_host("[::1"), Err(RequestError::BadHost));
    assert_eq!(normalize_host("[1.2.3.4]"), Err(RequestError::BadHost));
    assert_eq!(normalize_host("[fe80::1%25eth0]"), Err(RequestError::BadHost));
    assert_eq!(normalize_host("::1"), Err(RequestError::BadHost));
}

#[test]
fn numbers_that_whatwg_reads_as_ipv4_must_be_a_canonical_dotted_quad() {
    for h in [
        "127.1",
        "0x7f.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "127.0.0.01",
        "256.0.0.1",
        "1.2.3.4.5",
        "0x7f000001",
        "foo.123",
        "foo.0x1f",
        "a.0x",
    ] {
        assert_eq!(normalize_host(h), Err(RequestError::BadHost), "{h}");
    }
    assert_eq!(normalize_host("0xcafe.example").unwrap(), "0xcafe.example");
    assert_eq!(normalize_host("127.0.0.1").unwrap(), "127.0.0.1");
}

#[test]
fn hosts_outside_the_grammar_are_refused() {
    let long_label = format!("{}.com", "a".repeat(64));
    let long_name = format!("{}a", "abcdefghi.".repeat(26));
    for h in [
        "evil.com/x",
        "a:b",
        "a:b:80",
        "a.com:",
        "a.com:0",
        "a.com:65536",
        "a.com:+80",
        "a.com:123456",
        "user@a.com",
        "a..com",
        ".a.com",
        "a b.com",
        "caf\u{e9}.com",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        assert_eq!(normalize_host(h), Err(RequestError::BadHost), "{h}");
    }
    assert_eq!(normalize_host("a.com:65535").unwrap(), "a.com");
}

fn request(method: &str, path: &str, host: &str, raw: &[(&str, &str)]) -> CheckRequest {
    let header_map = (!raw.is_empty()).then(|| HeaderMap {
        headers: raw
            .iter()
            .map(|(k, v)| HeaderValue { key: (*k).into(), value: (*v).into(), ..Default::default() })
            .collect(),
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: host.into(),
                    header_map,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn view_err(req: &CheckRequest) -> RequestError {
    RequestView::from_check(&crate::proto::check_in(req), &Limits::default()).expect_err("refused").kind
}

#[test]
fn a_refusal_carries_the_request_id_from_id_or_x_request_id() {
    let mut req = request("GET", "/a/%2F", "h", &[("x-request-id", "from-header")]);
    let req_in = crate::proto::check_in(&req);
    let e = RequestView::from_check(&req_in, &Limits::default()).expect_err("refused");
    assert_eq!((e.kind, e.request_id.as_str()), (RequestError::EncodedSeparator, "from-header"));
    if let Some(http) = req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
        http.id = "envoy-id".into();
    }
    let req_in = crate::proto::check_in(&req);
    let e = RequestView::from_check(&req_in, &Limits::default()).expect_err("refused");
    assert_eq!((e.label(), e.request_id.as_str()), ("encoded_separator", "envoy-id"));
    // Nothing to read: an empty id, never a guess.
    let e = RequestView::from_check(&crate::proto::check_in(&CheckRequest::default()), &Limits::default())
        .expect_err("refused");
    assert_eq!((e.kind, e.request_id.as_str()), (RequestError::MissingHttp, ""));
}

#[test]
fn agreeing_copies_of_method_path_and_host_are_accepted() {
    let req = request(
        "GET",
        "/a/b?x=1",
        "api.example.com",
        &[(":method", "GET"), (":path", "/a/b?x=1"), (":authority", "API.example.com:443")],
    );
    let req_in = crate::proto::check_in(&req);
    let v = RequestView::from_check(&req_in, &Limits::default()).expect("valid");
    assert_eq!((&*v.method, &*v.path, v.query, &*v.host), ("GET", "/a/b", "x=1", "api.example.com"));
    // Proxyless clients send only the header map.
    let req = request("", "", "", &[(":method", "GET"), (":path", "/p"), (":authority", "h.example")]);
    let req_in = crate::proto::check_in(&req);
    let v = RequestView::from_check(&req_in, &Limits::default()).expect("valid");
    assert_eq!((&*v.path, &*v.host), ("/p", "h.example"));
}

#[test]
fn a_lower_case_method_is_read_upper_case_and_identical_host_copies_read_alike() {
    let req =
        request("get", "/p", "a.example", &[(":method", "get"), (":authority", "a.example"), ("host", "a.example")]);
    let req_in = crate::proto::check_in(&req);
    let v = RequestView::from_check(&req_in, &Limits::default()).expect("valid");
    assert_eq!((&*v.method, &*v.host), ("GET", "a.example"));
    // Identical copies of a bad host are still a bad host; a third copy that differs still conflicts.
    let r = request("GET", "/p", "[a.example]", &[(":authority", "[a.example]")]);
    assert_eq!(view_err(&r), RequestError::BadHost);
    let r = request("GET", "/p", "a.example", &[(":authority", "a.example"), ("host", "b.example")]);
    assert_eq!(view_err(&r), RequestError::ConflictingHost);
}

#[test]
fn disagreeing_copies_of_method_path_or_host_are_refused() {
    let r = request("GET", "/public/x", "a.example", &[(":method", "DELETE")]);
    assert_eq!(view_err(&r), RequestError::ConflictingMethod);
    let r = request("GET", "/public/x", "a.example", &[(":path", "/admin")]);
    assert_eq!(view_err(&r), RequestError::ConflictingPath);
    let r = request("GET", "/p", "public.example.com", &[(":authority", "admin.example.com")]);
    assert_eq!(view_err(&r), RequestError::ConflictingHost);
    let r = request("GET", "/p", "public.example.com", &[("host", "admin.example.com")]);
    assert_eq!(view_err(&r), RequestError::ConflictingHost);
    let r = request("GET", "/p", "", &[(":authority", "a.example"), ("Host", "b.example")]);
    assert_eq!(view_err(&r), RequestError::ConflictingHost);
    // A bad copy is a bad host, even when the attribute is fine.
    let r = request("GET", "/p", "a.example", &[("host", "[a.example]")]);
    assert_eq!(view_err(&r), RequestError::BadHost);
}

#[test]
fn a_pseudo_header_or_host_sent_twice_is_refused() {
    for dup in [":path", ":method", ":authority", "host", ":scheme"] {
        let v = if dup == ":method" {
            "GET"
        } else if dup == ":path" {
            "/p"
        } else {
            "a.example"
        };
        let r = request("GET", "/p", "a.example", &[(dup, v), (dup, v)]);
        assert_eq!(view_err(&r), RequestError::DuplicatePseudoHeader, "{dup}");
    }
    let r = request("GET", "/p", "a.example", &[("Host", "a.example"), ("host", "a.example")]);
    assert_eq!(view_err(&r), RequestError::DuplicatePseudoHeader);
}

#[test]
fn the_view_refuses_attack_paths_and_hosts() {
    assert_eq!(view_err(&request("GET", "/internal;x/secrets", "a.example", &[])), RequestError::PathParameter);
    assert_eq!(view_err(&request("GET", "/a//../b", "a.example", &[])), RequestError::AmbiguousDotSegment);
    assert_eq!(view_err(&request("GET", "/public#/../admin", "a.example", &[])), RequestError::PathFragment);
    assert_eq!(view_err(&request("GET", "/p?q#f", "a.example", &[])), RequestError::PathFragment);
    assert_eq!(view_err(&request("GET", "/p", "[::1]junk", &[])), RequestError::BadHost);
    assert_eq!(view_err(&request("GET", "/p", "[admin.example.com]", &[])), RequestError::BadHost);
    let ok = request("GET", "/p", "admin.example.com.", &[]);
    assert_eq!(
        RequestView::from_check(&crate::proto::check_in(&ok), &Limits::default()).expect("valid").host,
        "admin.example.com"
    );
    let strip = request("GET", "/internal;x/secrets", "a.example", &[]);
    let strip_in = crate::proto::check_in(&strip);
    let v = RequestView::from_check_with(&strip_in, &Limits::default(), MatrixParameters::Strip).expect("valid");
    assert_eq!(v.path, "/internal/secrets");
}

fn metadata(ns: &str, fields: &[(&str, prost_types::value::Kind)]) -> Option<Metadata> {
    let fields = fields.iter().map(|(k, v)| ((*k).to_owned(), prost_types::Value { kind: Some(v.clone()) })).collect();
    Some(Metadata {
        filter_metadata: [(ns.to_owned(), prost_types::Struct { fields })].into_iter().collect(),
        ..Default::default()
    })
}

fn with_extensions(mut req: CheckRequest, ext: &[(&str, &str)]) -> CheckRequest {
    if let Some(a) = req.attributes.as_mut() {
        a.context_extensions = ext.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    }
    req
}

#[test]
fn route_facts_come_from_envoy_fields_never_from_headers() {
    let req = with_extensions(request("GET", "/a", "h", &[("x-tenant", "b"), ("ext-tenant", "b")]), &[("tenant", "a")]);
    let req_in = crate::proto::check_in(&req);
    let view = RequestView::from_check(&req_in, &Limits::default()).expect("valid");
    assert_eq!(view.route_facts, vec![RouteFact { source: RouteFactSource::Extension, key: "tenant", value: "a" }]);
    // Headers alone give no route facts, whatever they are called.
    let req = request("GET", "/a", "h", &[("ext:tenant", "a"), ("x-tenant", "a")]);
    assert!(
        RequestView::from_check(&crate::proto::check_in(&req), &Limits::default())
            .expect("valid")
            .route_facts
            .is_empty()
    );
}

#[test]
fn only_string_metadata_of_configured_namespaces_is_read() {
    use prost_types::value::Kind;
    let mut req = request("GET", "/a", "h", &[]);
    if let Some(a) = req.attributes.as_mut() {
        a.route_metadata_context =
            metadata("com.example", &[("tier", Kind::StringValue("gold".into())), ("n", Kind::NumberValue(1.0))]);
        a.metadata_context = metadata("other", &[("k", Kind::StringValue("v".into()))]);
    }
    let wanted = ["com.example".to_owned()];
    let req_in = crate::proto::check_in(&req);
    let none = RequestView::from_check(&req_in, &Limits::default()).expect("valid");
    assert!(none.route_facts.is_empty(), "no namespace configured, nothing read");
    let ns = RouteFactNamespaces { metadata: &wanted, route_metadata: &wanted };
    let req_in = crate::proto::check_in(&req);
    let view = RequestView::from_check_route(&req_in, &Limits::default(), MatrixParameters::Refuse, ns).expect("valid");
    assert_eq!(
        view.route_facts,
        vec![RouteFact { source: RouteFactSource::RouteMetadata("com.example"), key: "tier", value: "gold" }]
    );
}

#[test]
fn route_facts_over_the_limits_are_refused_not_truncated() {
    let many: Vec<(String, String)> = (0..=MAX_ROUTE_FACTS).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let req = with_extensions(request("GET", "/a", "h", &[]), &many);
    assert_eq!(view_err(&req), RequestError::TooManyRouteFacts);
    assert_eq!(view_err(&req).label(), "too_many_route_facts");
    // Exactly at the limit is fine.
    let req = with_extensions(request("GET", "/a", "h", &[]), &many[..MAX_ROUTE_FACTS]);
    assert_eq!(
        RequestView::from_check(&crate::proto::check_in(&req), &Limits::default()).expect("valid").route_facts.len(),
        MAX_ROUTE_FACTS
    );

    let long_value = "v".repeat(MAX_ROUTE_FACT_VALUE_BYTES + 1);
    let req = with_extensions(request("GET", "/a", "h", &[]), &[("k", &long_value)]);
    assert_eq!(view_err(&req), RequestError::RouteFactTooLong);
    let long_key = "k".repeat(MAX_ROUTE_FACT_KEY_BYTES + 1);
    let req = with_extensions(request("GET", "/a", "h", &[]), &[(&long_key, "v")]);
    assert_eq!(view_err(&req).label(), "route_fact_too_long");
    // Metadata strings count towards the same bound.
    let mut req = with_extensions(request("GET", "/a", "h", &[]), &many[..MAX_ROUTE_FACTS]);
    if let Some(a) = req.attributes.as_mut() {
        a.route_metadata_context = metadata("ns", &[("extra", prost_types::value::Kind::StringValue("x".into()))]);
    }
    let wanted = ["ns".to_owned()];
    let ns = RouteFactNamespaces { metadata: &[], route_metadata: &wanted };
    let req_in = crate::proto::check_in(&req);
    let e = RequestView::from_check_route(&req_in, &Limits::default(), MatrixParameters::Refuse, ns).expect_err("over");
    assert_eq!(e.kind, RequestError::TooManyRouteFacts);
}

/// Everything a view shows downstream, for comparing two decodes of one request.
fn seen(v: &RequestView<'_>) -> String {
    let mut headers: Vec<(&str, &str)> = v.headers().to_vec();
    headers.sort();
    let per_name: Vec<_> = headers
        .iter()
        .map(|(k, _)| (v.header(k), v.header_joined(k), v.header_count(k), v.has_invalid_value(k)))
        .collect();
    let body = v.body();
    format!(
        "{} {} {} {} {} {:?} {:?} {:?} {} {:?} {:?} {:?} {:?} {:?} {:?} {}",
        v.method,
        v.path,
        v.query,
        v.host,
        v.scheme,
        v.source_principal,
        v.destination_principal,
        v.source_ip,
        v.request_id,
        v.traceparent,
        v.route_facts,
        headers,
        per_name,
        v.grpc(),
        (body.text, body.raw, body.partial, body.content_type),
        v.time.is_none(),
    )
}

#[test]
fn the_list_decode_reads_every_request_shape_as_the_map_did() {
    use prost::Message as _;
    // The old path: the frame decoded as the standard `CheckRequest` (headers hashed into a
    // `HashMap`), handed on in that map's order. The new: the same frame decoded as
    // `CheckRequestIn`, headers in wire order. Every shape `client.rs` builds, valid or not.
    let shapes = [
        crate::client::CheckRequestBuilder::new("GET", "/a/b?x=1").host("Shop.Example:8443").pseudo_headers(),
        crate::client::CheckRequestBuilder::new("post", "/svc.Api/Call")
            .host("shop")
            .id("rid-1")
            .header("content-type", "application/grpc+proto")
            .header("authorization", "Bearer a.b.c")
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .header("x-dup", "1")
            .header("X-Dup", "2")
            .peer("spiffe://cluster.local/ns/a/sa/b")
            .source_ip("10.0.0.1"),
        crate::client::CheckRequestBuilder::new("GET", "/x")
            .host("shop")
            .header("x-request-id", "hdr-id")
            .raw_header("x-bin", b"\xff\xfe")
            .header("x-portcullis-body-partial", "true"),
        crate::client::CheckRequestBuilder::new("GET", "/a/%2F/b").host("shop").header("x-request-id", "rid-400"),
        crate::client::CheckRequestBuilder::new("GET", "/x").host("a").header("host", "b"),
        crate::client::CheckRequestBuilder::new("GET", "/x").host("shop").pseudo_headers().header(":path", "/y"),
    ];
    let mut compared = 0;
    for b in &shapes {
        let mut wires =
            vec![b.build(), b.build_header_map(true), b.build_header_map(false), b.build_header_map_only(true)];
        // Both representations at once (raw wins; the map must not be read twice).
        let mut both = b.build();
        let header_map =
            b.build_header_map(true).attributes.and_then(|a| a.request).and_then(|r| r.http).and_then(|h| h.header_map);
        if let Some(h) = both.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
            h.header_map = header_map;
            h.body = "{}".into();
        }
        wires.push(both);
        for wire in wires {
            let frame = wire.encode_to_vec();
            let old = crate::proto::check_in(&CheckRequest::decode(frame.as_slice()).expect("standard decode"));
            let new = CheckRequestIn::decode(frame.as_slice()).expect("list decode");
            for limits in [Limits::default(), Limits { max_headers: 3, ..Limits::default() }] {
                let ns = RouteFactNamespaces::default();
                let a = RequestView::from_check_route(&old, &limits, MatrixParameters::Refuse, ns);
                let b = RequestView::from_check_route(&new, &limits, MatrixParameters::Refuse, ns);
                match (a, b) {
                    (Ok(a), Ok(b)) => assert_eq!(seen(&a), seen(&b), "{wire:?}"),
                    (Err(a), Err(b)) => assert_eq!(a, b, "{wire:?}"),
                    (a, b) => panic!("{a:?} != {b:?} for {wire:?}"),
                }
                compared += 1;
            }
        }
    }
    assert_eq!(compared, shapes.len() * 5 * 2);
}

#[test]
fn a_name_repeated_in_the_merged_headers_is_seen_twice() {
    use crate::proto::auth::{AttributeContextIn, HeaderEntryIn, HttpRequestIn, RequestIn};
    use prost::Message as _;
    let entry = |k: &str, v: &str| HeaderEntryIn { key: k.into(), value: v.into() };
    let req = |headers: Vec<HeaderEntryIn>| CheckRequestIn {
        attributes: Some(Box::new(AttributeContextIn {
            request: Some(RequestIn {
                http: Some(HttpRequestIn { method: "GET".into(), path: "/x".into(), headers, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    // Wire order kept; the standard decode of the same bytes kept only the last copy.
    let r =
        req(vec![entry("authorization", "Bearer a"), entry("x-request-id", "one"), entry("authorization", "Bearer b")]);
    let v = RequestView::from_check(&r, &Limits::default()).expect("valid");
    assert_eq!(v.header_count("authorization"), 2);
    assert_eq!(v.header("authorization"), Some("Bearer a"));
    assert_eq!(v.header_joined("Authorization").as_deref(), Some("Bearer a,Bearer b"));
    let standard = CheckRequest::decode(r.encode_to_vec().as_slice()).expect("decodes");
    let map = &standard
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .expect("http")
        .headers;
    assert_eq!(map.get("authorization").map(String::as_str), Some("Bearer b"), "the map was last-wins");
    // Request ids: the first copy, as from `header_map`, on a refusal too.
    let r = req(vec![entry("x-request-id", "first"), entry("x-request-id", "second"), entry(":path", "/other")]);
    let e = RequestView::from_check(&r, &Limits::default()).expect_err("conflicting path");
    assert_eq!((e.kind, e.request_id.as_str()), (RequestError::ConflictingPath, "first"));
    // Singular headers repeated are refused, whatever their case.
    for name in ["host", ":authority", ":path"] {
        let r = req(vec![entry(name, "/a"), entry(&name.to_ascii_uppercase(), "/a")]);
        let e = RequestView::from_check(&r, &Limits::default()).expect_err("duplicate");
        assert_eq!(e.kind, RequestError::DuplicatePseudoHeader, "{name}");
    }
    // Every entry counts toward the limits.
    let many: Vec<_> = (0..4).map(|_| entry("x-a", "v")).collect();
    let limits = Limits { max_headers: 3, ..Limits::default() };
    assert_eq!(RequestView::from_check(&req(many), &limits).expect_err("over").kind, RequestError::TooManyHeaders);
}

/// The one-pass label check refuses and accepts exactly what a split per label did, on hosts
/// built from the characters that matter (dots, digits, hex, case, separators) and labels
/// around the 63-byte bound.
#[test]
fn host_labels_are_judged_as_by_a_split_per_label() {
    fn by_split(raw: &str) -> Option<String> {
        let host = match raw.split_once(':') {
            Some((h, _)) => h,
            None => raw,
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if host.is_empty() || host.len() > 253 {
            return None;
        }
        let mut last = "";
        for label in host.split('.') {
            let ok = (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !ok {
                return None;
            }
            last = label;
        }
        let numeric = last.bytes().all(|b| b.is_ascii_digit())
            || last.strip_prefix("0x").is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        if numeric {
            let ip: std::net::Ipv4Addr = host.parse().ok()?;
            if ip.to_string() != host {
                return None;
            }
        }
        Some(host)
    }
    let alphabet = ['a', 'Z', '0', '9', 'x', 'f', '.', '-', '_', '~', 'é'];
    let mut hosts: Vec<String> = Vec::new();
    // Every string of up to four characters from the alphabet.
    let mut frontier = vec![String::new()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for s in &frontier {
            for c in alphabet {
                next.push(format!("{s}{c}"));
            }
        }
        hosts.extend(next.iter().cloned());
        frontier = next;
    }
    for n in [62, 63, 64] {
        let label = "a".repeat(n);
        hosts.extend([
            label.clone(),
            format!("{label}.b"),
            format!("b.{label}"),
            format!("b.{label}."),
            format!("{label}..b"),
            format!("{label}:8080"),
        ]);
    }
    hosts.extend(
        ["1.2.3.4", "01.2.3.4", "0x7f.1", "a.0x1g", "a.b.c.d.e.f", "a.b.", ".a", "a..", "127.0.0.1:9"]
            .map(String::from),
    );
    for raw in &hosts {
        let ours = super::canonical::host_of(raw).ok().map(|h| h.into_owned());
        let want = if raw.is_empty() { Some(String::new()) } else { by_split(raw) };
        // A port that is not 1–65535 is refused before the labels are read, in both.
        if raw.contains(':') && ours.is_none() {
            continue;
        }
        assert_eq!(ours, want, "{raw:?}");
    }
}

/// The fast path's test, as it was written first (split on `/`): the oracle for the one-pass
/// version that every check runs.
fn canonical_by_segments(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else { return false };
    let plain = rest.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'%' | b';' | b'\\' | b'#' | b'?'));
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg == "." || seg == ".." || (seg.is_empty() && !last) {
            return false;
        }
    }
    plain
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 4096, failure_persistence: None, ..proptest::prelude::ProptestConfig::default()
    })]

    /// A path the fast path borrows as is must be one the full rewrite leaves unchanged, in both
    /// matrix modes (else `/a/../b` or `//x` would reach Cedar and the upstream as sent), and
    /// the one-pass test must agree with the split-based one on every path.
    #[test]
    fn the_borrowed_fast_path_is_only_taken_for_canonical_paths(
        raw in proptest::string::string_regex("/?([a.;%?#\\\\ /é]|\\.\\.|%2[eEfF]){0,12}").expect("regex")
    ) {
        let fast = canonical::is_canonical_path(&raw);
        proptest::prop_assert_eq!(fast, canonical_by_segments(&raw), "{:?}", raw);
        if fast {
            for matrix in [MatrixParameters::Refuse, MatrixParameters::Strip] {
                proptest::prop_assert_eq!(normalize_path(&raw, matrix), Ok(raw.clone()));
            }
        }
    }
}

#[test]
fn the_fast_path_judges_every_segment() {
    for (raw, want) in [
        ("/", true),
        ("/a/b/", true),
        ("//", false),
        ("/a//b", false),
        ("/a/./b", false),
        ("/a/..", false),
        ("/..", false),
        ("/.", false),
        ("/a/.b/c..", true),
        ("/a;b", false),
        ("a/b", false),
        ("", false),
    ] {
        assert_eq!(canonical::is_canonical_path(raw), want, "{raw}");
        assert_eq!(canonical_by_segments(raw), want, "{raw}");
    }
}
