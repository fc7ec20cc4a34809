//! Secrets kept in a database, sealed with envelope encryption.
//!
//! Each value gets a data key of its own (32 random bytes) that encrypts it with AES-256-GCM;
//! the data key is stored beside it, wrapped (AES-256-GCM again) by a key-encryption key from
//! the configuration (`encryption.key`, `EBB_ENCRYPTION__KEY`). A stored value reads
//!
//! ```text
//! ebb-sealed:v1:<key id>:<base64 nonce‖wrapped data key‖tag>:<base64 nonce‖ciphertext‖tag>
//! ```
//!
//! The value's ciphertext is bound to what it is (its *purpose*, e.g. the row it belongs to) as
//! associated data, so a sealed value copied into another row does not open there.
//!
//! **Rotation** re-wraps only the data keys: start the services with the new key as
//! `encryption.key` and the old one in `encryption.retired_keys`; each service re-seals its
//! values under the new key at start ([`Keyring::reseal`]), after which the old key can go.
//! A value sealed under a key the configuration does not hold never opens: the service says
//! which key it needs instead of working without the secret.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// What every sealed value starts with.
pub const PREFIX: &str = "ebb-sealed:v1:";

const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// The keys that seal secrets kept in the database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The key that seals secrets stored in the database (`EBB_ENCRYPTION__KEY`): `ID:BASE64`,
    /// an id of your choosing and 32 random bytes in base64, e.g.
    /// `2026-11:$(openssl rand -base64 32)`. Keep it apart from the database and its backups.
    pub key: String,
    /// Keys of earlier rotations, comma-separated `ID:BASE64` (`EBB_ENCRYPTION__RETIRED_KEYS`):
    /// values sealed under them still open, and are re-sealed under `key` at start.
    pub retired_keys: String,
}

impl EncryptionConfig {
    /// Refuses malformed keys, naming the field; never quotes key material.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Keyring::from_config(self).map(|_| ())
    }

    /// Refuses a configuration without a key: `service` keeps secrets that must not be stored
    /// in clear.
    pub fn require_key(&self, service: &str, what: &str) -> Result<(), ConfigError> {
        if self.key.trim().is_empty() {
            return Err(ConfigError::field(
                "encryption.key",
                format!(
                    "is required: {service} seals {what} with it (EBB_ENCRYPTION__KEY=ID:BASE64 \
                     of 32 random bytes, e.g. k1:$(openssl rand -base64 32))"
                ),
            ));
        }
        Ok(())
    }
}

/// A sealed value that cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Sealed under a key the configuration does not hold.
    #[error(
        "a stored secret is sealed under key `{0}`, which is not configured: add it to \
         encryption.retired_keys (EBB_ENCRYPTION__RETIRED_KEYS)"
    )]
    UnknownKey(String),
    /// Not a sealed value, or altered, or moved to another row.
    #[error("a stored secret does not open: {0}")]
    Corrupt(&'static str),
    /// No key is configured, so nothing can be sealed or opened.
    #[error("no encryption key is configured (encryption.key)")]
    NoKey,
}

impl From<SealError> for crate::Error {
    fn from(e: SealError) -> Self {
        match e {
            // The operator can fix it by configuring the key; the call can be retried then.
            SealError::UnknownKey(_) | SealError::NoKey => crate::Error::Unavailable(e.to_string()),
            SealError::Corrupt(_) => crate::Error::Internal(e.to_string()),
        }
    }
}

struct Kek {
    id: String,
    key: LessSafeKey,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The configured key-encryption keys: one that seals, and retired ones that still open.
#[derive(Debug)]
pub struct Keyring {
    active: Kek,
    retired: Vec<Kek>,
    random: SystemRandom,
}

/// A value as stored: sealed (under which key), or in clear from before sealing.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored<'a> {
    /// Sealed under the key with this id.
    Sealed(&'a str),
    /// Not sealed: written before this version sealed secrets.
    Clear,
}

/// Which key sealed `stored`, if any.
pub fn stored(stored: &str) -> Stored<'_> {
    match stored.strip_prefix(PREFIX) {
        Some(rest) => Stored::Sealed(rest.split(':').next().unwrap_or_default()),
        None => Stored::Clear,
    }
}

impl Keyring {
    /// The keyring of `config`; `None` when no key is configured.
    pub fn from_config(config: &EncryptionConfig) -> Result<Option<Self>, ConfigError> {
        let retired = config
            .retired_keys
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| parse_key("encryption.retired_keys", k))
            .collect::<Result<Vec<_>, _>>()?;
        if config.key.trim().is_empty() {
            if !retired.is_empty() {
                return Err(ConfigError::field(
                    "encryption.key",
                    "is required when encryption.retired_keys is set: retired keys only open \
                     values, the key seals them",
                ));
            }
            return Ok(None);
        }
        let active = parse_key("encryption.key", config.key.trim())?;
        let mut ids = vec![active.id.as_str()];
        for k in &retired {
            if ids.contains(&k.id.as_str()) {
                return Err(ConfigError::field(
                    "encryption.retired_keys",
                    format!(
                        "key id `{}` is given twice; each key needs an id of its own",
                        k.id
                    ),
                ));
            }
            ids.push(&k.id);
        }
        Ok(Some(Self {
            active,
            retired,
            random: SystemRandom::new(),
        }))
    }

    /// The id of the key that seals.
    pub fn active_id(&self) -> &str {
        &self.active.id
    }

    /// Seals `plaintext` for `purpose` (what the value is and where it is stored).
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> String {
        let mut data_key = [0u8; KEY_LEN];
        self.fill(&mut data_key);
        let dek = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &data_key).expect("32 bytes"));
        let body = self.encrypt(&dek, purpose.as_bytes(), plaintext);
        let wrapped = self.encrypt(&self.active.key, &wrap_aad(&self.active.id), &data_key);
        format!(
            "{PREFIX}{}:{}:{}",
            self.active.id,
            URL_SAFE_NO_PAD.encode(wrapped),
            URL_SAFE_NO_PAD.encode(body)
        )
    }

    /// Opens a value stored for `purpose`. A value in clear (from before sealing) is returned
    /// as it is; [`Keyring::reseal`] seals such values.
    pub fn open(&self, purpose: &str, stored: &str) -> Result<Vec<u8>, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.as_bytes().to_vec());
        };
        let (id, wrapped, body) = split(rest)?;
        let data_key = self.unwrap_key(id, &wrapped)?;
        let dek = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &data_key).map_err(|_| SealError::Corrupt("data key"))?,
        );
        decrypt(&dek, purpose.as_bytes(), body)
    }

    /// Opens a value that must be text.
    pub fn open_text(&self, purpose: &str, stored: &str) -> Result<String, SealError> {
        String::from_utf8(self.open(purpose, stored)?).map_err(|_| SealError::Corrupt("not text"))
    }

    /// The value as it should be stored now: `None` when it is sealed under the active key
    /// already; a value under a retired key gets its data key re-wrapped (the ciphertext stays);
    /// a value in clear is sealed.
    pub fn reseal(&self, purpose: &str, stored: &str) -> Result<Option<String>, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(Some(self.seal(purpose, stored.as_bytes())));
        };
        let (id, wrapped, body) = split(rest)?;
        if id == self.active.id {
            return Ok(None);
        }
        let data_key = self.unwrap_key(id, &wrapped)?;
        // Check the value opens before re-wrapping, so a corrupt value is reported, not carried.
        let dek = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &data_key).map_err(|_| SealError::Corrupt("data key"))?,
        );
        decrypt(&dek, purpose.as_bytes(), body.clone())?;
        let rewrapped = self.encrypt(&self.active.key, &wrap_aad(&self.active.id), &data_key);
        Ok(Some(format!(
            "{PREFIX}{}:{}:{}",
            self.active.id,
            URL_SAFE_NO_PAD.encode(rewrapped),
            URL_SAFE_NO_PAD.encode(body)
        )))
    }

    fn unwrap_key(&self, id: &str, wrapped: &[u8]) -> Result<Vec<u8>, SealError> {
        let kek = std::iter::once(&self.active)
            .chain(&self.retired)
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        let key = decrypt(&kek.key, &wrap_aad(id), wrapped.to_vec())?;
        if key.len() != KEY_LEN {
            return Err(SealError::Corrupt("data key length"));
        }
        Ok(key)
    }

    fn encrypt(&self, key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.fill(&mut nonce);
        let mut data = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut data,
        )
        .expect("AES-GCM seals any input shorter than 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + data.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        out
    }

    fn fill(&self, buf: &mut [u8]) {
        self.random
            .fill(buf)
            .expect("the operating system's random source failed");
    }
}

fn wrap_aad(id: &str) -> Vec<u8> {
    format!("ebb-data-key:v1:{id}").into_bytes()
}

fn decrypt(key: &LessSafeKey, aad: &[u8], mut data: Vec<u8>) -> Result<Vec<u8>, SealError> {
    if data.len() < NONCE_LEN + TAG_LEN {
        return Err(SealError::Corrupt("too short"));
    }
    let nonce = Nonce::try_assume_unique_for_key(&data[..NONCE_LEN])
        .map_err(|_| SealError::Corrupt("nonce"))?;
    let mut body = data.split_off(NONCE_LEN);
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .map_err(|_| SealError::Corrupt("altered, moved or under another key"))?
        .len();
    body.truncate(len);
    Ok(body)
}

fn split(rest: &str) -> Result<(&str, Vec<u8>, Vec<u8>), SealError> {
    let mut parts = rest.split(':');
    let (Some(id), Some(wrapped), Some(body), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SealError::Corrupt("not three parts"));
    };
    let decode = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| SealError::Corrupt("not base64"))
    };
    Ok((id, decode(wrapped)?, decode(body)?))
}

fn parse_key(field: &str, text: &str) -> Result<Kek, ConfigError> {
    let Some((id, material)) = text.split_once(':') else {
        return Err(ConfigError::field(
            field,
            "must be ID:BASE64 (an id, a colon, then 32 random bytes in base64)",
        ));
    };
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ConfigError::field(
            field,
            "the key id (before the colon) must be 1 to 64 letters, digits, `-`, `_` or `.`",
        ));
    }
    let material = material.trim();
    let bytes = STANDARD
        .decode(material)
        .or_else(|_| STANDARD_NO_PAD.decode(material))
        .or_else(|_| URL_SAFE_NO_PAD.decode(material.trim_end_matches('=')))
        .map_err(|_| ConfigError::field(field, format!("key `{id}` is not valid base64")))?;
    if bytes.len() != KEY_LEN {
        return Err(ConfigError::field(
            field,
            format!(
                "key `{id}` holds {} bytes; it must be 32 random bytes",
                bytes.len()
            ),
        ));
    }
    let key = UnboundKey::new(&AES_256_GCM, &bytes)
        .map_err(|_| ConfigError::field(field, format!("key `{id}` is not usable")))?;
    Ok(Kek {
        id: id.to_owned(),
        key: LessSafeKey::new(key),
    })
}

/// A new key in the configuration's form: `id:` and 32 random bytes in base64.
pub fn generate_key(id: &str) -> String {
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source failed");
    format!("{id}:{}", STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(key: &str, retired: &str) -> Keyring {
        Keyring::from_config(&EncryptionConfig {
            key: key.into(),
            retired_keys: retired.into(),
        })
        .expect("test")
        .expect("test")
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_purpose_and_hides_its_text() {
        let k1 = generate_key("k1");
        let keys = ring(&k1, "");
        let sealed = keys.seal("signing_secrets/sec_1", b"whsec_abc");
        assert!(sealed.starts_with("ebb-sealed:v1:k1:"));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(
            keys.open("signing_secrets/sec_1", &sealed).expect("test"),
            b"whsec_abc"
        );
        assert_eq!(
            keys.open("signing_secrets/sec_2", &sealed),
            Err(SealError::Corrupt("altered, moved or under another key"))
        );
        // Two seals of the same text differ (fresh data key and nonces).
        assert_ne!(sealed, keys.seal("signing_secrets/sec_1", b"whsec_abc"));
        // A flipped character is caught.
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).expect("test");
        assert!(keys.open("signing_secrets/sec_1", &altered).is_err());
    }

    #[test]
    fn rotation_rewraps_under_the_new_key_and_the_old_key_can_then_go() {
        let (k1, k2) = (generate_key("k1"), generate_key("k2"));
        let old = ring(&k1, "");
        let sealed = old.seal("p", b"secret");
        let rotating = ring(&k2, &k1);
        assert_eq!(rotating.open("p", &sealed).expect("test"), b"secret");
        let resealed = rotating.reseal("p", &sealed).expect("test").expect("test");
        assert_eq!(stored(&resealed), Stored::Sealed("k2"));
        assert_eq!(rotating.reseal("p", &resealed).expect("test"), None);
        // The ciphertext part is kept; only the wrapped data key changed.
        assert_eq!(
            sealed.rsplit(':').next().expect("test"),
            resealed.rsplit(':').next().expect("test")
        );
        let rotated = ring(&k2, "");
        assert_eq!(rotated.open("p", &resealed).expect("test"), b"secret");
        assert_eq!(
            rotated.open("p", &sealed),
            Err(SealError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn values_in_clear_are_read_and_sealed_by_reseal() {
        let keys = ring(&generate_key("k1"), "");
        assert_eq!(keys.open("p", "whsec_old").expect("test"), b"whsec_old");
        let sealed = keys.reseal("p", "whsec_old").expect("test").expect("test");
        assert_eq!(keys.open_text("p", &sealed).expect("test"), "whsec_old");
    }

    #[test]
    fn bad_keys_are_refused_naming_the_field_without_quoting_the_key() {
        let refused = |key: &str, retired: &str| {
            Keyring::from_config(&EncryptionConfig {
                key: key.into(),
                retired_keys: retired.into(),
            })
            .expect_err("test")
            .to_string()
        };
        let e = refused("no-colon-here", "");
        assert!(
            e.contains("`encryption.key`") && e.contains("ID:BASE64"),
            "{e}"
        );
        let e = refused("k1:c2hvcnQ=", "");
        assert!(e.contains("holds 5 bytes") && !e.contains("c2hvcnQ"), "{e}");
        let e = refused("k 1:AAAA", "");
        assert!(e.contains("key id"), "{e}");
        let k1 = generate_key("k1");
        let e = refused(&k1, &generate_key("k1"));
        assert!(e.contains("given twice"), "{e}");
        let e = refused("", &k1);
        assert!(e.contains("`encryption.key`"), "{e}");
        assert!(
            Keyring::from_config(&EncryptionConfig::default())
                .expect("test")
                .is_none()
        );
    }
}
