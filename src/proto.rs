//! Generated protobuf types: the minimal Envoy ext_authz v3 subset in `proto/`.
//! Only `request`, `response`, `server` and the CLI client touch these.
//!
//! The server decodes a check as `auth::CheckRequestIn`, a wire-identical copy of `CheckRequest`
//! whose `attributes.request.http.headers` is a list of entries rather than a `HashMap` (see
//! build.rs). Everything that builds a standard `CheckRequest` (CLI, tests, benches) hands it to
//! the server's code through [`check_in`].
#![allow(clippy::all, missing_docs)]

pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    pub mod r#type {
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
    pub mod service {
        pub mod auth {
            pub mod v3 {
                tonic::include_proto!("envoy.service.auth.v3");
                // The allow's encode-side copy is written by hand (see build.rs).
                include!("proto/ok_response_out.rs");
                // The client, generated from the protos as written (see build.rs).
                include!(concat!(env!("OUT_DIR"), "/client/envoy.service.auth.v3.rs"));
            }
        }
    }
}

/// The standard server trait (`CheckRequest` in, `CheckResponse` out), over the same messages:
/// for `examples/ceiling.rs`, which measures the full standard decode. portcullis serves the
/// trait in [`auth::authorization_server`].
pub mod standard {
    include!(concat!(env!("OUT_DIR"), "/standard/envoy.service.auth.v3.rs"));
}

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// Encoded `FileDescriptorSet` of our protos, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ext_authz_descriptor.bin"));

pub use envoy::config::core::v3 as core;
pub use envoy::service::auth::v3 as auth;
pub use envoy::r#type::v3 as http;
pub use google::rpc::Status as RpcStatus;

/// The request as the server decodes it, from a standard one: its encoding decoded as the
/// decode-side copy, so every field is read exactly as from the wire (the two types are
/// wire-identical by construction; nothing is mapped by hand). For requests built off the check
/// path (CLI, tests, benches); a request that round-trips through prost always decodes.
pub fn check_in(standard: &auth::CheckRequest) -> auth::CheckRequestIn {
    use prost::Message as _;
    auth::CheckRequestIn::decode(&*standard.encode_to_vec())
        .expect("a CheckRequest prost encoded decodes as CheckRequestIn: same fields, same wire types")
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::auth::{CheckRequest, CheckRequestIn};

    #[test]
    fn reflection_serves_the_protos_as_written() {
        // `Check` takes the decode-side copy and answers with the encode-side one in Rust
        // (build.rs); clients must still be told it takes the standard `CheckRequest` and returns
        // the standard `CheckResponse`, and never see the copies.
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let check = fds
            .file
            .iter()
            .flat_map(|f| &f.service)
            .flat_map(|s| &s.method)
            .find(|m| m.name() == "Check")
            .expect("Check");
        assert_eq!(check.input_type(), ".envoy.service.auth.v3.CheckRequest");
        assert_eq!(check.output_type(), ".envoy.service.auth.v3.CheckResponse");
        let names: Vec<&str> = fds.file.iter().flat_map(|f| &f.message_type).map(|m| m.name()).collect();
        assert!(names.contains(&"CheckRequest") && names.contains(&"AttributeContext"), "{names:?}");
        let copies: Vec<&&str> = names.iter().filter(|n| n.ends_with("In") || n.ends_with("Out")).collect();
        assert!(copies.is_empty(), "{copies:?}");
    }

    #[test]
    fn the_copy_reads_every_field_as_the_standard_decode_does() {
        // A fully populated request (every shape `client.rs` builds, plus the fields it does
        // not set) survives standard → copy → wire → standard unchanged.
        let b = crate::client::CheckRequestBuilder::new("POST", "/a?b=c")
            .host("shop")
            .id("rid-1")
            .header("authorization", "Bearer x")
            .header("x-a", "1")
            .peer("spiffe://cluster.local/ns/a/sa/b")
            .source_ip("10.0.0.1");
        for mut std in [b.build(), b.build_header_map(true), b.build_header_map(false), b.build_header_map_only(true)] {
            let attrs = std.attributes.as_mut().expect("attributes");
            attrs.context_extensions.insert("k".into(), "v".into());
            let http = attrs.request.as_mut().and_then(|r| r.http.as_mut()).expect("http");
            http.fragment = "f".into();
            http.size = 7;
            http.protocol = "HTTP/2".into();
            http.body = "body".into();
            http.raw_body = b"raw".to_vec();
            let merged = http.headers.len();
            let copy = super::check_in(&std);
            let back = CheckRequest::decode(&*copy.encode_to_vec()).expect("decodes");
            assert_eq!(back, std);
            let copy_http = copy.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
            let entries = copy_http.map(|h| h.headers.len()).unwrap_or(0);
            assert_eq!(entries, merged);
        }
        assert_eq!(super::check_in(&CheckRequest::default()), CheckRequestIn::default());
    }
}
