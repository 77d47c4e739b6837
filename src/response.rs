//! Renders a [`Decision`] as an Envoy `CheckResponse`: the only place a decision becomes wire
//! types. The gRPC call itself always succeeds; the decision is in `status` and the HTTP parts.
//!
//! The answer is built as `CheckResponseOut`, the wire-identical copy of `CheckResponse` whose
//! strings are [`Bytes`] (see build.rs): header names, the removal list and the metadata keys
//! are shared from config or `'static`, never copied per check. An allow's removal list is
//! appended in its pre-encoded wire form ([`RemoveHeaders`]): no per-name work per check.
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::decision::{Allow, Challenge, Decision, Deny, RemoveHeaders, Scheme, Status};
use crate::proto::RpcStatus;
use crate::proto::auth::{
    CheckResponseOut, DeniedHttpResponseOut, HeaderValueOptionOut, HeaderValueOut, OkHttpResponseOut,
    check_response_out::HttpResponse,
};
use crate::proto::core::header_value_option::HeaderAppendAction;
use crate::proto::http::{HttpStatus, StatusCode};

/// The realm every challenge names.
const REALM: &str = "portcullis";

/// gRPC status codes used in `CheckResponse.status` (google.rpc.Code).
mod code {
    pub(super) const OK: i32 = 0;
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const PERMISSION_DENIED: i32 = 7;
    pub(super) const RESOURCE_EXHAUSTED: i32 = 8;
    pub(super) const INTERNAL: i32 = 13;
    pub(super) const UNAVAILABLE: i32 = 14;
    pub(super) const UNAUTHENTICATED: i32 = 16;
}

/// Rendering options that do not change per request.
#[derive(Debug, Clone, Default)]
pub struct ResponseOptions {
    /// Send the determining policy ids back to the client in this header.
    pub policy_ids_header: Option<Bytes>,
    /// Which upstream identity headers carry the quota keys of an allow's dynamic metadata.
    pub quota_keys: QuotaKeys,
}

/// The lower-case names of the identity headers portcullis sets on allow (config `headers`),
/// by the metadata key their value is published under. The values are read from the allow's
/// own upstream headers, so metadata and upstream always agree and a client copy never counts
/// (client copies are removed, never forwarded into the decision). Empty names match nothing.
#[derive(Debug, Clone, Default)]
pub struct QuotaKeys {
    pub issuer: String,
    pub subject: String,
    pub client: String,
    pub spiffe_id: String,
    /// `headers.tenant`: a `claims_to_headers` target naming the caller's tenant.
    pub tenant: Option<String>,
}

/// Longest identity value published as is in metadata (quota descriptors, access log).
pub const MAX_METADATA_VALUE: usize = 256;

/// A quota key: the value itself when short and free of control characters; otherwise
/// `sha256:<32 hex>` of it, so an odd identity still gets a bucket of its own (bounded, and
/// printable in a descriptor or log) instead of escaping the quota.
fn quota_value(v: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let printable = std::str::from_utf8(v).is_ok_and(|s| !s.chars().any(char::is_control));
    if v.len() <= MAX_METADATA_VALUE && printable {
        return std::borrow::Cow::Borrowed(v);
    }
    let digest = Sha256::digest(v);
    std::borrow::Cow::Owned(format!("sha256:{}", hex::encode(&digest[..16])).into_bytes())
}

/// An identity header that overwrites any client copy on every Envoy version: `append: false`
/// for the ones that read the deprecated field, `OVERWRITE_IF_EXISTS_OR_ADD` for the rest.
fn overwrite(key: Bytes, value: Bytes) -> HeaderValueOptionOut {
    HeaderValueOptionOut {
        header: Some(HeaderValueOut { key, value }),
        append: Some(false),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// The `WWW-Authenticate` value for a challenge, in its credential's scheme (RFC 6750 §3).
pub fn challenge_header(c: &Challenge) -> String {
    let scheme = match c.scheme {
        Scheme::Bearer => "Bearer",
        Scheme::ApiKey => "ApiKey",
    };
    match (c.error, &c.description) {
        (Some(error), Some(desc)) => {
            format!("{scheme} realm=\"{REALM}\", error=\"{error}\", error_description=\"{desc}\"")
        }
        (Some(error), None) => format!("{scheme} realm=\"{REALM}\", error=\"{error}\""),
        (None, _) => format!("{scheme} realm=\"{REALM}\""),
    }
}

/// A `google.protobuf.Struct` of strings and string lists, written straight into its wire form
/// (one buffer per answer instead of a message tree): the map is repeated `{key = 1, value = 2}`
/// entries (field 1), a `Value` holds `string_value` (3) or `list_value` (6), a `ListValue` its
/// `values` (1). Every length is known before its bytes are written.
struct Metadata(Vec<u8>);

impl Metadata {
    fn with_capacity(n: usize) -> Self {
        Metadata(Vec::with_capacity(n))
    }

    /// A length-delimited field's key byte (field numbers here are below 16) and length.
    fn head(&mut self, field: u8, len: usize) {
        self.0.push(field << 3 | 2);
        prost::encoding::encode_varint(len as u64, &mut self.0);
    }

    /// An entry `key` → `string_value`.
    fn string(&mut self, key: &str, value: &[u8]) {
        let value_msg = delimited(value.len());
        self.head(1, delimited(key.len()) + delimited(value_msg));
        self.head(1, key.len());
        self.0.extend_from_slice(key.as_bytes());
        self.head(2, value_msg);
        self.head(3, value.len());
        self.0.extend_from_slice(value);
    }

    /// An entry `key` → `list_value` of strings.
    fn list(&mut self, key: &str, items: &[String]) {
        let list: usize = items.iter().map(|i| delimited(delimited(i.len()))).sum();
        let value_msg = delimited(list);
        self.head(1, delimited(key.len()) + delimited(value_msg));
        self.head(1, key.len());
        self.0.extend_from_slice(key.as_bytes());
        self.head(2, value_msg);
        self.head(6, list);
        for i in items {
            self.head(1, delimited(i.len()));
            self.head(3, i.len());
            self.0.extend_from_slice(i.as_bytes());
        }
    }
}

/// Bytes a length-delimited field of `len` bytes takes: key, varint length, payload.
fn delimited(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// What Envoy's access log and rate-limit filter see under `envoy.filters.http.ext_authz`: a
/// `google.protobuf.Struct` on the wire, each key once.
fn metadata(d: &Decision, keys: &QuotaKeys) -> Bytes {
    let mut m = Metadata::with_capacity(512);
    m.string("decision", d.verdict().as_bytes());
    m.string("reason", d.reason().as_bytes());
    // Empty before authorization (a deny); an allow always has one.
    let principal = d.principal().as_bytes();
    m.string("principal", &quota_value(principal));
    m.list("policy_ids", d.policies());
    if !d.request_id().is_empty() {
        m.string("request_id", d.request_id().as_bytes());
    }
    if let Decision::Allow(a) = d {
        insert_quota_keys(&mut m, a, keys);
    }
    // The candidate's view goes to the access log only: never to a header the client or the
    // upstream could see.
    if let Some(sh) = d.shadow() {
        m.string("shadow_decision", sh.verdict().as_bytes());
        m.list("shadow_policies", &sh.policies);
        m.string("shadow_version", sh.version.as_bytes());
    }
    m.0.into()
}

/// The verified identity of an allow, each key only when it was proven (a header was set).
fn insert_quota_keys(m: &mut Metadata, a: &Allow, keys: &QuotaKeys) {
    let wanted = [
        ("issuer", Some(&keys.issuer)),
        ("subject", Some(&keys.subject)),
        ("client", Some(&keys.client)),
        ("spiffe_id", Some(&keys.spiffe_id)),
        ("tenant", keys.tenant.as_ref()),
    ];
    for (key, header) in wanted {
        let Some(header) = header.filter(|h| !h.is_empty()) else { continue };
        if let Some((_, v)) = a.upstream_headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(header.as_bytes())) {
            m.string(key, &quota_value(v));
        }
    }
}

/// The policy-ids response header, when configured and there are ids to send.
fn policy_header(opts: &ResponseOptions, policies: &[String]) -> Option<HeaderValueOptionOut> {
    opts.policy_ids_header
        .as_ref()
        .filter(|_| !policies.is_empty())
        .map(|h| overwrite(h.clone(), Bytes::from(policies.join(","))))
}

/// Builds the wire response.
pub fn render(d: &Decision, opts: &ResponseOptions) -> CheckResponseOut {
    let (status, http_response) = match d {
        Decision::Allow(a) => {
            let headers = a.upstream_headers.iter().map(|(k, v)| overwrite(k.clone(), v.clone())).collect();
            render_allow(headers, a.remove_headers.clone(), &a.policies, opts)
        }
        Decision::Deny(den) => render_deny(den, opts),
    };
    CheckResponseOut {
        status: Some(status),
        http_response: Some(http_response),
        dynamic_metadata: metadata(d, &opts.quota_keys),
    }
}

/// [`render`] for a decision whose headers are not needed afterwards (the server only logs it,
/// and a decision line has no headers): an allow's upstream and removal headers are moved into
/// the response rather than copied, and left empty in `d`. The response is the same.
pub fn render_taking_headers(d: &mut Decision, opts: &ResponseOptions) -> CheckResponseOut {
    let metadata = metadata(d, &opts.quota_keys);
    let (status, http_response) = match d {
        Decision::Allow(a) => {
            let headers = std::mem::take(&mut a.upstream_headers);
            let headers = headers.into_iter().map(|(k, v)| overwrite(k, v)).collect();
            render_allow(headers, std::mem::take(&mut a.remove_headers), &a.policies, opts)
        }
        Decision::Deny(den) => render_deny(den, opts),
    };
    CheckResponseOut { status: Some(status), http_response: Some(http_response), dynamic_metadata: metadata }
}

/// The standard `CheckResponse` a client decodes from an answer: what Envoy sees. For tests and
/// tools that inspect an answer in process; not used on the check path.
#[doc(hidden)]
pub fn as_envoy_sees_it(r: &CheckResponseOut) -> Result<crate::proto::auth::CheckResponse, prost::DecodeError> {
    use prost::Message as _;
    // The two types share every field number and wire type (build.rs).
    crate::proto::auth::CheckResponse::decode(r.encode_to_vec().as_slice())
}

fn render_allow(
    headers: Vec<HeaderValueOptionOut>,
    headers_to_remove: RemoveHeaders,
    policies: &[String],
    opts: &ResponseOptions,
) -> (RpcStatus, HttpResponse) {
    let (headers_to_remove_wire, headers_to_remove) = headers_to_remove.into_wire();
    let ok = OkHttpResponseOut {
        headers,
        headers_to_remove_wire,
        headers_to_remove,
        response_headers_to_add: policy_header(opts, policies).into_iter().collect(),
        dynamic_metadata: None,
    };
    (RpcStatus { code: code::OK, message: String::new(), details: Vec::new() }, HttpResponse::OkResponse(ok))
}

fn render_deny(d: &Deny, opts: &ResponseOptions) -> (RpcStatus, HttpResponse) {
    let (grpc, http) = match d.status {
        Status::Forbidden => (code::PERMISSION_DENIED, StatusCode::Forbidden),
        Status::BadRequest => (code::INVALID_ARGUMENT, StatusCode::BadRequest),
        Status::PayloadTooLarge => (code::INVALID_ARGUMENT, StatusCode::PayloadTooLarge),
        Status::Unauthorized => (code::UNAUTHENTICATED, StatusCode::Unauthorized),
        Status::TooManyRequests => (code::RESOURCE_EXHAUSTED, StatusCode::TooManyRequests),
        Status::InternalError => (code::INTERNAL, StatusCode::InternalServerError),
        Status::Unavailable => (code::UNAVAILABLE, StatusCode::ServiceUnavailable),
    };
    let mut headers = vec![overwrite(Bytes::from_static(b"content-type"), Bytes::from_static(b"application/json"))];
    if let Some(c) = &d.challenge {
        headers.push(overwrite(Bytes::from_static(b"www-authenticate"), Bytes::from(challenge_header(c))));
    }
    if let Some(s) = d.retry_after {
        headers.push(overwrite(Bytes::from_static(b"retry-after"), Bytes::from(s.to_string())));
    }
    headers.extend(policy_header(opts, &d.policies));
    // A small body: the reason class and the request id, never internals.
    let body = deny_body(d.reason, &d.request_id);
    (
        RpcStatus { code: grpc, message: d.reason.to_owned(), details: Vec::new() },
        HttpResponse::DeniedResponse(DeniedHttpResponseOut {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body,
        }),
    )
}

/// `{"error":…,"request_id":…}`, written straight into one buffer (no JSON tree per deny).
fn deny_body(reason: &str, request_id: &str) -> String {
    let mut b = Vec::with_capacity(32 + reason.len() + request_id.len());
    b.extend_from_slice(b"{\"error\":");
    let _ = serde_json::to_writer(&mut b, reason);
    b.extend_from_slice(b",\"request_id\":");
    let _ = serde_json::to_writer(&mut b, request_id);
    b.push(b'}');
    // serde_json writes UTF-8; the fallback is unreachable and still valid JSON.
    String::from_utf8(b).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
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
            upstream_headers: vec![("x-portcullis-subject".into(), "alice".into())],
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
            a.shadow = Some(ShadowOutcome {
                allowed: false,
                policies: vec!["x".into()],
                version: "v2".into(),
                errored: false,
            });
        }
        let wire = super::render(&d, &ResponseOptions { policy_ids_header: None, quota_keys: keys() }).dynamic_metadata;
        // Decoded as the repeated entries the wire holds, so a duplicate would show.
        let md = <crate::proto::auth::StructOut as prost::Message>::decode(wire).expect("a Struct");
        let names: Vec<&[u8]> = md.fields.iter().map(|f| f.key.as_ref()).collect();
        let unique: std::collections::BTreeSet<&[u8]> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(names.len(), 13, "every key this decision has: {names:?}");
    }
}
