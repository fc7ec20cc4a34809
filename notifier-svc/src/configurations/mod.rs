//! Notification configurations: what they are, how a client's input is checked, and how they
//! are stored with their signing secrets.

mod checks;
mod model;
mod secrets;
mod store;

pub use checks::{
    Checks, check_destination, check_event_types, check_name, prefix_into, spec_from_proto,
};
pub use model::{Configuration, Destination, Scope, Spec};
pub use secrets::{
    expire_secrets, insert_secret, reseal_secrets, signing_secrets, signing_secrets_of,
};
pub use store::{
    delete, disable, enabled_in, get, insert, list, record_verification_failure, update,
};
