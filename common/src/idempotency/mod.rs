//! Safe retries of mutating calls: a call that carries a `request_id` has its response stored
//! in the same transaction as its change, and a repeat of the call answers that response again
//! and changes nothing.
//!
//! # The protocol
//!
//! Entries are keyed by the caller's organization (empty for tokens of no organization), the
//! RPC's full method path and the request id, so one organization's ids never meet another's.
//! Each entry holds a fingerprint of the request, so the same id with a different request is
//! refused (INVALID_ARGUMENT on `request_id`) instead of answering something else. Within the
//! caller's write transaction:
//!
//! 1. [`replay`]: if the key is stored, return its response and commit nothing else;
//! 2. run the change;
//! 3. [`remember`] the response, then commit.
//!
//! A concurrent duplicate (both calls passed step 1 before either committed) loses at step 3 on
//! the table's primary key and answers ABORTED; the transaction rolls back, and the client's
//! retry replays the winner's response.
//!
//! Entries live for a retention (default 24 hours, [`IdempotencyConfig`]); [`sweep`] deletes
//! older ones and [`sweep_periodically`] runs it in the background. A client must not retry a
//! request id after the retention: the call would act again.
//!
//! # The table
//!
//! Each service keeps a `request_log` table in its own database, created by its own migration
//! with the statements of [`schema`] (copied into the migration, which must never change once
//! applied).
//!
//! # Use from a service (lifecycle-svc's `Lifecycle::mutate`, for one)
//!
//! ```ignore
//! let key = RequestKey::for_call(&request, "/ebb.lifecycle.v1.LifecycleService/CreateWorkspace",
//!     &request.get_ref().request_id)?;          // or RequestKey::new(org, method, id, &req)
//! let req = request.into_inner();
//! let txn = core.begin().await?;
//! if let Some(stored) = idempotency::replay(&txn, key.as_ref()).await? {
//!     return Ok(stored);
//! }
//! let response = change(&txn, &req).await?;
//! idempotency::remember(&txn, key.as_ref(), &response, now).await?;
//! txn.commit().await?;
//! ```
//!
//! lifecycle-svc moves its `request_log` to this layout with a migration that creates the new
//! table (as [`schema`]), copies the rows of the last day with an empty `organization_id`
//! (`created_at` becomes `created_ms`), and drops the old one; it then spawns
//! [`sweep_periodically`] from its `build`, as notifier-svc does.

use std::time::Duration;

use prost::Message;
use prost_reflect::{DynamicMessage, MapKey, Value as Field};
use sea_orm::{ConnectionTrait, DatabaseBackend, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::db::{Db, is_unique_violation};
use crate::sealing::{self, Keyring};

pub mod sealed;
use crate::sql::stmt;
use crate::time::EpochMs;
use crate::{Error, Result};

/// Longest accepted request id, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// How long a response is kept for replay by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The table every service keeps its request log in.
pub const TABLE: &str = "request_log";

/// How long responses are kept for replay.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default)]
pub struct IdempotencyConfig {
    /// How long a request id answers its first response; a retry after this acts again.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retention: Duration,
    /// How often each replica deletes expired responses.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub sweep_interval: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
            sweep_interval: Duration::from_secs(600),
        }
    }
}

impl crate::config::Validate for IdempotencyConfig {
    fn validate(&self) -> std::result::Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError;
        if self.retention < Duration::from_secs(3600)
            || self.retention > Duration::from_secs(30 * 86_400)
        {
            return Err(ConfigError::field(
                "idempotency.retention",
                "must be between 1h and 30d",
            ));
        }
        if self.sweep_interval < Duration::from_secs(1)
            || self.sweep_interval > Duration::from_secs(86_400)
        {
            return Err(ConfigError::field(
                "idempotency.sweep_interval",
                "must be between 1s and 1d",
            ));
        }
        Ok(())
    }
}

/// The statements that create the request log as this module reads and writes it, in
/// `backend`'s dialect. A service's migration copies them rather than calling this, so that an
/// applied migration never changes.
pub fn schema(backend: DatabaseBackend) -> [&'static str; 2] {
    let table = match backend {
        DatabaseBackend::Postgres => {
            "CREATE TABLE request_log (
                organization_id TEXT NOT NULL,
                method TEXT NOT NULL,
                request_id TEXT NOT NULL,
                request_hash TEXT NOT NULL,
                response BYTEA NOT NULL,
                created_ms BIGINT NOT NULL,
                PRIMARY KEY (organization_id, method, request_id)
            )"
        }
        _ => {
            "CREATE TABLE request_log (
                organization_id TEXT NOT NULL,
                method TEXT NOT NULL,
                request_id TEXT NOT NULL,
                request_hash TEXT NOT NULL,
                response BLOB NOT NULL,
                created_ms BIGINT NOT NULL,
                PRIMARY KEY (organization_id, method, request_id)
            )"
        }
    };
    [
        table,
        "CREATE INDEX request_log_by_age ON request_log (created_ms)",
    ]
}

/// One mutating call's request id and what a replay must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// The caller's organization; empty for tokens of no organization.
    pub organization_id: String,
    /// The RPC's full method path, e.g. `/ebb.notifier.v1.NotifierService/RotateSigningSecret`.
    pub method: String,
    /// The client's id.
    pub request_id: String,
    /// A fingerprint of the request ([`request_hash`]).
    pub request_hash: String,
}

impl RequestKey {
    /// The key of `request`, a call of `method` (its full path) by a caller of
    /// `organization_id` with `request_id`; `None` when the id is empty (the call is then not
    /// deduplicated). An id that is too long or not printable is refused.
    pub fn new(
        organization_id: &str,
        method: &str,
        request_id: &str,
        request: &impl Message,
    ) -> Result<Option<Self>> {
        check_request_id(request_id)?;
        if request_id.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            organization_id: organization_id.to_owned(),
            method: method.to_owned(),
            request_id: request_id.to_owned(),
            request_hash: request_hash(method, request),
        }))
    }

    /// The key of a call as it arrives: its caller's organization comes from the [`Caller`]
    /// the authentication layer attached (none: empty).
    ///
    /// [`Caller`]: crate::auth::Caller
    pub fn for_call<T: Message>(
        request: &tonic::Request<T>,
        method: &str,
        request_id: &str,
    ) -> Result<Option<Self>> {
        let organization = request
            .extensions()
            .get::<crate::auth::Caller>()
            .and_then(|c| c.organization_id.clone())
            .unwrap_or_default();
        Self::new(&organization, method, request_id, request.get_ref())
    }
}

/// Refuses request ids longer than [`MAX_REQUEST_ID_LEN`] bytes or with control characters.
pub fn check_request_id(request_id: &str) -> Result<()> {
    if request_id.len() > MAX_REQUEST_ID_LEN || request_id.chars().any(char::is_control) {
        return Err(Error::invalid(
            "request_id",
            format!("must be at most {MAX_REQUEST_ID_LEN} bytes of printable characters"),
        ));
    }
    Ok(())
}

/// A fingerprint (SHA-256, hex) of a request of `method`. Protobuf encodings of equal messages
/// may differ (map entries come out in no fixed order), so the request is read through the
/// method's descriptor and hashed field by field with map entries in key order; a method
/// without a descriptor is hashed by its encoding.
pub fn request_hash(method: &str, request: &impl Message) -> String {
    let encoded = request.encode_to_vec();
    let mut hasher = Sha256::new();
    let decoded = crate::methods::input_of(method)
        .and_then(|input| DynamicMessage::decode(input, encoded.as_slice()).ok());
    match decoded {
        Some(message) => hash_message(&message, &mut hasher),
        None => hasher.update(&encoded),
    }
    hex::encode(hasher.finalize())
}

fn hash_message(message: &DynamicMessage, h: &mut Sha256) {
    let mut fields: Vec<_> = message.fields().collect();
    fields.sort_by_key(|(field, _)| field.number());
    h.update(b"{");
    for (field, value) in fields {
        h.update(field.number().to_be_bytes());
        hash_value(value, h);
    }
    h.update(b"}");
}

fn hash_value(value: &Field, h: &mut Sha256) {
    let bytes = |h: &mut Sha256, tag: u8, b: &[u8]| {
        h.update([tag]);
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    match value {
        Field::Bool(v) => bytes(h, 1, &[u8::from(*v)]),
        Field::I32(v) => bytes(h, 2, &v.to_be_bytes()),
        Field::I64(v) => bytes(h, 3, &v.to_be_bytes()),
        Field::U32(v) => bytes(h, 4, &v.to_be_bytes()),
        Field::U64(v) => bytes(h, 5, &v.to_be_bytes()),
        Field::F32(v) => bytes(h, 6, &v.to_bits().to_be_bytes()),
        Field::F64(v) => bytes(h, 7, &v.to_bits().to_be_bytes()),
        Field::String(v) => bytes(h, 8, v.as_bytes()),
        Field::Bytes(v) => bytes(h, 9, v),
        Field::EnumNumber(v) => bytes(h, 10, &v.to_be_bytes()),
        Field::Message(m) => {
            h.update([11]);
            hash_message(m, h);
        }
        Field::List(items) => {
            h.update([12]);
            h.update((items.len() as u64).to_be_bytes());
            for item in items {
                hash_value(item, h);
            }
        }
        Field::Map(entries) => {
            h.update([13]);
            h.update((entries.len() as u64).to_be_bytes());
            let mut sorted: Vec<(&MapKey, &Field)> = entries.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (key, value) in sorted {
                hash_value(&Field::from(key.clone()), h);
                hash_value(value, h);
            }
        }
    }
}

/// The stored response to `key`, if this request was answered before; the same id with a
/// different request is refused. Call it inside the write transaction, before the change.
pub async fn replay<R: Message + Default>(
    conn: &impl ConnectionTrait,
    key: Option<&RequestKey>,
) -> Result<Option<R>> {
    replay_with(conn, key, None).await
}

pub(super) async fn replay_with<R: Message + Default>(
    conn: &impl ConnectionTrait,
    key: Option<&RequestKey>,
    keys: Option<&Keyring>,
) -> Result<Option<R>> {
    let Some(key) = key else { return Ok(None) };
    let row = conn
        .query_one_raw(stmt(
            conn.get_database_backend(),
            "SELECT request_hash, response FROM request_log \
             WHERE organization_id = $1 AND method = $2 AND request_id = $3",
            [
                key.organization_id.clone().into(),
                key.method.clone().into(),
                key.request_id.clone().into(),
            ],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let stored_hash: String = row.try_get("", "request_hash")?;
    if stored_hash != key.request_hash {
        return Err(Error::invalid(
            "request_id",
            "was already used for a different request",
        ));
    }
    let mut bytes: Vec<u8> = row.try_get("", "response")?;
    if let Some(keys) = keys
        && bytes.starts_with(sealing::PREFIX.as_bytes())
    {
        let sealed = String::from_utf8(bytes)
            .map_err(|_| Error::Internal("a sealed stored response is not text".into()))?;
        bytes = keys.open(&response_purpose(key), &sealed)?;
    }
    R::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| Error::Internal(format!("the stored response does not decode: {e}")))
}

/// Stores `response` as the answer to `key`, inside the transaction of the change. A concurrent
/// call with the same key that stored its answer first makes this one ABORTED.
pub async fn remember(
    conn: &impl ConnectionTrait,
    key: Option<&RequestKey>,
    response: &impl Message,
    now: EpochMs,
) -> Result<()> {
    remember_with(conn, key, response, now, None).await
}

/// What a stored response is sealed for: its key, so it opens only as the answer to it.
pub(super) fn response_purpose(key: &RequestKey) -> String {
    format!(
        "request_log/{}/{}/{}",
        key.organization_id, key.method, key.request_id
    )
}

pub(super) async fn remember_with(
    conn: &impl ConnectionTrait,
    key: Option<&RequestKey>,
    response: &impl Message,
    now: EpochMs,
    keys: Option<&Keyring>,
) -> Result<()> {
    let Some(key) = key else { return Ok(()) };
    let bytes = match keys {
        Some(keys) => keys
            .seal(&response_purpose(key), &response.encode_to_vec())
            .into_bytes(),
        None => response.encode_to_vec(),
    };
    let result = conn
        .execute_raw(stmt(
            conn.get_database_backend(),
            "INSERT INTO request_log \
             (organization_id, method, request_id, request_hash, response, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            [
                key.organization_id.clone().into(),
                key.method.clone().into(),
                key.request_id.clone().into(),
                key.request_hash.clone().into(),
                Value::from(bytes),
                now.into(),
            ],
        ))
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(Error::Aborted(
            "a concurrent call with the same request_id was answered first; retry to get its \
             response"
                .into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Most entries one delete removes, so that a first sweep of a large table does not hold one
/// long transaction.
const SWEEP_BATCH: u64 = 1000;

/// Deletes the responses stored before `before` (epoch ms); how many.
pub async fn sweep(conn: &impl ConnectionTrait, before: EpochMs) -> Result<u64> {
    let mut total = 0;
    loop {
        let deleted = conn
            .execute_raw(stmt(
                conn.get_database_backend(),
                &format!(
                    "DELETE FROM request_log WHERE (organization_id, method, request_id) IN \
                     (SELECT organization_id, method, request_id FROM request_log \
                      WHERE created_ms < $1 ORDER BY created_ms LIMIT {SWEEP_BATCH})"
                ),
                [before.into()],
            ))
            .await?
            .rows_affected();
        total += deleted;
        if deleted < SWEEP_BATCH {
            return Ok(total);
        }
    }
}

/// Sweeps `db`'s request log every `config.sweep_interval`, deleting responses older than
/// `config.retention`, until `shutdown`. Every replica may run it: deletes are idempotent.
pub async fn sweep_periodically(db: Db, config: IdempotencyConfig, shutdown: CancellationToken) {
    let retention = i64::try_from(config.retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        let before = crate::time::now_ms().saturating_sub(retention);
        match sweep(&db.conn, before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired request ids swept"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired request ids failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.sweep_interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_proto::lifecycle::v1::CreateWorkspaceRequest;
    use ebb_proto::notifier::v1::{RotateSigningSecretRequest, RotateSigningSecretResponse};
    use sea_orm::{DatabaseTransaction, TransactionTrait};
    use tonic::Code;

    const ROTATE: &str = "/ebb.notifier.v1.NotifierService/RotateSigningSecret";

    fn rotate(id: &str, configuration: &str) -> RotateSigningSecretRequest {
        RotateSigningSecretRequest {
            request_id: id.into(),
            configuration_id: configuration.into(),
            overlap_seconds: 60,
        }
    }

    fn answer(secret: &str) -> RotateSigningSecretResponse {
        RotateSigningSecretResponse {
            configuration: None,
            signing_secret: secret.into(),
        }
    }

    async fn with_table(db: &Db) {
        for sql in schema(db.backend()) {
            db.conn.execute_unprepared(sql).await.expect("schema");
        }
    }

    /// One call as a service makes it: replay, else change and remember, in one transaction.
    async fn call(
        db: &Db,
        key: Option<&RequestKey>,
        response: RotateSigningSecretResponse,
        now: EpochMs,
    ) -> Result<RotateSigningSecretResponse> {
        let txn: DatabaseTransaction = db.conn.begin().await?;
        if let Some(stored) = replay(&txn, key).await? {
            return Ok(stored);
        }
        remember(&txn, key, &response, now).await?;
        txn.commit().await?;
        Ok(response)
    }

    fn key(org: &str, request: &RotateSigningSecretRequest) -> Option<RequestKey> {
        RequestKey::new(org, ROTATE, &request.request_id, request).expect("key")
    }

    async fn flow(db: &Db) {
        with_table(db).await;
        let first = rotate("r1", "nc_1");
        let k = key("org_a", &first);

        // First call acts; the repeat answers the stored response.
        let a = call(db, k.as_ref(), answer("s1"), 1_000)
            .await
            .expect("first");
        assert_eq!(a.signing_secret, "s1");
        let again = call(db, k.as_ref(), answer("s2"), 2_000)
            .await
            .expect("again");
        assert_eq!(again.signing_secret, "s1", "replayed, not run again");

        // The same id with another request is refused, naming request_id.
        let other = rotate("r1", "nc_2");
        let err = call(db, key("org_a", &other).as_ref(), answer("s3"), 3_000)
            .await
            .expect_err("reused id");
        assert_eq!(err.code(), Code::InvalidArgument);
        let Error::InvalidArgument(v) = err else {
            unreachable!()
        };
        assert_eq!(v[0].field, "request_id");

        // Another organization's id of the same value is its own.
        let b = call(db, key("org_b", &other).as_ref(), answer("s4"), 3_000)
            .await
            .expect("other org");
        assert_eq!(b.signing_secret, "s4");

        // No id: no deduplication.
        assert!(key("org_a", &rotate("", "nc_1")).is_none());

        // A duplicate that gets past replay loses on the key: ABORTED, retryable.
        let txn = db.conn.begin().await.expect("begin");
        let err = remember(&txn, k.as_ref(), &answer("s5"), 4_000)
            .await
            .expect_err("duplicate");
        assert_eq!(err.code(), Code::Aborted);
        txn.rollback().await.expect("rollback");

        // The sweep deletes what is older than the retention, and only that.
        assert_eq!(sweep(&db.conn, 2_000).await.expect("sweep"), 1);
        let replayed: Option<RotateSigningSecretResponse> =
            replay(&db.conn, key("org_b", &other).as_ref())
                .await
                .expect("kept");
        assert!(replayed.is_some());
        let gone: Option<RotateSigningSecretResponse> =
            replay(&db.conn, k.as_ref()).await.expect("swept");
        assert!(gone.is_none());
    }

    #[tokio::test]
    async fn the_flow_on_sqlite() {
        let db = Db::connect("sqlite::memory:", 1).await.expect("sqlite");
        flow(&db).await;
    }

    #[tokio::test]
    async fn the_flow_on_postgres() {
        let Some(pg) = crate::db::testing::FreshPostgres::create("idempotency").await else {
            return;
        };
        flow(&pg.db).await;
        concurrent_duplicates_on_postgres(&pg.db).await;
        pg.drop().await;
    }

    /// Two calls with one id, both past replay before either commits: the second waits on the
    /// first's key and then answers ABORTED; its retry replays the first's response.
    async fn concurrent_duplicates_on_postgres(db: &Db) {
        let request = rotate("race", "nc_1");
        let k = key("org_a", &request);
        let first = db.conn.begin().await.expect("begin");
        assert!(
            replay::<RotateSigningSecretResponse>(&first, k.as_ref())
                .await
                .expect("replay")
                .is_none()
        );
        let second = db.conn.begin().await.expect("begin");
        assert!(
            replay::<RotateSigningSecretResponse>(&second, k.as_ref())
                .await
                .expect("replay")
                .is_none()
        );
        remember(&first, k.as_ref(), &answer("winner"), 10_000)
            .await
            .expect("first remembers");
        let k2 = k.clone();
        let loser =
            tokio::spawn(
                async move { remember(&second, k2.as_ref(), &answer("loser"), 10_000).await },
            );
        tokio::time::sleep(Duration::from_millis(200)).await;
        first.commit().await.expect("commit");
        let err = loser.await.expect("join").expect_err("duplicate");
        assert_eq!(err.code(), Code::Aborted);
        let retried = call(db, k.as_ref(), answer("retry"), 11_000)
            .await
            .expect("retry");
        assert_eq!(retried.signing_secret, "winner");
    }

    #[test]
    fn equal_requests_hash_equal_whatever_their_map_order() {
        const CREATE: &str = "/ebb.lifecycle.v1.LifecycleService/CreateWorkspace";
        let labels: Vec<(String, String)> = (0..32)
            .map(|i| (format!("key{i}"), format!("value{i}")))
            .collect();
        let forward = CreateWorkspaceRequest {
            request_id: "r".into(),
            name: "ws".into(),
            labels: labels.iter().cloned().collect(),
            ..Default::default()
        };
        let backward = CreateWorkspaceRequest {
            labels: labels.iter().rev().cloned().collect(),
            ..forward.clone()
        };
        assert_eq!(
            request_hash(CREATE, &forward),
            request_hash(CREATE, &backward)
        );
        let mut changed = forward.clone();
        changed.labels.insert("key0".into(), "other".into());
        assert_ne!(
            request_hash(CREATE, &forward),
            request_hash(CREATE, &changed)
        );
        // A method without a descriptor falls back to the encoding.
        let plain = rotate("r", "nc");
        assert_eq!(
            request_hash("Unknown", &plain),
            hex::encode(Sha256::digest(plain.encode_to_vec()))
        );
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(check_request_id("").is_ok());
        assert!(check_request_id(&"x".repeat(MAX_REQUEST_ID_LEN)).is_ok());
        assert!(check_request_id(&"x".repeat(MAX_REQUEST_ID_LEN + 1)).is_err());
        assert!(check_request_id("a\nb").is_err());
    }

    #[test]
    fn the_caller_organization_keys_the_call() {
        let mut request = tonic::Request::new(rotate("r1", "nc_1"));
        let system = RequestKey::for_call(&request, ROTATE, "r1")
            .expect("key")
            .expect("some");
        assert_eq!(system.organization_id, "");
        request.extensions_mut().insert(crate::auth::Caller {
            token_id: "t".into(),
            role: crate::auth::Role::Operator,
            organization_id: Some("org_a".into()),
            expires_at: None,
            description: String::new(),
        });
        let bound = RequestKey::for_call(&request, ROTATE, "r1")
            .expect("key")
            .expect("some");
        assert_eq!(bound.organization_id, "org_a");
        assert_eq!(bound.request_hash, system.request_hash);
    }
}
