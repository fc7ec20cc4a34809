//! `ebb.lifecycle.v1.TokenService`: create, list and revoke API tokens, and authenticate a
//! presented secret for the other services.

use ebb_common::auth::{self, Caller, Role, StaticTokens};
use ebb_common::error::Violations;
use ebb_common::time::{to_timestamp, to_timestamp_opt};
use ebb_common::{Error, page};
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::token_service_server::TokenService;
use tonic::{Request, Response, Status};

use super::validate as check;
use crate::actor::{self, Actor};
use crate::core::Lifecycle;
use crate::tenancy::tokens;
use crate::tenancy::tokens::{NewToken, TokenRow};
use ebb_common::idempotency;

/// The furthest ahead a token may expire.
const MAX_TOKEN_LIFETIME_MS: i64 = 10 * 366 * 86_400_000;

/// TokenService over the token store.
#[derive(Clone)]
pub struct TokenApi {
    core: Lifecycle,
    configured: StaticTokens,
}

impl TokenApi {
    /// Serves `core`'s token store; `configured` are the tokens of the configuration, which
    /// `AuthenticateToken` answers for too.
    pub fn new(core: Lifecycle, configured: StaticTokens) -> Self {
        Self { core, configured }
    }
}

fn token(row: &TokenRow) -> pb::Token {
    pb::Token {
        id: row.id.clone(),
        organization_id: row.organization_id.clone().unwrap_or_default(),
        role: row.role().map(auth::role_to_proto).unwrap_or_default(),
        description: row.description.clone(),
        create_time: Some(to_timestamp(row.created_at)),
        expire_time: to_timestamp_opt(row.expires_at),
        revoke_time: to_timestamp_opt(row.revoked_at),
        created_by: row.created_by.clone(),
    }
}

fn caller<T>(request: &Request<T>) -> std::result::Result<Caller, Status> {
    Caller::of(request).cloned()
}

impl TokenApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> std::result::Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let now = self.core.now();
        idempotency::check_request_id(&req.request_id)?;
        let mut v = Violations::new();
        let role = auth::role_from_proto(req.role);
        if role.is_none() {
            v.add(
                "role",
                "must be one of TOKEN_ROLE_ADMIN, _OPERATOR, _RUNNER, _SERVICE, _READER",
            );
        }
        if req.description.chars().count() > 200
            || ebb_common::text::has_hidden_or_control(&req.description)
        {
            v.add("description", "must be at most 200 printable characters");
        }
        let expires_at = check::timestamp(&mut v, "expire_time", &req.expire_time);
        if let Some(at) = expires_at {
            if at <= now {
                v.add("expire_time", "must be in the future");
            } else if at - now > MAX_TOKEN_LIFETIME_MS {
                v.add("expire_time", "must be at most 10 years ahead");
            }
        }
        let organization_id = match role {
            Some(Role::Service) => {
                if !req.organization_id.is_empty() && caller.is_system() {
                    v.add(
                        "organization_id",
                        "must be empty: service tokens act across organizations",
                    );
                }
                None
            }
            _ => Some(check::id(&mut v, "organization_id", &req.organization_id)),
        };
        v.finish()?;
        let Some(role) = role else {
            return Err(Error::invalid("role", "is required").into());
        };
        if role == Role::Service && !caller.is_system() {
            return Err(Status::permission_denied(
                "only the bootstrap admin creates service tokens",
            ));
        }
        let secret = auth::new_secret();
        let new = NewToken {
            organization_id,
            role,
            description: req.description.clone(),
            expires_at,
            request_id: (!req.request_id.is_empty()).then(|| req.request_id.clone()),
            created_by: caller.token_id.clone(),
        };
        let txn = self.core.begin().await?;
        let (row, created) = tokens::create(&txn, new, &auth::hash_secret(&secret), now).await?;
        txn.commit().await.map_err(Error::from)?;
        if created {
            tracing::info!(token_id = %row.id, role = %row.role, created_by = %caller.token_id, "token created");
        }
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token(&row)),
            secret: if created { secret } else { String::new() },
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> std::result::Result<Response<pb::ListTokensResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::optional_id(&mut v, "organization_id", &req.organization_id);
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "tokens",
            org.as_deref().unwrap_or_default(),
            &req.include_revoked.to_string(),
        ]);
        let after = match page::decode(&req.page_token, &fh)? {
            Some(pos) => match pos.as_slice() {
                [t, id] => Some((
                    t.parse::<i64>()
                        .map_err(|_| Error::invalid("page_token", "malformed"))?,
                    id.clone(),
                )),
                _ => return Err(Error::invalid("page_token", "malformed").into()),
            },
            None => None,
        };
        let rows = tokens::list(
            &self.core.db.conn,
            org.as_deref(),
            req.include_revoked,
            after,
            size + 1,
        )
        .await?;
        let more = rows.len() as u64 > size;
        let rows = &rows[..rows.len().min(size as usize)];
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => {
                page::encode(&fh, vec![last.created_at.to_string(), last.id.clone()])
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTokensResponse {
            tokens: rows.iter().map(token).collect(),
            next_page_token,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> std::result::Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "token_id", &req.token_id);
        v.finish()?;
        idempotency::check_request_id(&req.request_id)?;
        let txn = self.core.begin().await?;
        let row = tokens::revoke(&txn, &id, &caller.token_id, self.core.now()).await?;
        txn.commit().await.map_err(Error::from)?;
        // This replica stops accepting it at once; the others within `auth.cache_ttl`.
        self.core.tokens.forget_all();
        tracing::info!(token_id = %row.id, revoked_by = %caller.token_id, "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(token(&row)),
        }))
    }

    async fn authenticate_token(
        &self,
        request: Request<pb::AuthenticateTokenRequest>,
    ) -> std::result::Result<Response<pb::AuthenticateTokenResponse>, Status> {
        let req = request.into_inner();
        if req.secret.is_empty() || req.secret.len() > 512 {
            return Err(Error::invalid("secret", "must be 1 to 512 characters").into());
        }
        let found = match self.configured.find(&req.secret) {
            Some(c) => Some(c),
            None => tokens::find_live(
                &self.core.db.conn,
                &auth::hash_secret(&req.secret),
                self.core.now(),
            )
            .await?
            .map(|row| tokens::caller(&row))
            .transpose()?,
        };
        let Some(found) = found else {
            return Err(Status::not_found("token not found"));
        };
        Ok(Response::new(pb::AuthenticateTokenResponse {
            expire_time: expire_time(&found),
            token_id: found.token_id,
            organization_id: found.organization_id.unwrap_or_default(),
            role: auth::role_to_proto(found.role),
        }))
    }

    async fn get_caller(
        &self,
        request: Request<pb::GetCallerRequest>,
    ) -> std::result::Result<Response<pb::GetCallerResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(pb::GetCallerResponse {
            expire_time: expire_time(&caller),
            token_id: caller.token_id,
            organization_id: caller.organization_id.unwrap_or_default(),
            role: auth::role_to_proto(caller.role),
        }))
    }
}

/// When `caller`'s token stops working by itself, if ever.
fn expire_time(caller: &Caller) -> Option<prost_types::Timestamp> {
    let d = caller
        .expires_at?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).ok()?,
        nanos: i32::try_from(d.subsec_nanos()).ok()?,
    })
}

/// Every call runs as its caller (see `crate::actor`).
#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> std::result::Result<Response<pb::CreateTokenResponse>, Status> {
        let actor = Actor::of(&request);
        actor::acting(actor, TokenApi::create_token(self, request)).await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> std::result::Result<Response<pb::ListTokensResponse>, Status> {
        let actor = Actor::of(&request);
        actor::acting(actor, TokenApi::list_tokens(self, request)).await
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> std::result::Result<Response<pb::RevokeTokenResponse>, Status> {
        let actor = Actor::of(&request);
        actor::acting(actor, TokenApi::revoke_token(self, request)).await
    }

    async fn authenticate_token(
        &self,
        request: Request<pb::AuthenticateTokenRequest>,
    ) -> std::result::Result<Response<pb::AuthenticateTokenResponse>, Status> {
        let actor = Actor::of(&request);
        actor::acting(actor, TokenApi::authenticate_token(self, request)).await
    }

    async fn get_caller(
        &self,
        request: Request<pb::GetCallerRequest>,
    ) -> std::result::Result<Response<pb::GetCallerResponse>, Status> {
        TokenApi::get_caller(self, request).await
    }
}
