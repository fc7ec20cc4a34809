//! Who owns what: organizations with their settings and label policy, projects with their
//! defaults, and API tokens.

pub(crate) mod orgs;
pub(crate) mod projects;
pub(crate) mod tokens;
