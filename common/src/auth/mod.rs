//! Authentication and authorization of every RPC: bearer tokens, the role table, organization
//! scoping and the audit of refusals.
//!
//! Every call but health and reflection passes [`AuthLayer`]:
//! 1. its method must have an entry in [`ROLE_TABLE`] (an RPC without a role decision is
//!    refused, and a unit test fails for any RPC of the descriptors that lacks one);
//! 2. its `authorization: Bearer <secret>` must name a live token — the bootstrap admin or
//!    service token of the configuration, or a token of lifecycle's store, asked through a
//!    [`TokenAuthority`];
//! 3. the token's role must be allowed for the method;
//! 4. for a token bound to an organization, the request is decoded against the descriptors:
//!    an `organization_id` that is not the caller's, or an id of a resource of another
//!    organization (found through the service's [`OrganizationResolver`]), answers NOT_FOUND
//!    exactly as if it did not exist; an empty `organization_id` is filled with the caller's.
//!
//! The resulting [`Caller`] travels in the request's extensions for handlers that need it.
//! Every refusal is logged at warn and handed to the [`DenialSink`]s (lifecycle writes an
//! `auth.denied` outbox event for refusals of organization-bound tokens).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value};
use sea_orm::ConnectionTrait;
use sha2::{Digest, Sha256};
use tonic::body::Body;
use tonic::{Code, Status};

use crate::methods::input_of;

// The role table and the descriptors live in `methods`, which metrics read too; they stay
// reachable here, where services have always found them.
pub use crate::client::Bearer;
pub use crate::methods::{
    Access, DESCRIPTORS, ROLE_TABLE, Role, access_for, all_methods, is_public,
};

/// The authenticated caller of one RPC, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id (`admin` and `service` for the tokens of the configuration).
    pub token_id: String,
    /// The token's role.
    pub role: Role,
    /// The organization the token is bound to; `None` for the bootstrap admin and service
    /// tokens, which act across organizations.
    pub organization_id: Option<String>,
    /// When the token stops working by itself.
    pub expires_at: Option<std::time::SystemTime>,
}

impl Caller {
    /// Whether the caller may see things of `organization_id`.
    pub fn sees(&self, organization_id: &str) -> bool {
        match &self.organization_id {
            None => true,
            Some(own) => own == organization_id,
        }
    }

    /// Whether the token acts across organizations.
    pub fn is_system(&self) -> bool {
        self.organization_id.is_none()
    }

    /// The caller of a request that passed [`AuthLayer`].
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
    }
}

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

/// Why a presented token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown, revoked or expired.
    Invalid,
    /// The token store cannot be asked right now.
    Unavailable(String),
}

/// Looks up tokens that are not in the configuration: lifecycle reads its store, the other
/// services ask lifecycle.
pub trait TokenAuthority: Send + Sync + 'static {
    /// The caller a secret belongs to.
    fn authenticate<'a>(&'a self, secret: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>>;
}

/// Finds which organization a resource named in a request belongs to, so that another
/// organization's resources answer NOT_FOUND before any handler runs.
pub trait OrganizationResolver: Send + Sync + 'static {
    /// The request fields this resolver knows: (service name prefix, field path, kind).
    /// E.g. `("ebb.lifecycle.v1.", "workspace_id", "workspace")`.
    fn references(&self) -> &'static [(&'static str, &'static str, &'static str)];

    /// The organization owning the resource of `kind` with `id` (`Some("")` for things of no
    /// organization), or `None` when there is no such resource (the handler answers that).
    fn organization_of<'a>(
        &'a self,
        kind: &'static str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, crate::Error>>;
}

/// Resolves resources to organizations by reading `organization_id` from the service's own
/// tables: `tables` maps a kind to its table and id column.
pub struct TableResolver {
    db: crate::db::Db,
    references: &'static [(&'static str, &'static str, &'static str)],
    tables: &'static [(&'static str, &'static str, &'static str)],
}

impl TableResolver {
    /// A resolver of `references` (service prefix, field path, kind) through `tables`
    /// (kind, table, id column) of `db`.
    pub fn new(
        db: crate::db::Db,
        references: &'static [(&'static str, &'static str, &'static str)],
        tables: &'static [(&'static str, &'static str, &'static str)],
    ) -> Self {
        Self {
            db,
            references,
            tables,
        }
    }
}

impl OrganizationResolver for TableResolver {
    fn references(&self) -> &'static [(&'static str, &'static str, &'static str)] {
        self.references
    }

    fn organization_of<'a>(
        &'a self,
        kind: &'static str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, crate::Error>> {
        Box::pin(async move {
            let Some((_, table, column)) = self.tables.iter().find(|(k, _, _)| *k == kind) else {
                return Ok(None);
            };
            let row = self
                .db
                .conn
                .query_one_raw(self.db.stmt(
                    &format!("SELECT organization_id FROM {table} WHERE {column} = $1"),
                    [id.into()],
                ))
                .await?;
            match row {
                None => Ok(None),
                Some(r) => {
                    let org: Option<String> = r.try_get("", "organization_id")?;
                    Ok(Some(org.unwrap_or_default()))
                }
            }
        })
    }
}

/// One refused call.
#[derive(Debug, Clone)]
pub struct Denial {
    /// Full method path.
    pub method: String,
    /// The code answered.
    pub code: Code,
    /// Why, for logs and audit.
    pub reason: String,
    /// The caller, when the token was valid.
    pub caller: Option<Caller>,
}

/// Records refusals; lifecycle's writes `auth.denied` outbox events.
pub trait DenialSink: Send + Sync + 'static {
    /// Records one refusal without delaying the answer.
    fn record(&self, denial: Denial);
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

/// Asks lifecycle's `TokenService.AuthenticateToken`, caching positive answers for a short
/// time (at most 2 seconds, never past the token's expiry) so that a revocation takes effect
/// on this service within that time.
pub struct RemoteAuthority {
    client: tokio::sync::Mutex<
        ebb_proto::lifecycle::v1::token_service_client::TokenServiceClient<
            crate::client::TracedChannel,
        >,
    >,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Caller, Instant)>>,
}

/// Most entries the positive cache holds before it is emptied.
const CACHE_CAPACITY: usize = 10_000;

impl RemoteAuthority {
    /// Asks lifecycle at `url`, caching answers for `ttl` (capped at 2 seconds).
    pub fn new(url: &str, ttl: Duration) -> Result<Self, String> {
        let channel = crate::client::channel(url, Duration::from_secs(10))?;
        Ok(Self {
            client: tokio::sync::Mutex::new(
                ebb_proto::lifecycle::v1::token_service_client::TokenServiceClient::new(channel),
            ),
            ttl: ttl.min(Duration::from_secs(2)),
            cache: Mutex::new(HashMap::new()),
        })
    }
}

impl TokenAuthority for RemoteAuthority {
    fn authenticate<'a>(&'a self, secret: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            let key = hash_secret(secret);
            let now = Instant::now();
            if let Ok(cache) = self.cache.lock()
                && let Some((caller, until)) = cache.get(&key)
                && *until > now
            {
                return Ok(caller.clone());
            }
            let mut client = self.client.lock().await.clone();
            let answer = client
                .authenticate_token(ebb_proto::lifecycle::v1::AuthenticateTokenRequest {
                    secret: secret.to_owned(),
                })
                .await;
            let resp = match answer {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == Code::NotFound => return Err(AuthError::Invalid),
                Err(s) => {
                    return Err(AuthError::Unavailable(format!(
                        "the token service answered {:?}: {}",
                        s.code(),
                        s.message()
                    )));
                }
            };
            let role = role_from_proto(resp.role).ok_or(AuthError::Invalid)?;
            let expires_at = resp.expire_time.as_ref().and_then(|t| {
                std::time::UNIX_EPOCH.checked_add(Duration::new(
                    u64::try_from(t.seconds).ok()?,
                    u32::try_from(t.nanos).ok()?,
                ))
            });
            let caller = Caller {
                token_id: resp.token_id,
                role,
                organization_id: (!resp.organization_id.is_empty()).then_some(resp.organization_id),
                expires_at,
            };
            let mut until = now + self.ttl;
            if let Some(exp) = expires_at {
                let left = exp
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                until = until.min(now + left);
            }
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() >= CACHE_CAPACITY {
                    cache.retain(|_, (_, u)| *u > now);
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                }
                cache.insert(key, (caller.clone(), until));
            }
            Ok(caller)
        })
    }
}

/// The role of a `ebb.lifecycle.v1.TokenRole` value.
pub fn role_from_proto(value: i32) -> Option<Role> {
    use ebb_proto::lifecycle::v1::TokenRole;
    match TokenRole::try_from(value).ok()? {
        TokenRole::Admin => Some(Role::Admin),
        TokenRole::Operator => Some(Role::Operator),
        TokenRole::Runner => Some(Role::Runner),
        TokenRole::Service => Some(Role::Service),
        TokenRole::Reader => Some(Role::Reader),
        TokenRole::Unspecified => None,
    }
}

/// The `ebb.lifecycle.v1.TokenRole` value of a role.
pub fn role_to_proto(role: Role) -> i32 {
    use ebb_proto::lifecycle::v1::TokenRole;
    (match role {
        Role::Admin => TokenRole::Admin,
        Role::Operator => TokenRole::Operator,
        Role::Runner => TokenRole::Runner,
        Role::Service => TokenRole::Service,
        Role::Reader => TokenRole::Reader,
    }) as i32
}

/// Everything [`AuthLayer`] consults.
#[derive(Clone, Default)]
pub struct Guard {
    /// Tokens of the configuration.
    pub static_tokens: StaticTokens,
    /// Where other tokens are looked up; without one only configured tokens work.
    pub authority: Option<Arc<dyn TokenAuthority>>,
    /// Resolvers of resource ids to organizations.
    pub resolvers: Vec<Arc<dyn OrganizationResolver>>,
    /// Where refusals are recorded besides the log.
    pub denials: Vec<Arc<dyn DenialSink>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("static_tokens", &self.static_tokens)
            .field("authority", &self.authority.is_some())
            .field("resolvers", &self.resolvers.len())
            .field("denials", &self.denials.len())
            .finish()
    }
}

impl Guard {
    async fn authenticate(&self, secret: &str) -> Result<Caller, Status> {
        if let Some(caller) = self.static_tokens.find(secret) {
            return Ok(caller);
        }
        let Some(authority) = &self.authority else {
            return Err(Status::unauthenticated("invalid, revoked or expired token"));
        };
        match authority.authenticate(secret).await {
            Ok(caller) => {
                if caller
                    .expires_at
                    .is_some_and(|e| e <= std::time::SystemTime::now())
                {
                    return Err(Status::unauthenticated("invalid, revoked or expired token"));
                }
                Ok(caller)
            }
            Err(AuthError::Invalid) => {
                Err(Status::unauthenticated("invalid, revoked or expired token"))
            }
            Err(AuthError::Unavailable(why)) => {
                tracing::warn!(error = %why, "cannot check a token");
                Err(Status::unavailable("the token service cannot be reached"))
            }
        }
    }

    fn deny(&self, method: &str, status: &Status, caller: Option<&Caller>) {
        tracing::warn!(
            method,
            code = ?status.code(),
            reason = status.message(),
            token_id = caller.map(|c| c.token_id.as_str()).unwrap_or(""),
            role = caller.map(|c| c.role.as_str()).unwrap_or(""),
            organization_id = caller.and_then(|c| c.organization_id.as_deref()).unwrap_or(""),
            "call denied"
        );
        let denial = Denial {
            method: method.to_owned(),
            code: status.code(),
            reason: status.message().to_owned(),
            caller: caller.cloned(),
        };
        for sink in &self.denials {
            sink.record(denial.clone());
        }
    }

    /// Checks one call; on success the request (possibly with its organization filled in)
    /// carries its [`Caller`].
    pub async fn check(&self, request: http::Request<Body>) -> Result<http::Request<Body>, Status> {
        let method = request.uri().path().to_owned();
        let Some(access) = access_for(&method) else {
            let status = if method.starts_with("/ebb.") {
                Status::permission_denied("this method has no role decision")
            } else {
                Status::unimplemented(format!("unknown method {method}"))
            };
            self.deny(&method, &status, None);
            return Err(status);
        };
        let secret = match bearer(request.headers()) {
            Ok(s) => s,
            Err(status) => {
                self.deny(&method, &status, None);
                return Err(status);
            }
        };
        let caller = match self.authenticate(&secret).await {
            Ok(c) => c,
            Err(status) => {
                if status.code() == Code::Unauthenticated {
                    self.deny(&method, &status, None);
                }
                return Err(status);
            }
        };
        if !access.roles.contains(&caller.role) {
            let status = Status::permission_denied(format!(
                "the {} role may not call this method",
                caller.role.as_str()
            ));
            self.deny(&method, &status, Some(&caller));
            return Err(status);
        }
        if access.system_only && !caller.is_system() {
            let status = Status::permission_denied(
                "this method acts across organizations; an organization's token may not call it",
            );
            self.deny(&method, &status, Some(&caller));
            return Err(status);
        }
        let mut request = if let Some(own) = caller.organization_id.clone() {
            match self.scope(request, &method, &own).await {
                Ok(r) => r,
                Err(status) => {
                    if status.code() == Code::NotFound {
                        self.deny(&method, &status, Some(&caller));
                    }
                    return Err(status);
                }
            }
        } else {
            // Cross-organization callers skip scoping, but a message that does not decode is
            // still the caller's mistake: refuse it here rather than let the codec call it
            // INTERNAL.
            Self::well_formed(request, &method).await?
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }

    /// Checks that the request carries exactly one message that decodes.
    async fn well_formed(
        request: http::Request<Body>,
        method: &str,
    ) -> Result<http::Request<Body>, Status> {
        let Some(input) = input_of(method) else {
            return Ok(request);
        };
        let (parts, body) = request.into_parts();
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(status) => return Err(status),
        };
        decode_frame(&input, &bytes)?;
        Ok(http::Request::from_parts(
            parts,
            Body::new(http_body_util::Full::new(bytes)),
        ))
    }

    /// Holds an organization-bound call to its organization: refuses other organizations'
    /// things as missing and fills an empty `organization_id`.
    async fn scope(
        &self,
        request: http::Request<Body>,
        method: &str,
        own: &str,
    ) -> Result<http::Request<Body>, Status> {
        let Some(input) = input_of(method) else {
            return Ok(request);
        };
        let (parts, body) = request.into_parts();
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            // The body's errors are statuses already (RESOURCE_EXHAUSTED past the size limit).
            Err(status) => return Err(status),
        };
        let mut message = decode_frame(&input, &bytes)?;
        let service = method
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let changed = scope_organization(&mut message, own, 0)?;
        for resolver in &self.resolvers {
            for (prefix, path, kind) in resolver.references() {
                if !service.starts_with(prefix) {
                    continue;
                }
                let Some(id) = string_at(&message, path) else {
                    continue;
                };
                if id.is_empty() {
                    continue;
                }
                match resolver.organization_of(kind, &id).await {
                    Ok(Some(org)) if org != own => {
                        return Err(Status::not_found(format!(
                            "{kind} {} not found",
                            shown(&id)
                        )));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(Status::from(e)),
                }
            }
        }
        let body = if changed {
            encode_frame(&message)
        } else {
            bytes
        };
        Ok(http::Request::from_parts(
            parts,
            Body::new(http_body_util::Full::new(body)),
        ))
    }
}

/// An id as shown in a message: at most 100 characters of it.
fn shown(id: &str) -> String {
    id.chars().take(100).collect()
}

fn bearer(headers: &http::HeaderMap) -> Result<String, Status> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(Status::unauthenticated(
            "missing `authorization: Bearer <token>`",
        ));
    };
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
    let Some(secret) = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
    else {
        return Err(Status::unauthenticated(
            "the authorization header must be `Bearer <token>`",
        ));
    };
    let secret = secret.trim();
    if secret.is_empty() || secret.len() > 512 {
        return Err(Status::unauthenticated("malformed bearer token"));
    }
    Ok(secret.to_owned())
}

fn decode_frame(input: &MessageDescriptor, bytes: &Bytes) -> Result<DynamicMessage, Status> {
    if bytes.len() < 5 {
        return Err(Status::invalid_argument("the request has no message"));
    }
    if bytes[0] != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not accepted",
        ));
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if bytes.len() != 5 + len {
        return Err(Status::invalid_argument(
            "the request must carry exactly one message",
        ));
    }
    DynamicMessage::decode(input.clone(), &bytes[5..])
        .map_err(|e| Status::invalid_argument(format!("the request does not decode: {e}")))
}

fn encode_frame(message: &DynamicMessage) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + encoded.len());
    out.put_u8(0);
    out.put_u32(encoded.len() as u32);
    out.put_slice(&encoded);
    out.freeze()
}

/// Checks every `organization_id` in `message` and in its singular sub-messages (two levels):
/// another organization's answers NOT_FOUND; an empty one becomes `own`. Whether anything
/// changed.
fn scope_organization(
    message: &mut DynamicMessage,
    own: &str,
    depth: usize,
) -> Result<bool, Status> {
    let mut changed = false;
    let descriptor = message.descriptor();
    for field in descriptor.fields() {
        if field.is_list() || field.is_map() {
            continue;
        }
        match field.kind() {
            Kind::String if field.name() == "organization_id" => {
                let current = message
                    .get_field(&field)
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_default();
                if current.is_empty() {
                    message.set_field(&field, Value::String(own.to_owned()));
                    changed = true;
                } else if current != own {
                    return Err(Status::not_found(format!(
                        "organization {} not found",
                        shown(&current)
                    )));
                }
            }
            Kind::Message(_) if depth < 1 && message.has_field(&field) => {
                if let Some(sub) = message.get_field_mut(&field).as_message_mut() {
                    if sub.descriptor().full_name().starts_with("google.") {
                        continue;
                    }
                    changed |= scope_organization(sub, own, depth + 1)?;
                }
            }
            _ => {}
        }
    }
    Ok(changed)
}

/// The string at a dotted field path, if every step is present.
fn string_at(message: &DynamicMessage, path: &str) -> Option<String> {
    let mut current = message.clone();
    let mut steps = path.split('.').peekable();
    while let Some(step) = steps.next() {
        let field = current.descriptor().get_field_by_name(step)?;
        if steps.peek().is_none() {
            return current.get_field(&field).as_str().map(str::to_owned);
        }
        if !current.has_field(&field) {
            return None;
        }
        let next = current.get_field(&field).as_message()?.clone();
        current = next;
    }
    None
}

/// A tower layer that runs [`Guard::check`] before every call.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    guard: Arc<Guard>,
}

impl AuthLayer {
    /// A layer consulting `guard`.
    pub fn new(guard: Guard) -> Self {
        Self {
            guard: Arc::new(guard),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            guard: self.guard.clone(),
            inner,
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    guard: Arc<Guard>,
    inner: S,
}

impl<S> tower::Service<http::Request<Body>> for AuthService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if is_public(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let guard = self.guard.clone();
        Box::pin(async move {
            match guard.check(request).await {
                Ok(request) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_is_parsed_strictly() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h).map_err(|s| s.code()), Err(Code::Unauthenticated));
        h.insert("authorization", "Basic abc".parse().expect("header"));
        assert_eq!(bearer(&h).map_err(|s| s.code()), Err(Code::Unauthenticated));
        h.insert("authorization", "Bearer ebb_x".parse().expect("header"));
        assert_eq!(bearer(&h).expect("token"), "ebb_x");
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("ebb_") && a.len() > 40);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }

    #[test]
    fn organization_fields_are_checked_and_filled() {
        let input = input_of("/ebb.lifecycle.v1.LifecycleService/ListWorkspaces").expect("input");
        let mut m = DynamicMessage::new(input.clone());
        assert!(scope_organization(&mut m, "org-a", 0).expect("fill"));
        assert_eq!(string_at(&m, "organization_id").as_deref(), Some("org-a"));
        let mut other = DynamicMessage::new(input);
        other.set_field_by_name("organization_id", Value::String("org-b".into()));
        let err = scope_organization(&mut other, "org-a", 0).expect_err("other org");
        assert_eq!(err.code(), Code::NotFound);

        let nested = input_of("/ebb.notifier.v1.NotifierService/CreateNotificationConfiguration")
            .expect("input");
        let mut m = DynamicMessage::new(nested);
        let conf = m
            .descriptor()
            .get_field_by_name("configuration")
            .expect("field");
        let conf_desc = match conf.kind() {
            Kind::Message(d) => d,
            _ => panic!("configuration is a message"),
        };
        m.set_field(&conf, Value::Message(DynamicMessage::new(conf_desc)));
        assert!(scope_organization(&mut m, "org-a", 0).expect("fill"));
        assert_eq!(
            string_at(&m, "configuration.organization_id").as_deref(),
            Some("org-a")
        );
        let framed = encode_frame(&m);
        let back = decode_frame(&m.descriptor(), &framed).expect("decode");
        assert_eq!(back, m);
    }

    #[test]
    fn malformed_frames_are_invalid_arguments() {
        let input = input_of("/ebb.lifecycle.v1.LifecycleService/GetWorkspace").expect("input");
        for bytes in [
            Bytes::from_static(b""),
            Bytes::from_static(b"\0\0\0\0\x05ab"),
            Bytes::from_static(b"\0\0\0\0\x02\xff\xff"),
        ] {
            let err = decode_frame(&input, &bytes).expect_err("malformed");
            assert_eq!(err.code(), Code::InvalidArgument, "{bytes:?}");
        }
    }
}
