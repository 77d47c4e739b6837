//! Renders a [`Decision`] as an Envoy `CheckResponse`: the only place a decision becomes wire
//! types. The gRPC call itself always succeeds; the decision is in `status` and the HTTP parts.
//!
//! The answer is built as `CheckResponseOut`, the wire-identical copy of `CheckResponse` whose
//! strings are [`Bytes`] (see build.rs): header names, the removal list and the metadata keys
//! are shared from config or `'static`, never copied per check. An allow's removal list is
//! appended in its pre-encoded wire form ([`RemoveHeaders`]), and so are the headers it sets
//! ([`crate::decision::SetHeaders`]): no per-header work per check.
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
            render_allow(a.upstream_headers.wire().clone(), a.remove_headers.clone(), &a.policies, opts)
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
            render_allow(headers.wire().clone(), std::mem::take(&mut a.remove_headers), &a.policies, opts)
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

/// `headers_wire`: the allow's `SetHeaders` records, written as they are.
fn render_allow(
    headers_wire: Bytes,
    headers_to_remove: RemoveHeaders,
    policies: &[String],
    opts: &ResponseOptions,
) -> (RpcStatus, HttpResponse) {
    let (headers_to_remove_wire, headers_to_remove) = headers_to_remove.into_wire();
    let ok = OkHttpResponseOut {
        headers_wire,
        headers: Vec::new(),
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
mod tests;
