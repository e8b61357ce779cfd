//! Tokens: the claims Herald reads, verifying them (HS256 secret, RS256/ES256 public keys or
//! a JWKS, session tokens), and minting them (`herald token`, `POST /v1/tokens`).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{AuthError, AuthSetupError, Principal};
use crate::event::Pattern;

/// Clock skew tolerated on `exp` and `nbf`.
pub(super) const LEEWAY_SECS: u64 = 5;

/// The claims Herald reads from a subscriber token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub sub_channels: Vec<String>,
    #[serde(default)]
    pub pub_channels: Vec<String>,
    /// Patterns of channels the holder may join as a presence member (as `sub`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presence_channels: Vec<String>,
    /// What other members see about the holder (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Map<String, serde_json::Value>>,
    /// A webhook consumer: manages the endpoints of `owner` on channels within `channels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhooksClaim>,
}

/// The `webhooks` claim: `{"owner": "acme", "channels": ["orders.acme.*"]}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WebhooksClaim {
    pub owner: String,
    #[serde(default)]
    pub channels: Vec<String>,
}

/// The keys tokens may be signed with: (kid, key, algorithm). A token is tried against those
/// of its algorithm (and kid, when both name one).
pub(super) struct Verifier {
    pub(super) keys: Vec<(Option<String>, DecodingKey, Algorithm)>,
}

impl Verifier {
    pub(super) fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let keys = &self.keys;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let candidates = keys.iter().filter(|(kid, _, alg)| {
            *alg == header.alg && (kid.is_none() || header.kid.is_none() || *kid == header.kid)
        });
        for (_, key, alg) in candidates {
            let mut validation = Validation::new(*alg);
            validation.leeway = LEEWAY_SECS;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp"]);
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return principal(data.claims),
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                    return Err(AuthError::Expired)
                }
                Err(_) => continue,
            }
        }
        Err(AuthError::Invalid)
    }
}

pub(super) fn principal(claims: Claims) -> Result<Principal, AuthError> {
    let parse = |names: &[String]| -> Result<Vec<Pattern>, AuthError> {
        names
            .iter()
            .map(|n| Pattern::parse(n).map_err(|_| AuthError::Invalid))
            .collect()
    };
    Ok(Principal::Token {
        sub: claims.sub,
        exp: claims.exp,
        subscribe: parse(&claims.sub_channels)?,
        publish: parse(&claims.pub_channels)?,
        presence: parse(&claims.presence_channels)?,
        info: claims
            .info
            .map(|m| std::sync::Arc::new(serde_json::Value::Object(m))),
        consumer: match claims.webhooks {
            None => None,
            Some(w) if w.owner.is_empty() => return Err(AuthError::Invalid),
            Some(w) => Some(std::sync::Arc::new(super::Consumer {
                channels: parse(&w.channels)?,
                owner: w.owner,
            })),
        },
    })
}

pub(super) fn load_public_keys(
    path: &str,
) -> Result<Vec<(Option<String>, DecodingKey, Algorithm)>, AuthSetupError> {
    let err = |reason: String| AuthSetupError::PublicKey {
        path: path.to_string(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if text.trim_ascii_start().starts_with(b"{") {
        let set: JwkSet =
            serde_json::from_slice(&text).map_err(|e| err(format!("not a JWKS document: {e}")))?;
        let mut out = Vec::new();
        for jwk in &set.keys {
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| err(e.to_string()))?;
            out.push((jwk.common.key_id.clone(), key, alg));
        }
        if out.is_empty() {
            return Err(err("no RSA or EC keys in the JWKS".into()));
        }
        return Ok(out);
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&text) {
        return Ok(vec![(None, key, Algorithm::RS256)]);
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&text) {
        return Ok(vec![(None, key, Algorithm::ES256)]);
    }
    Err(err(
        "expected an RSA or EC public key in PEM, or a JWKS file".into(),
    ))
}

/// Mints an HS256 subscriber token (what `herald token` prints).
pub fn mint(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Mints with a private key in PEM (RS256 or ES256, by the key's kind).
pub fn mint_with_pem(pem: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    match EncodingKey::from_rsa_pem(pem) {
        Ok(key) => jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key),
        Err(_) => jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            claims,
            &EncodingKey::from_ec_pem(pem)?,
        ),
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
