//! `X-Consistency-Token` (docs/design.md §4): where the last event of a write
//! landed. Opaque to clients; versioned so the format can change.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed consistency token")]
pub struct MalformedToken;

impl ConsistencyToken {
    pub const HEADER: &'static str = "x-consistency-token";

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1|{}|{}|{}", self.topic, self.partition, self.offset))
    }

    pub fn decode(token: &str) -> Result<Self, MalformedToken> {
        let raw = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| MalformedToken)?;
        let text = String::from_utf8(raw).map_err(|_| MalformedToken)?;
        let mut parts = text.split('|');
        let (Some("v1"), Some(topic), Some(partition), Some(offset), None) =
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

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t = ConsistencyToken { topic: "user-events".into(), partition: 2, offset: 41 };
        assert_eq!(ConsistencyToken::decode(&t.encode()).expect("decodes"), t);
        assert!(ConsistencyToken::decode("nope!").is_err());
        assert!(ConsistencyToken::decode(&URL_SAFE_NO_PAD.encode("v1|t|-1|3")).is_err());
        assert!(ConsistencyToken::decode(&URL_SAFE_NO_PAD.encode("v2|t|1|3")).is_err());
    }
}
