//! Deprovisioning (seed 002): the catalog of entity kinds and actions, entities and their
//! relationships, plans, action runs and their steps, shared upstreams, webhook triggers and
//! scheduled actions.

pub(crate) mod action_runs;
pub(crate) mod callbacks;
pub(crate) mod catalog;
pub(crate) mod ending;
pub(crate) mod entities;
pub(crate) mod plan;
pub(crate) mod progress;
pub(crate) mod relationships;
pub(crate) mod scheduled;
pub(crate) mod settling;
pub(crate) mod steps;
pub(crate) mod trigger;
pub(crate) mod upstreams;
pub(crate) mod webhooks;
