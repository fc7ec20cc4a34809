//! Standard Webhooks signatures, for every outbound webhook of every service (notifier
//! deliveries, lifecycle's webhook steps): `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{webhook-id}.{webhook-timestamp}.{body}">` keyed with the base64-decoded part of a
//! `whsec_` secret; one `v1,` entry per secret, separated by spaces.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The prefix of every secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new random secret: `whsec_` and the base64 of 32 random bytes.
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The HMAC key of a `whsec_` secret.
fn key_bytes(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| "secret does not start with whsec_".to_owned())?;
    STANDARD
        .decode(encoded)
        .map_err(|e| format!("secret is not base64: {e}"))
}

/// One `v1,<signature>` entry of `webhook-signature`.
pub fn standard_signature(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, String> {
    let key = key_bytes(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The value of `webhook-signature` for every secret in `secrets`.
pub fn standard_header(
    secrets: &[String],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, String> {
    let parts = secrets
        .iter()
        .map(|s| standard_signature(s, msg_id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(parts.join(" "))
}

/// Checks that `secret` is a `whsec_` secret with a usable key.
pub fn check_secret(secret: &str) -> Result<(), String> {
    key_bytes(secret).and_then(|k| {
        if k.len() >= 16 {
            Ok(())
        } else {
            Err("the key must be at least 16 bytes".into())
        }
    })
}
