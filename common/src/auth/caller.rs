//! Who is calling: the authenticated [`Caller`] of one RPC, and its role in the proto's terms.

use tonic::Status;

use crate::methods::Role;

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
    /// What the token is for, as its creator described it (tokens cannot be re-described, so
    /// a cached caller's description is never stale); empty where the token store is remote.
    pub description: String,
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

    /// The caller of a request that passed [`AuthLayer`](super::AuthLayer).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
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
