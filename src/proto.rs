//! Generated protobuf types: the minimal Envoy ext_authz v3 subset in `proto/`.
//! Only `request`, `response`, `server` and the CLI client touch these.
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
