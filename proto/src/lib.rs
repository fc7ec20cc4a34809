//! Ebb's protobuf API, generated at build time from `proto/ebb/**`.
#![allow(clippy::all, missing_docs)]

/// `ebb.lifecycle.v1`
pub mod lifecycle {
    pub mod v1 {
        tonic::include_proto!("ebb.lifecycle.v1");
    }
}

/// The completion a CompleteRun request reports, as one entry of a CompleteRuns request.
impl From<&lifecycle::v1::CompleteRunRequest> for lifecycle::v1::RunCompletion {
    fn from(r: &lifecycle::v1::CompleteRunRequest) -> Self {
        Self {
            run_id: r.run_id.clone(),
            lease_token: r.lease_token.clone(),
            outcome: r.outcome,
            exit_code: r.exit_code,
            output_tail: r.output_tail.clone(),
            state_version_serial: r.state_version_serial,
        }
    }
}

/// `ebb.scheduler.v1`
pub mod scheduler {
    pub mod v1 {
        tonic::include_proto!("ebb.scheduler.v1");
    }
}

/// `ebb.notifier.v1`
pub mod notifier {
    pub mod v1 {
        tonic::include_proto!("ebb.notifier.v1");
    }
}

/// `ebb.audit.v1`
pub mod audit {
    pub mod v1 {
        tonic::include_proto!("ebb.audit.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Ebb proto and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ebb_descriptor.bin"));
