//! Token secrets: minting and hashing them, and the tokens the configuration names.

use sha2::{Digest, Sha256};

use super::caller::Caller;
use crate::methods::Role;

/// The SHA-256 of a token secret, as stored and compared. Secrets are 256-bit random values,
/// so a fast hash is enough: there is nothing to guess offline, unlike a password.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new token secret: `ebb_` and 32 random bytes, URL-safe base64.
pub fn new_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "ebb_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Tokens known from the configuration: the bootstrap admin token and the service token.
#[derive(Clone, Default)]
pub struct StaticTokens {
    tokens: Vec<(String, Caller)>,
}

impl std::fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticTokens")
            .field("count", &self.tokens.len())
            .finish()
    }
}

impl StaticTokens {
    /// From the configured secrets; empty ones are skipped.
    pub fn new(admin_token: &str, service_token: &str) -> Self {
        let mut tokens = Vec::new();
        if !admin_token.is_empty() {
            tokens.push((
                hash_secret(admin_token),
                Caller {
                    token_id: "admin".into(),
                    role: Role::Admin,
                    organization_id: None,
                    expires_at: None,
                    description: "admin token of the configuration".into(),
                },
            ));
        }
        if !service_token.is_empty() {
            tokens.push((
                hash_secret(service_token),
                Caller {
                    token_id: "service".into(),
                    role: Role::Service,
                    organization_id: None,
                    expires_at: None,
                    description: "service token of the configuration".into(),
                },
            ));
        }
        Self { tokens }
    }

    /// The caller of a configured secret.
    pub fn find(&self, secret: &str) -> Option<Caller> {
        let hash = hash_secret(secret);
        self.tokens
            .iter()
            .find(|(h, _)| *h == hash)
            .map(|(_, c)| c.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("ebb_") && a.len() > 40);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }
}
