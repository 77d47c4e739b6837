use std::collections::BTreeMap;

use prost_types::value::Kind;

use super::*;
use crate::decision::ShadowOutcome;
use crate::proto::auth::CheckResponse;
use crate::proto::auth::check_response::HttpResponse;

/// The answer as Envoy decodes it: every test below reads the standard types.
fn render(d: &Decision, opts: &ResponseOptions) -> CheckResponse {
    as_envoy_sees_it(&super::render(d, opts)).expect("an answer decodes as a CheckResponse")
}

fn render_taking_headers(d: &mut Decision, opts: &ResponseOptions) -> CheckResponse {
    as_envoy_sees_it(&super::render_taking_headers(d, opts)).expect("an answer decodes as a CheckResponse")
}

#[test]
fn allow_overwrites_identity_headers_both_ways() {
    let d = Decision::Allow(Allow {
        principal: r#"User::"alice""#.into(),
        action: r#"Action::"GET""#.into(),
        resource: r#"Route::"shop/x""#.into(),
        policies: vec!["p".into()].into(),
        upstream_headers: vec![("x-portcullis-subject".into(), "alice".into())].into(),
        remove_headers: RemoveHeaders::from(vec![Bytes::from("x-portcullis-peer")]),
        request_id: "r1".into(),
        shadow: None,
        audit: Default::default(),
    });
    let r = render(&d, &ResponseOptions::default());
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = r.http_response else { panic!("not ok") };
    let h = &ok.headers[0];
    assert_eq!(h.append, Some(false));
    assert_eq!(h.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
    assert_eq!(ok.headers_to_remove, vec!["x-portcullis-peer"]);
}

#[test]
fn deny_carries_status_challenge_and_small_body() {
    let challenge = Challenge { scheme: Scheme::Bearer, error: Some("invalid_token"), description: None };
    let d: Decision = Deny::new(Status::Unauthorized, "token_expired", "r2").with_challenge(challenge).into();
    let r = render(&d, &ResponseOptions::default());
    assert_ne!(r.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::DeniedResponse(den)) = r.http_response else { panic!("not denied") };
    assert_eq!(den.status.unwrap().code, 401);
    let www = den.headers.iter().filter_map(|h| h.header.as_ref()).find(|h| h.key == "www-authenticate");
    assert_eq!(www.map(|h| h.value.as_str()), Some(r#"Bearer realm="portcullis", error="invalid_token""#));
    assert_eq!(den.body, r#"{"error":"token_expired","request_id":"r2"}"#);
}

#[test]
fn taking_the_headers_renders_the_same_response() {
    let mut den = Deny::new(Status::Unauthorized, "token_expired", "r\"7\\")
        .with_challenge(Challenge { scheme: Scheme::Bearer, error: Some("invalid_token"), description: None })
        .with_retry_after(5);
    den.policies = vec!["p1".into(), "p2".into()].into();
    let opts = ResponseOptions { policy_ids_header: Some("x-policies".into()), quota_keys: keys() };
    let cases = [
        allow_with(r#"User::"alice""#, &[("x-portcullis-subject", "alice"), ("x-tenant", "acme")]),
        {
            let mut d = allow_with("p", &[]);
            if let Decision::Allow(a) = &mut d {
                a.remove_headers = RemoveHeaders::from(vec![Bytes::from("x-a"), Bytes::from("x_a")]);
            }
            d
        },
        den.into(),
    ];
    for d in cases {
        let want = render(&d, &opts);
        let mut taken = d.clone();
        assert_eq!(render_taking_headers(&mut taken, &opts), want);
        if let Decision::Allow(a) = &taken {
            assert!(a.upstream_headers.is_empty() && a.remove_headers.is_empty());
        }
        // Nothing else of the decision changed: the log line is the same.
        assert_eq!((taken.audit(), taken.policies(), taken.principal()), (d.audit(), d.policies(), d.principal()));
    }
}

#[test]
fn a_deny_body_is_json_with_the_request_id_escaped() {
    let body = deny_body("no_permit", "a\"b\\c");
    assert_eq!(body, r#"{"error":"no_permit","request_id":"a\"b\\c"}"#);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["request_id"], "a\"b\\c");
}

#[test]
fn challenges_are_formatted_in_their_scheme() {
    let c = |scheme, error, description: Option<&str>| {
        challenge_header(&Challenge { scheme, error, description: description.map(str::to_owned) })
    };
    assert_eq!(c(Scheme::Bearer, None, None), r#"Bearer realm="portcullis""#);
    assert_eq!(c(Scheme::ApiKey, None, None), r#"ApiKey realm="portcullis""#);
    assert_eq!(c(Scheme::ApiKey, Some("invalid_key"), None), r#"ApiKey realm="portcullis", error="invalid_key""#);
    assert_eq!(
        c(Scheme::Bearer, Some("invalid_token"), Some("token has expired")),
        r#"Bearer realm="portcullis", error="invalid_token", error_description="token has expired""#
    );
}

#[test]
fn a_shadow_outcome_goes_to_dynamic_metadata_only() {
    let mut den = Deny::new(Status::Forbidden, "no_permit", "r4");
    den.shadow = Some(ShadowOutcome {
        allowed: true,
        policies: vec!["new-permit".into()],
        version: "v2".into(),
        errored: false,
    });
    let opts = ResponseOptions { policy_ids_header: Some("x-policies".into()), ..Default::default() };
    let r = render(&den.into(), &opts);
    let m = r.dynamic_metadata.as_ref().expect("metadata");
    let s = |k: &str| match m.fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(s("decision"), "deny");
    assert_eq!(s("shadow_decision"), "allow");
    assert_eq!(s("shadow_version"), "v2");
    let Some(Kind::ListValue(l)) = m.fields.get("shadow_policies").and_then(|v| v.kind.as_ref()) else {
        panic!("shadow_policies is a list")
    };
    assert_eq!(l.values, vec![prost_types::Value { kind: Some(Kind::StringValue("new-permit".into())) }]);
    let Some(HttpResponse::DeniedResponse(den)) = r.http_response else { panic!("not denied") };
    // The deny has no determining policies of its own: no policy header, and no shadow id anywhere.
    assert!(den.headers.iter().filter_map(|h| h.header.as_ref()).all(|h| !h.value.contains("new-permit")));
    assert!(!den.body.contains("new-permit"));
}

#[test]
fn without_a_shadow_outcome_there_are_no_shadow_fields() {
    let r = render(&Decision::deny(Status::Forbidden, "no_permit", "r5"), &ResponseOptions::default());
    let m = r.dynamic_metadata.expect("metadata");
    assert!(m.fields.keys().all(|k| !k.starts_with("shadow_")), "{:?}", m.fields.keys());
}

#[test]
fn a_deny_with_policies_sends_no_upstream_headers_and_the_policy_header() {
    let mut den = Deny::new(Status::Forbidden, "forbidden_by_policy", "r3");
    den.policies = vec!["block".into()].into();
    let opts = ResponseOptions { policy_ids_header: Some("x-policies".into()), ..Default::default() };
    let r = render(&den.into(), &opts);
    assert_eq!(r.status.as_ref().unwrap().code, code::PERMISSION_DENIED);
    let Some(HttpResponse::DeniedResponse(den)) = r.http_response else { panic!("not denied") };
    assert_eq!(den.status.unwrap().code, 403);
    let keys: Vec<_> = den.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| h.key.as_str()).collect();
    assert_eq!(keys, ["content-type", "x-policies"]);
}

fn keys() -> QuotaKeys {
    QuotaKeys {
        issuer: "x-portcullis-issuer".into(),
        subject: "x-portcullis-subject".into(),
        client: "x-portcullis-client".into(),
        spiffe_id: "x-portcullis-peer".into(),
        tenant: Some("x-tenant".into()),
    }
}

fn allow_with(principal: &str, headers: &[(&str, &str)]) -> Decision {
    Decision::Allow(Allow {
        principal: principal.into(),
        action: r#"Action::"GET""#.into(),
        resource: r#"Route::"shop/x""#.into(),
        policies: vec!["p".into()].into(),
        upstream_headers: headers
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
        remove_headers: RemoveHeaders::default(),
        request_id: "r9".into(),
        shadow: None,
        audit: Default::default(),
    })
}

/// The `envoy.filters.http.ext_authz` metadata as plain strings (lists left out).
fn meta(d: &Decision, keys: QuotaKeys) -> BTreeMap<String, String> {
    let opts = ResponseOptions { policy_ids_header: None, quota_keys: keys };
    let md = render(d, &opts).dynamic_metadata.expect("metadata");
    md.fields
        .into_iter()
        .filter_map(|(k, v)| match v.kind {
            Some(Kind::StringValue(s)) => Some((k, s)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_allow_publishes_every_verified_quota_key() {
    let d = allow_with(
        r#"User::"alice""#,
        &[
            ("x-tenant", "acme"),
            ("x-portcullis-email", "alice@example.com"),
            ("x-portcullis-principal", r#"User::"alice""#),
            ("x-portcullis-subject", "alice"),
            ("x-portcullis-issuer", "https://idp.example"),
            ("x-portcullis-peer", "spiffe://cluster.local/ns/a/sa/b"),
            ("x-portcullis-client", "batch"),
        ],
    );
    let m = meta(&d, keys());
    assert_eq!(m["principal"], r#"User::"alice""#);
    assert_eq!(m["issuer"], "https://idp.example");
    assert_eq!(m["subject"], "alice");
    assert_eq!(m["client"], "batch");
    assert_eq!(m["spiffe_id"], "spiffe://cluster.local/ns/a/sa/b");
    assert_eq!(m["tenant"], "acme");
    // A claim header that is not the tenant is not a quota key.
    assert!(!m.values().any(|v| v == "alice@example.com"), "{m:?}");
}

#[test]
fn only_proven_identities_are_published() {
    // A workload allowed on its mTLS identity alone: no issuer, subject, client or tenant.
    let d = allow_with(
        r#"Service::"spiffe://cluster.local/ns/a/sa/b""#,
        &[("x-portcullis-peer", "spiffe://cluster.local/ns/a/sa/b")],
    );
    let m = meta(&d, keys());
    for absent in ["issuer", "subject", "client", "tenant"] {
        assert!(!m.contains_key(absent), "{absent} published without proof: {m:?}");
    }
    assert_eq!(m["spiffe_id"], "spiffe://cluster.local/ns/a/sa/b");
    // Without `headers.tenant` no header is read as the tenant, whatever it is called.
    let d = allow_with(r#"User::"alice""#, &[("x-tenant", "acme")]);
    let m = meta(&d, QuotaKeys { tenant: None, ..keys() });
    assert!(!m.contains_key("tenant"), "{m:?}");
}

#[test]
fn a_deny_publishes_no_identity_keys() {
    let mut den = Deny::new(Status::Forbidden, "no_permit", "r4");
    den.principal = r#"User::"mallory""#.into();
    let m = meta(&den.into(), keys());
    assert_eq!(m["decision"], "deny");
    for absent in ["issuer", "subject", "client", "spiffe_id", "tenant"] {
        assert!(!m.contains_key(absent), "{absent} on a deny: {m:?}");
    }
    // A denial before authorization has an empty principal, as before.
    let m = meta(&Decision::deny(Status::Unauthorized, "token_expired", "r5"), keys());
    assert_eq!(m["principal"], "");
}

#[test]
fn oversized_or_control_character_values_become_bounded_distinct_digests() {
    let long_a = "a".repeat(MAX_METADATA_VALUE + 1);
    let long_b = format!("{}b", "a".repeat(MAX_METADATA_VALUE));
    let principal = format!("User::\"{long_a}\"");
    let d = allow_with(
        &principal,
        &[("x-portcullis-subject", &long_a), ("x-portcullis-issuer", "iss\u{85}"), ("x-tenant", "t\u{7f}x")],
    );
    let m = meta(&d, keys());
    for key in ["principal", "subject", "issuer", "tenant"] {
        let v = &m[key];
        assert!(v.starts_with("sha256:") && v.len() == 7 + 32, "{key}: {v}");
        assert!(!v.chars().any(char::is_control));
    }
    // Two identities that share a long prefix keep separate buckets.
    let other = meta(&allow_with(r#"User::"x""#, &[("x-portcullis-subject", &long_b)]), keys());
    assert_ne!(m["subject"], other["subject"]);
    // The boundary itself is published as is.
    let exact = "s".repeat(MAX_METADATA_VALUE);
    let m = meta(&allow_with(r#"User::"x""#, &[("x-portcullis-subject", &exact)]), keys());
    assert_eq!(m["subject"], exact);
}

#[test]
fn metadata_on_the_wire_is_the_struct_envoy_decodes() {
    use prost_types::value::Kind as K;
    let s = |v: &str| prost_types::Value { kind: Some(K::StringValue(v.into())) };
    // Lengths past one varint byte (a 300-byte request id, a list over 127 bytes, a long
    // and a control-character identity value that are sent hashed), non-ASCII, empty ids.
    let long_id = "r".repeat(300);
    let policies: Vec<String> = (0..40).map(|i| format!("policy-é-{i}")).chain([String::new()]).collect();
    let mut d = allow_with(
        &format!("User::\"{}\"", "a".repeat(200)),
        &[("x-portcullis-subject", &"s".repeat(300)), ("x-portcullis-issuer", "https://idp\u{1}")],
    );
    if let Decision::Allow(a) = &mut d {
        a.request_id = long_id.clone();
        a.policies = policies.clone().into();
        a.shadow = Some(ShadowOutcome { allowed: false, policies: vec![], version: "v9".into(), errored: true });
    }
    let got = render(&d, &ResponseOptions { policy_ids_header: None, quota_keys: keys() })
        .dynamic_metadata
        .expect("metadata");
    let hashed = |v: &str| format!("sha256:{}", hex::encode(&Sha256::digest(v.as_bytes())[..16]));
    let list = |items: &[String]| prost_types::Value {
        kind: Some(K::ListValue(prost_types::ListValue { values: items.iter().map(|i| s(i)).collect() })),
    };
    let want: BTreeMap<String, prost_types::Value> = [
        ("decision", s("allow")),
        ("reason", s("allowed")),
        ("principal", s(&format!("User::\"{}\"", "a".repeat(200)))),
        ("policy_ids", list(&policies)),
        ("request_id", s(&long_id)),
        ("subject", s(&hashed(&"s".repeat(300)))),
        ("issuer", s(&hashed("https://idp\u{1}"))),
        ("shadow_decision", s("deny")),
        ("shadow_policies", list(&[])),
        ("shadow_version", s("v9")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(got.fields, want);
}

#[test]
fn metadata_names_each_key_once() {
    // On the wire a Struct is a map: a key sent twice would leave Envoy to pick one.
    let mut d = allow_with(
        r#"User::"alice""#,
        &[
            ("x-tenant", "acme"),
            ("x-portcullis-subject", "alice"),
            ("x-portcullis-issuer", "https://idp.example"),
            ("x-portcullis-peer", "spiffe://cluster.local/ns/a/sa/b"),
            ("x-portcullis-client", "batch"),
        ],
    );
    if let Decision::Allow(a) = &mut d {
        a.shadow =
            Some(ShadowOutcome { allowed: false, policies: vec!["x".into()], version: "v2".into(), errored: false });
    }
    let wire = super::render(&d, &ResponseOptions { policy_ids_header: None, quota_keys: keys() }).dynamic_metadata;
    // Decoded as the repeated entries the wire holds, so a duplicate would show.
    let md = <crate::proto::auth::StructOut as prost::Message>::decode(wire).expect("a Struct");
    let names: Vec<&[u8]> = md.fields.iter().map(|f| f.key.as_ref()).collect();
    let unique: std::collections::BTreeSet<&[u8]> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    assert_eq!(names.len(), 13, "every key this decision has: {names:?}");
}

/// The identity headers' records are written by `SetHeaders` itself (decision.rs), not by prost:
/// they must be byte for byte what prost writes for the same `overwrite` options, for any name
/// and value (lengths past one varint byte, non-ASCII, an empty value, no headers at all).
#[test]
fn set_headers_records_are_what_prost_writes() {
    use crate::decision::SetHeaders;
    use prost::Message as _;
    let long = "v".repeat(20_000);
    let wide = "é".repeat(70);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("x-portcullis-subject", "alice")],
        vec![("x-portcullis-principal", r#"User::"alice""#), ("x-claim-email", "alice@example.com")],
        vec![("x-long", long.as_str()), ("x-wide", wide.as_str()), ("x-empty", ""), ("", "nameless")],
        vec![("k", &long[..127]), ("k", &long[..128]), ("k", &long[..16383]), ("k", &long[..16384])],
    ];
    for pairs in cases {
        let pairs: Vec<(Bytes, Bytes)> = pairs
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), Bytes::copy_from_slice(v.as_bytes())))
            .collect();
        let by_prost = OkHttpResponseOut {
            headers: pairs.iter().map(|(k, v)| overwrite(k.clone(), v.clone())).collect(),
            ..Default::default()
        }
        .encode_to_vec();
        let set = SetHeaders::new(pairs.clone());
        assert_eq!(set.wire().as_ref(), by_prost.as_slice(), "{pairs:?}");
        let ours = OkHttpResponseOut { headers_wire: set.wire().clone(), ..Default::default() };
        assert_eq!(ours.encoded_len(), by_prost.len());
        assert_eq!(&set[..], &pairs[..]);
    }
}
