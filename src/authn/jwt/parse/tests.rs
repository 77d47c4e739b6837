//! Parsing against `jsonwebtoken::decode` and the `base64` crate: hostile tokens, both ways.
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, EncodingKey};

use super::super::verify::map_jwt_error;
use super::*;
use crate::authn::jwks::VerifyKey;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const ISS: &str = "https://issuer.example";

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// A token over these exact header and payload bytes, HS256-signed with `SECRET`.
fn signed(header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &EncodingKey::from_secret(SECRET), Algorithm::HS256)
        .expect("sign");
    format!("{input}.{sig}")
}

/// The validation `build_issuer` configures (leeway 30 s).
fn validation(audiences: &[&str]) -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&[ISS]);
    v.leeway = 30;
    v.validate_nbf = true;
    if audiences.is_empty() {
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp", "sub", "iss"]);
    } else {
        v.set_audience(audiences);
        v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    }
    v
}

/// The pipeline before this module: header read and checked, payload read unverified for
/// `iss`, then `jsonwebtoken::decode` (which parsed both again).
fn before(token: &str, v: &Validation) -> Result<(), JwtError> {
    let seg = |s: &str| -> Result<serde_json::Map<String, Value>, JwtError> {
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
    };
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => return Err(JwtError::Encrypted),
        _ => return Err(JwtError::Malformed),
    }
    let alg = check_header(&seg(parts[0])?.into())?;
    let unverified = seg(parts[1])?;
    if unverified.get("iss").and_then(Value::as_str) != Some(ISS) {
        return Err(JwtError::UnknownIssuer);
    }
    if alg != Algorithm::HS256 {
        return Err(JwtError::AlgorithmNotAllowed);
    }
    jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &DecodingKey::from_secret(SECRET), v)
        .map(|_| ())
        .map_err(map_jwt_error)
}

/// The same steps over one parse.
fn after(token: &str, v: &Validation) -> Result<(), JwtError> {
    let p = ParsedToken::parse(token)?;
    if p.claims.get("iss").and_then(Value::as_str) != Some(ISS) {
        return Err(JwtError::UnknownIssuer);
    }
    if p.alg != Algorithm::HS256 {
        return Err(JwtError::AlgorithmNotAllowed);
    }
    p.verify(&Verifiers::new(&DecodingKey::from_secret(SECRET), None), v, jsonwebtoken::get_current_timestamp())
}

fn both(token: &str, v: &Validation, want: Result<(), JwtError>, what: &str) {
    assert_eq!(before(token, v), want, "jsonwebtoken::decode on {what}");
    assert_eq!(after(token, v), want, "one parse on {what}");
}

/// Header and payload segments around the stack buffer's bound (and far past it), good and
/// mangled: judged exactly as jsonwebtoken judged them.
#[test]
fn the_simd_decoder_accepts_exactly_what_the_base64_crate_does() {
    // Every string of up to 3 characters over an alphabet with both base64 alphabets'
    // specials, padding and a stray byte, then longer ones around the SIMD block sizes and
    // the stack bound, with each kind of flaw at each end.
    let chars: Vec<char> = "AQgw-_+/=.!".chars().collect();
    let mut cases: Vec<String> = vec![String::new()];
    for _ in 0..3 {
        let last: Vec<String> =
            cases.iter().filter(|c| c.len() == cases.last().map_or(0, |l| l.len())).cloned().collect();
        cases.extend(last.iter().flat_map(|c| chars.iter().map(move |ch| format!("{c}{ch}"))));
    }
    let body = |n: usize| (0..n).map(|i| ['A', 'z', '0', '-', '_', 'Q', 'g'][i % 7]).collect::<String>();
    for n in (0..140).chain(SEGMENT_STACK * 4 / 3 - 6..SEGMENT_STACK * 4 / 3 + 6).chain([SIG_STACK * 4 / 3 + 3]) {
        for tail in ["", "A", "B", "AA", "AB", "AAA", "AAB", "=", "==", "+", "/", " ", "\u{e9}"] {
            cases.push(format!("{}{tail}", body(n)));
            cases.push(format!("{tail}{}", body(n)));
        }
    }
    for c in &cases {
        let want = URL_SAFE_NO_PAD.decode(c).map_err(|_| JwtError::Malformed);
        for stack_len in [0, 1, SEGMENT_STACK] {
            let (mut stack, mut heap) = (vec![0u8; stack_len], Vec::new());
            let got = base64url(c, &mut stack, &mut heap).map(<[u8]>::to_vec);
            assert_eq!(got, want, "{c:?} (stack of {stack_len})");
        }
    }
    assert!(cases.len() > 4000, "{}", cases.len());
}

#[test]
fn segments_around_the_stack_bound_decode_as_before() {
    let now = jsonwebtoken::get_current_timestamp();
    let v = validation(&[]);
    let mut checked = 0;
    for len in (SEGMENT_STACK - 80..SEGMENT_STACK + 8).chain([SEGMENT_STACK * 4]) {
        let pad = "p".repeat(len);
        let payload = format!(r#"{{"iss":"{ISS}","sub":"u","exp":{},"x":"{pad}"}}"#, now + 3600);
        let header = format!(r#"{{"alg":"HS256","x":"{pad}"}}"#);
        for (h, p) in [(r#"{"alg":"HS256"}"#, payload.as_str()), (header.as_str(), r#"{"iss":"x"}"#)] {
            let good = signed(h, p);
            let (hs, rest) = good.split_once('.').expect("dots");
            let (ps, sig) = rest.split_once('.').expect("dots");
            for t in [
                good.clone(),
                format!("{hs}=.{ps}.{sig}"),
                format!("{hs}.{ps}=.{sig}"),
                format!("{hs}.{ps}A.{sig}"),
                format!("{hs}.{ps}AA.{sig}"),
                format!("{hs}.{}.{sig}", &ps[..ps.len() - 1]),
                format!("{hs}.{ps}!.{sig}"),
                format!("{}.{ps}.{sig}", &hs[..hs.len() - 1]),
            ] {
                assert_eq!(after(&t, &v), before(&t, &v), "segments of {} and {} chars", hs.len(), ps.len());
                checked += 1;
            }
            assert_eq!(after(&good, &v), before(&good, &v));
        }
        assert_eq!(after(&signed(r#"{"alg":"HS256"}"#, &payload), &v), Ok(()), "payload of {len}");
    }
    assert!(checked > 1000);
}

/// Hostile payloads (with a good header), each refused with the label jsonwebtoken gave it.
#[test]
fn claims_are_refused_exactly_as_jsonwebtoken_refused_them() {
    let now = jsonwebtoken::get_current_timestamp();
    let (fut, past) = (now + 3600, now - 3600);
    let h = r#"{"alg":"HS256","typ":"JWT"}"#;
    let ok = Ok(());
    use JwtError::*;
    let cases: Vec<(String, Result<(), JwtError>)> = vec![
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut}}}"#), ok),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{past}}}"#), Err(Expired)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut},"nbf":{fut}}}"#), Err(NotYetValid)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut},"nbf":{past}}}"#), ok),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut}.0}}"#), ok),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut}}}  "#), ok),
        // Absent or unparseable required claims.
        (format!(r#"{{"iss":"{ISS}","exp":{fut}}}"#), Err(MissingClaim)),
        (format!(r#"{{"iss":"{ISS}","sub":"u"}}"#), Err(MissingClaim)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":"{fut}"}}"#), Err(MissingClaim)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":null}}"#), Err(MissingClaim)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":-1}}"#), Err(MissingClaim)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":1e300}}"#), Err(MissingClaim)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":true}}"#), Err(MissingClaim)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":[]}}"#), Err(MissingClaim)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{{}}}}"#), Err(MissingClaim)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":-0}}"#), Err(Expired)),
        (format!(r#"{{"iss":"{ISS}","sub":5,"exp":{fut}}}"#), Err(MissingClaim)),
        (format!(r#"{{"iss":"{ISS}","sub":null,"exp":{fut}}}"#), Err(MissingClaim)),
        (format!(r#"{{"iss":"{ISS}","sub":true,"exp":{fut}}}"#), Err(MissingClaim)),
        // What jsonwebtoken's serde types could not read at all.
        (format!(r#"{{"iss":"{ISS}","sub":[],"exp":{fut}}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":["u"],"exp":{fut}}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":{{}},"exp":{fut}}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":[{fut}]}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{{"a":1}}}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut},"nbf":null}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut},"nbf":"0"}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut},"nbf":[]}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut},"nbf":[0]}}"#), Err(Malformed)),
        // Duplicate claims: refused for the ones jsonwebtoken validated, the last kept else.
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{past},"exp":{fut}}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","sub":"admin","exp":{fut}}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"x","iss":"{ISS}","sub":"u","exp":{fut}}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut},"nbf":0,"nbf":0}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut},"aud":"a","aud":"a"}}"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut},"x":1,"x":2}}"#), ok),
        // The issuer is picked from the payload before anything else.
        (format!(r#"{{"iss":["{ISS}"],"sub":"u","exp":{fut}}}"#), Err(UnknownIssuer)),
        (format!(r#"{{"sub":"u","exp":{fut}}}"#), Err(UnknownIssuer)),
        // Not one JSON object.
        (format!(r#"[{{"iss":"{ISS}","sub":"u","exp":{fut}}}]"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut}}}x"#), Err(Malformed)),
        (format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut}}}{{}}"#), Err(Malformed)),
        (r#""{}""#.to_owned(), Err(Malformed)),
        ("42".to_owned(), Err(Malformed)),
        ("".to_owned(), Err(Malformed)),
        (format!("{{\"iss\":\"{ISS}\",\"sub\":\"\u{fffd}\",\"exp\":{fut},}}"), Err(Malformed)),
    ];
    let v = validation(&[]);
    for (payload, want) in &cases {
        both(&signed(h, payload), &v, *want, payload);
    }
}

/// Headers and payloads of many members (past the bound where lookups stop scanning), with
/// duplicates of validated, typed and other members anywhere, spelled plainly or escaped:
/// judged exactly as jsonwebtoken judged them.
#[test]
fn many_members_and_duplicates_are_refused_exactly_as_before() {
    let now = jsonwebtoken::get_current_timestamp();
    let (fut, past) = (now + 3600, now - 3600);
    let v = validation(&[]);
    let filler = |n: usize| -> String { (0..n).map(|i| format!(r#","k{i}":{}"#, i % 3)).collect() };
    let claims = format!(r#""iss":"{ISS}","sub":"u","exp":{fut}"#);
    let mut checked = 0;
    for n in [0, 30, 31, 32, 33, 40, 1000] {
        let f = filler(n);
        let payloads = [
            format!("{{{claims}{f}}}"),
            format!(r#"{{{claims}{f},"exp":{past}}}"#),
            format!(r#"{{"exp":{past}{f},{claims}}}"#),
            format!(r#"{{{claims}{f},"e\u0078p":{fut}}}"#),
            format!(r#"{{{claims}{f},"\u0073ub":"admin"}}"#),
            format!(r#"{{{claims}{f},"aud":"a"{f},"aud":"a"}}"#),
            format!(r#"{{{claims}{f},"nbf":null}}"#),
            format!(r#"{{{claims}{f},"x":1{f},"x":2}}"#),
            format!(r#"{{{claims},"k0":"first"{f}}}"#),
            format!(r#"{{"iss":"x"{f},{claims}}}"#),
            format!(r#"{{{claims}{f},"exp":{fut}.0}}"#),
            format!(r#"{{{claims}{f},"sub":["u"]}}"#),
            format!(r#"{{{claims}{f},"iss":null}}"#),
        ];
        for p in &payloads {
            let t = signed(r#"{"alg":"HS256"}"#, p);
            assert_eq!(after(&t, &v), before(&t, &v), "{n} extra members: {p:.200}");
            checked += 1;
        }
        let headers = [
            format!(r#"{{"alg":"HS256"{f}}}"#),
            format!(r#"{{"alg":"HS256"{f},"alg":"HS256"}}"#),
            format!(r#"{{"alg":"HS256"{f},"\u0061lg":"HS256"}}"#),
            format!(r#"{{"alg":"HS256","kid":"a"{f},"kid":"a"}}"#),
            format!(r#"{{"alg":"HS256"{f},"typ":5}}"#),
            format!(r#"{{"alg":"HS256"{f},"x":1,"x":2}}"#),
            format!(r#"{{"typ":"JWT"{f},"alg":"HS256"}}"#),
            format!(r#"{{"alg":"HS256"{f},"crit":["b64"]}}"#),
            format!(r#"{{"alg":"HS256"{f},"jwk":null}}"#),
            format!(r#"{{"alg":"HS256"{f},"alg":"none"}}"#),
        ];
        for h in &headers {
            let t = signed(h, &format!("{{{claims}}}"));
            assert_eq!(after(&t, &v), before(&t, &v), "{n} extra header members: {h:.200}");
            checked += 1;
        }
    }
    assert!(checked > 150);
    let plenty = signed(r#"{"alg":"HS256"}"#, &format!("{{{claims}{}}}", filler(1000)));
    assert_eq!(after(&plenty, &v), Ok(()), "the comparison is not all refusals");
}

#[test]
fn audiences_are_judged_exactly_as_jsonwebtoken_judged_them() {
    let fut = jsonwebtoken::get_current_timestamp() + 3600;
    let h = r#"{"alg":"HS256"}"#;
    use JwtError::*;
    let with = validation(&["a", "b"]);
    let without = validation(&[]);
    for (aud, want_with, want_without) in [
        (r#""a""#, Ok(()), Ok(())),
        (r#"["x","b"]"#, Ok(()), Ok(())),
        (r#""c""#, Err(BadAudience), Ok(())),
        (r#"["c"]"#, Err(BadAudience), Ok(())),
        ("[]", Err(BadAudience), Ok(())),
        ("[1]", Err(BadAudience), Ok(())),
        ("null", Err(BadAudience), Ok(())),
        ("5", Err(BadAudience), Ok(())),
        (r#"{"a":1}"#, Err(BadAudience), Ok(())),
    ] {
        let t = signed(h, &format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut},"aud":{aud}}}"#));
        both(&t, &with, want_with, aud);
        both(&t, &without, want_without, aud);
    }
    let t = signed(h, &format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut}}}"#));
    both(&t, &with, Err(BadAudience), "no aud");
}

/// Hostile headers and segments, each refused with the label jsonwebtoken gave it.
#[test]
fn headers_and_encodings_are_refused_exactly_as_before() {
    let fut = jsonwebtoken::get_current_timestamp() + 3600;
    let p = format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut}}}"#);
    let v = validation(&[]);
    use JwtError::*;
    for (h, want) in [
        (r#"{"alg":"HS256","kid":"k","cty":"JWT","x5t":"t","x5t#S256":"s","nonce":"n","url":"u","zip":"z"}"#, Ok(())),
        (r#"{"alg":"HS256","typ":null,"extra":[1,{"a":null}],"extra":2}"#, Ok(())),
        (r#"{"alg":"HS256","alg":"HS256"}"#, Err(Malformed)),
        (r#"{"alg":"RS256","alg":"HS256"}"#, Err(Malformed)),
        (r#"{"alg":"HS256","typ":"JWT","typ":"JWT"}"#, Err(Malformed)),
        (r#"{"alg":"HS256","kid":"a","kid":"a"}"#, Err(Malformed)),
        (r#"{"alg":"HS256","typ":5}"#, Err(Malformed)),
        (r#"{"alg":"HS256","cty":["x"]}"#, Err(Malformed)),
        (r#"{"alg":"HS256","zip":1}"#, Err(Malformed)),
        (r#"{"alg":"HS256","url":{}}"#, Err(Malformed)),
        (r#"{"alg":"HS256","x5t#S256":true}"#, Err(Malformed)),
        (r#"{"alg":"HS256","kid":5}"#, Err(Malformed)),
        (r#"{"alg":"none"}"#, Err(AlgNone)),
        (r#"{"alg":"HS256","crit":["b64"]}"#, Err(UnknownCritical)),
        (r#"{"alg":"HS256","jwk":null}"#, Err(EmbeddedKey)),
        (r#"{"alg":"RS256"}"#, Err(AlgorithmNotAllowed)),
        (r#"{"alg":"hs256"}"#, Err(UnsupportedAlgorithm)),
        (r#"{"alg":5}"#, Err(Malformed)),
        (r#"["HS256"]"#, Err(Malformed)),
        (r#"{"alg":"HS256"} x"#, Err(Malformed)),
    ] {
        both(&signed(h, &p), &v, want, h);
    }

    let good = signed(r#"{"alg":"HS256"}"#, &p);
    let (input, sig) = good.rsplit_once('.').expect("three segments");
    let (h64, p64) = input.split_once('.').expect("three segments");
    // Another canonical final character leaves a valid encoding and a wrong signature; one
    // with stray trailing bits (HS256's 32 bytes end in a 4-bit character) is not base64url.
    assert_eq!(sig.len() % 4, 3);
    let last = sig.chars().last().expect("signature");
    let other = if last == 'A' { 'E' } else { 'A' };
    let head = &sig[..sig.len() - 1];
    for (t, want) in [
        (format!("{input}.{sig}"), Ok(())),
        (format!("{input}.{head}{other}"), Err(BadSignature)),
        (format!("{input}.{head}B"), Err(Malformed)),
        (format!("{input}."), Err(BadSignature)),
        (format!("{input}.{sig}="), Err(Malformed)),
        (
            format!("{input}.{}", sig.replace('-', "+").replace('_', "/")),
            if sig.contains(['-', '_']) { Err(Malformed) } else { Ok(()) },
        ),
        (format!("{h64}=.{p64}.{sig}"), Err(Malformed)),
        (format!("{h64}.{p64}==.{sig}"), Err(Malformed)),
        (format!("{h64}.{p64}.{sig}.x"), Err(Malformed)),
        (format!("{h64}.{p64}.{sig}.x.y"), Err(Encrypted)),
        (format!("{h64}.{p64}"), Err(Malformed)),
        (format!(" {input}.{sig}"), Err(Malformed)),
        (format!("{input}.{sig}\u{0}"), Err(Malformed)),
    ] {
        both(&t, &v, want, &t);
    }
}

/// Asymmetric keys, loaded the way a JWKS loads them, and signers for them.
mod keys {
    use std::sync::Arc;

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{
        self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents,
    };
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use crate::authn::jwks::{VerifyKey, parse_jwks};

    pub(super) enum Signer {
        Rsa(RsaKeyPair),
        Ec(EcdsaKeyPair),
        Ed(Ed25519KeyPair),
    }

    pub(super) fn rsa() -> Signer {
        Signer::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa key"))
    }
    pub(super) fn p256() -> Signer {
        Signer::Ec(EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).expect("p-256 key"))
    }
    pub(super) fn p384() -> Signer {
        Signer::Ec(EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_FIXED_SIGNING).expect("p-384 key"))
    }
    pub(super) fn ed25519() -> Signer {
        Signer::Ed(Ed25519KeyPair::generate().expect("ed25519 key"))
    }

    impl Signer {
        /// A signature over `msg`; `pss` picks RSASSA-PSS over PKCS#1 v1.5 (SHA-256 both).
        pub(super) fn sign(&self, msg: &[u8], pss: bool) -> Vec<u8> {
            let rng = SystemRandom::new();
            match self {
                Signer::Rsa(k) => {
                    let mut out = vec![0; k.public_modulus_len()];
                    let enc: &'static dyn sig::RsaEncoding =
                        if pss { &sig::RSA_PSS_SHA256 } else { &sig::RSA_PKCS1_SHA256 };
                    k.sign(enc, &rng, msg, &mut out).expect("rsa sign");
                    out
                }
                Signer::Ec(k) => k.sign(&rng, msg).expect("ecdsa sign").as_ref().to_vec(),
                Signer::Ed(k) => k.sign(msg).as_ref().to_vec(),
            }
        }

        /// The public JWK members (`kty` and key material).
        pub(super) fn jwk_members(&self) -> String {
            let b = |x: &[u8]| URL_SAFE_NO_PAD.encode(x);
            match self {
                Signer::Rsa(k) => {
                    let c = RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                    format!(r#""kty":"RSA","n":"{}","e":"{}""#, b(&c.n), b(&c.e))
                }
                Signer::Ec(k) => {
                    let p = k.public_key().as_ref();
                    let (crv, half) = if p.len() == 65 { ("P-256", 32) } else { ("P-384", 48) };
                    let (x, y) = (&p[1..1 + half], &p[1 + half..]);
                    format!(r#""kty":"EC","crv":"{crv}","x":"{}","y":"{}""#, b(x), b(y))
                }
                Signer::Ed(k) => format!(r#""kty":"OKP","crv":"Ed25519","x":"{}""#, b(k.public_key().as_ref())),
            }
        }

        /// The RSA public key's DER (PKCS#1), the bytes an HMAC-confusion attacker uses.
        pub(super) fn public_der(&self) -> Vec<u8> {
            match self {
                Signer::Rsa(k) => k.public_key().as_ref().to_vec(),
                Signer::Ec(k) => k.public_key().as_ref().to_vec(),
                Signer::Ed(k) => k.public_key().as_ref().to_vec(),
            }
        }
    }

    /// One JWK with these members, loaded by `parse_jwks` as a fetched JWKS is.
    pub(super) fn load(members: &str) -> Arc<VerifyKey> {
        let body = format!(r#"{{"keys":[{{"kid":"k",{members}}}]}}"#);
        let mut keys = parse_jwks(body.as_bytes(), "test", 4).expect("jwks loads");
        assert_eq!(keys.len(), 1);
        keys.remove(0)
    }
}

/// A token with this header `alg` over a valid payload, its signature made by `sign`.
fn token_signed_by(alg: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let fut = jsonwebtoken::get_current_timestamp() + 3600;
    let input = format!(
        "{}.{}",
        b64(&format!(r#"{{"alg":"{alg}","kid":"k"}}"#)),
        b64(&format!(r#"{{"iss":"{ISS}","sub":"u","exp":{fut}}}"#))
    );
    let sig = URL_SAFE_NO_PAD.encode(sign(input.as_bytes()));
    format!("{input}.{sig}")
}

fn pkcs1(k: &keys::Signer) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
    move |m| k.sign(m, false)
}

fn pss(k: &keys::Signer) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
    move |m| k.sign(m, true)
}

/// HS256 tags under `secret` (for confusion attacks, a public key's bytes).
fn hmac_with(secret: Vec<u8>) -> impl Fn(&[u8]) -> Vec<u8> {
    move |m| {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
        aws_lc_rs::hmac::sign(&k, m).as_ref().to_vec()
    }
}

/// The fresh path before this change: the key-match check, then jsonwebtoken rebuilding the
/// public key and decoding the signature on each call.
fn rebuilt_per_call(token: &str, key: &VerifyKey) -> Result<(), JwtError> {
    let p = ParsedToken::parse(token)?;
    super::super::verify::check_key_matches(key, p.alg)?;
    let (input, sig) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    match jsonwebtoken::crypto::verify(sig, input.as_bytes(), &key.key, p.alg) {
        Ok(true) => Ok(()),
        Ok(false) => Err(JwtError::BadSignature),
        Err(e) => Err(map_jwt_error(e)),
    }
}

/// The fresh path now: the same key-match check, then the key's prebuilt verifier.
fn prebuilt(token: &str, key: &VerifyKey) -> Result<(), JwtError> {
    let p = ParsedToken::parse(token)?;
    super::super::verify::check_key_matches(key, p.alg)?;
    p.verify(&key.verifiers, &validation(&[]), jsonwebtoken::get_current_timestamp())
}

fn judged(token: &str, key: &VerifyKey, want: Result<(), JwtError>, what: &str) {
    assert_eq!(rebuilt_per_call(token, key), want, "key rebuilt per call, {what}");
    assert_eq!(prebuilt(token, key), want, "prebuilt verifier, {what}");
}

/// Forged, confused and mangled signatures under JWKS keys: each refused by the prebuilt
/// verifiers with the label the per-call rebuild gave it, and good ones still accepted.
#[test]
fn prebuilt_verifiers_refuse_exactly_what_the_per_call_rebuild_refused() {
    use JwtError::*;
    let (a, b) = (keys::rsa(), keys::rsa());
    let (ec256, ec384, ed, ed_other) = (keys::p256(), keys::p384(), keys::ed25519(), keys::ed25519());
    let rsa_key = keys::load(&a.jwk_members());
    let rsa_pinned = keys::load(&format!(r#"{},"alg":"RS256""#, a.jwk_members()));
    let p256_key = keys::load(&ec256.jwk_members());
    let p384_key = keys::load(&ec384.jwk_members());
    let ed_key = keys::load(&ed.jwk_members());
    let hmac_key =
        VerifyKey::new(None, DecodingKey::from_secret(SECRET), jsonwebtoken::AlgorithmFamily::Hmac, None, [0; 16]);
    let rsa_n = match a.jwk_members().split('"').nth(7) {
        Some(n) => URL_SAFE_NO_PAD.decode(n).expect("n"),
        None => panic!("no n"),
    };
    let cases: Vec<(&VerifyKey, String, Result<(), JwtError>, &str)> = vec![
        (&rsa_key, token_signed_by("RS256", pkcs1(&a)), Ok(()), "RS256 by the key"),
        (&rsa_key, token_signed_by("PS256", pss(&a)), Ok(()), "PS256 by the key"),
        (&rsa_pinned, token_signed_by("RS256", pkcs1(&a)), Ok(()), "RS256 by a key pinned to RS256"),
        (&rsa_key, token_signed_by("RS256", pkcs1(&b)), Err(BadSignature), "RS256 by another key"),
        (&rsa_key, token_signed_by("PS256", pss(&b)), Err(BadSignature), "PS256 by another key"),
        (&rsa_key, token_signed_by("PS256", pkcs1(&a)), Err(BadSignature), "PKCS#1 signature under PS256"),
        (&rsa_key, token_signed_by("RS256", pss(&a)), Err(BadSignature), "PSS signature under RS256"),
        (&rsa_key, token_signed_by("RS384", pkcs1(&a)), Err(BadSignature), "SHA-256 signature under RS384"),
        (&rsa_key, token_signed_by("PS512", pss(&a)), Err(BadSignature), "SHA-256 PSS under PS512"),
        (&rsa_pinned, token_signed_by("PS256", pss(&a)), Err(KeyMismatch), "PS256 by a key pinned to RS256"),
        // Algorithm confusion: another family's alg with an RSA key, whatever the signature.
        (&rsa_key, token_signed_by("ES256", |m| ec256.sign(m, false)), Err(KeyMismatch), "ES256 header"),
        (&rsa_key, token_signed_by("EdDSA", |m| ed.sign(m, false)), Err(KeyMismatch), "EdDSA header"),
        (&rsa_key, token_signed_by("HS256", hmac_with(a.public_der())), Err(KeyMismatch), "HS256, DER as secret"),
        (&rsa_key, token_signed_by("HS256", hmac_with(rsa_n.clone())), Err(KeyMismatch), "HS256, n as secret"),
        (&hmac_key, token_signed_by("RS256", pkcs1(&a)), Err(KeyMismatch), "RS256 under an HMAC secret"),
        (&hmac_key, token_signed_by("HS256", hmac_with(SECRET.to_vec())), Ok(()), "HS256 by the secret"),
        (&hmac_key, token_signed_by("HS384", hmac_with(SECRET.to_vec())), Err(BadSignature), "HS256 tag as HS384"),
        (&hmac_key, token_signed_by("HS256", hmac_with(a.public_der())), Err(BadSignature), "HS256, wrong secret"),
        // ECDSA: the curve is the algorithm's, whatever the JWK's `crv` says.
        (&p256_key, token_signed_by("ES256", |m| ec256.sign(m, false)), Ok(()), "ES256 by the key"),
        (&p384_key, token_signed_by("ES384", |m| ec384.sign(m, false)), Ok(()), "ES384 by the key"),
        (&p256_key, token_signed_by("ES384", |m| ec384.sign(m, false)), Err(BadSignature), "ES384, P-256 key"),
        (&p384_key, token_signed_by("ES256", |m| ec256.sign(m, false)), Err(BadSignature), "ES256, P-384 key"),
        (&p256_key, token_signed_by("ES256", |m| keys::p256().sign(m, false)), Err(BadSignature), "other P-256"),
        (&p256_key, token_signed_by("RS256", pkcs1(&a)), Err(KeyMismatch), "RS256 under an EC key"),
        (&ed_key, token_signed_by("EdDSA", |m| ed.sign(m, false)), Ok(()), "EdDSA by the key"),
        (&ed_key, token_signed_by("EdDSA", |m| ed_other.sign(m, false)), Err(BadSignature), "EdDSA, other key"),
        (&ed_key, token_signed_by("ES256", |m| ec256.sign(m, false)), Err(KeyMismatch), "ES256 under Ed25519"),
    ];
    for (key, t, want, what) in &cases {
        judged(t, key, *want, what);
    }

    // Every algorithm of each family, through its own prebuilt verifier.
    for (alg, enc) in [
        ("RS384", &aws_lc_rs::signature::RSA_PKCS1_SHA384 as &'static dyn aws_lc_rs::signature::RsaEncoding),
        ("RS512", &aws_lc_rs::signature::RSA_PKCS1_SHA512),
        ("PS384", &aws_lc_rs::signature::RSA_PSS_SHA384),
        ("PS512", &aws_lc_rs::signature::RSA_PSS_SHA512),
    ] {
        let keys::Signer::Rsa(kp) = &a else { panic!("rsa") };
        let t = token_signed_by(alg, |m| {
            let mut out = vec![0; kp.public_modulus_len()];
            kp.sign(enc, &aws_lc_rs::rand::SystemRandom::new(), m, &mut out).expect("sign");
            out
        });
        judged(&t, &rsa_key, Ok(()), alg);
    }
}

/// Signature segments that are cut, extended, padded, in the wrong alphabet, non-canonical
/// or huge: the same labels as jsonwebtoken's decoding gave, for each key type.
#[test]
fn mangled_signature_encodings_are_refused_as_before() {
    use JwtError::*;
    let (rsa, ec, ed) = (keys::rsa(), keys::p256(), keys::ed25519());
    for (signer, alg) in [(&rsa, "RS256"), (&ec, "ES256"), (&ed, "EdDSA")] {
        let key = keys::load(&signer.jwk_members());
        let good = token_signed_by(alg, |m| signer.sign(m, false));
        let (input, sig) = good.rsplit_once('.').expect("three segments");
        let raw = URL_SAFE_NO_PAD.decode(sig).expect("signature");
        let enc = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut extended = raw.clone();
        extended.push(0);
        let mut flipped = raw.clone();
        flipped[0] ^= 1;
        // The last character's unused low bits set: not canonical base64url.
        let stray = {
            let last = sig.chars().last().expect("non-empty");
            let idx = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                .iter()
                .position(|c| *c as char == last)
                .expect("alphabet");
            let unused = match raw.len() % 3 {
                1 => 0b1111,
                2 => 0b11,
                _ => 0,
            };
            (unused != 0).then(|| {
                let c = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[idx | unused] as char;
                format!("{}{c}", &sig[..sig.len() - 1])
            })
        };
        let padded = base64::engine::general_purpose::URL_SAFE.encode(&raw);
        let standard = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&raw);
        let mut cases = vec![
            (sig.to_owned(), Ok(())),
            (enc(&raw[..raw.len() - 1]), Err(BadSignature)),
            (enc(&raw[1..]), Err(BadSignature)),
            (enc(&extended), Err(BadSignature)),
            (enc(&flipped), Err(BadSignature)),
            (String::new(), Err(BadSignature)),
            (format!("{sig}="), Err(Malformed)),
            // One more character: a valid length (a longer signature) unless it leaves one odd char.
            (format!("{sig}A"), if sig.len() % 4 == 0 { Err(Malformed) } else { Err(BadSignature) }),
            (format!("{sig} "), Err(Malformed)),
            (format!("{sig}!"), Err(Malformed)),
            // Around the stack buffer's bound and far past it.
            ("A".repeat(1365), Err(Malformed)),
            ("A".repeat(1366), Err(BadSignature)),
            ("A".repeat(1367), Err(BadSignature)),
            ("A".repeat(1368), Err(BadSignature)),
            ("A".repeat(1369), Err(Malformed)),
            ("A".repeat(1370), Err(BadSignature)),
            ("A".repeat(1372), Err(BadSignature)),
            ("A".repeat(40_000), Err(BadSignature)),
            (format!("{}!", "A".repeat(40_000)), Err(Malformed)),
        ];
        if padded != sig {
            cases.push((padded, Err(Malformed)));
        }
        if standard != sig {
            cases.push((standard, Err(Malformed)));
        }
        if let Some(s) = stray {
            cases.push((s, Err(Malformed)));
        }
        for (s, want) in cases {
            let what = format!("{alg} with signature {:.40}… ({} chars)", s, s.len());
            judged(&format!("{input}.{s}"), &key, want, &what);
        }
    }
}

/// Key material that is not a key for the algorithm was loaded before (jsonwebtoken only
/// base64-decoded it) and failed every signature; it still does, and is still loaded.
#[test]
fn unusable_key_material_fails_every_signature_as_before() {
    use JwtError::*;
    let a = keys::rsa();
    let good = token_signed_by("RS256", |m| a.sign(m, false));
    let n = URL_SAFE_NO_PAD.encode([0u8, 1, 2, 3]);
    for (members, t) in [
        // A modulus with a leading zero byte, and one far too short.
        (format!(r#""kty":"RSA","n":"{n}","e":"AQAB""#), &good),
        (r#""kty":"RSA","n":"AQAB","e":"AQAB""#.to_owned(), &good),
        (r#""kty":"RSA","n":"AQAB","e":"""#.to_owned(), &good),
    ] {
        let key = keys::load(&members);
        judged(t, &key, Err(BadSignature), &members);
    }
    let ec = keys::p256();
    let es = token_signed_by("ES256", |m| ec.sign(m, false));
    for members in [r#""kty":"EC","crv":"P-256","x":"AQAB","y":"AQAB""#, r#""kty":"EC","crv":"P-256","x":"","y":"""#] {
        judged(&es, &keys::load(members), Err(BadSignature), members);
    }
    let ed = keys::ed25519();
    let eds = token_signed_by("EdDSA", |m| ed.sign(m, false));
    judged(&eds, &keys::load(r#""kty":"OKP","crv":"Ed25519","x":"AQAB""#), Err(BadSignature), "short Ed25519 x");
}
