//! The top-level members of a token's header or payload: a JSON object kept as a list in the
//! order sent, looked up without hashing (nested values stay `serde_json::Value`).
//!
//! serde_json's `Map` is an `IndexMap` here (a dependency turns on `preserve_order`): every
//! member was SipHashed on insert and on each lookup, and its index table allocated. A token
//! has a dozen or so members, where a scan of short keys is cheaper. Duplicates are resolved
//! as `Map::insert` resolved them: the later value in the earlier member's place.
use std::borrow::Cow;

use serde::de::{DeserializeSeed, Deserializer, Error, Visitor};
use serde_json::{Map, Value};

/// Up to this many members lookups scan; past it they binary-search a sorted index, built once,
/// so that a hostile payload of thousands of members costs O(n log n), never O(n²).
const SCAN_MAX: usize = 32;

/// A member's name: a [`known`] one is not allocated.
pub(super) type Name = Cow<'static, str>;

/// Names the checks read, or that are commonly sent and never become tags (registered claims,
/// header parameters, list- and object-valued claims): read without an allocation each. A
/// `match`, so that a name is compared by its length first, then as integers.
fn known(name: &str) -> Option<&'static str> {
    Some(match name {
        "iss" => "iss",
        "sub" => "sub",
        "aud" => "aud",
        "exp" => "exp",
        "nbf" => "nbf",
        "iat" => "iat",
        "jti" => "jti",
        "alg" => "alg",
        "typ" => "typ",
        "kid" => "kid",
        "groups" => "groups",
        "roles" => "roles",
        "amr" => "amr",
        "status" => "status",
        "realm_access" => "realm_access",
        "resource_access" => "resource_access",
        _ => return None,
    })
}

/// A JSON object's members, in the order sent, without duplicates.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Members {
    entries: Vec<(Name, Value)>,
    /// Positions in `entries` sorted by key: empty unless there were more than `SCAN_MAX`.
    sorted: Vec<u32>,
}

impl Members {
    /// From members as sent, duplicates included; also whether a member named in `watched`
    /// appeared more than once.
    pub(super) fn from_sent(mut entries: Vec<(Name, Value)>, watched: &[&str]) -> (Self, bool) {
        if entries.len() <= SCAN_MAX {
            let dup = dedup_scanning(&mut entries, watched);
            (Self { entries, sorted: Vec::new() }, dup)
        } else {
            let (sorted, dup) = dedup_sorting(&mut entries, watched);
            (Self { entries, sorted }, dup)
        }
    }

    /// The value of member `name`.
    // Inline: callers look up literal names, whose comparisons then compile to a length check
    // and a few byte loads instead of a `memcmp` call per member.
    #[inline]
    pub(super) fn get(&self, name: &str) -> Option<&Value> {
        if self.sorted.is_empty() {
            self.entries.iter().find(|(k, _)| k == name).map(|(_, v)| v)
        } else {
            self.get_sorted(name)
        }
    }

    fn get_sorted(&self, name: &str) -> Option<&Value> {
        let at = self.sorted.binary_search_by(|&i| (*self.entries[i as usize].0).cmp(name)).ok()?;
        Some(&self.entries[self.sorted[at] as usize].1)
    }

    #[inline]
    pub(super) fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The members in the order sent (a duplicate where its first occurrence was).
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (&**k, v))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl IntoIterator for Members {
    type Item = (Name, Value);
    type IntoIter = std::vec::IntoIter<(Name, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// Claims stated as a `Map` (`portcullis test`'s identities): the same members in the same order.
impl From<Map<String, Value>> for Members {
    fn from(m: Map<String, Value>) -> Self {
        Self::from_sent(m.into_iter().map(|(k, v)| (Name::Owned(k), v)).collect(), &[]).0
    }
}

/// Reads a member's name (unescaped, as serde_json reads a `String` key).
pub(super) struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Name;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Name, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for NameSeed {
    type Value = Name;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E: Error>(self, s: &str) -> Result<Name, E> {
        Ok(known(s).map_or_else(|| Name::Owned(s.to_owned()), Name::Borrowed))
    }
    fn visit_string<E: Error>(self, s: String) -> Result<Name, E> {
        Ok(Name::Owned(s))
    }
}

/// Few members: each is compared with the ones kept before it (only when one of them has the
/// same fingerprint). A duplicate's value replaces the kept one's and the duplicate is dropped,
/// as `Map::insert` did.
fn dedup_scanning(entries: &mut Vec<(Name, Value)>, watched: &[&str]) -> bool {
    let mut dup = false;
    let mut kept = 0;
    let mut seen = 0u64;
    for r in 0..entries.len() {
        let bit = fingerprint(&entries[r].0);
        let maybe_seen = seen & bit != 0;
        seen |= bit;
        match entries[..kept].iter().position(|(k, _)| maybe_seen && *k == entries[r].0) {
            Some(j) => {
                dup |= watched.contains(&&*entries[r].0);
                entries[j].1 = std::mem::take(&mut entries[r].1);
            }
            None => {
                if kept != r {
                    entries.swap(kept, r);
                }
                kept += 1;
            }
        }
    }
    entries.truncate(kept);
    dup
}

/// One of 64 bits for a name, from its length and its first and last bytes: equal names have
/// the same bit, so a name whose bit no earlier name set is not a duplicate.
fn fingerprint(name: &str) -> u64 {
    let b = name.as_bytes();
    let first = b.first().map_or(0, |&c| u32::from(c));
    let last = b.last().map_or(0, |&c| u32::from(c));
    let x = (b.len() as u32) ^ (first << 8) ^ (last << 16);
    1 << (x.wrapping_mul(0x9e37_79b9) >> 26)
}

/// Many members: positions sorted by key (stably, so equal keys stay in the order sent) find
/// every run of duplicates at once; each run's last value moves to its first position and the
/// rest are dropped. Returns the positions of the kept members, sorted by key.
fn dedup_sorting(entries: &mut Vec<(Name, Value)>, watched: &[&str]) -> (Vec<u32>, bool) {
    // Positions fit in a u32: a token is bounded far below 4 GiB (`limits.max_token_bytes`).
    let mut order: Vec<u32> = (0..entries.len() as u32).collect();
    order.sort_by(|&a, &b| entries[a as usize].0.cmp(&entries[b as usize].0));
    let mut keep = vec![true; entries.len()];
    let mut dup = false;
    let mut start = 0;
    while let Some(&first) = order.get(start) {
        let first = first as usize;
        let mut end = start + 1;
        while order.get(end).is_some_and(|&p| entries[p as usize].0 == entries[first].0) {
            end += 1;
        }
        if end - start > 1 {
            dup |= watched.contains(&&*entries[first].0);
            let last = order[end - 1] as usize;
            entries[first].1 = std::mem::take(&mut entries[last].1);
            for &p in &order[start + 1..end] {
                keep[p as usize] = false;
            }
        }
        start = end;
    }
    // Where each kept member lands once the dropped ones are gone.
    let mut moved_to = Vec::with_capacity(keep.len());
    let mut next = 0u32;
    for &k in &keep {
        moved_to.push(next);
        next += u32::from(k);
    }
    let mut at = 0;
    entries.retain(|_| {
        at += 1;
        keep[at - 1]
    });
    let sorted = order.into_iter().filter(|&p| keep[p as usize]).map(|p| moved_to[p as usize]).collect();
    (sorted, dup)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
    use serde_json::{Map, Value};

    use super::super::JwtError;
    use super::super::parse::{HEADER_FIELDS, VALIDATED_CLAIMS, read_object};
    use super::*;

    /// The oracle: the reading before this module, each member inserted into a `Map` as it
    /// came (the later value in the earlier member's place), a duplicate of a watched one noted.
    struct MapSeed(&'static [&'static str]);

    impl<'de> DeserializeSeed<'de> for MapSeed {
        type Value = (Map<String, Value>, bool);
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for MapSeed {
        type Value = (Map<String, Value>, bool);
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut map = Map::new();
            let mut dup = false;
            while let Some(k) = a.next_key::<String>()? {
                let v: Value = a.next_value()?;
                let watched = self.0.contains(&k.as_str());
                if map.insert(k, v).is_some() && watched {
                    dup = true;
                }
            }
            Ok((map, dup))
        }
    }

    fn oracle(json: &[u8], watched: &'static [&'static str]) -> Result<(Map<String, Value>, bool), JwtError> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let out = MapSeed(watched).deserialize(&mut de).map_err(|_| JwtError::Malformed)?;
        de.end().map_err(|_| JwtError::Malformed)?;
        Ok(out)
    }

    /// Names no corpus object has, near the ones they have.
    const ABSENT: &[&str] = &["", "e", "ex", "expx", "EXP", "zzz", "k", "\u{0}", "k99999999", "é", "😀x"];

    /// The container reads `json` as the `Map` did, under each watched set: the same refusal,
    /// the same duplicate flag, the same members in the same order with the same values, the
    /// same answer to every lookup.
    fn same_as_map(json: &str) {
        same_bytes_as_map(json.as_bytes());
    }

    fn same_bytes_as_map(json: &[u8]) {
        let what = |s: &str| format!("{s} of {:.120}… ({} bytes)", String::from_utf8_lossy(json), json.len());
        for watched in [HEADER_FIELDS, VALIDATED_CLAIMS, &[]] {
            let (got, want) = match (read_object(json, watched, 16), oracle(json, watched)) {
                (Ok(got), Ok(want)) => (got, want),
                (got, want) => {
                    assert_eq!(got.map(|_| ()), want.map(|_| ()), "{}", what("refusal"));
                    continue;
                }
            };
            let ((members, dup), (map, want_dup)) = (got, want);
            assert_eq!(dup, want_dup, "{}", what("duplicate flag"));
            assert_eq!(members.len(), map.len(), "{}", what("length"));
            assert!(members.iter().eq(map.iter().map(|(k, v)| (k.as_str(), v))), "{}", what("order and values"));
            for k in map.keys().map(String::as_str).chain(ABSENT.iter().copied()) {
                assert_eq!(members.get(k), map.get(k), "{}", what(&format!("lookup of {k:?}")));
                assert_eq!(members.contains_key(k), map.contains_key(k), "{}", what(&format!("{k:?}")));
            }
            // Stated claims (`portcullis test`) come in as a `Map`: the same again.
            let stated = Members::from(map.clone());
            assert!(stated.iter().eq(members.iter()), "{}", what("conversion"));
            for k in map.keys().map(String::as_str).chain(ABSENT.iter().copied()) {
                assert_eq!(stated.get(k), map.get(k), "{}", what(&format!("converted lookup of {k:?}")));
            }
            assert!(
                members.into_iter().map(|(k, v)| (k.into_owned(), v)).eq(map),
                "{}",
                what("owned order and values")
            );
        }
    }

    /// An object of these members, each `(key, value)` as JSON text (so keys may repeat).
    fn object(members: &[(String, String)]) -> String {
        let body: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!("{{{}}}", body.join(","))
    }

    fn m(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    /// `n` distinct members `"k0"`… with assorted values.
    fn filler(n: usize) -> Vec<(String, String)> {
        let values = ["null", "1", "-0.0", "1.5e300", "18446744073709551616", r#""s""#, r#"{"a":1,"a":[2]}"#, "[null]"];
        (0..n).map(|i| (format!(r#""k{i}""#), values[i % values.len()].to_owned())).collect()
    }

    #[test]
    fn small_hostile_objects_read_as_the_map_read_them() {
        for json in [
            "{}",
            r#"{"a":null}"#,
            r#"{"exp":1,"a":2,"exp":3}"#,
            r#"{"x":1,"x":null}"#,
            r#"{"sub":"a","sub":"b","x":1,"sub":"c","x":2}"#,
            r#"{"alg":"RS256","kid":"a","alg":"none"}"#,
            // Keys equal once unescaped.
            r#"{"exp":1,"e\u0078p":2}"#,
            r#"{"\u00e9":1,"é":2,"e\u0301":3}"#,
            r#"{"😀":1,"\ud83d\ude00":2}"#,
            r#"{"a\"b":1,"a\u0022b":2,"a\\b":3,"a\u005cb":4}"#,
            r#"{"":1,"":2,"\u0000":3,"\u0000":4}"#,
            r#"{"x5t#S256":1,"x5t#S256":2,"x5t":3}"#,
            // Nulls and numbers as floats.
            r#"{"exp":null,"exp":null,"nbf":null}"#,
            r#"{"exp":1.0,"nbf":1e3,"iat":-0.0,"x":18446744073709551616,"y":-9223372036854775809,"z":1e-320}"#,
            // Nested objects keep their own duplicates' rule; only the top level is ours.
            r#"{"o":{"a":1,"a":2},"o":{"b":[{"c":1,"c":2}]},"p":{"exp":1,"exp":2}}"#,
            // Not one object.
            r#"{"a":1,}"#,
            r#"{"a":1,"a":}"#,
            r#"{"a"}"#,
            "[]",
            r#"{"a":1}x"#,
            r#"{"a":1} "#,
            r#" {"a":1}"#,
            r#"{"a":1}{}"#,
            "",
        ] {
            same_as_map(json);
        }
        // Bytes that are not UTF-8, in a value, in a name and outside any string; encoded
        // surrogates and overlong forms; escaped lone surrogates.
        for json in [
            &b"{\"a\":\"\xff\"}"[..],
            b"{\"\xc3\":1}",
            b"{\"a\":1}\xff",
            b"\xef\xbb\xbf{\"a\":1}",
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"{\"a\":\"\xc0\xaf\"}",
            b"{\"a\":\"\xf4\x90\x80\x80\"}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"\\udc00\":1}",
            b"{\"a\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}",
        ] {
            same_bytes_as_map(json);
        }
    }

    #[test]
    fn large_hostile_objects_read_as_the_map_read_them() {
        for n in [SCAN_MAX - 2, SCAN_MAX - 1, SCAN_MAX, SCAN_MAX + 1, SCAN_MAX + 2, 40, 100, 1000, 1001, 5000] {
            let base = filler(n);
            let mut cases = vec![base.clone()];
            // Duplicates of watched and unwatched members first, last and in the middle.
            for (k, spelling) in
                [("exp", r#""e\u0078p""#), ("alg", r#""alg""#), ("k0", r#""k\u0030""#), ("x", r#""x""#)]
            {
                let mut c = base.clone();
                c.insert(0, (format!(r#""{k}""#), "1".into()));
                c.insert(c.len() / 2, (spelling.to_owned(), "null".into()));
                c.push((format!(r#""{k}""#), "2.5".into()));
                cases.push(c);
            }
            // The later copy of every member, in reverse order.
            let mut twice = base.clone();
            twice.extend(base.iter().rev().map(|(k, _)| (k.clone(), r#""again""#.into())));
            cases.push(twice);
            // Many members, few names: over the bound as sent, under it once deduplicated.
            let names = ["exp", "sub", "a", "b", "kid", "é", ""];
            cases.push((0..n).map(|i| (format!("{:?}", names[i % names.len()]), i.to_string())).collect());
            cases.push((0..n).map(|i| m(r#""same""#, &i.to_string())).collect());
            for c in &cases {
                same_as_map(&object(c));
            }
        }
    }

    /// A payload of very many members (a hostile token far past any real one) is read in
    /// O(n log n): a quadratic duplicate check or lookup would not finish here.
    #[test]
    fn a_huge_object_reads_and_looks_up_without_quadratic_work() {
        let n = 100_000;
        let mut c = filler(n);
        c.push(m(r#""k7""#, "7"));
        let json = object(&c);
        let (members, dup) = read_object(json.as_bytes(), VALIDATED_CLAIMS, 16).expect("an object");
        assert!(!dup);
        assert_eq!(members.len(), n);
        assert_eq!(members.get("k7"), Some(&Value::from(7)));
        assert!((0..n).all(|i| members.contains_key(&format!("k{i}"))));
        assert_eq!(members.iter().nth(7).map(|(k, _)| k), Some("k7"));
    }

    /// A key as JSON text: a watched name, sometimes escaped, or a short arbitrary one.
    fn key() -> impl Strategy<Value = String> {
        let watched: Vec<&'static str> = HEADER_FIELDS.iter().chain(VALIDATED_CLAIMS).copied().collect();
        prop_oneof![
            prop::sample::select(watched.clone()).prop_map(|k| format!("{k:?}")),
            // The same names with their first character escaped.
            prop::sample::select(watched).prop_map(|k| {
                let mut c = k.chars();
                let first = c.next().map_or(0, u32::from);
                format!(r#""\u{first:04x}{}""#, c.as_str())
            }),
            "[ab\u{e9}\u{1f600}\"\\\\]{0,3}".prop_map(|k| serde_json::to_string(&k).expect("a string")),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_owned()),
            any::<i64>().prop_map(|i| i.to_string()),
            any::<u64>().prop_map(|i| i.to_string()),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
            "[a-z]{0,4}".prop_map(|s| format!("{s:?}")),
            (key(), any::<u8>()).prop_map(|(k, n)| format!("{{{k}:{n},{k}:[{n}]}}")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Arbitrary members, repeated and escaped, below and past the scanning bound.
        #[test]
        fn arbitrary_objects_read_as_the_map_read_them(members in prop::collection::vec((key(), value()), 0..80)) {
            same_as_map(&object(&members));
        }
    }
}
