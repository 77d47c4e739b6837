use super::*;

use serde_json::Map;

use super::super::parse::read_object;

fn hdr(json: &str) -> Members {
    serde_json::from_str::<Map<String, Value>>(json).unwrap().into()
}

/// What an identity maps to, for comparison.
type Mapped = (String, Vec<String>, Vec<(String, String)>, Vec<(Bytes, Bytes)>, Vec<String>, Vec<String>);

fn mapped(id: JwtIdentity) -> Mapped {
    assert_eq!(id.subject_value, Bytes::copy_from_slice(id.subject.as_bytes()));
    assert_eq!(id.issuer_value, Bytes::copy_from_slice(id.issuer.as_bytes()));
    (id.subject, id.groups, id.claims, id.headers, id.scopes, id.audiences)
}

/// The mapping as it was before the claims were taken by value and list values borrowed:
/// every value copied, then sorted and deduplicated.
fn identity_before(iss: &Issuer, claims: &Map<String, Value>) -> Result<Mapped, JwtError> {
    fn strings(v: &Value, out: &mut Vec<String>) -> Result<(), JwtError> {
        let mut push = |s: &str| {
            if out.len() >= claims::MAX_CLAIM_VALUES {
                return Err(JwtError::TooManyClaimValues);
            }
            out.push(s.to_owned());
            Ok(())
        };
        match v {
            Value::Array(items) => items.iter().filter_map(Value::as_str).try_for_each(&mut push),
            Value::String(s) => s.split_whitespace().try_for_each(&mut push),
            _ => Ok(()),
        }
    }
    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort_unstable();
        v.dedup();
        v
    }
    for c in &iss.required_claims {
        if !claims.contains_key(c) {
            return Err(JwtError::MissingClaim);
        }
    }
    let subject = claims.get("sub").and_then(Value::as_str).ok_or(JwtError::MissingClaim)?.to_owned();
    let mut tags: Vec<(String, String)> = claims
        .iter()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()) && !iss.group_claim_names.contains(k))
        .filter_map(|(k, v)| scalar_string(v).map(|s| (k.clone(), s)))
        .collect();
    for (path, tag) in &iss.claims_to_tags {
        tags.retain(|(k, _)| k != tag);
        if let Some(v) = claims::resolve_in(|k| claims.get(k), path).and_then(scalar_string) {
            tags.push((tag.clone(), v));
        }
    }
    let mut groups = Vec::new();
    for p in &iss.group_claims {
        if let Some(v) = claims::resolve_in(|k| claims.get(k), p) {
            strings(v, &mut groups)?;
        }
    }
    let groups = sorted(groups).into_iter().map(|g| iss.group_namespace.group_id(&iss.name, &g)).collect();
    let headers = iss
        .claims_to_headers
        .iter()
        .filter_map(|(claim, header)| {
            claims::resolve_in(|k| claims.get(k), claim)
                .and_then(scalar_string)
                .map(|v| (header.clone(), Bytes::from(v)))
        })
        .filter(|(_, v)| v.iter().all(|&b| b >= 0x20 && b != 0x7f))
        .collect();
    let mut scopes = Vec::new();
    for name in ["scope", "scp"] {
        if let Some(v) = claims.get(name) {
            strings(v, &mut scopes)?;
        }
    }
    let mut audiences = Vec::new();
    match claims.get("aud") {
        Some(Value::String(a)) => audiences.push(a.clone()),
        Some(v @ Value::Array(_)) => strings(v, &mut audiences)?,
        _ => {}
    }
    Ok((subject, groups, tags, headers, sorted(scopes), sorted(audiences)))
}

fn mapping_authenticator() -> JwtAuthenticator {
    let cfg = crate::config::Config::from_yaml(
        "policy: {dir: x}\nauthn:\n  group_namespace: per_issuer\n  issuers:\n    - issuer: https://issuer.test\n      \
         jwks_file: /nonexistent/jwks.json\n      required_claims: [email]\n      \
         group_claims: [groups, realm_access.roles]\n      \
         claims_to_headers: {email: x-email, /org/team: x-team, a.b: x-ab, n: x-n, name: x-name, /list/1: x-second}\n      \
         claims_to_tags: {/org/name: tenant, missing: gone, email: mail}\n",
    )
    .expect("parses");
    cfg.validate().expect("valid");
    JwtAuthenticator::new(&cfg.authn, &cfg.limits, &mut prometheus_client::registry::Registry::default())
        .expect("authenticator")
}

/// Hostile and ordinary claim sets map to exactly what the copying mapping made: duplicate
/// claims (the last one wins, in the first one's place), escaped strings that become headers
/// and tags (control characters keep a header out), huge and fractional numbers, nested and
/// dotted paths, mapped tags replacing top-level ones, repeated list values and the bound.
#[test]
fn identities_map_exactly_as_the_copying_mapping_did() {
    let auth = mapping_authenticator();
    let iss = &auth.issuers[0];
    let many_repeats = vec!["g"; claims::MAX_CLAIM_VALUES];
    let too_many = vec!["g"; claims::MAX_CLAIM_VALUES + 1];
    let many_words = ["w"; claims::MAX_CLAIM_VALUES + 1].join(" ");
    let filler =
        |n: usize| -> String { (0..n).map(|i| format!(r#","t{i}":{}"#, ["1", "\"v\"", "null"][i % 3])).collect() };
    let cases = [
        r#"{"sub":"alice","email":"a@x","tenant":"acme","groups":["b","a","b",7,null],
           "realm_access":{"roles":["a","admin"]},"scope":"r w r  w","scp":["w","x",1],
           "aud":["y","x","y"],"org":{"team":"blue","name":"Org"},"jti":"j","iat":1,"flag":true}"#
            .to_owned(),
        // Duplicates: the later value, in the earlier one's position; a non-scalar one is no tag.
        r#"{"email":"first","sub":"s","tenant":"t","email":"second","tenant":{"o":1},"sub":"s2"}"#.to_owned(),
        // Escapes: quotes, backslashes, non-ASCII, surrogate pairs; control characters.
        r#"{"sub":"\"q\\\u00e9\ud83d\ude00","email":"a\u0000b","name":"x\ty","n":"\u007f","t":"\n"}"#.to_owned(),
        r#"{"sub":"s","email":"\u00e9\"\\","name":"\u2028\u2029","a.b":"top","a":{"b":"nested"}}"#.to_owned(),
        // Numbers: u64::MAX, one past it, the largest finite double, negatives, fractions.
        r#"{"sub":"s","email":1,"n":18446744073709551615,"big":18446744073709551616,"huge":1.7976931348623157e308,
           "neg":-9223372036854775809,"f":1.0,"tiny":1e-320,"name":-0.0,"x":0.1}"#
            .to_owned(),
        // Nested paths through arrays and past leaves; a dotted name absent at top level.
        r#"{"sub":"s","email":true,"a":{"b":["x"]},"org":{"team":{"x":1},"name":null},"list":["z","one"]}"#.to_owned(),
        r#"{"sub":"s","email":"e","org":"flat","list":{"1":"obj"},"groups":"x y x","realm_access":{"roles":"r r"}}"#
            .to_owned(),
        // Mapped tag names colliding with top-level claims.
        r#"{"sub":"s","email":"e","mail":"top","gone":"top","tenant":"top"}"#.to_owned(),
        // The bound counts repeats: at it; over it by groups, scopes, audiences.
        serde_json::json!({"sub": "s", "email": "e", "groups": many_repeats, "scope": "a a"}).to_string(),
        serde_json::json!({"sub": "s", "email": "e", "groups": too_many}).to_string(),
        serde_json::json!({"sub": "s", "email": "e", "scope": many_words}).to_string(),
        serde_json::json!({"sub": "s", "email": "e", "aud": too_many}).to_string(),
        serde_json::json!({"sub": "s", "email": "e", "aud": "a b", "scp": "a b"}).to_string(),
        // Missing what is required, or a subject that is not a string.
        r#"{"sub":"s"}"#.to_owned(),
        r#"{"email":"e","sub":5}"#.to_owned(),
        r#"{"email":"e"}"#.to_owned(),
        // Many members (past the bound where lookups stop scanning), duplicated near and far,
        // some spelled with escapes: the same tags in the same order with the same values.
        format!(
            r#"{{"sub":"s","email":"e","tenant":"t"{},"email":"e2","\u0074enant":"t2","t3":"x"{},"sub":"s2"}}"#,
            filler(40),
            filler(5)
        ),
        format!(
            r#"{{"mail":"m","groups":["a"]{},"groups":["b","c"],"org":{{"name":"o"}},"sub":"s","email":1}}"#,
            filler(1000)
        ),
        format!(r#"{{"sub":"s","email":"e"{},"t0":{{"nested":1}},"t1":null,"t2":1.5e300}}"#, filler(33)),
    ];
    for json in &cases {
        let claims: Map<String, Value> = serde_json::from_str(json).expect("claims");
        let want = identity_before(iss, &claims);
        // As a token's payload is read (duplicates resolved while reading), and as stated.
        let (read, _) = read_object(json.as_bytes(), &[], 16).expect("claims");
        assert_eq!(iss.identity(read, 7, None, [0; 16]).map(mapped), want, "{json:.300}");
        let got = iss.identity(claims.clone().into(), 7, None, [0; 16]).map(mapped);
        assert_eq!(got, want, "{json:.300}");
        let via_test_tool = auth.identity_from_claims("https://issuer.test", &claims).map(mapped);
        assert_eq!(via_test_tool.map_err(|e| e.to_string()), want.map_err(|e| AuthnError::from(e).to_string()));
    }
    // The mapping did something in the first case (the comparison is not vacuous).
    let claims: Map<String, Value> = serde_json::from_str(&cases[0]).expect("claims");
    let (_, groups, tags, headers, scopes, audiences) =
        iss.identity(claims.into(), 7, None, [0; 16]).map(mapped).expect("maps");
    assert_eq!(groups, ["https://issuer.test#a", "https://issuer.test#admin", "https://issuer.test#b"]);
    assert_eq!(scopes, ["r", "w", "x"]);
    assert_eq!(audiences, ["x", "y"]);
    assert!(tags.contains(&("tenant".to_owned(), "Org".to_owned())), "{tags:?}");
    assert!(headers.contains(&(Bytes::from_static(b"x-team"), Bytes::from_static(b"blue"))), "{headers:?}");
}

#[test]
fn none_in_any_spelling_is_refused() {
    for a in ["none", "None", "NONE", "nOnE", " none"] {
        assert_eq!(check_header(&hdr(&format!(r#"{{"alg":"{a}"}}"#))), Err(JwtError::AlgNone), "{a}");
    }
}

#[test]
fn embedded_keys_and_crit_are_refused() {
    assert_eq!(check_header(&hdr(r#"{"alg":"RS256","jku":"http://x"}"#)), Err(JwtError::EmbeddedKey));
    assert_eq!(check_header(&hdr(r#"{"alg":"RS256","jwk":{}}"#)), Err(JwtError::EmbeddedKey));
    assert_eq!(check_header(&hdr(r#"{"alg":"RS256","x5u":"http://x"}"#)), Err(JwtError::EmbeddedKey));
    assert_eq!(check_header(&hdr(r#"{"alg":"RS256","x5c":["x"]}"#)), Err(JwtError::EmbeddedKey));
    assert_eq!(check_header(&hdr(r#"{"alg":"RS256","crit":["exp"]}"#)), Err(JwtError::UnknownCritical));
    assert_eq!(check_header(&hdr(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)), Err(JwtError::Encrypted));
    assert_eq!(check_header(&hdr(r#"{"alg":"RS256"}"#)), Ok(Algorithm::RS256));
}

#[test]
fn every_configured_algorithm_maps_to_the_jsonwebtoken_one_of_the_same_name() {
    for a in JwtAlgorithm::ALL {
        assert_eq!(a.name().parse::<Algorithm>().ok(), Some(algorithm(a)), "{a:?}");
        assert_eq!(a.is_hmac(), algorithm(a).family() == AlgorithmFamily::Hmac, "{a:?}");
    }
    // A token's `alg` goes through the same exact-name table.
    assert_eq!(check_header(&hdr(r#"{"alg":"rs256"}"#)), Err(JwtError::UnsupportedAlgorithm));
    assert_eq!(check_header(&hdr(r#"{"alg":"EdDSA"}"#)), Ok(Algorithm::EdDSA));
}

#[test]
fn typ_is_compared_case_insensitively_with_an_optional_application_prefix() {
    let t = |v: Value| typ_matches(Some(&v), "at+jwt");
    for ok in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+Jwt"] {
        assert!(t(Value::from(ok)), "{ok}");
    }
    for bad in ["JWT", "jwt", "at+jwt2", "application/jwt", "text/at+jwt", "", "id_token"] {
        assert!(!t(Value::from(bad)), "{bad}");
    }
    assert!(!t(serde_json::json!(["at+jwt"])));
    assert!(!typ_matches(None, "at+jwt"));
    assert!(typ_matches(Some(&Value::from("at+jwt")), "application/AT+JWT"));
}

#[test]
fn iat_in_the_future_and_token_age() {
    let now = 1_000_000;
    // Within the leeway either way.
    assert_eq!(check_iat(Some(&Value::from(now + 30)), now, 30, None), Ok(None));
    assert_eq!(check_iat(Some(&Value::from(now + 31)), now, 30, None), Err(JwtError::IssuedInFuture));
    assert_eq!(check_iat(Some(&Value::from(u64::MAX)), now, 30, Some(60)), Err(JwtError::IssuedInFuture));
    assert_eq!(check_iat(Some(&Value::from(now - 90)), now, 30, Some(60)), Ok(Some(now - 30)));
    assert_eq!(check_iat(Some(&Value::from(now - 91)), now, 30, Some(60)), Err(JwtError::TooOld));
    assert_eq!(check_iat(Some(&Value::from(0)), now, 0, Some(60)), Err(JwtError::TooOld));
    // Without max_token_age an old token is fine, and iat is optional.
    assert_eq!(check_iat(Some(&Value::from(0)), now, 0, None), Ok(None));
    assert_eq!(check_iat(None, now, 0, None), Ok(None));
    assert_eq!(check_iat(None, now, 0, Some(60)), Err(JwtError::MissingClaim));
    // A fraction is a NumericDate; anything else is not.
    assert_eq!(check_iat(Some(&serde_json::json!(999_999.9)), now, 0, Some(60)), Ok(Some(999_999 + 60)));
    for bad in [serde_json::json!(-1), serde_json::json!("1000000"), serde_json::json!(null), serde_json::json!(1e300)]
    {
        assert_eq!(check_iat(Some(&bad), now, 30, None), Err(JwtError::Malformed), "{bad}");
    }
}
