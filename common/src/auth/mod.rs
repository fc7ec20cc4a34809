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

mod authority;
mod caller;
mod denials;
mod frames;
mod guard;
mod layer;
mod resolvers;
mod scoping;
mod secrets;

// The role table and the descriptors live in `methods`, which metrics read too; they stay
// reachable here, where services have always found them.
pub use crate::client::Bearer;
pub use crate::methods::{
    Access, DESCRIPTORS, ROLE_TABLE, Role, access_for, all_methods, is_public,
};

pub use authority::{AuthError, RemoteAuthority, TokenAuthority};
pub use caller::{Caller, role_from_proto, role_to_proto};
pub use denials::{Denial, DenialSink};
pub use guard::Guard;
pub use layer::{AuthLayer, AuthService};
pub use resolvers::{OrganizationResolver, TableResolver};
pub use secrets::{StaticTokens, hash_secret, new_secret};
