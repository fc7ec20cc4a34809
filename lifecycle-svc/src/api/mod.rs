//! lifecycle-svc's gRPC surface.

mod convert;
mod deprovision;
mod lifecycle;
mod runner;
mod scheduling;
mod tokens;
mod validate;

pub use deprovision::DeprovisionApi;
pub use lifecycle::LifecycleApi;
pub use runner::RunnerApi;
pub use scheduling::SchedulingApi;
pub use tokens::TokenApi;
