//! Signing secrets and webhook signatures.
//!
//! * Standard Webhooks v1: `webhook-signature: v1,<base64 HMAC-SHA256 of
//!   "{webhook-id}.{webhook-timestamp}.{body}">` keyed with the base64-decoded part of a
//!   `whsec_` secret; one `v1,` entry per unexpired secret, separated by spaces.
//! * `X-Ebb-Notification-Signature`: hex HMAC-SHA512 of the body keyed with the UTF-8 bytes of
//!   the newest secret, as HCP Terraform's `X-TFE-Notification-Signature` is keyed with its token.

use hmac::{Hmac, Mac};
use sha2::Sha512;

pub use ebb_common::signing::{
    SECRET_PREFIX, generate_secret, standard_header, standard_signature,
};

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
        assert!(ebb_common::signing::check_secret(&a).is_ok());
        assert_ne!(a, generate_secret());
        assert_eq!(hmac_sha512_hex(&a, b"x").len(), 128);
    }
}
