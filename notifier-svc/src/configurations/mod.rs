//! Notification configurations: what they are, how a client's input is checked, and how they
//! are stored with their signing secrets.

use ebb_common::db::Db;
use ebb_common::error::Violations;
use ebb_common::sql::placeholders;
use ebb_common::time::{EpochMs, to_timestamp, to_timestamp_opt};
use ebb_common::{Error, Result};
use ebb_proto::notifier::v1 as pb;
use sea_orm::{ConnectionTrait, QueryResult, Value};

use crate::rows;
use crate::{egress, patterns};

/// The kind of destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Generic signed webhook.
    Webhook,
    /// Slack incoming webhook.
    Slack,
    /// SMTP.
    Email,
    /// Microsoft Teams webhook.
    Teams,
}

impl Destination {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Slack => "slack",
            Self::Email => "email",
            Self::Teams => "teams",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "webhook" => Self::Webhook,
            "slack" => Self::Slack,
            "email" => Self::Email,
            "teams" => Self::Teams,
            other => return Err(Error::Internal(format!("stored destination `{other}`"))),
        })
    }

    fn from_proto(v: i32) -> Option<Self> {
        match pb::DestinationType::try_from(v).ok()? {
            pb::DestinationType::Webhook => Some(Self::Webhook),
            pb::DestinationType::Slack => Some(Self::Slack),
            pb::DestinationType::Email => Some(Self::Email),
            pb::DestinationType::Teams => Some(Self::Teams),
            pb::DestinationType::Unspecified => None,
        }
    }

    fn to_proto(self) -> pb::DestinationType {
        match self {
            Self::Webhook => pb::DestinationType::Webhook,
            Self::Slack => pb::DestinationType::Slack,
            Self::Email => pb::DestinationType::Email,
            Self::Teams => pb::DestinationType::Teams,
        }
    }
}

/// Where a configuration applies inside its organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every event of the organization.
    Organization,
    /// Events about one project.
    Project(String),
    /// Events about one workspace.
    Workspace(String),
    /// Events about one entity.
    Entity(String),
}

impl Scope {
    fn columns(&self) -> (&'static str, String) {
        match self {
            Self::Organization => ("organization", String::new()),
            Self::Project(id) => ("project", id.clone()),
            Self::Workspace(id) => ("workspace", id.clone()),
            Self::Entity(id) => ("entity", id.clone()),
        }
    }

    fn from_columns(kind: &str, id: String) -> Result<Self> {
        Ok(match kind {
            "organization" => Self::Organization,
            "project" => Self::Project(id),
            "workspace" => Self::Workspace(id),
            "entity" => Self::Entity(id),
            other => return Err(Error::Internal(format!("stored scope `{other}`"))),
        })
    }

    /// Parses the proto pair, recording violations.
    pub fn from_proto(kind: i32, id: &str, v: &mut Violations) -> Option<Self> {
        let id = id.trim().to_owned();
        let needs_id = |v: &mut Violations, s: Scope| {
            if id.is_empty() || id.len() > 200 {
                v.add(
                    "scope_id",
                    "must name the project, workspace or entity (1 to 200 characters)",
                );
                None
            } else {
                Some(s)
            }
        };
        match pb::ScopeType::try_from(kind) {
            Ok(pb::ScopeType::Organization) | Ok(pb::ScopeType::Unspecified) => {
                if id.is_empty() {
                    Some(Self::Organization)
                } else {
                    v.add("scope_id", "must be empty for organization scope");
                    None
                }
            }
            Ok(pb::ScopeType::Project) => needs_id(v, Self::Project(id.clone())),
            Ok(pb::ScopeType::Workspace) => needs_id(v, Self::Workspace(id.clone())),
            Ok(pb::ScopeType::Entity) => needs_id(v, Self::Entity(id.clone())),
            Err(_) => {
                v.add("scope_type", format!("unknown scope type {kind}"));
                None
            }
        }
    }

    /// The proto pair.
    pub fn to_proto(&self) -> (pb::ScopeType, String) {
        match self {
            Self::Organization => (pb::ScopeType::Organization, String::new()),
            Self::Project(id) => (pb::ScopeType::Project, id.clone()),
            Self::Workspace(id) => (pb::ScopeType::Workspace, id.clone()),
            Self::Entity(id) => (pb::ScopeType::Entity, id.clone()),
        }
    }
}

/// What a client may set on a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Display name.
    pub name: String,
    /// Scope.
    pub scope: Scope,
    /// Destination type.
    pub destination: Destination,
    /// URL of webhook, Slack and Teams destinations.
    pub url: String,
    /// Recipients of email destinations.
    pub email_addresses: Vec<String>,
    /// Event type patterns.
    pub event_types: Vec<String>,
}

/// A stored configuration.
#[derive(Debug, Clone)]
pub struct Configuration {
    /// Id.
    pub id: String,
    /// Owner.
    pub organization_id: String,
    /// What the client set.
    pub spec: Spec,
    /// Deliveries flow only when enabled.
    pub enabled: bool,
    /// Why it is disabled.
    pub disabled_reason: String,
    /// When a verification last succeeded.
    pub verify_ms: Option<EpochMs>,
    /// What the endpoint answered to the last failed verification.
    pub last_verification_error: String,
    /// Created.
    pub created_ms: EpochMs,
    /// Last changed.
    pub updated_ms: EpochMs,
    /// Secret metadata.
    pub secrets: Vec<SecretInfo>,
}

/// A secret's metadata.
#[derive(Debug, Clone)]
pub struct SecretInfo {
    /// Id.
    pub id: String,
    /// Created.
    pub created_ms: EpochMs,
    /// When it stops signing.
    pub expires_ms: Option<EpochMs>,
}

impl Configuration {
    /// The proto view; never carries a secret.
    pub fn to_proto(&self) -> pb::NotificationConfiguration {
        let (scope_type, scope_id) = self.spec.scope.to_proto();
        pb::NotificationConfiguration {
            id: self.id.clone(),
            organization_id: self.organization_id.clone(),
            name: self.spec.name.clone(),
            scope_type: scope_type as i32,
            scope_id,
            destination_type: self.spec.destination.to_proto() as i32,
            url: self.spec.url.clone(),
            email_addresses: self.spec.email_addresses.clone(),
            event_types: self.spec.event_types.clone(),
            enabled: self.enabled,
            disabled_reason: self.disabled_reason.clone(),
            verify_time: to_timestamp_opt(self.verify_ms),
            last_verification_error: self.last_verification_error.clone(),
            signing_secrets: self
                .secrets
                .iter()
                .map(|s| pb::SigningSecretInfo {
                    id: s.id.clone(),
                    create_time: Some(to_timestamp(s.created_ms)),
                    expire_time: to_timestamp_opt(s.expires_ms),
                })
                .collect(),
            create_time: Some(to_timestamp(self.created_ms)),
            update_time: Some(to_timestamp(self.updated_ms)),
        }
    }
}

/// What checking a destination depends on besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Checks<'a> {
    /// Whether an SMTP relay is configured.
    pub smtp_configured: bool,
    /// The egress guard, for IP-literal URLs.
    pub guard: &'a egress::EgressGuard,
}

/// Checks one field group of a client's configuration; `prefix` is the path of the message in
/// the request (`configuration.`).
pub fn check_name(name: &str, v: &mut Violations) -> String {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        v.add("configuration.name", "must be 1 to 200 characters");
    }
    name.to_owned()
}

/// Checks the destination's address fields.
pub fn check_destination(
    destination: Destination,
    url: &str,
    emails: &[String],
    checks: &Checks<'_>,
    v: &mut Violations,
) {
    match destination {
        Destination::Email => {
            if !url.is_empty() {
                v.add("configuration.url", "must be empty for email destinations");
            }
            if !checks.smtp_configured {
                v.add(
                    "configuration.destination_type",
                    "email needs an SMTP relay (smtp.relay) in notifier-svc's configuration",
                );
            }
            if emails.is_empty() || emails.len() > 50 {
                v.add(
                    "configuration.email_addresses",
                    "must list 1 to 50 addresses",
                );
            }
            for (i, e) in emails.iter().enumerate() {
                if e.parse::<lettre::Address>().is_err() {
                    v.add(
                        format!("configuration.email_addresses[{i}]"),
                        format!("`{e}` is not an email address"),
                    );
                }
            }
        }
        _ => {
            if !emails.is_empty() {
                v.add(
                    "configuration.email_addresses",
                    "only email destinations take addresses",
                );
            }
            if let Err(e) = check_url(url, checks.guard) {
                v.add("configuration.url", e);
            }
        }
    }
}

fn check_url(url: &str, guard: &egress::EgressGuard) -> std::result::Result<(), String> {
    if url.is_empty() {
        return Err("is required".into());
    }
    if url.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".into());
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| "must name a host".to_owned())?;
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        guard.check(ip)?;
    }
    Ok(())
}

/// Checks the subscribed event types.
pub fn check_event_types(types: &[String], v: &mut Violations) {
    if types.is_empty() || types.len() > 100 {
        v.add("configuration.event_types", "must list 1 to 100 patterns");
    }
    for (i, t) in types.iter().enumerate() {
        if let Err(e) = patterns::validate(t) {
            v.add(format!("configuration.event_types[{i}]"), e);
        }
    }
}

/// Checks a new configuration.
pub fn spec_from_proto(
    c: &pb::NotificationConfiguration,
    checks: &Checks<'_>,
) -> Result<(String, Spec)> {
    let mut v = Violations::new();
    let org = c.organization_id.trim().to_owned();
    if org.is_empty() || org.len() > 200 {
        v.add(
            "configuration.organization_id",
            "is required (at most 200 characters)",
        );
    }
    let name = check_name(&c.name, &mut v);
    let mut inner = Violations::new();
    let scope = Scope::from_proto(c.scope_type, &c.scope_id, &mut inner);
    prefix_into(inner, "configuration.", &mut v);
    let destination = Destination::from_proto(c.destination_type);
    match destination {
        None => v.add(
            "configuration.destination_type",
            "must be WEBHOOK, SLACK, EMAIL or TEAMS",
        ),
        Some(d) => check_destination(d, &c.url, &c.email_addresses, checks, &mut v),
    }
    check_event_types(&c.event_types, &mut v);
    v.finish()?;
    match (scope, destination) {
        (Some(scope), Some(destination)) => Ok((
            org,
            Spec {
                name,
                scope,
                destination,
                url: c.url.clone(),
                email_addresses: c.email_addresses.clone(),
                event_types: c.event_types.clone(),
            },
        )),
        _ => Err(Error::invalid("configuration", "invalid")),
    }
}

/// Moves violations under `prefix`.
pub fn prefix_into(inner: Violations, prefix: &str, v: &mut Violations) {
    if let Err(Error::InvalidArgument(list)) = inner.finish() {
        for f in list {
            v.add(format!("{prefix}{}", f.field), f.description);
        }
    }
}

const COLUMNS: &str = "id, organization_id, name, scope_type, scope_id, destination_type, url, \
    email_addresses, event_types, enabled, disabled_reason, verify_ms, last_verification_error, \
    created_ms, updated_ms";

fn from_row(row: &QueryResult) -> Result<Configuration> {
    let list = |col: &str| -> Result<Vec<String>> {
        let text: String = rows::get(row, col)?;
        serde_json::from_str(&text).map_err(|e| Error::Internal(format!("column {col}: {e}")))
    };
    Ok(Configuration {
        id: rows::get(row, "id")?,
        organization_id: rows::get(row, "organization_id")?,
        spec: Spec {
            name: rows::get(row, "name")?,
            scope: Scope::from_columns(
                &rows::get::<String>(row, "scope_type")?,
                rows::get(row, "scope_id")?,
            )?,
            destination: Destination::parse(&rows::get::<String>(row, "destination_type")?)?,
            url: rows::get(row, "url")?,
            email_addresses: list("email_addresses")?,
            event_types: list("event_types")?,
        },
        enabled: rows::flag(row, "enabled")?,
        disabled_reason: rows::get(row, "disabled_reason")?,
        verify_ms: rows::get(row, "verify_ms")?,
        last_verification_error: rows::get(row, "last_verification_error")?,
        created_ms: rows::get(row, "created_ms")?,
        updated_ms: rows::get(row, "updated_ms")?,
        secrets: Vec::new(),
    })
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// Inserts a configuration with its first secret.
pub async fn insert<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    org: &str,
    spec: &Spec,
    enabled: bool,
    secret: &str,
    now: EpochMs,
) -> Result<()> {
    let (scope_type, scope_id) = spec.scope.columns();
    let b = conn.get_database_backend();
    conn.execute_raw(ebb_common::db::stmt(
        b,
        &format!(
            "INSERT INTO notification_configurations ({COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, '', $11, '', $12, $12)"
        ),
        [
            Value::from(id),
            Value::from(org),
            Value::from(spec.name.clone()),
            Value::from(scope_type),
            Value::from(scope_id),
            Value::from(spec.destination.as_str()),
            Value::from(spec.url.clone()),
            Value::from(json_list(&spec.email_addresses)),
            Value::from(json_list(&spec.event_types)),
            Value::from(i32::from(enabled)),
            Value::from(enabled.then_some(now)),
            Value::from(now),
        ],
    ))
    .await?;
    insert_secret(conn, id, secret, now).await
}

/// Adds a signing secret.
pub async fn insert_secret<C: ConnectionTrait>(
    conn: &C,
    configuration_id: &str,
    secret: &str,
    now: EpochMs,
) -> Result<()> {
    conn.execute_raw(ebb_common::db::stmt(
        conn.get_database_backend(),
        "INSERT INTO signing_secrets (id, configuration_id, secret, created_ms, expires_ms)
         VALUES ($1, $2, $3, $4, NULL)",
        [
            Value::from(format!("sec_{}", uuid::Uuid::now_v7().simple())),
            Value::from(configuration_id),
            Value::from(secret),
            Value::from(now),
        ],
    ))
    .await?;
    Ok(())
}

/// Retires the current secrets of a configuration at `expires` (earlier expiries are kept).
pub async fn expire_secrets<C: ConnectionTrait>(
    conn: &C,
    configuration_id: &str,
    expires: EpochMs,
) -> Result<()> {
    conn.execute_raw(ebb_common::db::stmt(
        conn.get_database_backend(),
        "UPDATE signing_secrets SET expires_ms = $2
         WHERE configuration_id = $1 AND (expires_ms IS NULL OR expires_ms > $2)",
        [Value::from(configuration_id), Value::from(expires)],
    ))
    .await?;
    Ok(())
}

/// The configuration `id` with its secrets' metadata.
pub async fn get<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Configuration> {
    let b = conn.get_database_backend();
    let row = conn
        .query_one_raw(ebb_common::db::stmt(
            b,
            &format!("SELECT {COLUMNS} FROM notification_configurations WHERE id = $1"),
            [Value::from(id)],
        ))
        .await?
        .ok_or_else(|| Error::not_found("notification configuration", id))?;
    let mut c = from_row(&row)?;
    c.secrets = secrets_of(conn, &[c.id.clone()])
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    Ok(c)
}

async fn secrets_of<C: ConnectionTrait>(
    conn: &C,
    ids: &[String],
) -> Result<Vec<(String, SecretInfo)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = conn
        .query_all_raw(ebb_common::db::stmt(
            conn.get_database_backend(),
            &format!(
                "SELECT id, configuration_id, created_ms, expires_ms FROM signing_secrets
                 WHERE configuration_id IN ({}) ORDER BY created_ms, id",
                placeholders(1, ids.len())
            ),
            ids.iter().map(|i| Value::from(i.clone())),
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                rows::get(r, "configuration_id")?,
                SecretInfo {
                    id: rows::get(r, "id")?,
                    created_ms: rows::get(r, "created_ms")?,
                    expires_ms: rows::get(r, "expires_ms")?,
                },
            ))
        })
        .collect()
}

/// Secrets that sign now for each of `ids`: (configuration id, secret), newest first.
pub async fn signing_secrets_of(db: &Db, ids: &[String]) -> Result<Vec<(String, String)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = db
        .conn
        .query_all_raw(db.stmt(
            &format!(
                "SELECT configuration_id, secret FROM signing_secrets
                 WHERE configuration_id IN ({}) AND (expires_ms IS NULL OR expires_ms > {})
                 ORDER BY created_ms DESC, id DESC",
                placeholders(1, ids.len()),
                ebb_common::db::now_ms_sql(db.backend())
            ),
            ids.iter().map(|i| Value::from(i.clone())),
        ))
        .await?;
    rows.iter()
        .map(|r| Ok((rows::get(r, "configuration_id")?, rows::get(r, "secret")?)))
        .collect()
}

/// Secrets that sign now, newest first.
pub async fn signing_secrets(db: &Db, configuration_id: &str) -> Result<Vec<String>> {
    Ok(signing_secrets_of(db, &[configuration_id.to_owned()])
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect())
}

/// A page of an organization's configurations, oldest first.
pub async fn list(
    db: &Db,
    org: &str,
    scope: Option<&Scope>,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<Vec<Configuration>> {
    let mut sql =
        format!("SELECT {COLUMNS} FROM notification_configurations WHERE organization_id = $1");
    let mut values = vec![Value::from(org)];
    if let Some(scope) = scope {
        let (t, id) = scope.columns();
        values.push(Value::from(t));
        sql.push_str(&format!(" AND scope_type = ${}", values.len()));
        if !id.is_empty() {
            values.push(Value::from(id));
            sql.push_str(&format!(" AND scope_id = ${}", values.len()));
        }
    }
    if let Some((key, id)) = after {
        values.push(Value::from(*key));
        values.push(Value::from(id.clone()));
        sql.push_str(&format!(
            " AND (created_ms > ${a} OR (created_ms = ${a} AND id > ${b}))",
            a = values.len() - 1,
            b = values.len()
        ));
    }
    sql.push_str(&format!(" ORDER BY created_ms, id LIMIT {limit}"));
    let rows = db.conn.query_all_raw(db.stmt(&sql, values)).await?;
    let mut configs = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
    let ids: Vec<String> = configs.iter().map(|c| c.id.clone()).collect();
    for (cid, s) in secrets_of(&db.conn, &ids).await? {
        if let Some(c) = configs.iter_mut().find(|c| c.id == cid) {
            c.secrets.push(s);
        }
    }
    Ok(configs)
}

/// Enabled configurations of an organization: the candidates for an event.
pub async fn enabled_in<C: ConnectionTrait>(conn: &C, org: &str) -> Result<Vec<Configuration>> {
    let rows = conn
        .query_all_raw(ebb_common::db::stmt(
            conn.get_database_backend(),
            &format!(
                "SELECT {COLUMNS} FROM notification_configurations
                 WHERE organization_id = $1 AND enabled = 1"
            ),
            [Value::from(org)],
        ))
        .await?;
    rows.iter().map(from_row).collect()
}

/// Writes the client-settable fields and the enabled state.
pub async fn update<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    spec: &Spec,
    enabled: bool,
    verified_now: bool,
    now: EpochMs,
) -> Result<()> {
    let (scope_type, scope_id) = spec.scope.columns();
    conn.execute_raw(ebb_common::db::stmt(
        conn.get_database_backend(),
        "UPDATE notification_configurations SET name = $2, scope_type = $3, scope_id = $4,
            url = $5, email_addresses = $6, event_types = $7, enabled = $8,
            disabled_reason = CASE WHEN $8 = 1 THEN '' ELSE disabled_reason END,
            verify_ms = CASE WHEN $9 = 1 THEN $10 ELSE verify_ms END,
            last_verification_error = CASE WHEN $9 = 1 THEN '' ELSE last_verification_error END,
            updated_ms = $10
         WHERE id = $1",
        [
            Value::from(id),
            Value::from(spec.name.clone()),
            Value::from(scope_type),
            Value::from(scope_id),
            Value::from(spec.url.clone()),
            Value::from(json_list(&spec.email_addresses)),
            Value::from(json_list(&spec.event_types)),
            Value::from(i32::from(enabled)),
            Value::from(i32::from(verified_now)),
            Value::from(now),
        ],
    ))
    .await?;
    Ok(())
}

/// Records a failed verification (the configuration stays as it was otherwise).
pub async fn record_verification_failure(db: &Db, id: &str, what: &str) -> Result<()> {
    db.conn
        .execute_raw(db.stmt(
            "UPDATE notification_configurations SET last_verification_error = $2 WHERE id = $1",
            [Value::from(id), Value::from(what)],
        ))
        .await?;
    Ok(())
}

/// Disables a configuration because its endpoint asked to stop (410 Gone).
pub async fn disable<C: ConnectionTrait>(conn: &C, id: &str, reason: &str) -> Result<()> {
    let b = conn.get_database_backend();
    conn.execute_raw(ebb_common::db::stmt(
        b,
        &format!(
            "UPDATE notification_configurations SET enabled = 0, disabled_reason = $2,
             updated_ms = {} WHERE id = $1",
            ebb_common::db::now_ms_sql(b)
        ),
        [Value::from(id), Value::from(reason)],
    ))
    .await?;
    Ok(())
}

/// Deletes a configuration and cancels its pending deliveries; returns how many.
pub async fn delete<C: ConnectionTrait>(conn: &C, id: &str, now: EpochMs) -> Result<u64> {
    let b = conn.get_database_backend();
    let cancelled = conn
        .execute_raw(ebb_common::db::stmt(
            b,
            "UPDATE deliveries SET status = 'cancelled', completed_ms = $2, updated_ms = $2,
                last_error = 'configuration deleted'
             WHERE configuration_id = $1 AND status = 'pending'",
            [Value::from(id), Value::from(now)],
        ))
        .await?
        .rows_affected();
    let deleted = conn
        .execute_raw(ebb_common::db::stmt(
            b,
            "DELETE FROM notification_configurations WHERE id = $1",
            [Value::from(id)],
        ))
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(Error::not_found("notification configuration", id));
    }
    Ok(cancelled)
}
