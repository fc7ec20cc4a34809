//! A runner that completes every run at once, as `ebb runner` does with an instant tool: what
//! cascade tests and benches tear graphs down with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tonic::Code;

use crate::Channel;
use crate::proto::lifecycle::v1 as pb;
use crate::proto::lifecycle::v1::runner_service_client::RunnerServiceClient;

fn transient(code: Code) -> bool {
    matches!(code, Code::Aborted | Code::Unavailable)
}

/// Claims runs of `org` as runner `name` and reports each a success at once, counting them in
/// `completed`, until `stop`; transient failures are retried as `ebb runner` retries them.
pub async fn instant_runner(
    mut client: RunnerServiceClient<Channel>,
    org: String,
    name: String,
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicUsize>,
) {
    while !stop.load(Ordering::Relaxed) {
        let claimed = client
            .claim_run(pb::ClaimRunRequest {
                organization_id: org.clone(),
                runner_id: name.clone(),
                wait: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 200_000_000,
                }),
            })
            .await;
        let claim = match claimed {
            Ok(c) => c.into_inner(),
            Err(s) if transient(s.code()) => continue,
            Err(s) => panic!("claim: {s}"),
        };
        let Some(run) = claim.run else { continue };
        loop {
            let done = client
                .complete_run(pb::CompleteRunRequest {
                    run_id: run.id.clone(),
                    lease_token: claim.lease_token.clone(),
                    outcome: pb::RunOutcome::Succeeded as i32,
                    request_id: format!("complete-{}-{}", run.id, run.attempt),
                    ..Default::default()
                })
                .await;
            match done {
                Ok(_) => break,
                Err(s) if transient(s.code()) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(s) => panic!("complete {}: {s}", run.id),
            }
        }
        completed.fetch_add(1, Ordering::Relaxed);
    }
}
