//! Renders a [`Decision`] as an Envoy `CheckResponse`: the only place a decision becomes wire
//! types. The gRPC call itself always succeeds; the decision is in `status` and the HTTP parts.
use std::collections::BTreeMap;

use prost_types::{ListValue, Struct, Value, value::Kind};

use crate::decision::{Decision, Status};
use crate::proto::RpcStatus;
use crate::proto::auth::{CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse};
use crate::proto::core::{HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction};
use crate::proto::http::{HttpStatus, StatusCode};

/// gRPC status codes used in `CheckResponse.status` (google.rpc.Code).
mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
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

fn string(v: &str) -> Value {
    Value { kind: Some(Kind::StringValue(v.to_owned())) }
}

/// What Envoy's access log sees under `envoy.filters.http.ext_authz`.
fn metadata(d: &Decision) -> Struct {
    let mut fields = BTreeMap::new();
    fields.insert("decision".to_owned(), string(if d.allowed { "allow" } else { "deny" }));
    fields.insert("reason".to_owned(), string(d.reason));
    fields.insert("principal".to_owned(), string(&d.principal));
    fields.insert(
        "policy_ids".to_owned(),
        Value { kind: Some(Kind::ListValue(ListValue { values: d.policies.iter().map(|p| string(p)).collect() })) },
    );
    if !d.request_id.is_empty() {
        fields.insert("request_id".to_owned(), string(&d.request_id));
    }
    Struct { fields }
}

/// Builds the wire response.
pub fn render(d: &Decision, opts: &ResponseOptions) -> CheckResponse {
    let policy_header = || {
        opts.policy_ids_header.as_ref().filter(|_| !d.policies.is_empty()).map(|h| overwrite(h, &d.policies.join(",")))
    };
    if d.allowed {
        let ok = OkHttpResponse {
            headers: d.upstream_headers.iter().map(|(k, v)| overwrite(k, v)).collect(),
            headers_to_remove: d.remove_headers.clone(),
            response_headers_to_add: policy_header().into_iter().collect(),
            dynamic_metadata: None,
        };
        return CheckResponse {
            status: Some(RpcStatus { code: code::OK, message: String::new(), details: Vec::new() }),
            http_response: Some(HttpResponse::OkResponse(ok)),
            dynamic_metadata: Some(metadata(d)),
        };
    }

    let (grpc, http) = match d.status {
        Status::Ok | Status::Forbidden => (code::PERMISSION_DENIED, StatusCode::Forbidden),
        Status::BadRequest => (code::INVALID_ARGUMENT, StatusCode::BadRequest),
        Status::Unauthorized => (code::UNAUTHENTICATED, StatusCode::Unauthorized),
        Status::TooManyRequests => (code::RESOURCE_EXHAUSTED, StatusCode::TooManyRequests),
        Status::InternalError => (code::INTERNAL, StatusCode::InternalServerError),
        Status::Unavailable => (code::UNAVAILABLE, StatusCode::ServiceUnavailable),
    };
    let mut headers = vec![overwrite("content-type", "application/json")];
    if let Some(c) = &d.www_authenticate {
        headers.push(overwrite("www-authenticate", c));
    }
    if let Some(s) = d.retry_after {
        headers.push(overwrite("retry-after", &s.to_string()));
    }
    headers.extend(policy_header());
    // A small body: the reason class and the request id, never internals.
    let body = serde_json::json!({ "error": d.reason, "request_id": d.request_id }).to_string();
    CheckResponse {
        status: Some(RpcStatus { code: grpc, message: d.reason.to_owned(), details: Vec::new() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body,
        })),
        dynamic_metadata: Some(metadata(d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_overwrites_identity_headers_both_ways() {
        let mut d = Decision::deny(Status::Ok, "allowed", "r1");
        d.allowed = true;
        d.upstream_headers = vec![("x-portcullis-subject".into(), "alice".into())];
        d.remove_headers = vec!["x-portcullis-peer".into()];
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
        let d = Decision::deny(Status::Unauthorized, "token_expired", "r2")
            .with_challenge("Bearer realm=\"portcullis\", error=\"invalid_token\"".into());
        let r = render(&d, &ResponseOptions::default());
        assert_ne!(r.status.as_ref().unwrap().code, 0);
        let Some(HttpResponse::DeniedResponse(den)) = r.http_response else { panic!("not denied") };
        assert_eq!(den.status.unwrap().code, 401);
        assert!(den.headers.iter().any(|h| h.header.as_ref().unwrap().key == "www-authenticate"));
        assert_eq!(den.body, r#"{"error":"token_expired","request_id":"r2"}"#);
    }
}
