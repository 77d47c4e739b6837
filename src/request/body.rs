//! The request body as policies read it: a JSON document, bounded in size and depth, parsed only
//! when the snapshot's schema declares `context.body` for the request's action (otherwise the
//! body is never looked at). Anything a parser could read two ways is refused, never guessed.
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Envoy sets this request header when it sent only the first `max_request_bytes` of the body.
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// Object keys Cedar's JSON reads as escapes (`__extn` can even make an unknown value), so a
/// body carrying one could be a different value than it looks: refused.
const CEDAR_ESCAPES: [&str; 3] = ["__extn", "__entity", "__expr"];

/// Why a body a policy reads was refused. `TooLarge` is a 413, the rest 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the schema requires a body and the request has none")]
    Missing,
    #[error("the body is not JSON (content type, UTF-8 or syntax)")]
    NotJson,
    #[error("the body nests deeper than request.max_body_depth")]
    TooDeep,
    #[error("the body is larger than request.max_body_bytes, or Envoy truncated it")]
    TooLarge,
    #[error("the body can be read two ways (a duplicate key, or `body` and `raw_body` disagree)")]
    Ambiguous,
    #[error("the body does not have the type the schema declares for it")]
    Invalid,
}

impl BodyError {
    /// Bounded label for metrics and the machine-readable reason.
    pub fn label(self) -> &'static str {
        match self {
            BodyError::Missing => "body_missing",
            BodyError::NotJson => "body_not_json",
            BodyError::TooDeep => "body_too_deep",
            BodyError::TooLarge => "body_too_large",
            BodyError::Ambiguous => "body_ambiguous",
            BodyError::Invalid => "body_invalid",
        }
    }

    /// Whether the refusal is a 413 (Payload Too Large) rather than a 400.
    pub fn too_large(self) -> bool {
        self == BodyError::TooLarge
    }
}

/// `request.max_body_bytes` and `request.max_body_depth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self { max_bytes: crate::config::DEFAULT_MAX_BODY_BYTES, max_depth: crate::config::DEFAULT_MAX_BODY_DEPTH }
    }
}

impl BodyLimits {
    pub fn of(request: &crate::config::RequestConfig, limits: &crate::config::Limits) -> Self {
        Self { max_bytes: request.body_bytes(limits), max_depth: request.max_body_depth }
    }
}

/// What Envoy sent of the body: `body` (UTF-8) or `raw_body` (bytes, with `pack_as_bytes`),
/// whether it was truncated, and the request's content type.
#[derive(Debug, Clone, Copy)]
pub struct RequestBody<'a> {
    pub text: &'a str,
    pub raw: &'a [u8],
    pub partial: bool,
    pub content_type: Option<&'a str>,
}

impl<'a> RequestBody<'a> {
    /// The bytes, whichever field carried them; both set and different is ambiguous.
    fn bytes(&self) -> Result<&'a [u8], BodyError> {
        match (self.text.is_empty(), self.raw.is_empty()) {
            (_, true) => Ok(self.text.as_bytes()),
            (true, false) => Ok(self.raw),
            (false, false) if self.text.as_bytes() == self.raw => Ok(self.raw),
            (false, false) => Err(BodyError::Ambiguous),
        }
    }

    /// The body as JSON, or `None` when there is none to read (no body, or a non-JSON content
    /// type) and the schema does not require one. A truncated body is refused even when
    /// optional: a policy could depend on the part Envoy left out.
    pub fn json(&self, limits: BodyLimits, required: bool) -> Result<Option<Value>, BodyError> {
        if self.partial {
            return Err(BodyError::TooLarge);
        }
        let bytes = self.bytes()?;
        if bytes.is_empty() {
            return if required { Err(BodyError::Missing) } else { Ok(None) };
        }
        if bytes.len() > limits.max_bytes {
            return Err(BodyError::TooLarge);
        }
        if !self.content_type.is_some_and(is_json_media_type) {
            return if required { Err(BodyError::NotJson) } else { Ok(None) };
        }
        parse(bytes, limits.max_depth).map(Some)
    }
}

/// `application/json` or `application/<anything>+json`, parameters ignored.
pub fn is_json_media_type(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Parses a JSON document that nests at most `max_depth` arrays and objects, refusing
/// duplicate keys and Cedar escape keys.
pub fn parse(bytes: &[u8], max_depth: usize) -> Result<Value, BodyError> {
    let text = std::str::from_utf8(bytes).map_err(|_| BodyError::NotJson)?;
    // Checked before parsing, so hostile nesting never reaches the recursive parser.
    if !depth_within(text.as_bytes(), max_depth) {
        return Err(BodyError::TooDeep);
    }
    let flag = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Strict(&flag).deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match (parsed, flag.get()) {
        (_, Some(e)) => Err(e),
        (Ok(v), None) => Ok(v),
        (Err(_), None) => Err(BodyError::NotJson),
    }
}

/// Whether no array or object nests deeper than `max` (a scalar document has depth 0).
/// Brackets inside strings do not count.
fn depth_within(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Builds a [`Value`] like serde_json does, but records (in the cell) a duplicate key or a
/// Cedar escape key and stops there: serde_json would silently keep the last duplicate, while
/// another parser upstream may keep the first.
#[derive(Clone, Copy)]
struct Strict<'c>(&'c Cell<Option<BodyError>>);

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let refused = if out.contains_key(&key) {
                Some(BodyError::Ambiguous)
            } else if CEDAR_ESCAPES.contains(&key.as_str()) {
                Some(BodyError::Invalid)
            } else {
                None
            };
            if let Some(e) = refused {
                self.0.set(Some(e));
                return Err(de::Error::custom(e));
            }
            let v = map.next_value_seed(self)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BodyLimits = BodyLimits { max_bytes: 1024, max_depth: 4 };

    fn json_body(text: &str) -> RequestBody<'_> {
        RequestBody { text, raw: b"", partial: false, content_type: Some("application/json") }
    }

    #[test]
    fn a_json_body_parses_within_the_limits() {
        let v = json_body(r#"{"amount": 5, "tags": ["a"]}"#).json(LIMITS, true).unwrap();
        assert_eq!(v, Some(serde_json::json!({"amount": 5, "tags": ["a"]})));
        let raw =
            RequestBody { text: "", raw: br#"{"a":1}"#, partial: false, content_type: Some("application/x+json") };
        assert_eq!(raw.json(LIMITS, true).unwrap(), Some(serde_json::json!({"a": 1})));
    }

    #[test]
    fn malformed_bodies_are_refused_with_their_reason() {
        let missing = json_body("");
        assert_eq!(missing.json(LIMITS, true), Err(BodyError::Missing));
        assert_eq!(missing.json(LIMITS, false), Ok(None));
        assert_eq!(json_body("{\"a\":").json(LIMITS, true), Err(BodyError::NotJson));
        assert_eq!(json_body("{} {}").json(LIMITS, true), Err(BodyError::NotJson));
        assert_eq!(json_body("[[[[[1]]]]]").json(LIMITS, true), Err(BodyError::TooDeep));
        assert_eq!(json_body("[[[[1]]]]").json(LIMITS, true), Ok(Some(serde_json::json!([[[[1]]]]))));
        let big = format!("\"{}\"", "x".repeat(2000));
        assert_eq!(json_body(&big).json(LIMITS, true), Err(BodyError::TooLarge));
        let partial = RequestBody { partial: true, ..json_body("{}") };
        assert_eq!(partial.json(LIMITS, false), Err(BodyError::TooLarge));
        let form = RequestBody { content_type: Some("application/x-www-form-urlencoded"), ..json_body("a=1") };
        assert_eq!(form.json(LIMITS, true), Err(BodyError::NotJson));
        assert_eq!(form.json(LIMITS, false), Ok(None));
        let untyped = RequestBody { content_type: None, ..json_body("{}") };
        assert_eq!(untyped.json(LIMITS, true), Err(BodyError::NotJson));
    }

    #[test]
    fn hostile_bodies_are_refused_without_recursing() {
        let deep = "[".repeat(10_000);
        assert_eq!(parse(deep.as_bytes(), 32), Err(BodyError::TooDeep));
        // Brackets in strings are not nesting; escaped quotes do not end a string.
        assert!(parse(br#"{"a": "[[[[[[\"[[[[["}"#, 1).is_ok());
        assert_eq!(parse(br#"{"a": 1, "a": 2}"#, 32), Err(BodyError::Ambiguous));
        assert_eq!(parse(br#"{"x": {"a": 1, "b": {}, "a": 1}}"#, 32), Err(BodyError::Ambiguous));
        assert_eq!(parse(br#"{"__extn": {"fn": "unknown", "arg": "x"}}"#, 32), Err(BodyError::Invalid));
        assert_eq!(parse(br#"{"a": {"__entity": {"type": "Group", "id": "admins"}}}"#, 32), Err(BodyError::Invalid));
        assert_eq!(parse(b"{\"a\": \"\xff\"}", 32), Err(BodyError::NotJson));
        assert_eq!(parse(b"1e999", 32), Err(BodyError::NotJson));
        let both = RequestBody { raw: br#"{"a":2}"#, ..json_body(r#"{"a":1}"#) };
        assert_eq!(both.json(LIMITS, true), Err(BodyError::Ambiguous));
        let same = RequestBody { raw: br#"{"a":1}"#, ..json_body(r#"{"a":1}"#) };
        assert!(same.json(LIMITS, true).is_ok());
    }

    #[test]
    fn only_json_media_types_are_json() {
        for ct in ["application/json", "Application/JSON; charset=utf-8", "application/merge-patch+json"] {
            assert!(is_json_media_type(ct), "{ct}");
        }
        for ct in ["text/json", "application/jsonx", "text/plain", "", "application/json-seq"] {
            assert!(!is_json_media_type(ct), "{ct}");
        }
    }
}
