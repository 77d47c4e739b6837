//! Renders a [`Decision`] as an Envoy `CheckResponse`: the only place a decision becomes wire
//! types. The gRPC call itself always succeeds; the decision is in `status` and the HTTP parts.
use std::collections::BTreeMap;

use prost_types::{ListValue, Struct, Value, value::Kind};

use crate::decision::{Allow, Challenge, Decision, Deny, Scheme, Status};
use crate::proto::RpcStatus;
use crate::proto::auth::{CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse};
use crate::proto::core::{HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction};
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
    pub policy_ids_header: Option<String>,
}

/// An identity header that overwrites any client copy on every Envoy version: `append: false`
/// for the ones that read the deprecated field, `OVERWRITE_IF_EXISTS_OR_ADD` for the rest.
fn overwrite(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_owned(), value: value.to_owned(), raw_value: Vec::new() }),
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

fn string(v: &str) -> Value {
    Value { kind: Some(Kind::StringValue(v.to_owned())) }
}

/// What Envoy's access log sees under `envoy.filters.http.ext_authz`.
fn metadata(d: &Decision) -> Struct {
    let mut fields = BTreeMap::new();
    fields.insert("decision".to_owned(), string(d.verdict()));
    fields.insert("reason".to_owned(), string(d.reason()));
    fields.insert("principal".to_owned(), string(d.principal()));
    fields.insert(
        "policy_ids".to_owned(),
        Value { kind: Some(Kind::ListValue(ListValue { values: d.policies().iter().map(|p| string(p)).collect() })) },
    );
    if !d.request_id().is_empty() {
        fields.insert("request_id".to_owned(), string(d.request_id()));
    }
    Struct { fields }
}

/// The policy-ids response header, when configured and there are ids to send.
fn policy_header(opts: &ResponseOptions, policies: &[String]) -> Option<HeaderValueOption> {
    opts.policy_ids_header.as_ref().filter(|_| !policies.is_empty()).map(|h| overwrite(h, &policies.join(",")))
}

/// Builds the wire response.
pub fn render(d: &Decision, opts: &ResponseOptions) -> CheckResponse {
    let (status, http_response) = match d {
        Decision::Allow(a) => render_allow(a, opts),
        Decision::Deny(den) => render_deny(den, opts),
    };
    CheckResponse { status: Some(status), http_response: Some(http_response), dynamic_metadata: Some(metadata(d)) }
}

fn render_allow(a: &Allow, opts: &ResponseOptions) -> (RpcStatus, HttpResponse) {
    let ok = OkHttpResponse {
        headers: a.upstream_headers.iter().map(|(k, v)| overwrite(k, v)).collect(),
        headers_to_remove: a.remove_headers.clone(),
        response_headers_to_add: policy_header(opts, &a.policies).into_iter().collect(),
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
    let mut headers = vec![overwrite("content-type", "application/json")];
    if let Some(c) = &d.challenge {
        headers.push(overwrite("www-authenticate", &challenge_header(c)));
    }
    if let Some(s) = d.retry_after {
        headers.push(overwrite("retry-after", &s.to_string()));
    }
    headers.extend(policy_header(opts, &d.policies));
    // A small body: the reason class and the request id, never internals.
    let body = serde_json::json!({ "error": d.reason, "request_id": d.request_id }).to_string();
    (
        RpcStatus { code: grpc, message: d.reason.to_owned(), details: Vec::new() },
        HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_overwrites_identity_headers_both_ways() {
        let d = Decision::Allow(Allow {
            principal: r#"User::"alice""#.into(),
            action: r#"Action::"GET""#.into(),
            resource: r#"Route::"shop/x""#.into(),
            policies: vec!["p".into()],
            upstream_headers: vec![("x-portcullis-subject".into(), "alice".into())],
            remove_headers: vec!["x-portcullis-peer".into()],
            request_id: "r1".into(),
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
    fn a_deny_with_policies_sends_no_upstream_headers_and_the_policy_header() {
        let mut den = Deny::new(Status::Forbidden, "forbidden_by_policy", "r3");
        den.policies = vec!["block".into()];
        let opts = ResponseOptions { policy_ids_header: Some("x-policies".into()) };
        let r = render(&den.into(), &opts);
        assert_eq!(r.status.as_ref().unwrap().code, code::PERMISSION_DENIED);
        let Some(HttpResponse::DeniedResponse(den)) = r.http_response else { panic!("not denied") };
        assert_eq!(den.status.unwrap().code, 403);
        let keys: Vec<_> = den.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["content-type", "x-policies"]);
    }
}
