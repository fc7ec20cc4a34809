//! Auto-destroy (seed 000): a workspace's settings, queuing destroy runs for due fire keys,
//! reminders, what a finished destroy run means, and the preview of a proposed policy.

pub(crate) mod outcome;
pub(crate) mod policy;
pub(crate) mod preview;
pub(crate) mod queue;
pub(crate) mod reminders;
pub(crate) mod settings;
