//! The signature schemes of incoming hooks. A request's headers are checked first (present,
//! well formed, fresh, at most a few candidates), then one MAC over the body is compared with
//! each candidate in constant time.

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::Rule;
use crate::config::HookVerify;
use crate::webhook::sign::{mac, signed_prefix};

/// How far a signed timestamp may be from now (both Stripe and Standard Webhooks use 5 min).
pub(super) const TOLERANCE_SECS: u64 = 300;

/// Why a signature was refused (the 401's message).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Unsigned(pub(super) &'static str);

pub(super) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(super) fn fresh(timestamp: &str, now: u64) -> Result<(), Unsigned> {
    let t: u64 = timestamp
        .parse()
        .map_err(|_| Unsigned("the signature timestamp is not a number"))?;
    if t.abs_diff(now) > TOLERANCE_SECS {
        return Err(Unsigned(
            "the signature timestamp is more than 5 minutes off",
        ));
    }
    Ok(())
}

/// Most signatures one request may offer: senders list one or two (two while a secret is
/// rotated). More is not a sender but someone making each request cost many MACs.
pub(super) const MAX_SIGNATURES: usize = 4;

/// A request whose signature headers are well formed and fresh, ready to check against its
/// body. Split from the body check so a stale or malformed request is refused before its
/// body is read.
pub(super) struct Signed {
    /// What the MAC covers before the body (`t.` for Stripe, `id.ts.` for Standard Webhooks).
    prefix: Vec<u8>,
    /// Candidate MACs: each exactly 32 bytes, at most [`MAX_SIGNATURES`].
    candidates: Vec<[u8; 32]>,
    /// The sender's delivery id where the signature covers it (Standard Webhooks).
    signed_id: Option<String>,
}

impl Signed {
    /// One MAC over the body, then constant-time comparisons with each candidate.
    pub(super) fn verify(&self, key: &[u8], body: &[u8]) -> Result<[u8; 32], Unsigned> {
        let expected = mac(key, &self.prefix, body);
        let mut found = false;
        for candidate in &self.candidates {
            found |= constant_time_eq(candidate, &expected);
        }
        if found {
            Ok(expected)
        } else {
            Err(Unsigned("the signature does not match"))
        }
    }
}

pub(super) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Collects well-formed candidates, refusing a request that offers too many.
pub(super) fn candidates<'a>(
    values: impl Iterator<Item = &'a str>,
    decode: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<Vec<[u8; 32]>, Unsigned> {
    let mut out = Vec::new();
    for value in values {
        if out.len() == MAX_SIGNATURES {
            return Err(Unsigned("too many signatures"));
        }
        if let Some(sig) = decode(value).and_then(|s| <[u8; 32]>::try_from(s).ok()) {
            out.push(sig);
        }
    }
    if out.is_empty() {
        return Err(Unsigned("no well-formed signature"));
    }
    Ok(out)
}

impl Rule {
    /// Checks what can be checked from the headers alone: the signature is present and well
    /// formed, and its timestamp is fresh.
    pub(super) fn precheck(
        &self,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<Option<Signed>, Unsigned> {
        match self.verify {
            HookVerify::None => Ok(None),
            HookVerify::Github => {
                let sig = header(headers, "x-hub-signature-256")
                    .ok_or(Unsigned("missing X-Hub-Signature-256"))?;
                let candidates = candidates(std::iter::once(sig), |s| {
                    s.strip_prefix("sha256=").and_then(|h| hex::decode(h).ok())
                })
                .map_err(|_| Unsigned("X-Hub-Signature-256 is not sha256=<64 hex digits>"))?;
                Ok(Some(Signed {
                    prefix: Vec::new(),
                    candidates,
                    signed_id: None,
                }))
            }
            HookVerify::Stripe => {
                let value = header(headers, "stripe-signature")
                    .ok_or(Unsigned("missing Stripe-Signature"))?;
                let parts = || value.split(',').filter_map(|p| p.trim().split_once('='));
                let t = parts()
                    .find(|(k, _)| *k == "t")
                    .map(|(_, v)| v)
                    .ok_or(Unsigned("Stripe-Signature has no t="))?;
                fresh(t, now)?;
                let candidates =
                    candidates(parts().filter(|(k, _)| *k == "v1").map(|(_, v)| v), |h| {
                        hex::decode(h).ok()
                    })?;
                Ok(Some(Signed {
                    prefix: format!("{t}.").into_bytes(),
                    candidates,
                    signed_id: None,
                }))
            }
            HookVerify::Standard => {
                let id = header(headers, "webhook-id").ok_or(Unsigned("missing webhook-id"))?;
                let ts = header(headers, "webhook-timestamp")
                    .ok_or(Unsigned("missing webhook-timestamp"))?;
                let sigs = header(headers, "webhook-signature")
                    .ok_or(Unsigned("missing webhook-signature"))?;
                fresh(ts, now)?;
                let candidates =
                    candidates(sigs.split(' ').filter_map(|s| s.strip_prefix("v1,")), |b| {
                        STANDARD.decode(b).ok()
                    })?;
                Ok(Some(Signed {
                    prefix: signed_prefix(id, ts),
                    candidates,
                    signed_id: Some(id.to_string()),
                }))
            }
        }
    }

    /// Checks the sender's signature over the exact body (for tests and callers that have
    /// both at once).
    #[cfg(test)]
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), Unsigned> {
        match self.precheck(headers, now)? {
            None => Ok(()),
            Some(signed) => signed.verify(&self.key, body).map(|_| ()),
        }
    }

    /// What deduplicates a redelivery of the same request, from signed material only: an
    /// unsigned delivery id (GitHub's) could be changed by anyone replaying a request they
    /// saw, so GitHub deliveries are keyed by their signature, which only a new body changes.
    pub(super) fn delivery_id(
        &self,
        signed: &Signed,
        mac: &[u8; 32],
        body: &[u8],
    ) -> Option<String> {
        match self.verify {
            HookVerify::Github => Some(format!("sha256={}", hex::encode(mac))),
            HookVerify::Standard => signed.signed_id.clone(),
            HookVerify::Stripe => serde_json::from_slice::<serde_json::Value>(body)
                .ok()?
                .get("id")?
                .as_str()
                .map(str::to_string),
            HookVerify::None => None,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::HookRules;
    use super::*;
    use crate::config::HookConfig;

    fn rule(verify: HookVerify, secret: &str) -> Rule {
        HookRules::from_config(&[HookConfig {
            channels: vec!["*".into()],
            verify,
            secret: secret.into(),
        }])
        .unwrap()
        .0
        .remove(0)
    }

    pub(in crate::http::incoming) fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn github_signatures() {
        // From GitHub's docs: secret "It's a Secret to Everybody", payload "Hello, World!".
        let r = rule(HookVerify::Github, "It's a Secret to Everybody");
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let h = headers(&[("x-hub-signature-256", good.into())]);
        assert_eq!(r.verify(&h, b"Hello, World!", 0), Ok(()));
        assert!(r.verify(&h, b"Hello, World?", 0).is_err());
        assert!(r.verify(&HeaderMap::new(), b"Hello, World!", 0).is_err());
    }

    #[test]
    fn stripe_signatures_and_their_age() {
        let r = rule(HookVerify::Stripe, "whsec_test");
        let sig = hex::encode(mac(b"whsec_test", b"1700000000.", b"{\"id\":\"evt_1\"}"));
        let h = headers(&[("stripe-signature", format!("t=1700000000,v1=00ff,v1={sig}"))]);
        let body = br#"{"id":"evt_1"}"#;
        assert_eq!(r.verify(&h, body, 1_700_000_100), Ok(()));
        assert!(r.verify(&h, body, 1_700_000_400).is_err(), "too old");
        let signed = r.precheck(&h, 1_700_000_100).unwrap().unwrap();
        let mac = signed.verify(&r.key, body).unwrap();
        assert_eq!(r.delivery_id(&signed, &mac, body).as_deref(), Some("evt_1"));
        // A flood of candidates is refused from the header alone, before any MAC.
        let many = format!("t=1700000000{}", ",v1=".repeat(4000));
        let h = headers(&[("stripe-signature", many)]);
        assert!(r.precheck(&h, 1_700_000_100).is_err());
    }

    #[test]
    fn standard_signatures_match_our_own_signer() {
        let secret = crate::webhook::sign::Secret::generate();
        let r = rule(HookVerify::Standard, secret.as_str());
        let body = b"{\"a\":1}";
        let sig = secret.sign("msg_1", 1_700_000_000, body);
        let h = headers(&[
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", "1700000000".into()),
            ("webhook-signature", format!("v1,bm9wZQ== {sig}")),
        ]);
        assert_eq!(r.verify(&h, body, 1_700_000_010), Ok(()));
        assert!(r.verify(&h, b"{\"a\":2}", 1_700_000_010).is_err());
    }
}
