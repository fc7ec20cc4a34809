//! Opaque page tokens bound to the filter they were issued for.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// Default page size when a request leaves it at zero.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// The largest page any list answers.
pub const MAX_PAGE_SIZE: u64 = 1000;

#[derive(Serialize, Deserialize)]
struct Token {
    /// Hash of the filter the token belongs to.
    f: String,
    /// Position after which the next page starts.
    a: Vec<String>,
}

/// A fingerprint of a list request's filter fields.
pub fn filter_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Validates `page_size`: zero means the default; negative is refused; large is capped.
pub fn page_size(requested: i32) -> Result<u64, Error> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        n => Ok((n as u64).min(MAX_PAGE_SIZE)),
    }
}

/// Decodes a page token into the position it carries, refusing a token issued for another
/// filter.
pub fn decode(token: &str, filter: &str) -> Result<Option<Vec<String>>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "not a page token issued by this list");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if token.f != filter {
        return Err(Error::invalid(
            "page_token",
            "was issued for a different filter; repeat the filter of the first page",
        ));
    }
    Ok(Some(token.a))
}

/// Encodes the position after the last item of a page.
pub fn encode(filter: &str, after: Vec<String>) -> String {
    let token = Token {
        f: filter.to_owned(),
        a: after,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

/// Splits rows fetched with a limit of `size + 1` into the page and the token of the next
/// page (empty when this is the last), the token carrying `position` of the page's last row.
pub fn split<T>(
    mut rows: Vec<T>,
    size: u64,
    filter: &str,
    position: impl Fn(&T) -> Vec<String>,
) -> (Vec<T>, String) {
    let more = rows.len() as u64 > size;
    rows.truncate(size as usize);
    let token = match (more, rows.last()) {
        (true, Some(last)) => encode(filter, position(last)),
        _ => String::new(),
    };
    (rows, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_filter() {
        let f = filter_hash(&["org", "active"]);
        let t = encode(&f, vec!["1".into(), "x".into()]);
        assert_eq!(
            decode(&t, &f).expect("ok"),
            Some(vec!["1".into(), "x".into()])
        );
        let other = filter_hash(&["org", "archived"]);
        assert!(decode(&t, &other).is_err());
        assert!(decode("garbage!", &f).is_err());
        assert_eq!(decode("", &f).expect("empty"), None);
    }

    #[test]
    fn split_keeps_the_page_and_points_past_its_last_row() {
        let (rows, token) = split(vec![1, 2, 3], 2, "f", |r| vec![r.to_string()]);
        assert_eq!(rows, vec![1, 2]);
        assert_eq!(
            decode(&token, "f").expect("token"),
            Some(vec!["2".to_owned()])
        );
        let (rows, token) = split(vec![1, 2], 2, "f", |r| vec![r.to_string()]);
        assert_eq!((rows, token), (vec![1, 2], String::new()));
    }

    #[test]
    fn page_sizes_are_checked() {
        assert_eq!(page_size(0).expect("default"), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5000).expect("cap"), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
