//! The checks of one call: a role decision, a live token, an allowed role, its organization scope.

use std::sync::Arc;

use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::{Code, Status};

use super::authority::{AuthError, TokenAuthority};
use super::caller::Caller;
use super::denials::{Denial, DenialSink};
use super::frames::{decode_frame, encode_frame};
use super::resolvers::OrganizationResolver;
use super::scoping::{scope_organization, shown, string_at};
use super::secrets::StaticTokens;
use crate::methods::{access_for, input_of};

/// Everything [`AuthLayer`](super::AuthLayer) consults.
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

    /// A call about another organization's resource, answered as if it did not exist. Only
    /// the log (for operators) names it: any record the caller's organization can read (an
    /// `auth.denied` event, with or without the id) would tell a foreign id from one that
    /// exists nowhere, for which the handler answers the same NOT_FOUND and records nothing.
    fn deny_unseen(&self, method: &str, status: &Status, caller: &Caller) {
        tracing::warn!(
            method,
            code = ?status.code(),
            reason = status.message(),
            token_id = caller.token_id.as_str(),
            role = caller.role.as_str(),
            organization_id = caller.organization_id.as_deref().unwrap_or(""),
            "call denied: another organization's resource"
        );
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
                        self.deny_unseen(&method, &status, &caller);
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
}
