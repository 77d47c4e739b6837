//! The one builder of `CheckRequest`s: the CLI's `check`, the tests and the benches all describe
//! a request here, so every one of them sends the shapes Envoy sends.
//!
//! Three shapes: Envoy's default (method/path/host fields plus the merged `headers` map),
//! Envoy with `encode_raw_headers` (the same fields plus the raw `header_map`, duplicates kept),
//! and a proxyless gRPC client (only `header_map`, pseudo-headers included, no fields).
use std::collections::HashMap;

use crate::proto::auth::{AttributeContext, CheckRequest, attribute_context};
use crate::proto::core::{Address, HeaderMap, HeaderValue, SocketAddress, address, socket_address};

/// The source port when none is given (any ephemeral port would do).
const SOURCE_PORT: u32 = 40000;

/// A request as Envoy would describe it.
#[derive(Debug, Clone)]
pub struct CheckRequestBuilder {
    method: String,
    path: String,
    host: String,
    id: String,
    scheme: String,
    protocol: String,
    /// In arrival order; values are bytes so a test can send what is not UTF-8.
    headers: Vec<(String, Vec<u8>)>,
    /// Also send `:method`, `:path` and `:authority` in the merged `headers` map.
    pseudo_headers: bool,
    source: Option<(String, u32)>,
    source_principal: String,
    destination: Option<(String, u32)>,
    destination_principal: String,
}

impl CheckRequestBuilder {
    /// A request with no host, id, headers or peers, over plain HTTP/1.1.
    pub fn new(method: &str, path: &str) -> Self {
        CheckRequestBuilder {
            method: method.to_owned(),
            path: path.to_owned(),
            host: String::new(),
            id: String::new(),
            scheme: "http".to_owned(),
            protocol: "HTTP/1.1".to_owned(),
            headers: Vec::new(),
            pseudo_headers: false,
            source: None,
            source_principal: String::new(),
            destination: None,
            destination_principal: String::new(),
        }
    }

    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    /// Envoy's request id (`request.http.id`).
    pub fn id(mut self, id: &str) -> Self {
        self.id = id.to_owned();
        self
    }

    pub fn scheme(mut self, scheme: &str) -> Self {
        self.scheme = scheme.to_owned();
        self
    }

    pub fn header(self, name: &str, value: &str) -> Self {
        self.raw_header(name, value.as_bytes())
    }

    /// A header whose value may not be UTF-8 (only the raw `header_map` shapes carry it as is).
    pub fn raw_header(mut self, name: &str, value: &[u8]) -> Self {
        self.headers.push((name.to_owned(), value.to_vec()));
        self
    }

    /// An `authorization: Bearer <token>` header.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Also send the pseudo-headers in the merged `headers` map, as Envoy does.
    pub fn pseudo_headers(mut self) -> Self {
        self.pseudo_headers = true;
        self
    }

    /// The caller's socket address (port 40000).
    pub fn source_ip(self, ip: &str) -> Self {
        self.source_address(ip, SOURCE_PORT)
    }

    pub fn source_address(mut self, ip: &str, port: u32) -> Self {
        self.source = Some((ip.to_owned(), port));
        self
    }

    /// The caller's peer principal (its mTLS SPIFFE id under Istio).
    pub fn peer(mut self, principal: &str) -> Self {
        self.source_principal = principal.to_owned();
        self
    }

    /// This workload's own principal.
    pub fn destination(mut self, principal: &str) -> Self {
        self.destination_principal = principal.to_owned();
        self
    }

    pub fn destination_address(mut self, ip: &str, port: u32) -> Self {
        self.destination = Some((ip.to_owned(), port));
        self
    }

    /// What Envoy sends by default: method/path/host fields and the merged `headers` map
    /// (lower-case names; a later copy of a name replaces an earlier one).
    pub fn build(&self) -> CheckRequest {
        let mut headers: HashMap<String, String> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        if self.pseudo_headers {
            headers.insert(":authority".into(), self.host.clone());
            headers.insert(":method".into(), self.method.clone());
            headers.insert(":path".into(), self.path.clone());
        }
        self.wrap(attribute_context::HttpRequest { headers, ..self.fields() })
    }

    /// Envoy with `encode_raw_headers`: the same fields, the headers in `header_map` as given
    /// (case and duplicates kept); `raw` puts every value in `raw_value` instead of `value`.
    pub fn build_header_map(&self, raw: bool) -> CheckRequest {
        let header_map = Some(self.header_map(self.headers.iter().cloned(), raw));
        self.wrap(attribute_context::HttpRequest { header_map, ..self.fields() })
    }

    /// What a proxyless gRPC client sends: only `header_map` (pseudo-headers included), no
    /// method/path/host/id fields. `raw` puts every value in `raw_value` instead of `value`.
    pub fn build_header_map_only(&self, raw: bool) -> CheckRequest {
        let pseudo =
            [(":method", &self.method), (":path", &self.path), (":authority", &self.host), (":scheme", &self.scheme)]
                .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()));
        let header_map = Some(self.header_map(pseudo.into_iter().chain(self.headers.iter().cloned()), raw));
        self.wrap(attribute_context::HttpRequest { header_map, protocol: "HTTP/2".into(), ..Default::default() })
    }

    fn fields(&self) -> attribute_context::HttpRequest {
        attribute_context::HttpRequest {
            id: self.id.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            host: self.host.clone(),
            scheme: self.scheme.clone(),
            protocol: self.protocol.clone(),
            ..Default::default()
        }
    }

    fn header_map(&self, headers: impl Iterator<Item = (String, Vec<u8>)>, raw: bool) -> HeaderMap {
        let headers = headers
            .map(|(key, v)| {
                if raw {
                    HeaderValue { key, value: String::new(), raw_value: v }
                } else {
                    HeaderValue { key, value: String::from_utf8_lossy(&v).into_owned(), raw_value: Vec::new() }
                }
            })
            .collect();
        HeaderMap { headers }
    }

    fn wrap(&self, http: attribute_context::HttpRequest) -> CheckRequest {
        let peer = |addr: &Option<(String, u32)>, principal: &str| {
            (addr.is_some() || !principal.is_empty()).then(|| attribute_context::Peer {
                address: addr.as_ref().map(|(ip, port)| socket(ip, *port)),
                principal: principal.to_owned(),
                ..Default::default()
            })
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                source: peer(&self.source, &self.source_principal),
                destination: peer(&self.destination, &self.destination_principal),
                request: Some(attribute_context::Request { time: None, http: Some(http) }),
                ..Default::default()
            }),
        }
    }
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}
