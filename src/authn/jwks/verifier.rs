//! A key's signature verifiers, built once when the key is loaded instead of on every check.
//!
//! `jsonwebtoken::crypto::verify` rebuilt the public key (DER parse, or an `EVP_PKEY` from the
//! RSA modulus and exponent) on every call. Here each key holds one prepared verifier per
//! algorithm it may verify: an `aws_lc_rs` `ParsedPublicKey` for RSA, ECDSA and Ed25519 keys,
//! an `hmac::Key` for a secret. The acceptance is exactly jsonwebtoken's: the same aws-lc-rs
//! algorithm parameters per JWS `alg` (RSA 2048–8192 bits, fixed-size ECDSA signatures), the
//! same key parsing, and key material that does not form a key for an algorithm fails every
//! signature for it, as the per-call rebuild did (such a key was never refused at load).
use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents, VerificationAlgorithm};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};

/// One algorithm's verifier for one key.
enum Prepared {
    Public(ParsedPublicKey),
    /// Boxed: an `hmac::Key` holds its precomputed pads (over 1 kB), which an RSA key's six
    /// slots should not each carry.
    Hmac(Box<hmac::Key>),
    /// The key material is not a key for this algorithm (a malformed modulus, a P-384 point
    /// under ES256, ...): every signature fails.
    Unusable,
}

/// The verifiers of one key, one per algorithm it may verify.
pub struct Verifiers {
    slots: Vec<(Algorithm, Prepared)>,
}

impl std::fmt::Debug for Verifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material: only which algorithms have a usable verifier.
        f.debug_list().entries(self.slots.iter().map(|(a, p)| (a, !matches!(p, Prepared::Unusable)))).finish()
    }
}

/// The algorithms jsonwebtoken would verify with a key of this family.
fn family_algorithms(family: AlgorithmFamily) -> &'static [Algorithm] {
    use Algorithm::*;
    match family {
        AlgorithmFamily::Hmac => &[HS256, HS384, HS512],
        AlgorithmFamily::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmFamily::Ec => &[ES256, ES384],
        AlgorithmFamily::Ed => &[EdDSA],
    }
}

/// The aws-lc-rs parameters jsonwebtoken's aws_lc backend verifies each RSA algorithm with.
fn rsa_params(alg: Algorithm) -> Option<&'static RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

fn prepare(key: &DecodingKey, alg: Algorithm) -> Prepared {
    let parsed = match (key.kind(), alg) {
        (DecodingKeyKind::SecretOrDer(secret), Algorithm::HS256) => {
            return Prepared::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, secret)));
        }
        (DecodingKeyKind::SecretOrDer(secret), Algorithm::HS384) => {
            return Prepared::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA384, secret)));
        }
        (DecodingKeyKind::SecretOrDer(secret), Algorithm::HS512) => {
            return Prepared::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA512, secret)));
        }
        (DecodingKeyKind::RsaModulusExponent { n, e }, _) => match rsa_params(alg) {
            Some(p) => RsaPublicKeyComponents { n, e }.to_parsed_public_key(p).ok(),
            None => None,
        },
        (DecodingKeyKind::SecretOrDer(bytes), _) => {
            let algorithm: &'static dyn VerificationAlgorithm = match alg {
                Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
                Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
                Algorithm::EdDSA => &signature::ED25519,
                other => match rsa_params(other) {
                    Some(p) => p,
                    None => return Prepared::Unusable,
                },
            };
            ParsedPublicKey::new(algorithm, bytes).ok()
        }
    };
    parsed.map_or(Prepared::Unusable, Prepared::Public)
}

impl Verifiers {
    /// Verifiers for every algorithm of the key's family, or only for `pinned` when the JWK
    /// names one (the key is refused for any other `alg` before a signature is looked at).
    pub fn new(key: &DecodingKey, pinned: Option<Algorithm>) -> Self {
        let slots = family_algorithms(key.family())
            .iter()
            .filter(|a| pinned.is_none_or(|p| p == **a))
            .map(|a| (*a, prepare(key, *a)))
            .collect();
        Self { slots }
    }

    /// Whether this key can be asked about `alg` at all (jsonwebtoken refused a key of another
    /// family before decoding the signature).
    pub fn supports(&self, alg: Algorithm) -> bool {
        self.slots.iter().any(|(a, _)| *a == alg)
    }

    /// Whether `signature` (already base64url-decoded) is a valid `alg` signature of `message`
    /// under this key. False for an algorithm this key has no verifier for.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        match self.slots.iter().find(|(a, _)| *a == alg).map(|(_, p)| p) {
            Some(Prepared::Public(k)) => k.verify_sig(message, signature).is_ok(),
            // Constant-time comparison of the recomputed tag.
            Some(Prepared::Hmac(k)) => hmac::verify(k, message, signature).is_ok(),
            Some(Prepared::Unusable) | None => false,
        }
    }
}
