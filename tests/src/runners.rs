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
/// `completed`, until `stop`; transient failures are retried as `ebb runner` retries them. With
/// `per_claim` above 1 it claims up to that many runs per call (ClaimRuns) and completes them
/// together in one CompleteRuns call, as `ebb runner --parallel` does with runs that end at
/// once.
pub async fn instant_runner(
    mut client: RunnerServiceClient<Channel>,
    org: String,
    name: String,
    per_claim: usize,
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicUsize>,
) {
    let wait = Some(prost_types::Duration {
        seconds: 0,
        nanos: 200_000_000,
    });
    while !stop.load(Ordering::Relaxed) {
        let claimed: Result<Vec<(pb::Run, String)>, tonic::Status> = if per_claim > 1 {
            client
                .claim_runs(pb::ClaimRunsRequest {
                    organization_id: org.clone(),
                    runner_id: name.clone(),
                    wait,
                    max_runs: per_claim as i32,
                })
                .await
                .map(|c| {
                    c.into_inner()
                        .claims
                        .into_iter()
                        .map(|c| (c.run.expect("a claimed run"), c.lease_token))
                        .collect()
                })
        } else {
            client
                .claim_run(pb::ClaimRunRequest {
                    organization_id: org.clone(),
                    runner_id: name.clone(),
                    wait,
                })
                .await
                .map(|c| {
                    let c = c.into_inner();
                    c.run.map(|r| (r, c.lease_token)).into_iter().collect()
                })
        };
        let runs = match claimed {
            Ok(runs) => runs,
            Err(s) if transient(s.code()) => continue,
            Err(s) => panic!("claim: {s}"),
        };
        let n = runs.len();
        match n {
            0 => continue,
            1 => {
                let (run, token) = runs.into_iter().next().expect("one run");
                complete(client.clone(), run, token).await;
            }
            _ => complete_all(client.clone(), runs).await,
        }
        completed.fetch_add(n, Ordering::Relaxed);
    }
}

/// Reports every run of `runs` a success in one CompleteRuns call, retrying transient failures.
async fn complete_all(mut client: RunnerServiceClient<Channel>, runs: Vec<(pb::Run, String)>) {
    let request = pb::CompleteRunsRequest {
        request_id: format!("complete-{}-{}", runs[0].0.id, runs[0].0.attempt),
        completions: runs
            .iter()
            .map(|(run, token)| pb::RunCompletion {
                run_id: run.id.clone(),
                lease_token: token.clone(),
                outcome: pb::RunOutcome::Succeeded as i32,
                ..Default::default()
            })
            .collect(),
    };
    loop {
        match client.complete_runs(request.clone()).await {
            Ok(_) => return,
            Err(s) if transient(s.code()) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(s) => panic!("complete {} runs: {s}", runs.len()),
        }
    }
}

/// Reports `run` a success under `token`, retrying transient failures.
async fn complete(mut client: RunnerServiceClient<Channel>, run: pb::Run, token: String) {
    loop {
        let done = client
            .complete_run(pb::CompleteRunRequest {
                run_id: run.id.clone(),
                lease_token: token.clone(),
                outcome: pb::RunOutcome::Succeeded as i32,
                request_id: format!("complete-{}-{}", run.id, run.attempt),
                ..Default::default()
            })
            .await;
        match done {
            Ok(_) => return,
            Err(s) if transient(s.code()) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(s) => panic!("complete {}: {s}", run.id),
        }
    }
}
