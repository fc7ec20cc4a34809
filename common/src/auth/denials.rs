//! Refused calls, and the sinks that record them besides the log.

use tonic::Code;

use super::caller::Caller;

/// One refused call.
#[derive(Debug, Clone)]
pub struct Denial {
    /// Full method path.
    pub method: String,
    /// The code answered.
    pub code: Code,
    /// Why, for logs and audit.
    pub reason: String,
    /// The caller, when the token was valid.
    pub caller: Option<Caller>,
}

/// Records refusals; lifecycle's writes `auth.denied` outbox events.
pub trait DenialSink: Send + Sync + 'static {
    /// Records one refusal without delaying the answer.
    fn record(&self, denial: Denial);
}
