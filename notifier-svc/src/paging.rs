//! Page sizes and opaque page tokens for keyset pagination.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ebb_common::Error;

/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Larger requests are capped to this.
pub const MAX_PAGE_SIZE: u64 = 500;

/// The page size to use for `requested`, refusing negative values.
pub fn page_size(requested: i32) -> Result<u64, Error> {
    match requested {
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as u64).min(MAX_PAGE_SIZE)),
    }
}

/// The position after the last row of a page: its sort key and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Sort key of the last row returned.
    pub key: i64,
    /// Id of the last row returned, breaking ties.
    pub id: String,
}

impl Cursor {
    /// The token a client sends back for the next page.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.key, self.id))
    }

    /// Decodes a token; empty means the first page.
    pub fn decode(token: &str) -> Result<Option<Self>, Error> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || Error::invalid("page_token", "not a token returned by this list");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (key, id) = text.split_once(':').ok_or_else(bad)?;
        Ok(Some(Self {
            key: key.parse().map_err(|_| bad())?,
            id: id.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_capped_and_tokens_round_trip() {
        assert_eq!(page_size(0).ok(), Some(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(10_000).ok(), Some(MAX_PAGE_SIZE));
        assert!(page_size(-1).is_err());
        let c = Cursor {
            key: 42,
            id: "dlv_1:x".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()).ok().flatten(), Some(c));
        assert!(Cursor::decode("!!").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("nokey")).is_err());
    }
}
