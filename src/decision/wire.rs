//! An allow's headers in their wire form: the records of `OkHttpResponse.headers` (the headers
//! it sets, [`SetHeaders`]) and of `OkHttpResponse.headers_to_remove` ([`RemoveHeaders`]),
//! written here by hand (this module imports no proto types) so an answer appends them as they
//! are. `response/tests.rs` compares them byte for byte with prost's encoding.
use std::sync::Arc;

use bytes::Bytes;

/// `OkHttpResponse.headers` is field 2, length-delimited: each record a `HeaderValueOption`.
const HEADERS_KEY: u8 = (2 << 3) | 2;

/// The headers an allow sets upstream, with their wire form: the records of
/// `OkHttpResponse.headers`, each `{header: {key, value}, append: false, append_action:
/// OVERWRITE_IF_EXISTS_OR_ADD}` (an overwrite of any client copy on every Envoy version: older
/// ones read `append`, newer ones `append_action`). Built once per set, and a cached identity
/// keeps its set, so an answer appends the records as they are and a check clones two reference
/// counts instead of a list of names and values. Equality is by the pairs, in order.
#[derive(Clone, Default)]
pub struct SetHeaders {
    pairs: Arc<[(Bytes, Bytes)]>,
    wire: Bytes,
}

impl SetHeaders {
    /// The set and its records, encoded here once.
    pub fn new(pairs: Vec<(Bytes, Bytes)>) -> Self {
        let wire = Self::encode(&pairs);
        Self { pairs: pairs.into(), wire }
    }

    /// A set kept with its records (made by [`SetHeaders::new`] earlier): shared, not copied.
    pub fn from_parts(pairs: Arc<[(Bytes, Bytes)]>, wire: Bytes) -> Self {
        Self { pairs, wire }
    }

    /// The pairs and their records, to keep (see [`SetHeaders::from_parts`]).
    pub fn parts(&self) -> (&Arc<[(Bytes, Bytes)]>, &Bytes) {
        (&self.pairs, &self.wire)
    }

    /// The `OkHttpResponse.headers` records, to be written into the answer as they are.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    /// Field-2 records as prost writes `HeaderValueOption`s (proto3: an empty string is left out,
    /// a present message is written even when empty; `append: Some(false)` is an empty
    /// `BoolValue`). `response/tests.rs` compares this with prost's own encoding.
    fn encode(pairs: &[(Bytes, Bytes)]) -> Bytes {
        use prost::encoding::{encode_varint, encoded_len_varint};
        // A length-delimited field of `len` bytes: key, varint length, payload.
        let delimited = |len: usize| 1 + encoded_len_varint(len as u64) + len;
        let string = |s: &Bytes| if s.is_empty() { 0 } else { delimited(s.len()) };
        // Lengths first, so that everything is written into one exact buffer.
        let value_len = |(k, v): &(Bytes, Bytes)| string(k) + string(v);
        let option_len = |p: &(Bytes, Bytes)| delimited(value_len(p)) + 2 + 2;
        let mut out = Vec::with_capacity(pairs.iter().map(|p| delimited(option_len(p))).sum());
        let head = |out: &mut Vec<u8>, key: u8, len: usize| {
            out.push(key);
            encode_varint(len as u64, out);
        };
        for p @ (k, v) in pairs {
            head(&mut out, HEADERS_KEY, option_len(p));
            head(&mut out, 0x0a, value_len(p)); // HeaderValueOption.header = 1
            if !k.is_empty() {
                head(&mut out, 0x0a, k.len()); // HeaderValue.key = 1
                out.extend_from_slice(k);
            }
            if !v.is_empty() {
                head(&mut out, 0x12, v.len()); // HeaderValue.value = 2
                out.extend_from_slice(v);
            }
            out.extend_from_slice(&[0x12, 0x00]); // append = 2: BoolValue{value: false}
            out.extend_from_slice(&[0x18, 0x02]); // append_action = 3: OVERWRITE_IF_EXISTS_OR_ADD
        }
        out.into()
    }
}

impl From<Vec<(Bytes, Bytes)>> for SetHeaders {
    fn from(pairs: Vec<(Bytes, Bytes)>) -> Self {
        Self::new(pairs)
    }
}

impl FromIterator<(Bytes, Bytes)> for SetHeaders {
    fn from_iter<I: IntoIterator<Item = (Bytes, Bytes)>>(pairs: I) -> Self {
        Self::new(pairs.into_iter().collect())
    }
}

impl std::ops::Deref for SetHeaders {
    type Target = [(Bytes, Bytes)];

    fn deref(&self) -> &[(Bytes, Bytes)] {
        &self.pairs
    }
}

impl<'a> IntoIterator for &'a SetHeaders {
    type Item = &'a (Bytes, Bytes);
    type IntoIter = std::slice::Iter<'a, (Bytes, Bytes)>;

    fn into_iter(self) -> Self::IntoIter {
        self.pairs.iter()
    }
}

impl PartialEq for SetHeaders {
    fn eq(&self, other: &Self) -> bool {
        self.pairs == other.pairs
    }
}

impl Eq for SetHeaders {}

impl std::fmt::Debug for SetHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.pairs.iter()).finish()
    }
}

/// `OkHttpResponse.headers_to_remove` is field 5, length-delimited: each name on the wire is
/// this key byte, its length as a varint, then its bytes.
const HEADERS_TO_REMOVE_KEY: u8 = (5 << 3) | 2;

/// The headers an allow removes from the upstream request, in the order Envoy gets them: a list
/// shared by every allow that sets the same identity headers (built once, see `check`), then
/// this request's own extras (foreign credentials it carries).
///
/// The shared list is kept in its wire form, the records of `OkHttpResponse.headers_to_remove`,
/// so an answer appends it as is: one reference count per check instead of one per name, and
/// no per-name encoding. Equality is by the names, in order.
#[derive(Clone, Default)]
pub struct RemoveHeaders {
    /// Field-5 records of the shared names.
    wire: Bytes,
    extra: Vec<Bytes>,
}

impl RemoveHeaders {
    /// A shared list's wire form: build once, then [`RemoveHeaders::shared`] per check.
    pub fn encode_shared<N: AsRef<[u8]>>(names: &[N]) -> Bytes {
        let mut b = Vec::with_capacity(names.iter().map(|n| n.as_ref().len() + 3).sum());
        for n in names {
            let n = n.as_ref();
            b.push(HEADERS_TO_REMOVE_KEY);
            // Varint length (a header name is short, but any length encodes exactly).
            prost::encoding::encode_varint(n.len() as u64, &mut b);
            b.extend_from_slice(n);
        }
        b.into()
    }

    /// The list made by [`RemoveHeaders::encode_shared`], shared (no copy), with no extras yet.
    pub fn shared(wire: Bytes) -> Self {
        Self { wire, extra: Vec::new() }
    }

    /// Appends a name after the shared ones (and any earlier extras).
    pub fn push(&mut self, name: Bytes) {
        self.extra.push(name);
    }

    /// Every name, shared ones first.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        WireNames(&self.wire).chain(self.extra.iter().map(|b| b.as_ref()))
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.iter().any(|n| n == name)
    }

    pub fn is_empty(&self) -> bool {
        self.wire.is_empty() && self.extra.is_empty()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// The names as a list (copies; for people and tests, not the check path).
    pub fn to_vec(&self) -> Vec<Bytes> {
        self.iter().map(Bytes::copy_from_slice).collect()
    }

    /// The shared names' field-5 records, to be written as is, and the extras, to be encoded
    /// after them as field 5 one by one.
    pub fn into_wire(self) -> (Bytes, Vec<Bytes>) {
        (self.wire, self.extra)
    }
}

/// Walks field-5 records built by [`RemoveHeaders::encode_shared`]; stops at anything else.
struct WireNames<'a>(&'a [u8]);

impl<'a> Iterator for WireNames<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&key, mut rest) = self.0.split_first()?;
        if key != HEADERS_TO_REMOVE_KEY {
            self.0 = &[];
            return None;
        }
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let (&b, r) = rest.split_first()?;
            rest = r;
            len |= usize::from(b & 0x7f).checked_shl(shift)?;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let name = rest.get(..len)?;
        self.0 = &rest[len..];
        Some(name)
    }
}

impl From<Vec<Bytes>> for RemoveHeaders {
    /// All names as extras (tests, tools): the same answer as a shared list of the same names.
    fn from(extra: Vec<Bytes>) -> Self {
        Self { wire: Bytes::new(), extra }
    }
}

impl PartialEq for RemoveHeaders {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for RemoveHeaders {}

impl PartialEq<Vec<Bytes>> for RemoveHeaders {
    fn eq(&self, other: &Vec<Bytes>) -> bool {
        self.iter().eq(other.iter().map(|b| b.as_ref()))
    }
}

impl<const N: usize> PartialEq<[&str; N]> for RemoveHeaders {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.iter().eq(other.iter().map(|s| s.as_bytes()))
    }
}

impl std::fmt::Debug for RemoveHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(String::from_utf8_lossy)).finish()
    }
}
