//! Standard Webhooks signatures: `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a webhook secret is \"whsec_\" followed by base64 of 24 to 64 random bytes")]
pub struct SecretError;

/// A signing secret, as shown to users (`whsec_...`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    text: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)") // never log key material
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text.strip_prefix(PREFIX).ok_or(SecretError)?;
        let key = STANDARD.decode(encoded).map_err(|_| SecretError)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SecretError);
        }
        Ok(Secret {
            text: text.to_string(),
            key,
        })
    }

    /// A new secret of 32 random bytes from the OS.
    pub fn generate() -> Secret {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).expect("OS random source");
        Secret {
            text: format!("{PREFIX}{}", STANDARD.encode(&key)),
            key,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key bytes (for verifying what a sender signed with this secret).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// `v1,<signature>` for one message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let prefix = signed_prefix(id, &timestamp.to_string());
        format!("v1,{}", STANDARD.encode(mac(&self.key, &prefix, body)))
    }
}

/// What a Standard Webhooks signature covers before the body: `{id}.{timestamp}.`.
pub fn signed_prefix(id: &str, timestamp: &str) -> Vec<u8> {
    format!("{id}.{timestamp}.").into_bytes()
}

/// HMAC-SHA256 of `prefix` then `body`: the one MAC behind outgoing signatures and the
/// incoming schemes (GitHub: no prefix; Stripe: `t.`; Standard Webhooks: `id.ts.`).
pub fn mac(key: &[u8], prefix: &[u8], body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(prefix);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The `webhook-signature` header value: one signature per secret, space-separated (several
/// during a rotation, so receivers holding either secret verify).
pub fn signature_header(secrets: &[&Secret], id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_test_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_round_trip_and_reject_garbage() {
        let s = Secret::generate();
        assert!(s.as_str().starts_with("whsec_"));
        assert_eq!(Secret::parse(s.as_str()).unwrap(), s);
        for bad in [
            "",
            "whsec_",
            "whsec_!!!",
            "nope_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_c2hvcnQ=",
        ] {
            assert_eq!(Secret::parse(bad), Err(SecretError), "{bad}");
        }
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn rotation_header_carries_both_signatures() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let header = signature_header(&[&a, &b], "id", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts, vec![a.sign("id", 1, b"{}"), b.sign("id", 1, b"{}")]);
    }
}
