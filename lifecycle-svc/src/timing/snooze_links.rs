//! Snooze links in reminders (the schedules issue, item 4): signed, expiring, single-use links
//! a reminder of a workspace's auto-destroy carries. This part makes and checks them; using
//! one is `crate::snooze`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ebb_common::time::EpochMs;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;

use crate::events::NewEvent;

type HmacSha256 = Hmac<Sha256>;

/// What a link says, signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The link's id: used once.
    #[serde(rename = "l")]
    pub link_id: String,
    #[serde(rename = "w")]
    pub workspace_id: String,
    /// The destroy time the reminder was about.
    #[serde(rename = "d")]
    pub due_at: EpochMs,
}

/// Why a link was refused before anything was looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not a link this service made, or altered.
    Invalid,
    /// The destroy it reminded of has come.
    Expired,
}

/// Makes and checks links.
#[derive(Clone)]
pub struct Links {
    key: Vec<u8>,
    base_url: String,
}

impl Links {
    /// Links signed with `key`, pointing at `base_url` (no trailing slash).
    pub fn new(key: Vec<u8>, base_url: &str) -> Self {
        Self {
            key,
            base_url: base_url.to_owned(),
        }
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(b"ebb-snooze:v1:");
        mac.update(payload.as_bytes());
        mac
    }

    /// A new link's token for the reminder of `workspace_id` due at `due_at`.
    pub fn token(&self, workspace_id: &str, due_at: EpochMs) -> String {
        let claims = Claims {
            link_id: uuid::Uuid::now_v7().simple().to_string(),
            workspace_id: workspace_id.to_owned(),
            due_at,
        };
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{signature}")
    }

    /// The address of a token.
    pub fn url(&self, token: &str) -> String {
        format!("{}/v1/snooze/{token}", self.base_url)
    }

    /// The claims of `token`, if it is genuine and its destroy has not come.
    pub fn check(&self, token: &str, now: EpochMs) -> std::result::Result<Claims, Refused> {
        let (payload, signature) = token.split_once('.').ok_or(Refused::Invalid)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| Refused::Invalid)?;
        self.mac(payload)
            .verify_slice(&signature)
            .map_err(|_| Refused::Invalid)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| Refused::Invalid)?;
        let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| Refused::Invalid)?;
        if now >= claims.due_at {
            return Err(Refused::Expired);
        }
        Ok(claims)
    }

    /// Adds the snooze link to a reminder event of a workspace, when its organization snoozes.
    pub fn decorate(&self, event: &mut NewEvent, due_at: EpochMs, step_ms: i64) {
        if event.subject_type != "workspace" || step_ms <= 0 {
            return;
        }
        let token = self.token(&event.subject_id, due_at);
        if let Some(data) = event.data.as_object_mut() {
            data.insert("snooze_url".into(), json!(self.url(&token)));
            data.insert("snooze_by".into(), json!(ebb_common::time::human(step_ms)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_signed_bound_to_their_reminder_and_expire_at_its_destroy() {
        let links = Links::new(vec![7; 32], "https://ebb.example.com");
        let token = links.token("ws-1", 10_000);
        let claims = links.check(&token, 9_999).expect("genuine");
        assert_eq!(
            (claims.workspace_id.as_str(), claims.due_at),
            ("ws-1", 10_000)
        );
        assert_eq!(links.check(&token, 10_000), Err(Refused::Expired));
        assert!(
            links
                .url(&token)
                .starts_with("https://ebb.example.com/v1/snooze/")
        );
        // Another key, an altered payload or signature, or garbage: invalid.
        let other = Links::new(vec![8; 32], "https://ebb.example.com");
        assert_eq!(other.check(&token, 0), Err(Refused::Invalid));
        let (payload, signature) = token.split_once('.').expect("two parts");
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                link_id: "x".into(),
                workspace_id: "ws-2".into(),
                due_at: 10_000,
            })
            .expect("json"),
        );
        assert_eq!(
            links.check(&format!("{forged}.{signature}"), 0),
            Err(Refused::Invalid)
        );
        assert_eq!(
            links.check(&format!("{payload}.AAAA"), 0),
            Err(Refused::Invalid)
        );
        assert_eq!(links.check("nonsense", 0), Err(Refused::Invalid));
        // Every link is new.
        assert_ne!(links.token("ws-1", 10_000), token);
    }
}
