//! `headers`: the identity headers portcullis owns, and the rules that keep them unforgeable.
use serde::{Deserialize, Serialize};

use super::{AuthnConfig, ConfigError, TokenSource};

/// Identity headers injected upstream on allow; client copies are always stripped.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderNames {
    /// The Cedar principal, e.g. `User::"alice"`.
    #[serde(default = "h_principal")]
    pub principal: String,
    /// JWT `sub`.
    #[serde(default = "h_subject")]
    pub subject: String,
    /// JWT `iss`.
    #[serde(default = "h_issuer")]
    pub issuer: String,
    /// mTLS peer SPIFFE id.
    #[serde(default = "h_peer")]
    pub peer: String,
    /// API client id.
    #[serde(default = "h_client")]
    pub client: String,
    /// If set, the determining policy ids are sent back to the client in this response header.
    #[serde(default)]
    pub policy_ids: Option<String>,
    /// A `claims_to_headers` target whose value (from the verified token) is the caller's tenant:
    /// published as `tenant` in the allow's dynamic metadata, for quota descriptors.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Remove the credential (`authorization` / API key header) before the request goes upstream.
    #[serde(default)]
    pub remove_credentials: bool,
    /// Remove an `authorization` header holding a scheme no token source reads (e.g. `Basic`)
    /// on allow. Off: such a header is not our credential and is forwarded untouched.
    #[serde(default)]
    pub strip_foreign_credentials: bool,
    /// Headers removed from the upstream request on every allow, in every `-`/`_` spelling:
    /// by default the method-override and URL-override family, which some frameworks act on.
    #[serde(default = "h_strip_on_allow")]
    pub strip_on_allow: Vec<String>,
}

/// Owned header names with more separators than this are refused: every `-`/`_` spelling of
/// an owned header is removed on allow, and there are 2^separators of them.
pub const MAX_HEADER_SEPARATORS: usize = 8;

/// Every spelling of a header name that an upstream could read as the same name once `-` and
/// `_` are treated alike (CGI, WSGI, PHP, Rack): all 2^n combinations, lower case, sorted.
/// Separators beyond [`MAX_HEADER_SEPARATORS`] (refused by config validation) are kept as is.
pub fn separator_spellings(name: &str) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    let pos: Vec<usize> = lower
        .bytes()
        .enumerate()
        .filter(|(_, b)| matches!(b, b'-' | b'_'))
        .map(|(i, _)| i)
        .take(MAX_HEADER_SEPARATORS)
        .collect();
    let mut out: Vec<String> = (0u32..(1 << pos.len()))
        .filter_map(|mask| {
            let mut b = lower.clone().into_bytes();
            for (bit, &p) in pos.iter().enumerate() {
                b[p] = if mask & (1 << bit) == 0 { b'-' } else { b'_' };
            }
            String::from_utf8(b).ok()
        })
        .collect();
    out.sort();
    out
}

/// One spelling per name for comparisons: lower case, `_` read as `-`.
fn header_key(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Headers a claim may never be written to, whatever else is configured: pseudo-headers are
/// refused as invalid names already.
const NEVER_CLAIM_TARGETS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "cookie",
    "authorization",
    "proxy-authorization",
];

fn h_principal() -> String {
    "x-portcullis-principal".into()
}
fn h_subject() -> String {
    "x-portcullis-subject".into()
}
fn h_issuer() -> String {
    "x-portcullis-issuer".into()
}
fn h_peer() -> String {
    "x-portcullis-peer".into()
}
fn h_client() -> String {
    "x-portcullis-client".into()
}
fn h_strip_on_allow() -> Vec<String> {
    ["x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url"]
        .into_iter()
        .map(String::from)
        .collect()
}

impl Default for HeaderNames {
    fn default() -> Self {
        Self {
            principal: h_principal(),
            subject: h_subject(),
            issuer: h_issuer(),
            peer: h_peer(),
            client: h_client(),
            policy_ids: None,
            tenant: None,
            remove_credentials: false,
            strip_foreign_credentials: false,
            strip_on_allow: h_strip_on_allow(),
        }
    }
}

impl HeaderNames {
    /// Header names portcullis owns: valid, at most [`MAX_HEADER_SEPARATORS`] separators, and
    /// a claim never written over an identity, credential, framing or stripped header.
    pub(super) fn validate(&self, authn: &AuthnConfig) -> Result<(), ConfigError> {
        let owned_name = |field: &str, v: &str| -> Result<(), ConfigError> {
            check_header_name(field, v)?;
            if v.bytes().filter(|b| matches!(b, b'-' | b'_')).count() > MAX_HEADER_SEPARATORS {
                return Err(ConfigError::invalid(
                    field,
                    format!("`{v}` has more than {MAX_HEADER_SEPARATORS} `-`/`_` separators"),
                ));
            }
            Ok(())
        };
        let h = self;
        let identity = [
            ("headers.principal", &h.principal),
            ("headers.subject", &h.subject),
            ("headers.issuer", &h.issuer),
            ("headers.peer", &h.peer),
            ("headers.client", &h.client),
        ];
        for (name, v) in identity {
            owned_name(name, v)?;
        }
        for (i, v) in h.strip_on_allow.iter().enumerate() {
            owned_name(&format!("headers.strip_on_allow[{i}]"), v)?;
        }
        let mut credential: Vec<(String, &str)> =
            vec![("authn.api_keys.header".to_owned(), authn.api_keys.header.as_str())];
        for (i, iss) in authn.issuers.iter().enumerate() {
            for (j, src) in iss.from.iter().enumerate() {
                if let TokenSource::Header { header, .. } = src {
                    credential.push((format!("authn.issuers[{i}].from[{j}].header"), header.as_str()));
                }
            }
        }
        if h.remove_credentials {
            for (field, v) in &credential {
                owned_name(field, v)?;
            }
        }
        for (i, iss) in authn.issuers.iter().enumerate() {
            let mut targets: Vec<String> = Vec::new();
            for (claim, target) in &iss.claims_to_headers {
                let field = format!("authn.issuers[{i}].claims_to_headers.{claim}");
                if target.starts_with(':') {
                    return Err(ConfigError::invalid(field, format!("`{target}` is a pseudo-header")));
                }
                owned_name(&field, target)?;
                let key = header_key(target);
                let refuse = |why: &str| Err(ConfigError::invalid(&field, format!("`{target}` {why}")));
                if NEVER_CLAIM_TARGETS.contains(&key.as_str()) {
                    return refuse("is a request framing, routing or credential header");
                }
                if let Some((f, _)) = identity.iter().find(|(_, v)| header_key(v) == key) {
                    return refuse(&format!("is an identity header (`{f}`)"));
                }
                if let Some((f, _)) = credential.iter().find(|(_, v)| header_key(v) == key) {
                    return refuse(&format!("is a credential header (`{f}`)"));
                }
                if h.strip_on_allow.iter().any(|v| header_key(v) == key) {
                    return refuse("is listed in `headers.strip_on_allow`");
                }
                if targets.contains(&key) {
                    return refuse("is the target of another claim of this issuer");
                }
                targets.push(key);
            }
        }
        if let Some(t) = &h.tenant {
            check_header_name("headers.tenant", t)?;
            let key = header_key(t);
            let mapped =
                authn.issuers.iter().flat_map(|iss| iss.claims_to_headers.values()).any(|v| header_key(v) == key);
            if !mapped {
                // Any other header could come from the client; only a claim header is proven.
                return Err(ConfigError::invalid(
                    "headers.tenant",
                    format!("`{t}` is not the target of any issuer's `claims_to_headers`"),
                ));
            }
        }
        Ok(())
    }
}

pub(super) fn check_header_name(field: &str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(ConfigError::invalid(field, format!("`{v}` is not a valid header name"))) }
}
