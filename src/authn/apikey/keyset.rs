//! API key entries as they come from Secrets (a mounted volume or the Kubernetes API): one YAML
//! document per Secret data key, parsed and checked as a whole set. The plaintext of a key, when
//! a Secret holds it, is hashed on load and dropped.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{ApiClientIdentity, KeyRateLimit};

/// Most entries accepted in one set, and the largest entry document: bounded memory whatever a
/// Secret holds.
pub const MAX_ENTRIES: usize = 10_000;
pub const MAX_ENTRY_BYTES: usize = 16 * 1024;

/// One entry document, e.g. `{client: batch, key: "…", groups: [reports], expires: 2027-01-01T00:00:00Z}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryDoc {
    client: String,
    /// The key itself: hashed on load, never kept.
    #[serde(default)]
    key: Option<String>,
    /// Or only its hex SHA-256.
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    /// RFC 3339; the key is refused from then on.
    #[serde(default)]
    expires: Option<String>,
    /// This key's own rate limit, instead of the global `rate_limit`.
    #[serde(default)]
    rate_limit: Option<RateLimitDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitDoc {
    requests_per_second: u32,
    /// Defaults to `requests_per_second`.
    #[serde(default)]
    burst: Option<u32>,
}

/// Why an entry set was refused; `origin` names the Secret (and data key) or file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{first} and {second} hold the same API key")]
    Duplicate { first: String, second: String },
    #[error("more than {MAX_ENTRIES} API key entries")]
    TooMany,
}

fn invalid(origin: &str, message: impl Into<String>) -> KeyError {
    KeyError::Invalid { origin: origin.to_owned(), message: message.into() }
}

/// A key's identity and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct KeyEntry {
    pub(crate) identity: Arc<ApiClientIdentity>,
    pub(crate) origin: String,
    /// Refused from this instant on.
    pub(crate) expires_at: Option<SystemTime>,
}

/// A validated set of entries, looked up by digest.
#[derive(Debug, Default)]
pub struct KeySet {
    pub(crate) by_digest: HashMap<[u8; 32], KeyEntry>,
}

impl KeySet {
    /// Builds a set from `(origin, document)` pairs; any bad entry or duplicate refuses the set.
    pub fn build(docs: &[(String, String)]) -> Result<Self, Vec<KeyError>> {
        if docs.len() > MAX_ENTRIES {
            return Err(vec![KeyError::TooMany]);
        }
        let mut by_digest: HashMap<[u8; 32], KeyEntry> = HashMap::new();
        let mut errors = Vec::new();
        for (origin, text) in docs {
            let (digest, identity, expires_at) = match parse(origin, text) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if let Some(first) = by_digest.get(&digest) {
                errors.push(KeyError::Duplicate { first: first.origin.clone(), second: origin.clone() });
                continue;
            }
            by_digest.insert(digest, KeyEntry { identity: Arc::new(identity), origin: origin.clone(), expires_at });
        }
        if errors.is_empty() { Ok(Self { by_digest }) } else { Err(errors) }
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// A content version: the sorted digests, clients, groups and expiries (never a key).
    pub fn version(&self) -> String {
        let mut lines: Vec<String> = self
            .by_digest
            .iter()
            .map(|(d, e)| {
                let exp = e.expires_at.map(humantime::format_rfc3339_seconds).map(|t| t.to_string());
                let rl = e.identity.rate_limit.map(|r| (r.requests_per_second, r.burst));
                format!("{}|{}|{:?}|{:?}|{:?}", hex::encode(d), e.identity.client, e.identity.groups, exp, rl)
            })
            .collect();
        lines.sort();
        hex::encode(&Sha256::digest(lines.join("\n").as_bytes())[..8])
    }
}

fn parse(origin: &str, text: &str) -> Result<([u8; 32], ApiClientIdentity, Option<SystemTime>), KeyError> {
    if text.len() > MAX_ENTRY_BYTES {
        return Err(invalid(origin, format!("larger than {MAX_ENTRY_BYTES} bytes")));
    }
    // The error text of a YAML parser may quote the input, which may be a key: never echo it.
    let doc: EntryDoc = serde_saphyr::from_str(text).map_err(|_| {
        invalid(
            origin,
            "not an API key entry (want YAML: client, key or sha256, optional groups, expires and rate_limit)",
        )
    })?;
    if doc.client.trim().is_empty() || doc.client.chars().any(char::is_control) {
        return Err(invalid(origin, "`client` must be a non-empty printable name"));
    }
    let digest = match (doc.key, doc.sha256) {
        (Some(key), None) => {
            let key = key.trim_end_matches(['\n', '\r']);
            if key.is_empty() {
                return Err(invalid(origin, "`key` is empty"));
            }
            Sha256::digest(key.as_bytes()).into()
        }
        (None, Some(hexd)) => {
            let mut d = [0u8; 32];
            if hexd.len() != 64 || hex::decode_to_slice(&hexd, &mut d).is_err() {
                return Err(invalid(origin, "`sha256` must be 64 hex characters"));
            }
            d
        }
        _ => return Err(invalid(origin, "set exactly one of `key` or `sha256`")),
    };
    let expires_at = match doc.expires {
        None => None,
        Some(t) => Some(
            humantime::parse_rfc3339_weak(&t)
                .map_err(|_| invalid(origin, format!("`expires` is not an RFC 3339 time: {t:?}")))?,
        ),
    };
    let rate_limit = match doc.rate_limit {
        None => None,
        Some(r) => {
            let requests_per_second = std::num::NonZeroU32::new(r.requests_per_second)
                .ok_or_else(|| invalid(origin, "`rate_limit.requests_per_second` must be at least 1"))?;
            let burst = match r.burst {
                None => requests_per_second,
                Some(b) => std::num::NonZeroU32::new(b)
                    .ok_or_else(|| invalid(origin, "`rate_limit.burst` must be at least 1"))?,
            };
            Some(KeyRateLimit { requests_per_second, burst })
        }
    };
    Ok((digest, ApiClientIdentity { client: doc.client, groups: doc.groups, rate_limit }, expires_at))
}

/// Whether a key with this expiry is refused at `now`.
pub(crate) fn expired(expires_at: Option<SystemTime>, now: SystemTime) -> bool {
    expires_at.is_some_and(|t| now >= t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(d: &[(&str, &str)]) -> Vec<(String, String)> {
        d.iter().map(|(o, t)| (o.to_string(), t.to_string())).collect()
    }

    #[test]
    fn plaintext_keys_are_hashed_and_digests_taken_as_they_are() {
        let set = KeySet::build(&docs(&[
            ("a/batch", "client: batch\nkey: s3cret\ngroups: [reports]\n"),
            ("a/ops", "client: ops\nsha256: 74045098110de75482c9e34a190dab5a1dd308be1ed6e16fee2dc05e01152d74\n"),
        ]))
        .expect("valid");
        let d: [u8; 32] = Sha256::digest(b"s3cret").into();
        assert_eq!(set.by_digest[&d].identity.client, "batch");
        assert_eq!(set.by_digest[&d].identity.groups, vec!["reports"]);
        let d: [u8; 32] = Sha256::digest(b"demo-batch-key").into();
        assert_eq!(set.by_digest[&d].identity.client, "ops");
        // The version never contains the key.
        assert!(!set.version().contains("s3cret"));
    }

    #[test]
    fn a_trailing_newline_in_a_secret_file_is_not_part_of_the_key() {
        let set = KeySet::build(&docs(&[("f", "client: c\nkey: \"abc\\n\"\n")])).expect("valid");
        let d: [u8; 32] = Sha256::digest(b"abc").into();
        assert!(set.by_digest.contains_key(&d));
    }

    #[test]
    fn duplicates_name_both_origins_and_refuse_the_set() {
        let errs =
            KeySet::build(&docs(&[("ns/one#k", "client: a\nkey: same\n"), ("ns/two#k", "client: b\nkey: same\n")]))
                .unwrap_err();
        assert_eq!(errs, vec![KeyError::Duplicate { first: "ns/one#k".into(), second: "ns/two#k".into() }]);
        assert!(errs[0].to_string().contains("ns/one#k") && errs[0].to_string().contains("ns/two#k"));
    }

    #[test]
    fn bad_entries_are_refused_with_their_origin_and_never_echo_the_key() {
        for (text, want) in [
            ("client: a\n", "exactly one of"),
            (
                "client: a\nkey: x\nsha256: 74045098110de75482c9e34a190dab5a1dd308be1ed6e16fee2dc05e01152d74\n",
                "exactly one",
            ),
            ("client: a\nsha256: abc\n", "64 hex"),
            ("client: \"\"\nkey: x\n", "client"),
            ("client: a\nkey: \"\"\n", "empty"),
            ("client: a\nkey: x\nexpires: tomorrow\n", "RFC 3339"),
            ("client: a\nkey: hunter2\nextra: 1\n", "not an API key entry"),
            ("hunter2", "not an API key entry"),
        ] {
            let errs = KeySet::build(&docs(&[("s/x", text)])).unwrap_err();
            let msg = errs[0].to_string();
            assert!(msg.starts_with("s/x: ") && msg.contains(want), "{text:?}: {msg}");
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        let big = format!("client: a\nkey: {}\n", "k".repeat(MAX_ENTRY_BYTES));
        assert!(KeySet::build(&docs(&[("s/big", &big)])).is_err());
    }

    #[test]
    fn expiry_is_parsed_and_applies_from_that_instant() {
        let set = KeySet::build(&docs(&[("f", "client: a\nkey: k\nexpires: 2030-01-01T00:00:00Z\n")])).expect("valid");
        let exp = set.by_digest.values().next().and_then(|e| e.expires_at);
        let at = humantime::parse_rfc3339("2030-01-01T00:00:00Z").expect("time");
        assert_eq!(exp, Some(at));
        assert!(!expired(exp, at - std::time::Duration::from_secs(1)));
        assert!(expired(exp, at));
        assert!(!expired(None, at));
    }

    #[test]
    fn a_per_key_rate_limit_is_parsed_checked_and_part_of_the_version() {
        let plain = KeySet::build(&docs(&[("f", "client: a\nkey: k\n")])).expect("valid");
        let limited =
            KeySet::build(&docs(&[("f", "client: a\nkey: k\nrate_limit: {requests_per_second: 2}\n")])).expect("valid");
        let rl = limited.by_digest.values().next().and_then(|e| e.identity.rate_limit).expect("rate limit");
        assert_eq!((rl.requests_per_second.get(), rl.burst.get()), (2, 2), "burst defaults to the rate");
        assert_ne!(plain.version(), limited.version(), "a changed limit alone is a change");
        for (text, want) in [
            ("client: a\nkey: k\nrate_limit: {requests_per_second: 0}\n", "rate_limit.requests_per_second"),
            ("client: a\nkey: k\nrate_limit: {requests_per_second: 1, burst: 0}\n", "rate_limit.burst"),
            ("client: a\nkey: k\nrate_limit: {rps: 1}\n", "not an API key entry"),
        ] {
            let errs = KeySet::build(&docs(&[("s/x", text)])).unwrap_err();
            assert!(errs[0].to_string().contains(want), "{text:?}: {}", errs[0]);
        }
    }

    #[test]
    fn the_set_size_is_bounded() {
        let many: Vec<(String, String)> =
            (0..=MAX_ENTRIES).map(|i| (format!("f{i}"), format!("client: c\nkey: k{i}\n"))).collect();
        assert_eq!(KeySet::build(&many).unwrap_err(), vec![KeyError::TooMany]);
    }
}
