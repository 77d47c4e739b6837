//! Reading verified claims for the identity: claim paths (names, dotted paths, JSON pointers:
//! [`ClaimPath`]), the value shapes each use accepts, OAuth scopes and audiences, and the bound
//! on how many values one token may map.
use serde_json::Value;

use super::JwtError;
use super::members::Members;
use crate::config::ClaimPath;

/// Most values one token may contribute to one set (groups, scopes, audiences). A token over it
/// is refused rather than truncated: dropping a group could silently skip a `forbid`.
pub(super) const MAX_CLAIM_VALUES: usize = 1024;

/// The value at `path`, if the token has one there.
pub(super) fn resolve<'a>(claims: &'a Members, path: &ClaimPath) -> Option<&'a Value> {
    resolve_in(|name| claims.get(name), path)
}

/// [`resolve`] under any lookup of top-level claims (the tests' `Map` oracle has its own).
pub(super) fn resolve_in<'a>(top: impl Fn(&str) -> Option<&'a Value>, path: &ClaimPath) -> Option<&'a Value> {
    match path {
        ClaimPath::Pointer(segments) => {
            let (first, rest) = segments.split_first()?;
            rest.iter().try_fold(top(first)?, |v, seg| match v {
                Value::Object(o) => o.get(seg),
                Value::Array(a) => array_index(seg).and_then(|i| a.get(i)),
                _ => None,
            })
        }
        // The exact top-level name wins, so claim names containing dots (URLs) still work.
        ClaimPath::Name { name, segments } => top(name).or_else(|| {
            let (first, rest) = segments.split_first()?;
            if rest.is_empty() {
                return None;
            }
            rest.iter().try_fold(top(first)?, |v, seg| v.as_object().and_then(|o| o.get(seg)))
        }),
    }
}

/// RFC 6901 array index: `0` or digits without a leading zero (and small enough to be one).
fn array_index(seg: &str) -> Option<usize> {
    let digits = !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit());
    if !digits || (seg.len() > 1 && seg.starts_with('0')) {
        return None;
    }
    seg.parse().ok()
}

/// The strings of a list-valued claim: an array's strings (other elements are ignored), or a
/// space-separated string (OAuth `scope` style). Numbers, booleans, objects and null give none.
/// Borrowed: only the distinct values are copied, once sorted (see [`sorted`]).
fn push_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) -> Result<(), JwtError> {
    match v {
        Value::Array(items) => {
            for s in items.iter().filter_map(Value::as_str) {
                push_bounded(out, s)?;
            }
        }
        Value::String(s) => {
            for s in s.split_whitespace() {
                push_bounded(out, s)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The bound counts every value the token lists, repeats included, as before.
fn push_bounded<'a>(out: &mut Vec<&'a str>, s: &'a str) -> Result<(), JwtError> {
    if out.len() >= MAX_CLAIM_VALUES {
        return Err(JwtError::TooManyClaimValues);
    }
    out.push(s);
    Ok(())
}

/// Sorted, deduplicated, and only then copied (a padded `scope` repeats its words).
fn sorted(mut v: Vec<&str>) -> Vec<String> {
    v.sort_unstable();
    v.dedup();
    v.into_iter().map(str::to_owned).collect()
}

/// The group names from every group claim, sorted and deduplicated, each made into its entity
/// id by `id` (one copy per distinct group).
pub(super) fn groups(
    claims: &Members,
    paths: &[ClaimPath],
    id: impl Fn(&str) -> String,
) -> Result<Vec<String>, JwtError> {
    let mut out = Vec::new();
    for p in paths {
        if let Some(v) = resolve(claims, p) {
            push_strings(v, &mut out)?;
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out.into_iter().map(id).collect())
}

/// OAuth scopes: `scope` (RFC 8693 / RFC 9068, space-separated) and `scp` (Okta: an array;
/// Entra ID: space-separated), merged.
pub(super) fn scopes(claims: &Members) -> Result<Vec<String>, JwtError> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        if let Some(v) = claims.get(name) {
            push_strings(v, &mut out)?;
        }
    }
    Ok(sorted(out))
}

/// `aud`: a string, or the strings of an array (RFC 7519 §4.1.3). Not split on spaces.
pub(super) fn audiences(claims: &Members) -> Result<Vec<String>, JwtError> {
    let mut out = Vec::new();
    match claims.get("aud") {
        Some(Value::String(a)) => out.push(a.as_str()),
        Some(Value::Array(a)) => {
            for s in a.iter().filter_map(Value::as_str) {
                push_bounded(&mut out, s)?;
            }
        }
        _ => {}
    }
    Ok(sorted(out))
}

/// A header value: strings as they are, numbers and booleans in their JSON spelling; arrays,
/// objects and null are not mapped (the header is not set).
pub(super) fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// [`scalar_string`] of a value that is no longer needed: a string moves instead of being copied.
pub(super) fn into_scalar_string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        v => scalar_string(&v),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(v: Value) -> Members {
        match v {
            Value::Object(o) => o.into(),
            _ => panic!("not an object"),
        }
    }

    fn path(s: &str) -> ClaimPath {
        ClaimPath::parse(s).expect("valid path")
    }

    #[test]
    fn pointers_dotted_paths_and_exact_names_resolve() {
        let c = map(json!({
            "realm_access": {"roles": ["admin"]},
            "resource_access": {"orders-api": {"roles": ["reader"]}, "a.b": {"roles": ["dotted"]}},
            "https://example.com/claims/tenant": "acme",
            "a/b": {"c~d": "escaped"},
            "list": ["zero", "one"],
        }));
        assert_eq!(resolve(&c, &path("/realm_access/roles")), Some(&json!(["admin"])));
        assert_eq!(resolve(&c, &path("realm_access.roles")), Some(&json!(["admin"])));
        assert_eq!(resolve(&c, &path("resource_access.orders-api.roles")), Some(&json!(["reader"])));
        // A client id with a dot is reachable only by pointer.
        assert_eq!(resolve(&c, &path("resource_access.a.b.roles")), None);
        assert_eq!(resolve(&c, &path("/resource_access/a.b/roles")), Some(&json!(["dotted"])));
        assert_eq!(resolve(&c, &path("https://example.com/claims/tenant")), Some(&json!("acme")));
        assert_eq!(resolve(&c, &path("/https:~1~1example.com~1claims~1tenant")), Some(&json!("acme")));
        assert_eq!(resolve(&c, &path("/a~1b/c~0d")), Some(&json!("escaped")));
        assert_eq!(resolve(&c, &path("/list/1")), Some(&json!("one")));
        for missing in ["/list/01", "/list/-", "/list/2", "/list/99999999999999999999999", "list.1", "/nope", "a.b.c"] {
            assert_eq!(resolve(&c, &path(missing)), None, "{missing}");
        }
    }

    #[test]
    fn an_exact_top_level_name_wins_over_a_dotted_path() {
        let c = map(json!({"realm_access.roles": ["top"], "realm_access": {"roles": ["nested"]}}));
        assert_eq!(resolve(&c, &path("realm_access.roles")), Some(&json!(["top"])));
        assert_eq!(resolve(&c, &path("/realm_access/roles")), Some(&json!(["nested"])));
    }

    #[test]
    fn a_pointer_deeper_than_the_token_finds_nothing() {
        let mut v = json!("leaf");
        for _ in 0..100 {
            v = json!({ "a": v });
        }
        let c = map(json!({ "a": v }));
        let deepest = "/a".repeat(crate::config::MAX_CLAIM_PATH_SEGMENTS);
        assert!(resolve(&c, &path(&deepest)).is_some_and(Value::is_object));
        assert_eq!(resolve(&c, &path("/a/a/b")), None);
        // Through a string or a number there is nothing to walk.
        let c = map(json!({"s": "x", "n": 1}));
        assert_eq!(resolve(&c, &path("/s/0")), None);
        assert_eq!(resolve(&c, &path("n.x")), None);
    }

    #[test]
    fn groups_take_strings_only_and_objects_give_nothing() {
        let c = map(json!({
            "groups": ["b", "a", 7, true, null, {"x": "y"}, ["nested"]],
            "roles": "x y  a",
            "obj": {"admin": true},
            "num": 42,
        }));
        let paths = [path("groups"), path("roles"), path("obj"), path("num"), path("/missing")];
        assert_eq!(groups(&c, &paths, str::to_owned), Ok(vec!["a".into(), "b".into(), "x".into(), "y".into()]));
    }

    #[test]
    fn scopes_merge_scope_and_scp_in_both_shapes() {
        let c = map(json!({"scope": "orders:read  orders:write", "scp": ["profile", 3, "orders:read"]}));
        assert_eq!(scopes(&c), Ok(vec!["orders:read".into(), "orders:write".into(), "profile".into()]));
        assert_eq!(
            scopes(&map(json!({"scp": "User.Read Mail.Send"}))),
            Ok(vec!["Mail.Send".into(), "User.Read".into()])
        );
        assert_eq!(scopes(&map(json!({"scope": {"a": 1}}))), Ok(vec![]));
        assert_eq!(scopes(&map(json!({}))), Ok(vec![]));
    }

    #[test]
    fn audiences_are_a_string_or_the_strings_of_an_array() {
        assert_eq!(audiences(&map(json!({"aud": "a b"}))), Ok(vec!["a b".into()]));
        assert_eq!(audiences(&map(json!({"aud": ["y", 1, "x", "y"]}))), Ok(vec!["x".into(), "y".into()]));
        assert_eq!(audiences(&map(json!({"aud": 5}))), Ok(vec![]));
    }

    #[test]
    fn huge_lists_are_refused_not_truncated() {
        let many: Vec<String> = (0..=MAX_CLAIM_VALUES).map(|i| format!("g{i}")).collect();
        let c = map(json!({"groups": many, "scope": many.join(" "), "aud": many}));
        assert_eq!(groups(&c, &[path("groups")], str::to_owned), Err(JwtError::TooManyClaimValues));
        assert_eq!(scopes(&c), Err(JwtError::TooManyClaimValues));
        assert_eq!(audiences(&c), Err(JwtError::TooManyClaimValues));
        let enough = &many[..MAX_CLAIM_VALUES];
        let c = map(json!({"groups": enough}));
        assert_eq!(groups(&c, &[path("groups")], str::to_owned).map(|g| g.len()), Ok(MAX_CLAIM_VALUES));
    }

    #[test]
    fn header_values_are_scalars_only() {
        assert_eq!(scalar_string(&json!("x")), Some("x".into()));
        assert_eq!(scalar_string(&json!(12)), Some("12".into()));
        assert_eq!(scalar_string(&json!(1.5)), Some("1.5".into()));
        assert_eq!(scalar_string(&json!(false)), Some("false".into()));
        for v in [json!(null), json!(["a"]), json!({"a": "b"})] {
            assert_eq!(scalar_string(&v), None, "{v}");
        }
    }
}
