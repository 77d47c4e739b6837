//! Compiles the minimal Envoy ext_authz protos with protox (pure Rust, no system `protoc`) and
//! writes the descriptor set next to the generated code for gRPC reflection.
//!
//! The server answers with `CheckResponseOut`, a wire-identical copy of `CheckResponse` whose
//! header names and values, removals and metadata are `bytes::Bytes` (protobuf `string` and
//! `bytes` share a wire type, and a `map` is a repeated key/value message on the wire): config
//! strings are then shared into every answer instead of copied per check. Only the Rust types
//! differ: reflection serves the descriptors as written in `proto/`, and the client (CLI, tests)
//! is generated from them and decodes the standard `CheckResponse`.
//!
//! `OkHttpResponseOut` alone is written by hand (src/proto/ok_response_out.rs, mapped in with
//! `extern_path`): its `headers_to_remove` is a chunk of field-5 records encoded once per
//! removal list and appended to every allow as is. The descriptor copy stays, so the copy's
//! field numbers remain documented here.
use std::{env, fs, path::PathBuf};

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
    OneofDescriptorProto,
};

const AUTH: &str = "envoy/service/auth/v3/external_auth.proto";
const CORE: &str = "envoy/config/core/v3/base.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/envoy/service/auth/v3/external_auth.proto",
        "proto/envoy/service/auth/v3/attribute_context.proto",
        "proto/envoy/config/core/v3/base.proto",
        "proto/envoy/type/v3/http_status.proto",
        "proto/google/rpc/status.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("ext_authz_descriptor.bin"), fds.encode_to_vec())?;

    // Messages and the server, from the descriptors plus the encode-side copies.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .compile_well_known_types(false)
        .bytes(".envoy.service.auth.v3.HeaderValueOut")
        .bytes(".envoy.service.auth.v3.FieldOut")
        .bytes(".envoy.service.auth.v3.ValueOut")
        .bytes(".envoy.service.auth.v3.CheckResponseOut")
        // Written by hand (src/proto/ok_response_out.rs): its removal list is pre-encoded. The
        // descriptor copy stays, so `CheckResponseOut`'s field still names it.
        .extern_path(".envoy.service.auth.v3.OkHttpResponseOut", "crate::proto::auth::OkHttpResponseOut")
        // Boxed, so the decoded request moves through tonic (decode, request, service future) as
        // a pointer rather than as its ~1 kB of fields.
        .boxed(".envoy.service.auth.v3.CheckRequestIn.attributes")
        .compile_fds(with_decode_side(with_encode_side(fds.clone())?)?)?;

    // The standard server trait (`CheckRequest` in, `CheckResponse` out), over the same messages:
    // only `examples/ceiling.rs` serves it, to measure the full standard decode.
    let standard_dir = out.join("standard");
    fs::create_dir_all(&standard_dir)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .compile_well_known_types(false)
        .extern_path(".envoy", "crate::proto::envoy")
        .extern_path(".google.rpc", "crate::proto::google::rpc")
        .out_dir(&standard_dir)
        .compile_fds(fds.clone())?;

    // The client, from the descriptors as written, over the messages generated above.
    let client_dir = out.join("client");
    fs::create_dir_all(&client_dir)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_well_known_types(false)
        .extern_path(".envoy", "crate::proto::envoy")
        .extern_path(".google.rpc", "crate::proto::google::rpc")
        .out_dir(&client_dir)
        .compile_fds(fds)?;
    Ok(())
}

fn message<'a>(fds: &'a FileDescriptorSet, file: &str, name: &str) -> Result<&'a DescriptorProto, String> {
    fds.file
        .iter()
        .find(|f| f.name() == file)
        .and_then(|f| f.message_type.iter().find(|m| m.name() == name))
        .ok_or_else(|| format!("{file}: no message {name}"))
}

/// `m` renamed, with the named fields retyped: to another message, or to `bytes`.
fn copy(m: &DescriptorProto, name: &str, retype: &[(&str, Option<&str>)]) -> Result<DescriptorProto, String> {
    let mut m = m.clone();
    m.name = Some(name.to_owned());
    // Nested enums stay with the original (the copy's fields still name them).
    m.enum_type.clear();
    for (field, to) in retype {
        let f = m.field.iter_mut().find(|f| f.name() == *field).ok_or_else(|| format!("{name}: no field {field}"))?;
        match to {
            Some(msg) => f.type_name = Some(format!(".envoy.service.auth.v3.{msg}")),
            None => {
                f.set_type(Type::Bytes);
                f.type_name = None;
            }
        }
    }
    Ok(m)
}

/// The `Check` method of the auth file's service, whose input or output a copy replaces.
fn check_method(auth: &mut FileDescriptorProto) -> Result<&mut MethodDescriptorProto, String> {
    auth.service
        .iter_mut()
        .flat_map(|s| s.method.iter_mut())
        .find(|m| m.name() == "Check")
        .ok_or_else(|| "no Check method".to_string())
}

fn field(name: &str, number: i32, label: Label, ty: Type, message: Option<&str>) -> FieldDescriptorProto {
    let mut f = FieldDescriptorProto {
        name: Some(name.to_owned()),
        number: Some(number),
        json_name: Some(name.to_owned()),
        type_name: message.map(|m| format!(".envoy.service.auth.v3.{m}")),
        ..Default::default()
    };
    f.set_label(label);
    f.set_type(ty);
    f
}

/// Adds the encode-side copies of `CheckResponse` (see the module comment) and makes `Check`
/// answer with them. Field numbers and wire types are the originals'.
fn with_encode_side(mut fds: FileDescriptorSet) -> Result<FileDescriptorSet, String> {
    let header_value = {
        let mut m = copy(message(&fds, CORE, "HeaderValue")?, "HeaderValueOut", &[("key", None), ("value", None)])?;
        // `raw_value` is never set in an answer.
        m.field.retain(|f| f.name() != "raw_value");
        m
    };
    let option =
        copy(message(&fds, CORE, "HeaderValueOption")?, "HeaderValueOptionOut", &[("header", Some("HeaderValueOut"))])?;
    let denied = copy(
        message(&fds, AUTH, "DeniedHttpResponse")?,
        "DeniedHttpResponseOut",
        &[("headers", Some("HeaderValueOptionOut"))],
    )?;
    let ok = copy(
        message(&fds, AUTH, "OkHttpResponse")?,
        "OkHttpResponseOut",
        &[
            ("headers", Some("HeaderValueOptionOut")),
            ("response_headers_to_add", Some("HeaderValueOptionOut")),
            ("headers_to_remove", None),
            ("dynamic_metadata", Some("StructOut")),
        ],
    )?;
    let response = copy(
        message(&fds, AUTH, "CheckResponse")?,
        "CheckResponseOut",
        &[
            ("denied_response", Some("DeniedHttpResponseOut")),
            ("ok_response", Some("OkHttpResponseOut")),
            // The `Struct`'s encoding, written directly (`response::Metadata`): a message field
            // and a bytes field holding its encoding are the same on the wire.
            ("dynamic_metadata", None),
        ],
    )?;
    // google.protobuf.Struct as the wire sees it: `map<string, Value> fields = 1` is a repeated
    // {key = 1, value = 2} message; Value's `string_value` is 3, `list_value` 6; ListValue's
    // `values` is 1. Only the kinds an answer uses.
    let strukt = DescriptorProto {
        name: Some("StructOut".into()),
        field: vec![field("fields", 1, Label::Repeated, Type::Message, Some("FieldOut"))],
        ..Default::default()
    };
    let entry = DescriptorProto {
        name: Some("FieldOut".into()),
        field: vec![
            field("key", 1, Label::Optional, Type::Bytes, None),
            field("value", 2, Label::Optional, Type::Message, Some("ValueOut")),
        ],
        ..Default::default()
    };
    let mut string_value = field("string_value", 3, Label::Optional, Type::Bytes, None);
    string_value.oneof_index = Some(0);
    let mut list_value = field("list_value", 6, Label::Optional, Type::Message, Some("ListValueOut"));
    list_value.oneof_index = Some(0);
    let value = DescriptorProto {
        name: Some("ValueOut".into()),
        field: vec![string_value, list_value],
        oneof_decl: vec![OneofDescriptorProto { name: Some("kind".into()), options: None }],
        ..Default::default()
    };
    let list = DescriptorProto {
        name: Some("ListValueOut".into()),
        field: vec![field("values", 1, Label::Repeated, Type::Message, Some("ValueOut"))],
        ..Default::default()
    };
    let auth = fds.file.iter_mut().find(|f| f.name() == AUTH).ok_or("no external_auth.proto")?;
    auth.message_type.extend([header_value, option, denied, ok, response, strukt, entry, value, list]);
    check_method(auth)?.output_type = Some(".envoy.service.auth.v3.CheckResponseOut".into());
    // Source locations index the original messages; the copies have none.
    auth.source_code_info = None;
    Ok(fds)
}

/// Adds the decode-side copies of `CheckRequest` and makes `Check` take them: down the path
/// `attributes.request.http`, each message is a copy whose only change is the next one's type,
/// and `HttpRequestIn.headers` (`map<string, string>` = 3) is `repeated HeaderEntryIn`, the
/// {key = 1, value = 2} entries a map is on the wire. prost then decodes the headers into a `Vec`
/// in arrival order instead of hashing them into a `HashMap`, and a key sent twice reaches
/// `RequestView` twice instead of the last copy silently winning. Both stay `string`, so a value
/// that is not UTF-8 still fails the decode, as it does for the map.
fn with_decode_side(mut fds: FileDescriptorSet) -> Result<FileDescriptorSet, String> {
    const ATTRS: &str = "envoy/service/auth/v3/attribute_context.proto";
    let nested = |outer: &str, name: &str| -> Result<DescriptorProto, String> {
        message(&fds, ATTRS, outer)?
            .nested_type
            .iter()
            .find(|m| m.name() == name)
            .cloned()
            .ok_or_else(|| format!("{ATTRS}: no message {outer}.{name}"))
    };
    let request =
        copy(message(&fds, AUTH, "CheckRequest")?, "CheckRequestIn", &[("attributes", Some("AttributeContextIn"))])?;
    let attributes = {
        let mut m = copy(
            message(&fds, ATTRS, "AttributeContext")?,
            "AttributeContextIn",
            &[
                ("request", Some("RequestIn")),
                // A map field names its entry type, nested in the message that declares it.
                ("context_extensions", Some("AttributeContextIn.ContextExtensionsEntry")),
            ],
        )?;
        // The other fields still name the original nested messages; only the map entry moves.
        m.nested_type.retain(|n| n.name() == "ContextExtensionsEntry");
        m
    };
    let req = copy(&nested("AttributeContext", "Request")?, "RequestIn", &[("http", Some("HttpRequestIn"))])?;
    let http = {
        let mut m =
            copy(&nested("AttributeContext", "HttpRequest")?, "HttpRequestIn", &[("headers", Some("HeaderEntryIn"))])?;
        m.nested_type.clear();
        m
    };
    let entry = DescriptorProto {
        name: Some("HeaderEntryIn".into()),
        field: vec![
            field("key", 1, Label::Optional, Type::String, None),
            field("value", 2, Label::Optional, Type::String, None),
        ],
        ..Default::default()
    };
    for m in [&request, &attributes, &req, &http] {
        if !m.nested_type.iter().all(|n| n.options.as_ref().is_some_and(|o| o.map_entry())) {
            return Err(format!("{}: a copy keeps only map entries", m.name()));
        }
    }
    let auth = fds.file.iter_mut().find(|f| f.name() == AUTH).ok_or("no external_auth.proto")?;
    auth.message_type.extend([request, attributes, req, http, entry]);
    check_method(auth)?.input_type = Some(".envoy.service.auth.v3.CheckRequestIn".into());
    Ok(fds)
}
