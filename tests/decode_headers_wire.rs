//! The merged `headers` field decoded as a list (issue 18, build.rs `with_decode_side`), over a
//! real gRPC connection with frames built by hand: a name a hostile client repeats reaches the
//! request view twice (never silently last-wins), a value that is not UTF-8 still fails the
//! decode, and every request shape decides exactly as it did through the standard `HashMap`.
mod common;

use bytes::{Buf, BufMut};
use common::*;
use portcullis::proto::auth::{CheckRequest, CheckResponse};
use prost::Message;
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// A request frame as raw protobuf bytes, so a test can send what no generated type would.
#[derive(Debug, Default, Clone)]
struct RawFrame(Vec<u8>);

impl Message for RawFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Sends `frame` to `Check` as is.
async fn send(channel: Channel, frame: Vec<u8>) -> Result<CheckResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let path = PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Check");
    let codec = tonic_prost::ProstCodec::<RawFrame, CheckResponse>::default();
    let r = tokio::time::timeout(WAIT, grpc.unary(tonic::Request::new(RawFrame(frame)), path, codec));
    r.await.expect("answered in time").map(tonic::Response::into_inner)
}

/// A length-delimited field `tag` holding `body`.
fn wrap(tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// `req` encoded, then `attributes.request.http.headers` entries appended as raw bytes
/// (protobuf merges a repeated occurrence of an embedded message into the first).
fn with_entries(req: &CheckRequest, entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut http = Vec::new();
    for (k, v) in entries {
        let mut entry = wrap(1, k);
        entry.extend(wrap(2, v));
        http.extend(wrap(3, &entry));
    }
    let mut out = req.encode_to_vec();
    out.extend(wrap(1, &wrap(4, &wrap(2, &http))));
    out
}

fn bearer(t: &str) -> Vec<u8> {
    format!("Bearer {t}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_authorization_entry_is_never_allowed() {
    let s = Sidecar::start().await;
    let (alice, bob) = (token("alice").mint(), token("bob").mint());
    let base = req("GET", "/api/orders").build();
    let channel = tcp_channel(&s.grpc_url()).await;

    // The hand-built frame itself works: one entry is read like the map's.
    let one = send(channel.clone(), with_entries(&base, &[(b"authorization", &bearer(&alice))])).await.expect("rpc");
    assert!(is_allowed(&one), "{one:?}");

    // Two copies: the HashMap kept the last one, so either token could be the one decided on
    // while the upstream may read the other. Now both are seen and the request is refused.
    let forged = bearer("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.");
    for pair in [[bearer(&alice), bearer(&bob)], [forged.clone(), bearer(&alice)], [bearer(&alice), forged]] {
        let frame = with_entries(&base, &[(b"authorization", &pair[0]), (b"authorization", &pair[1])]);
        for channel in [channel.clone(), uds_channel(&s.unix_path()).await] {
            let r = send(channel, frame.clone()).await.expect("rpc");
            assert!(!is_allowed(&r), "{r:?}");
            assert!([400, 401].contains(&http_status(&r)), "{r:?}");
            // Exactly as the same two copies in Envoy's raw `header_map`.
            let raw = req("GET", "/api/orders")
                .header("authorization", std::str::from_utf8(&pair[0]).expect("utf-8"))
                .header("authorization", std::str::from_utf8(&pair[1]).expect("utf-8"))
                .build_header_map_only(false);
            let want = s.check(raw).await;
            assert_eq!((http_status(&r), meta(&r, "reason")), (http_status(&want), meta(&want, "reason")));
        }
    }
    // A second spelling of the name is the same header.
    let frame = with_entries(&base, &[(b"authorization", &bearer(&alice)), (b"Authorization", &bearer(&bob))]);
    assert!(!is_allowed(&send(channel.clone(), frame).await.expect("rpc")));
    // Two API keys, one valid: refused as a duplicate credential.
    let post = req("POST", "/api/jobs/1").build();
    let frame = with_entries(&post, &[(b"x-api-key", b"demo-batch-key"), (b"x-api-key", b"not-a-key")]);
    let r = send(channel, frame).await.expect("rpc");
    assert_eq!((http_status(&r), meta(&r, "reason").as_str()), (400, "duplicate_credential"), "{r:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_id_reads_as_in_the_raw_header_map() {
    let s = Sidecar::start().await;
    let channel = tcp_channel(&s.grpc_url()).await;
    // Allowed and refused (400) requests alike carry the first copy, as `header_map` does.
    for path in ["/public/status", "/public/%2F"] {
        let base = req("GET", path).build();
        let frame = with_entries(&base, &[(b"x-request-id", b"rid-first"), (b"x-request-id", b"rid-second")]);
        let r = send(channel.clone(), frame).await.expect("rpc");
        let raw = req("GET", path).header("x-request-id", "rid-first").header("x-request-id", "rid-second");
        let want = s.check(raw.build_header_map_only(false)).await;
        assert_eq!(meta(&r, "request_id"), "rid-first", "{r:?}");
        assert_eq!(meta(&want, "request_id"), "rid-first", "{want:?}");
        assert_eq!((is_allowed(&r), http_status(&r)), (is_allowed(&want), http_status(&want)), "{path}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_that_is_not_utf8_still_fails_the_decode() {
    let s = Sidecar::start().await;
    let channel = tcp_channel(&s.grpc_url()).await;
    let alice = token("alice").mint();
    let base = req("GET", "/api/orders").build();
    let bad_value: &[(&[u8], &[u8])] = &[(b"authorization", &bearer(&alice)), (b"x-note", b"caf\xe9")];
    let bad_key: &[(&[u8], &[u8])] = &[(b"authorization", &bearer(&alice)), (b"x-\xff", b"v")];
    for entries in [bad_value, bad_key] {
        let frame = with_entries(&base, entries);
        // What the standard decode did with these bytes: an error.
        assert!(CheckRequest::decode(frame.as_slice()).is_err(), "the map refused it too");
        // An RPC error (never an answer), which Envoy turns into a deny unless told to fail open.
        let e = send(channel.clone(), frame).await.expect_err("decode error");
        assert_ne!(e.code(), tonic::Code::Ok);
    }
    // The same request with a valid value is allowed: it is the bytes, not the request, that fail.
    let valid = with_entries(&base, &[(b"authorization", &bearer(&alice)), (b"x-note", b"cafe")]);
    assert!(is_allowed(&send(channel, valid).await.expect("rpc")));
    s.stop().await;
}

/// What a decision shows the proxy, compared across decodes.
fn outcome(r: &CheckResponse) -> (bool, i32, String, String, Vec<String>, String) {
    let has_id = r.dynamic_metadata.as_ref().is_some_and(|m| m.fields.contains_key("request_id"));
    let id = if has_id { meta(r, "request_id") } else { String::new() };
    (is_allowed(r), http_status(r), meta(r, "reason"), meta(r, "principal"), policy_ids(r), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_shape_decides_as_through_the_standard_decode() {
    let s = Sidecar::start().await;
    let channel = tcp_channel(&s.grpc_url()).await;
    let alice = token("alice").groups(&["admins"]).mint();
    let builders = [
        req("GET", "/public/status"),
        req("GET", "/api/orders").bearer(&alice).header("x-tenant", "acme").header("traceparent", TRACEPARENT),
        req("GET", "/api/orders").bearer("not.a.token"),
        req("POST", "/api/jobs/1").header("x-api-key", "demo-batch-key").header("content-type", "application/json"),
        req("DELETE", "/admin/users/1").bearer(&alice).id("rid-7"),
        req("GET", "/api/orders").peer("spiffe://cluster.local/ns/default/sa/frontend"),
        req("GET", "/public/%2F").header("x-request-id", "rid-400"),
        req("GET", "/api/tenants/acme/x").bearer(&alice).header("x-tenant", "acme").header("X-Other", "1"),
    ];
    let mut compared = 0;
    for b in &builders {
        for wire in [b.build(), b.build_header_map(true), b.build_header_map(false), b.build_header_map_only(true)] {
            let frame = wire.encode_to_vec();
            // The old server's input: the frame through the standard decode (headers hashed into
            // a map), encoded again in that map's order.
            let standard = CheckRequest::decode(frame.as_slice()).expect("standard decode").encode_to_vec();
            let now = send(channel.clone(), frame).await.expect("rpc");
            let then = send(channel.clone(), standard).await.expect("rpc");
            assert_eq!(outcome(&now), outcome(&then), "{wire:?}");
            assert_eq!(format!("{:?}", now.http_response), format!("{:?}", then.http_response));
            compared += 1;
        }
    }
    assert_eq!(compared, builders.len() * 4);
    s.stop().await;
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
