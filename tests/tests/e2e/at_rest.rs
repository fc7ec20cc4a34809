//! Secrets at rest: the signing secrets notifier-svc stores, the answers it keeps for retries and
//! lifecycle-svc's callback-token key are sealed under the configured key, on SQLite and on
//! PostgreSQL; a key rotation re-seals them; a missing key is named; and the files of a SQLite
//! deployment are readable by their owner only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::notifier::{
    Receiver, client, config_toml, event, publish, standard_webhooks_valid, start_notifier_with,
    webhook,
};
use crate::support::ebb_serve;
use ebb_tests::cluster::Cluster;
use ebb_tests::proto::notifier::v1 as pb;
use ebb_tests::{ENCRYPTION_KEY, TestDatabases, run_to_exit};
use sea_orm::{ConnectionTrait, Database, Statement};

const SEALED: &str = "ebb-sealed:v1:";

/// Every value of `column` in `table` of the database at `url`, as bytes.
async fn stored(url: &str, table: &str, column: &str) -> Vec<Vec<u8>> {
    let db = Database::connect(url).await.expect("connect");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT {column} FROM {table}"),
        ))
        .await
        .expect("select");
    let values = rows
        .iter()
        .map(|r| {
            r.try_get::<Vec<u8>>("", column)
                .or_else(|_| r.try_get::<String>("", column).map(String::into_bytes))
                .expect("value")
        })
        .collect();
    db.close().await.expect("close");
    values
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The SQLite files of `url` (the database and its `-wal`/`-shm`, where they exist).
fn sqlite_files(url: &str) -> Vec<std::path::PathBuf> {
    let Some(path) = url.strip_prefix("sqlite://") else {
        return Vec::new();
    };
    let path = path.split('?').next().expect("path");
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| std::path::PathBuf::from(format!("{path}{s}")))
        .filter(|p| p.exists())
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Checks that no stored value (and, on SQLite, no byte of the files) shows `secret`, and that
/// every signing secret and kept answer is sealed under `key_id`.
async fn assert_sealed(url: &str, secret: &str, key_id: &str) {
    let prefix = format!("{SEALED}{key_id}:");
    let secrets = stored(url, "signing_secrets", "secret").await;
    assert!(!secrets.is_empty());
    for value in &secrets {
        assert!(
            value.starts_with(prefix.as_bytes()),
            "signing secret stored as {}",
            String::from_utf8_lossy(&value[..value.len().min(40)])
        );
    }
    let answers = stored(url, "request_log", "response").await;
    assert!(!answers.is_empty(), "the create call kept its answer");
    for value in &answers {
        assert!(value.starts_with(prefix.as_bytes()));
        assert!(!contains(value, secret));
    }
    for file in sqlite_files(url) {
        let bytes = std::fs::read(&file).expect("read database file");
        let key_part = secret.trim_start_matches("whsec_");
        assert!(
            !contains(&bytes, key_part),
            "{} holds the signing secret in clear",
            file.display()
        );
        assert_eq!(mode(&file), 0o600, "{} must be 0600", file.display());
    }
}

#[tokio::test]
async fn signing_secrets_are_sealed_at_rest_and_a_key_rotation_reseals_them() {
    let receiver = Receiver::start().await;
    let mut dbs = TestDatabases::new();
    let url = dbs.create("notifier").await;
    let toml = config_toml(&["0s"], "");
    let p = start_notifier_with(&dbs, &url, &toml, &[])
        .await
        .expect("notifier");
    let mut c = client(&p).await;
    let create = pb::CreateNotificationConfigurationRequest {
        request_id: "create-sealed-1".into(),
        configuration: Some(webhook("org_s", receiver.url("/s"), &["*"])),
    };
    let created = c
        .create_notification_configuration(create.clone())
        .await
        .expect("create")
        .into_inner();
    let secret = created.signing_secret.clone();
    assert!(secret.starts_with("whsec_"));
    publish(&mut c, event("s1", "org_s", "run.completed", "ws")).await;
    let got = receiver.wait_for("/s", 2, Duration::from_secs(5)).await;
    let last = got.last().expect("a delivery");
    assert!(standard_webhooks_valid(&secret, &last.headers, &last.body));
    assert_sealed(&url, &secret, "ebb-test").await;

    // Rotation: a new key, the old one retired. The service re-seals at start, still signs
    // with the same secret and still answers a retried create with it.
    p.kill().await;
    let new_key = ebb_common::sealing::generate_key("k2");
    let rotating = [
        ("EBB_ENCRYPTION__KEY", new_key.clone()),
        ("EBB_ENCRYPTION__RETIRED_KEYS", ENCRYPTION_KEY.to_owned()),
    ];
    let p = start_notifier_with(&dbs, &url, &toml, &rotating)
        .await
        .expect("notifier with the new key");
    assert_sealed(&url, &secret, "k2").await;
    let mut c = client(&p).await;
    let replayed = c
        .create_notification_configuration(create.clone())
        .await
        .expect("retried create")
        .into_inner();
    assert_eq!(replayed.signing_secret, secret, "the kept answer opens");
    p.kill().await;

    // The old key can go.
    let p = start_notifier_with(&dbs, &url, &toml, &[("EBB_ENCRYPTION__KEY", new_key)])
        .await
        .expect("notifier with only the new key");
    let mut c = client(&p).await;
    publish(&mut c, event("s2", "org_s", "run.completed", "ws")).await;
    let got = receiver.wait_for("/s", 3, Duration::from_secs(5)).await;
    let last = got.last().expect("a delivery");
    assert!(standard_webhooks_valid(&secret, &last.headers, &last.body));
    p.kill().await;

    // A key that sealed nothing here: the service refuses to start, naming the key it needs,
    // rather than run without its secrets.
    let (status, stderr) = run_to_exit(
        "notifier-svc",
        &["--database-url", &url, "--listen", "127.0.0.1:0"],
        &[(
            "EBB_ENCRYPTION__KEY",
            ebb_common::sealing::generate_key("k3"),
        )],
    )
    .await
    .expect("run");
    assert!(!status.success());
    assert!(
        stderr.contains("sealed under key `k2`") && stderr.contains("encryption.retired_keys"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_callback_token_key_is_sealed_and_a_malformed_key_is_named_not_quoted() {
    let cluster = Cluster::start(0).await;
    let values = stored(&cluster.lifecycle_db, "lifecycle_secrets", "value").await;
    assert_eq!(
        values.len(),
        2,
        "the callback-token key and the snooze-link key"
    );
    for v in &values {
        assert!(
            v.starts_with(format!("{SEALED}ebb-test:").as_bytes()),
            "{}",
            String::from_utf8_lossy(v)
        );
    }
    for file in sqlite_files(&cluster.lifecycle_db) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    // A rotation re-seals the shared keys (the callback-token key, the snooze-link key) under
    // the new key at start, and the old key can go afterwards.
    let Cluster {
        dbs,
        lifecycle,
        lifecycle_db,
        ..
    } = cluster;
    lifecycle.kill().await;
    let new_key = ebb_common::sealing::generate_key("k2");
    let mut env = ebb_tests::cluster::fast_lifecycle_env();
    env.push(("EBB_DATABASE_URL", lifecycle_db.clone()));
    for (rotating, retired) in [(true, ENCRYPTION_KEY.to_owned()), (false, String::new())] {
        let mut env = env.clone();
        env.push(("EBB_ENCRYPTION__KEY", new_key.clone()));
        env.push(("EBB_ENCRYPTION__RETIRED_KEYS", retired));
        let p = ebb_tests::Process::spawn("lifecycle-svc", &[], &env, dbs.dir())
            .await
            .expect("lifecycle with the new key");
        p.wait_serving("").await.expect("serving");
        let values = stored(&lifecycle_db, "lifecycle_secrets", "value").await;
        assert!(values.len() >= 2, "callback and snooze keys");
        for v in &values {
            assert!(
                v.starts_with(format!("{SEALED}k2:").as_bytes()),
                "rotating={rotating}: {}",
                String::from_utf8_lossy(v)
            );
        }
        p.kill().await;
    }
    // A missing key is refused at start (foundation's test of required settings); a malformed
    // one is named without being quoted.
    let (status, stderr) = run_to_exit(
        "notifier-svc",
        &[],
        &[("EBB_ENCRYPTION__KEY", "k1:bm90IDMyIGJ5dGVz".into())],
    )
    .await
    .expect("run");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("holds 12 bytes") && !stderr.contains("bm90IDMyIGJ5dGVz"),
        "names the problem, never the key: {stderr}"
    );
}

#[tokio::test]
async fn ebb_serve_keeps_its_data_directory_private() {
    let dbs = TestDatabases::new();
    // No key configured: `ebb serve` makes one in the data directory.
    let no_key = [("EBB_ENCRYPTION__KEY", String::new())];
    let (server, data) = ebb_serve(&dbs, &no_key).await;
    let check = |data: &Path| {
        assert_eq!(mode(data), 0o700, "data directory");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(data).expect("read_dir") {
            let path = entry.expect("entry").path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            seen.push(
                path.file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        for name in [
            "lifecycle.db",
            "lifecycle.db-wal",
            "lifecycle.db-shm",
            "notifier.db",
            "notifier.db-wal",
            "encryption-key",
        ] {
            assert!(seen.iter().any(|s| s == name), "{name} in {seen:?}");
        }
    };
    check(&data);
    let key = std::fs::read_to_string(data.join("encryption-key")).expect("key file");
    assert!(key.trim().starts_with("serve-"), "{key}");
    server.kill().await;

    // A directory an earlier version left open to others is narrowed at the next start.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for name in ["lifecycle.db", "notifier.db"] {
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    let server = ebb_tests::Process::spawn(
        "ebb",
        &["serve", "--data-dir", data.to_str().expect("utf-8 path")],
        &no_key,
        dbs.dir(),
    )
    .await
    .expect("ebb serve again");
    server.wait_serving("").await.expect("serving");
    check(&data);
    let values = stored(
        &format!("sqlite://{}?mode=ro", data.join("lifecycle.db").display()),
        "lifecycle_secrets",
        "value",
    )
    .await;
    let id = key.trim().split(':').next().expect("key id");
    assert!(
        values
            .iter()
            .all(|v| v.starts_with(format!("{SEALED}{id}:").as_bytes()))
    );
    server.kill().await;
}
