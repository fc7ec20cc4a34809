//! Pagination of every list: one default page size, one cap, and opaque page tokens bound to
//! the filter they were issued for.
//!
//! A list fetches `limit()` rows (one more than the page) after the token's position, in a
//! stable order ending in a unique column, and [`Page::finish`] keeps the page and makes the
//! next token:
//!
//! ```
//! use ebb_common::error::Violations;
//! use ebb_common::page::Page;
//!
//! let mut v = Violations::new();
//! // The list's name and every filter field, so that a token of another list or filter is
//! // refused (INVALID_ARGUMENT on `page_token`).
//! let page = Page::read(&mut v, 2, "", &["deliveries", "org_1", "failed"]);
//! v.finish().expect("valid");
//! assert_eq!(page.after_key_id().expect("position"), None);
//! let rows = vec![(10, "a"), (11, "b"), (12, "c")]; // fetched with LIMIT page.limit()
//! let (rows, next) = page.finish(rows, |(t, id)| vec![t.to_string(), id.to_string()]);
//! assert_eq!(rows.len(), 2);
//!
//! let mut v = Violations::new();
//! let second = Page::read(&mut v, 2, &next, &["deliveries", "org_1", "failed"]);
//! v.finish().expect("same filter");
//! assert_eq!(second.after_key_id().expect("position"), Some((11, "b".to_owned())));
//!
//! let mut v = Violations::new();
//! Page::read(&mut v, 2, &next, &["deliveries", "org_1", "pending"]);
//! assert!(v.finish().is_err());
//! ```

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::error::Violations;

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
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| not_a_token())?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| not_a_token())?;
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

/// The paging of one list request, checked: its size, the filter its tokens are bound to, and
/// the position the page starts after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Rows on this page: the request's `page_size`, [`DEFAULT_PAGE_SIZE`] for 0, at most
    /// [`MAX_PAGE_SIZE`].
    pub size: u64,
    filter: String,
    after: Option<Vec<String>>,
}

impl Page {
    /// Reads a request's `page_size` and `page_token` for a list filtered by `filter` (the
    /// list's name first, then every filter field and the order), recording in `v` what is
    /// wrong with them so that a request reports all its bad fields at once.
    pub fn read(v: &mut Violations, page_size: i32, page_token: &str, filter: &[&str]) -> Self {
        let filter = filter_hash(filter);
        let size = match self::page_size(page_size) {
            Ok(size) => size,
            Err(e) => {
                v.add_error(e);
                DEFAULT_PAGE_SIZE
            }
        };
        let after = match decode(page_token, &filter) {
            Ok(after) => after,
            Err(e) => {
                v.add_error(e);
                None
            }
        };
        Self {
            size,
            filter,
            after,
        }
    }

    /// How many rows to fetch: one more than the page, to know whether another follows.
    pub fn limit(&self) -> u64 {
        self.size + 1
    }

    /// The position the page starts after (what [`Page::finish`] stored for the previous
    /// page's last row); `None` on the first page.
    pub fn after(&self) -> Option<&[String]> {
        self.after.as_deref()
    }

    /// The position as (sort key, id), the keyset of `ORDER BY key, id`.
    pub fn after_key_id(&self) -> Result<Option<(i64, String)>, Error> {
        match self.after() {
            None => Ok(None),
            Some([key, id]) => Ok(Some((key.parse().map_err(|_| not_a_token())?, id.clone()))),
            Some(_) => Err(not_a_token()),
        }
    }

    /// The position as one integer, the keyset of `ORDER BY seq`.
    pub fn after_int(&self) -> Result<Option<i64>, Error> {
        match self.after() {
            None => Ok(None),
            Some([key]) => Ok(Some(key.parse().map_err(|_| not_a_token())?)),
            Some(_) => Err(not_a_token()),
        }
    }

    /// Splits rows fetched with [`Page::limit`] into the page and the token of the next page
    /// (empty when this is the last), the token carrying `position` of the page's last row.
    pub fn finish<T>(
        &self,
        rows: Vec<T>,
        position: impl Fn(&T) -> Vec<String>,
    ) -> (Vec<T>, String) {
        split(rows, self.size, &self.filter, position)
    }
}

fn not_a_token() -> Error {
    Error::invalid("page_token", "not a page token issued by this list")
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
    fn a_page_reports_both_fields_and_reads_typed_positions() {
        let mut v = Violations::new();
        let page = Page::read(&mut v, -1, "garbage!", &["list"]);
        assert_eq!(page.size, DEFAULT_PAGE_SIZE);
        let Err(Error::InvalidArgument(violations)) = v.finish() else {
            panic!("both fields are refused");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["page_size", "page_token"]);

        let f = ["attempts", "dlv_1"];
        let token = encode(&filter_hash(&f), vec!["7".into()]);
        let mut v = Violations::new();
        let page = Page::read(&mut v, 0, &token, &f);
        assert!(v.finish().is_ok());
        assert_eq!(page.after_int().expect("int"), Some(7));
        assert!(page.after_key_id().is_err(), "one value is not a (key, id)");
        assert_eq!(page.limit(), DEFAULT_PAGE_SIZE + 1);

        // The same position under another list is refused.
        let mut v = Violations::new();
        Page::read(&mut v, 0, &token, &["attempts", "dlv_2"]);
        let Err(Error::InvalidArgument(violations)) = v.finish() else {
            panic!("another filter's token is refused");
        };
        assert_eq!(violations[0].field, "page_token");
    }

    #[test]
    fn page_sizes_are_checked() {
        assert_eq!(page_size(0).expect("default"), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5000).expect("cap"), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
