// `OkHttpResponseOut`, written by hand (build.rs maps the generated copy's name here): the
// encode-side `OkHttpResponse` whose `headers` (field 2) and `headers_to_remove` (field 5) each
// start with a pre-encoded chunk of their records, appended as is, then any further entries
// encoded one by one. Included into `envoy.service.auth.v3`, next to the generated messages it
// names.

/// The allow half of `CheckResponseOut`: the same field numbers and wire types as
/// `OkHttpResponse` (fields as the generated copy would write them, in tag order).
#[derive(Clone, PartialEq, Default)]
pub struct OkHttpResponseOut {
    /// `headers` records (key `0x12`, varint length, a `HeaderValueOption`), already encoded;
    /// only ever field-2 records. Written before the `headers` list.
    pub headers_wire: ::prost::bytes::Bytes,
    pub headers: ::prost::alloc::vec::Vec<HeaderValueOptionOut>,
    pub dynamic_metadata: ::core::option::Option<StructOut>,
    /// `headers_to_remove` records (key `0x2a`, varint length, name), already encoded; only
    /// ever field-5 records, or the answer would carry other fields.
    pub headers_to_remove_wire: ::prost::bytes::Bytes,
    /// More `headers_to_remove` names, after the pre-encoded ones.
    pub headers_to_remove: ::prost::alloc::vec::Vec<::prost::bytes::Bytes>,
    pub response_headers_to_add: ::prost::alloc::vec::Vec<HeaderValueOptionOut>,
}

impl ::prost::Message for OkHttpResponseOut {
    fn encode_raw(&self, buf: &mut impl ::prost::bytes::BufMut) {
        use ::prost::encoding::{bytes, message};
        buf.put_slice(&self.headers_wire);
        message::encode_repeated(2, &self.headers, buf);
        if let Some(m) = &self.dynamic_metadata {
            message::encode(3, m, buf);
        }
        buf.put_slice(&self.headers_to_remove_wire);
        bytes::encode_repeated(5, &self.headers_to_remove, buf);
        message::encode_repeated(6, &self.response_headers_to_add, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: ::prost::encoding::WireType,
        buf: &mut impl ::prost::bytes::Buf,
        ctx: ::prost::encoding::DecodeContext,
    ) -> ::core::result::Result<(), ::prost::DecodeError> {
        use ::prost::encoding::{bytes, message, skip_field};
        // Not on the check path (the server only encodes); decoded names go to the list.
        match tag {
            2 => message::merge_repeated(wire_type, &mut self.headers, buf, ctx),
            3 => message::merge(wire_type, self.dynamic_metadata.get_or_insert_with(Default::default), buf, ctx),
            5 => bytes::merge_repeated(wire_type, &mut self.headers_to_remove, buf, ctx),
            6 => message::merge_repeated(wire_type, &mut self.response_headers_to_add, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        use ::prost::encoding::{bytes, message};
        self.headers_wire.len()
            + message::encoded_len_repeated(2, &self.headers)
            + self.dynamic_metadata.as_ref().map_or(0, |m| message::encoded_len(3, m))
            + self.headers_to_remove_wire.len()
            + bytes::encoded_len_repeated(5, &self.headers_to_remove)
            + message::encoded_len_repeated(6, &self.response_headers_to_add)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl ::core::fmt::Debug for OkHttpResponseOut {
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        f.debug_struct("OkHttpResponseOut")
            .field("headers_wire", &self.headers_wire)
            .field("headers", &self.headers)
            .field("dynamic_metadata", &self.dynamic_metadata)
            .field("headers_to_remove_wire", &self.headers_to_remove_wire)
            .field("headers_to_remove", &self.headers_to_remove)
            .field("response_headers_to_add", &self.response_headers_to_add)
            .finish()
    }
}
