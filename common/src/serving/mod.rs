//! Serving gRPC: mounting services with health and reflection, authentication, limits, TLS,
//! readiness, and ordered, graceful shutdown.

mod component;
mod connections;
mod limits;
mod observe;
mod readiness;
mod server;
mod shutdown;
mod startup;
pub mod web;

pub use component::{Authority, Component};
pub use limits::{Limits, LimitsLayer};
pub use observe::ObserveLayer;
pub use readiness::READINESS_PING_TIMEOUT;
pub use server::{REFLECTED_DESCRIPTOR_SETS, serve};
pub use shutdown::shutdown_on_signals;
pub use startup::{bind, connect_database};
