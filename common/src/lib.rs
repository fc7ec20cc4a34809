//! Plumbing shared by Ebb's services: configuration, telemetry, serving, database access,
//! errors, authentication, TLS and service-to-service clients.

pub mod app;
pub mod auth;
pub mod client;
pub mod coalesce;
pub mod config;
pub mod db;
pub mod egress;
pub mod error;
pub mod idempotency;
pub mod methods;
pub mod metrics;
pub mod observe;
pub mod page;
pub mod peers;
pub mod private_files;
pub mod reads;
pub mod rpcs;
pub mod sealing;
pub mod serving;
pub mod signing;
pub mod sql;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod tls;

pub use error::{Error, Result};
