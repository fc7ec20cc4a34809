//! Signing secrets and webhook signatures.
//!
//! * Standard Webhooks v1: `webhook-signature: v1,<base64 HMAC-SHA256 of
//!   "{webhook-id}.{webhook-timestamp}.{body}">` keyed with the base64-decoded part of a
//!   `whsec_` secret; one `v1,` entry per unexpired secret, separated by spaces.
//! * `X-Ebb-Notification-Signature`: hex HMAC-SHA512 of the body keyed with the UTF-8 bytes of
//!   the newest secret, as HCP Terraform's `X-TFE-Notification-Signature` is keyed with its token.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Sha256, Sha512};

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

/// The value of `X-Ebb-Notification-Signature`.
pub fn hmac_sha512_hex(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha512>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks specification's reference libraries.
        let sig = standard_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .expect("sign");
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_random_and_prefixed() {
        let a = generate_secret();
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(key_bytes(&a).map(|k| k.len()).ok(), Some(32));
        assert_ne!(a, generate_secret());
        assert_eq!(hmac_sha512_hex(&a, b"x").len(), 128);
    }
}
