//! The timing machinery both seeds share: pure schedule math, the due scan by fire key and
//! the reminder loop, used by workspaces' auto-destroy and by scheduled actions alike.

pub(crate) mod math;
