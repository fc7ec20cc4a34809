//! Keys lifecycle-svc's replicas share (the callback-token key, the snooze-link key): made at
//! the first start, kept in `lifecycle_secrets` sealed under the configured encryption key
//! (`ebb_common::sealing`), and re-sealed when that key rotates or when an earlier version
//! stored them in clear.

use ebb_common::Result;
use ebb_common::sealing::Keyring;
use sea_orm::{ConnectionTrait, FromQueryResult};

use crate::store::{exec, query_one};

/// The key named `name`, created (32 random bytes) if it does not exist yet.
pub async fn shared_key(
    conn: &impl ConnectionTrait,
    keys: &Keyring,
    name: &str,
) -> Result<Vec<u8>> {
    let purpose = format!("lifecycle_secrets/{name}");
    let fresh: [u8; 32] = rand::random();
    exec(
        conn,
        "INSERT INTO lifecycle_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        [
            name.into(),
            keys.seal(&purpose, hex::encode(fresh).as_bytes()).into(),
        ],
    )
    .await?;
    #[derive(FromQueryResult)]
    struct Secret {
        value: String,
    }
    let row: Option<Secret> = query_one(
        conn,
        "SELECT value FROM lifecycle_secrets WHERE name = $1",
        [name.into()],
    )
    .await?;
    let stored = row.map(|r| r.value).unwrap_or_default();
    let refused = |e| ebb_common::Error::Unavailable(format!("the {name} key: {e}"));
    let value = keys.open_text(&purpose, &stored).map_err(refused)?;
    if let Some(resealed) = keys.reseal(&purpose, &stored).map_err(refused)? {
        // Another replica may have re-sealed it meanwhile: only the value read is replaced.
        exec(
            conn,
            "UPDATE lifecycle_secrets SET value = $1 WHERE name = $2 AND value = $3",
            [resealed.into(), name.into(), stored.into()],
        )
        .await?;
        tracing::info!(
            key = keys.active_id(),
            name,
            "sealed a shared key under the current encryption key"
        );
    }
    hex::decode(value)
        .map_err(|e| ebb_common::Error::Internal(format!("the stored {name} key is not hex: {e}")))
}
