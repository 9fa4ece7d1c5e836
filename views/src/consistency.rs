//! `X-Consistency-Token` (docs/design.md §4): where the last event of a write
//! landed. Opaque to clients; versioned so the format can change.
//!
//! The token is signed by the command API (HMAC-SHA256 under a key derived
//! from the shared JWT secret). Only a signed token names a partition and an
//! offset that exist, because only the command API mints them after the
//! broker acknowledged the write. So the query API tells a forged or
//! mangled token (unknown topic, unknown partition, an offset past the end
//! of the log) from a real one without asking Kafka, answers it 400 at once,
//! and never holds a connection polling MongoDB for a write that will never
//! come.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed, altered or foreign consistency token")]
pub struct MalformedToken;

/// The key consistency tokens are signed with.
#[derive(Clone)]
pub struct ConsistencyKey(Vec<u8>);

impl std::fmt::Debug for ConsistencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsistencyKey(<redacted>)")
    }
}

/// Bytes of the MAC kept in a token: 128 bits is beyond guessing, and the
/// header stays short.
const MAC_BYTES: usize = 16;

impl ConsistencyKey {
    /// Derives the key from the services' shared secret under a label of its
    /// own, so a consistency token's MAC is never a valid JWT signature.
    pub fn derive(secret: &str) -> Self {
        Self(format!("{secret}\u{0}devconnect-consistency-token").into_bytes())
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; this cannot fail.
        Hmac::<Sha256>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }
}

impl ConsistencyToken {
    pub const HEADER: &'static str = "x-consistency-token";

    fn payload(&self) -> String {
        format!("v2|{}|{}|{}", self.topic, self.partition, self.offset)
    }

    pub fn encode(&self, key: &ConsistencyKey) -> String {
        let payload = self.payload();
        let mut mac = key.mac();
        mac.update(payload.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..MAC_BYTES]);
        URL_SAFE_NO_PAD.encode(format!("{payload}|{tag}"))
    }

    pub fn decode(token: &str, key: &ConsistencyKey) -> Result<Self, MalformedToken> {
        let raw = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| MalformedToken)?;
        let text = String::from_utf8(raw).map_err(|_| MalformedToken)?;
        let (payload, tag) = text.rsplit_once('|').ok_or(MalformedToken)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| MalformedToken)?;
        let mut mac = key.mac();
        mac.update(payload.as_bytes());
        // Constant-time comparison of the kept prefix.
        mac.verify_truncated_left(&tag).map_err(|_| MalformedToken)?;
        if tag.len() != MAC_BYTES {
            return Err(MalformedToken);
        }
        let mut parts = payload.split('|');
        let (Some("v2"), Some(topic), Some(partition), Some(offset), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MalformedToken);
        };
        let partition = partition.parse().map_err(|_| MalformedToken)?;
        let offset = offset.parse().map_err(|_| MalformedToken)?;
        if topic.is_empty() || partition < 0 || offset < 0 {
            return Err(MalformedToken);
        }
        Ok(Self { topic: topic.to_owned(), partition, offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ConsistencyKey {
        ConsistencyKey::derive("0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn a_signed_token_round_trips() {
        let t = ConsistencyToken { topic: "user-events".into(), partition: 2, offset: 41 };
        assert_eq!(ConsistencyToken::decode(&t.encode(&key()), &key()).expect("decodes"), t);
    }

    #[test]
    fn garbage_forgeries_and_other_keys_are_refused() {
        let t = ConsistencyToken { topic: "user-events".into(), partition: 2, offset: 41 };
        let other = ConsistencyKey::derive("another-secret-another-secret-xx");
        assert!(ConsistencyToken::decode(&t.encode(&other), &key()).is_err(), "another deployment's token");
        assert!(ConsistencyToken::decode("nope!", &key()).is_err());
        assert!(ConsistencyToken::decode("", &key()).is_err());
        // The old unsigned format, and a signed payload with its offset changed.
        assert!(ConsistencyToken::decode(&URL_SAFE_NO_PAD.encode("v1|user-events|2|41"), &key()).is_err());
        let signed = String::from_utf8(URL_SAFE_NO_PAD.decode(t.encode(&key())).expect("b64")).expect("utf8");
        let altered = signed.replacen("|41|", "|999999999|", 1);
        assert!(ConsistencyToken::decode(&URL_SAFE_NO_PAD.encode(altered), &key()).is_err(), "an altered offset");
        let (payload, _) = signed.rsplit_once('|').expect("tag");
        let short = format!("{payload}|{}", URL_SAFE_NO_PAD.encode([0u8; 1]));
        assert!(ConsistencyToken::decode(&URL_SAFE_NO_PAD.encode(short), &key()).is_err(), "a one-byte tag");
        let untagged = format!("{payload}|");
        assert!(ConsistencyToken::decode(&URL_SAFE_NO_PAD.encode(untagged), &key()).is_err(), "an empty tag");
    }
}
