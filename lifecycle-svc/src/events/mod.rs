//! Domain events: written in the same transaction as the change (the outbox) and relayed to
//! audit-svc and notifier-svc.

pub(crate) mod outbox;
pub(crate) mod relay;

pub(crate) use outbox::NewEvent;
