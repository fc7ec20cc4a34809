//! The audit chain: the canonical encoding of a recorded event, its hash, and the check that
//! walks a chain. The server and the offline verifier (`ebb audit verify`) share this module,
//! so there is one definition of what a valid chain is.
//!
//! # Canonical encoding
//!
//! A recorded event is encoded as the RFC 8785 (JCS) canonical JSON text of the object
//!
//! ```json
//! {"action":"…","actor":"…","data":{…},"id":"…","occur_time_ms":1,"organization_id":"…",
//!  "record_time_ms":2,"sequence":3,"subject_id":"…","subject_type":"…"}
//! ```
//!
//! (keys sorted, no whitespace, strings escaped as JSON.stringify does, integers in decimal,
//! `data` itself in JCS form), as UTF-8 bytes. Then
//!
//! ```text
//! hash = SHA-256(canonical_bytes || prev_hash_bytes)
//! ```
//!
//! where `prev_hash_bytes` are the 32 raw bytes of the previous event's hash (32 zero bytes
//! before sequence 1). Hashes are written as lowercase hex. Sequences start at 1 per
//! organization and have no gaps. `docs/audit-chain.md` describes the same with an example.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The previous hash of an organization's first event: 32 zero bytes.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// [`GENESIS_HASH`] in lowercase hex.
pub fn genesis_hex() -> String {
    hex::encode(GENESIS_HASH)
}

/// An event as recorded in a chain: the hashed content, its position and its hashes.
///
/// It is also one line of an export (`ebb audit export`), in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The chain's organization.
    pub organization_id: String,
    /// Position in the chain, from 1.
    pub sequence: i64,
    /// Event id, unique across the store.
    pub id: String,
    /// What happened, e.g. `deprovision.finalized`.
    pub action: String,
    /// Kind of the thing acted on.
    pub subject_type: String,
    /// Id of the thing acted on.
    pub subject_id: String,
    /// Who did it.
    pub actor: String,
    /// Free-form details, a JSON object.
    pub data: serde_json::Value,
    /// When it happened, epoch milliseconds.
    pub occur_time_ms: i64,
    /// When the store recorded it, epoch milliseconds.
    pub record_time_ms: i64,
    /// Hash of the previous event, lowercase hex.
    pub prev_hash: String,
    /// This event's hash, lowercase hex.
    pub hash: String,
}

/// The hashed content of an event, borrowed, with `data` already in canonical (JCS) text.
///
/// The server keeps `data` as canonical text, so it hashes without re-parsing it.
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    /// The chain's organization.
    pub organization_id: &'a str,
    /// Position in the chain.
    pub sequence: i64,
    /// Event id.
    pub id: &'a str,
    /// Action.
    pub action: &'a str,
    /// Subject type.
    pub subject_type: &'a str,
    /// Subject id.
    pub subject_id: &'a str,
    /// Actor.
    pub actor: &'a str,
    /// `data` as RFC 8785 canonical JSON text (see [`canonical_json`]).
    pub canonical_data: &'a str,
    /// Epoch milliseconds.
    pub occur_time_ms: i64,
    /// Epoch milliseconds.
    pub record_time_ms: i64,
}

/// RFC 8785 canonical JSON text of `value`.
pub fn canonical_json(value: &serde_json::Value) -> Result<String, String> {
    serde_json_canonicalizer::to_string(value).map_err(|e| format!("cannot canonicalize: {e}"))
}

impl Content<'_> {
    /// The canonical bytes: the JCS text of the object described in the module documentation.
    ///
    /// Written directly rather than through a JSON value so that hashing stays cheap; a unit
    /// test checks it against a general JCS implementation.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            160 + self.canonical_data.len()
                + self.id.len()
                + self.action.len()
                + self.subject_type.len()
                + self.subject_id.len()
                + self.actor.len()
                + self.organization_id.len(),
        );
        // Keys in JCS order (UTF-16 code unit order; all keys are ASCII).
        out.extend_from_slice(b"{\"action\":");
        push_string(&mut out, self.action);
        out.extend_from_slice(b",\"actor\":");
        push_string(&mut out, self.actor);
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(self.canonical_data.as_bytes());
        out.extend_from_slice(b",\"id\":");
        push_string(&mut out, self.id);
        out.extend_from_slice(b",\"occur_time_ms\":");
        out.extend_from_slice(self.occur_time_ms.to_string().as_bytes());
        out.extend_from_slice(b",\"organization_id\":");
        push_string(&mut out, self.organization_id);
        out.extend_from_slice(b",\"record_time_ms\":");
        out.extend_from_slice(self.record_time_ms.to_string().as_bytes());
        out.extend_from_slice(b",\"sequence\":");
        out.extend_from_slice(self.sequence.to_string().as_bytes());
        out.extend_from_slice(b",\"subject_id\":");
        push_string(&mut out, self.subject_id);
        out.extend_from_slice(b",\"subject_type\":");
        push_string(&mut out, self.subject_type);
        out.push(b'}');
        out
    }

    /// `SHA-256(canonical_bytes || prev_hash)`.
    pub fn hash(&self, prev_hash: &[u8; 32]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.canonical_bytes());
        hasher.update(prev_hash);
        hasher.finalize().into()
    }
}

/// A JSON string literal. serde_json escapes exactly as RFC 8785 requires: `"` and `\`, the
/// short forms `\b \f \n \r \t`, other control characters as lowercase `\u00xx`, and nothing
/// else.
fn push_string(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Decodes a lowercase-hex SHA-256 hash.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Why a chain does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// The recomputed hash differs from the stored one: the content was changed.
    HashMismatch,
    /// The stored previous hash is not the previous event's hash.
    PrevHashMismatch,
    /// A sequence number is missing, repeated or out of order.
    SequenceGap,
    /// The event belongs to another organization.
    OrganizationMismatch,
}

/// The first place a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The first sequence number that does not verify.
    pub sequence: i64,
    /// Why.
    pub kind: BreakKind,
    /// A human-readable explanation.
    pub detail: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sequence {}: {}", self.sequence, self.detail)
    }
}

/// Walks one organization's chain event by event.
#[derive(Debug, Clone)]
pub struct Verifier {
    organization_id: String,
    next_sequence: i64,
    prev_hash: [u8; 32],
    verified: i64,
}

impl Verifier {
    /// A walk that expects `first_sequence` next, chained to `prev_hash` (the hash of
    /// `first_sequence - 1`, or [`GENESIS_HASH`] when starting at 1).
    pub fn new(organization_id: &str, first_sequence: i64, prev_hash: [u8; 32]) -> Self {
        Self {
            organization_id: organization_id.to_owned(),
            next_sequence: first_sequence,
            prev_hash,
            verified: 0,
        }
    }

    /// Checks the next event: its organization, its sequence number, its link to the previous
    /// event and its own hash.
    pub fn check(
        &mut self,
        content: &Content<'_>,
        prev_hash: &str,
        hash: &str,
    ) -> Result<(), Break> {
        let sequence = content.sequence;
        let fail = |kind, detail: String| Break {
            sequence,
            kind,
            detail,
        };
        if content.organization_id != self.organization_id {
            return Err(fail(
                BreakKind::OrganizationMismatch,
                format!(
                    "belongs to organization `{}`, not `{}`",
                    content.organization_id, self.organization_id
                ),
            ));
        }
        if sequence != self.next_sequence {
            return Err(Break {
                sequence: self.next_sequence.min(sequence),
                kind: BreakKind::SequenceGap,
                detail: format!("expected sequence {}, found {sequence}", self.next_sequence),
            });
        }
        if parse_hash(prev_hash) != Some(self.prev_hash) {
            return Err(fail(
                BreakKind::PrevHashMismatch,
                format!(
                    "prev_hash {prev_hash} is not the previous event's hash {}",
                    hex::encode(self.prev_hash)
                ),
            ));
        }
        let computed = content.hash(&self.prev_hash);
        if parse_hash(hash) != Some(computed) {
            return Err(fail(
                BreakKind::HashMismatch,
                format!(
                    "stored hash {hash} differs from the recomputed {}: the event was changed",
                    hex::encode(computed)
                ),
            ));
        }
        self.prev_hash = computed;
        self.next_sequence += 1;
        self.verified += 1;
        Ok(())
    }

    /// Checks the next recorded event.
    pub fn check_record(&mut self, record: &Record) -> Result<(), Break> {
        let data = canonical_json(&record.data).map_err(|e| Break {
            sequence: record.sequence,
            kind: BreakKind::HashMismatch,
            detail: format!("data: {e}"),
        })?;
        self.check(&record.content(&data), &record.prev_hash, &record.hash)
    }

    /// Events verified so far.
    pub fn verified(&self) -> i64 {
        self.verified
    }

    /// The last verified sequence number (one before the first expected).
    pub fn head_sequence(&self) -> i64 {
        self.next_sequence - 1
    }

    /// The hash of [`Verifier::head_sequence`].
    pub fn head_hash(&self) -> [u8; 32] {
        self.prev_hash
    }
}

impl Record {
    /// The hashed content, with `canonical_data` the JCS text of `self.data`.
    pub fn content<'a>(&'a self, canonical_data: &'a str) -> Content<'a> {
        Content {
            organization_id: &self.organization_id,
            sequence: self.sequence,
            id: &self.id,
            action: &self.action,
            subject_type: &self.subject_type,
            subject_id: &self.subject_id,
            actor: &self.actor,
            canonical_data,
            occur_time_ms: self.occur_time_ms,
            record_time_ms: self.record_time_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(sequence: i64, prev: &[u8; 32], action: &str) -> Record {
        let data = json!({"z": 1, "a": [1.5, "x\u{1}\n\"é"], "big": 1e21});
        let mut r = Record {
            organization_id: "org-1".into(),
            sequence,
            id: format!("ev-{sequence}"),
            action: action.into(),
            subject_type: "workspace".into(),
            subject_id: "ws\t1".into(),
            actor: "user:ålice".into(),
            data,
            occur_time_ms: 1_700_000_000_000 + sequence,
            record_time_ms: 1_700_000_000_500 + sequence,
            prev_hash: hex::encode(prev),
            hash: String::new(),
        };
        let canonical = canonical_json(&r.data).expect("canonical");
        r.hash = hex::encode(r.content(&canonical).hash(prev));
        r
    }

    fn chain(n: i64) -> Vec<Record> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|s| {
                let r = record(s, &prev, "workspace.created");
                prev = parse_hash(&r.hash).expect("hash");
                r
            })
            .collect()
    }

    #[test]
    fn canonical_bytes_are_the_jcs_of_the_whole_object() {
        let r = record(7, &GENESIS_HASH, "deprovision.finalized");
        let canonical = canonical_json(&r.data).expect("canonical");
        let direct = r.content(&canonical).canonical_bytes();
        let object = json!({
            "organization_id": r.organization_id, "sequence": r.sequence, "id": r.id,
            "action": r.action, "subject_type": r.subject_type, "subject_id": r.subject_id,
            "actor": r.actor, "data": r.data, "occur_time_ms": r.occur_time_ms,
            "record_time_ms": r.record_time_ms,
        });
        let general = serde_json_canonicalizer::to_vec(&object).expect("jcs");
        assert_eq!(
            String::from_utf8(direct).expect("utf8"),
            String::from_utf8(general).expect("utf8")
        );
        assert!(canonical.contains("1e+21"), "{canonical}");
    }

    #[test]
    fn the_hash_is_pinned() {
        // A fixed vector so that a change of encoding cannot pass unnoticed; the same vector
        // is in docs/audit-chain.md.
        let content = Content {
            organization_id: "org-1",
            sequence: 1,
            id: "ev-1",
            action: "workspace.created",
            subject_type: "workspace",
            subject_id: "ws-1",
            actor: "user:alice",
            canonical_data: r#"{"name":"demo"}"#,
            occur_time_ms: 1_700_000_000_000,
            record_time_ms: 1_700_000_000_001,
        };
        assert_eq!(
            String::from_utf8(content.canonical_bytes()).expect("utf8"),
            r#"{"action":"workspace.created","actor":"user:alice","data":{"name":"demo"},"id":"ev-1","occur_time_ms":1700000000000,"organization_id":"org-1","record_time_ms":1700000000001,"sequence":1,"subject_id":"ws-1","subject_type":"workspace"}"#
        );
        let mut hasher = Sha256::new();
        hasher.update(content.canonical_bytes());
        hasher.update([0u8; 32]);
        let expected: [u8; 32] = hasher.finalize().into();
        assert_eq!(content.hash(&GENESIS_HASH), expected);
        assert_eq!(
            hex::encode(content.hash(&GENESIS_HASH)),
            "3ae07bc9337491a3045b72dfb42b62cb71e48410e8f63a3a5fa54c669492fe29"
        );
    }

    #[test]
    fn an_intact_chain_verifies_and_reports_its_head() {
        let records = chain(5);
        let mut v = Verifier::new("org-1", 1, GENESIS_HASH);
        for r in &records {
            v.check_record(r).expect("intact");
        }
        assert_eq!(v.verified(), 5);
        assert_eq!(v.head_sequence(), 5);
        assert_eq!(hex::encode(v.head_hash()), records[4].hash);
    }

    #[test]
    fn each_kind_of_tampering_names_the_first_bad_sequence() {
        let walk = |records: &[Record]| {
            let mut v = Verifier::new("org-1", 1, GENESIS_HASH);
            records.iter().try_for_each(|r| v.check_record(r))
        };
        let mut changed = chain(5);
        changed[2].actor = "user:mallory".into();
        let b = walk(&changed).expect_err("changed content");
        assert_eq!((b.sequence, b.kind), (3, BreakKind::HashMismatch));

        let mut rehashed = chain(5);
        rehashed[2].data = json!({"forged": true});
        let canonical = canonical_json(&rehashed[2].data).expect("canonical");
        let prev = parse_hash(&rehashed[2].prev_hash).expect("prev");
        rehashed[2].hash = hex::encode(rehashed[2].content(&canonical).hash(&prev));
        let b = walk(&rehashed).expect_err("re-hashed content");
        assert_eq!((b.sequence, b.kind), (4, BreakKind::PrevHashMismatch));

        let mut gap = chain(5);
        gap.remove(1);
        let b = walk(&gap).expect_err("gap");
        assert_eq!((b.sequence, b.kind), (2, BreakKind::SequenceGap));

        let mut foreign = chain(5);
        foreign[0].organization_id = "org-2".into();
        let b = walk(&foreign).expect_err("foreign");
        assert_eq!((b.sequence, b.kind), (1, BreakKind::OrganizationMismatch));
    }
}
