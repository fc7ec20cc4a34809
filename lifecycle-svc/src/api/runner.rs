//! `ebb.lifecycle.v1.RunnerService`: claim, heartbeat, complete — fenced by the lease token.

use std::collections::HashSet;
use std::time::Duration;

use ebb_common::error::Violations;
use ebb_common::time::{from_duration, to_duration};
use ebb_common::{Error, Result};
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::runner_service_server::RunnerService;
use tonic::{Request, Response, Status};

use super::{convert, validate as check};
use crate::actor::{self, Actor};
use crate::core::Call;
use crate::core::Lifecycle;
use crate::finish;
use crate::finish::Completion;
use crate::runs::RunRow;
use crate::runs::lease;
use crate::tenancy::orgs;

/// The longest a claim may wait for a run.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_secs(60);
/// How often a waiting claim looks for runs queued by other replicas.
const CLAIM_POLL: Duration = Duration::from_millis(250);

/// RunnerService over the domain.
#[derive(Clone)]
pub struct RunnerApi {
    core: Lifecycle,
}

impl RunnerApi {
    /// Serves `core`.
    pub fn new(core: Lifecycle) -> Self {
        Self { core }
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.core.config.run_lease_ttl.as_millis()).unwrap_or(60_000)
    }

    /// One attempt: up to `max` runs claimed in their own transaction (one statement for one).
    async fn try_claim(
        &self,
        org: &str,
        runner: &str,
        actor: &Actor,
        max: u32,
    ) -> Result<Vec<(RunRow, String)>> {
        let txn = self.core.begin().await?;
        let (lease_ms, now) = (self.lease_ms(), self.core.now());
        let claimed = actor::acting(actor.clone(), async {
            if max == 1 {
                let one = lease::claim_run(&txn, org, runner, lease_ms, now).await?;
                Ok(one.into_iter().collect())
            } else {
                lease::claim_runs(&txn, org, runner, max, lease_ms, now).await
            }
        })
        .await?;
        txn.commit().await?;
        Ok(claimed)
    }

    /// Claims up to `max` runs as `of` asks, waiting for the first: empty when none came.
    async fn claim(&self, of: &ClaimOf, actor: &Actor, max: u32) -> Result<Vec<(RunRow, String)>> {
        let (org, runner) = (of.organization_id.as_str(), of.runner_id.as_str());
        let until = tokio::time::Instant::now() + of.wait;
        let mut known = false;
        loop {
            let notified = self.core.runs_queued.notified();
            let claimed = self.try_claim(org, runner, actor, max).await?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
            if !known {
                // Refuse an unknown organization instead of waiting on it. A claim that found
                // a run needs no such look-up: the run names its organization.
                orgs::get_org(&self.core.db.conn, org).await?;
                known = true;
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                return Ok(Vec::new());
            }
            let nap = CLAIM_POLL.min(until - now);
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }
}

/// The most runs one ClaimRuns call takes.
pub const MAX_RUNS_PER_CLAIM: i32 = 100;

/// What every claim names: whose runs, which runner, and how long to wait for the first.
struct ClaimOf {
    organization_id: String,
    runner_id: String,
    wait: Duration,
}

/// A claim's fields, checked into `v`.
fn claim_of(
    v: &mut Violations,
    organization_id: &str,
    runner: &str,
    wait_for: Option<&prost_types::Duration>,
) -> ClaimOf {
    ClaimOf {
        organization_id: check::id(v, "organization_id", organization_id),
        runner_id: runner_id(v, runner),
        wait: wait(v, wait_for),
    }
}

fn runner_id(v: &mut Violations, value: &str) -> String {
    if value.is_empty() || value.len() > 200 || ebb_common::text::has_hidden_or_control(value) {
        v.add("runner_id", "must be 1-200 printable characters");
    }
    value.to_owned()
}

/// A claim's long-poll `wait`: refused rather than clamped above [`MAX_CLAIM_WAIT`] (a runner
/// asking for more than it can get has a bug worth hearing about).
fn wait(v: &mut Violations, value: Option<&prost_types::Duration>) -> Duration {
    let Some(d) = value else {
        return Duration::ZERO;
    };
    match from_duration(d) {
        Ok(ms) if Duration::from_millis(ms as u64) > MAX_CLAIM_WAIT => {
            v.add(
                "wait",
                format!("must be at most {}s", MAX_CLAIM_WAIT.as_secs()),
            );
            Duration::ZERO
        }
        Ok(ms) => Duration::from_millis(ms as u64),
        Err(e) => {
            v.add("wait", e);
            Duration::ZERO
        }
    }
}

#[tonic::async_trait]
impl RunnerService for RunnerApi {
    async fn claim_run(
        &self,
        request: Request<pb::ClaimRunRequest>,
    ) -> std::result::Result<Response<pb::ClaimRunResponse>, Status> {
        let actor = Actor::runner(&request, &request.get_ref().runner_id, "");
        let req = request.into_inner();
        let mut v = Violations::new();
        let of = claim_of(
            &mut v,
            &req.organization_id,
            &req.runner_id,
            req.wait.as_ref(),
        );
        v.finish()?;
        let claimed = self.claim(&of, &actor, 1).await?;
        Ok(Response::new(match claimed.into_iter().next() {
            Some((run, token)) => pb::ClaimRunResponse {
                run: Some(convert::run(&run)),
                lease_token: token,
                lease_duration: Some(to_duration(self.lease_ms())),
            },
            None => pb::ClaimRunResponse::default(),
        }))
    }

    async fn claim_runs(
        &self,
        request: Request<pb::ClaimRunsRequest>,
    ) -> std::result::Result<Response<pb::ClaimRunsResponse>, Status> {
        let actor = Actor::runner(&request, &request.get_ref().runner_id, "");
        let req = request.into_inner();
        let mut v = Violations::new();
        let of = claim_of(
            &mut v,
            &req.organization_id,
            &req.runner_id,
            req.wait.as_ref(),
        );
        if !(1..=MAX_RUNS_PER_CLAIM).contains(&req.max_runs) {
            v.add("max_runs", format!("must be 1-{MAX_RUNS_PER_CLAIM}"));
        }
        v.finish()?;
        let claimed = self.claim(&of, &actor, req.max_runs.unsigned_abs()).await?;
        Ok(Response::new(pb::ClaimRunsResponse {
            claims: claimed
                .into_iter()
                .map(|(run, token)| pb::ClaimedRun {
                    run: Some(convert::run(&run)),
                    lease_token: token,
                })
                .collect(),
            lease_duration: Some(to_duration(self.lease_ms())),
        }))
    }

    async fn heartbeat_run(
        &self,
        request: Request<pb::HeartbeatRunRequest>,
    ) -> std::result::Result<Response<pb::HeartbeatRunResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "run_id", &req.run_id);
        if req.lease_token.is_empty() {
            v.add("lease_token", "is required");
        }
        v.finish()?;
        let txn = self.core.begin().await?;
        let run = lease::heartbeat(
            &txn,
            &id,
            &req.lease_token,
            self.lease_ms(),
            self.core.now(),
        )
        .await?;
        txn.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::HeartbeatRunResponse {
            cancel_requested: run.cancel_requested,
            run: Some(convert::run(&run)),
        }))
    }

    async fn complete_run(
        &self,
        request: Request<pb::CompleteRunRequest>,
    ) -> std::result::Result<Response<pb::CompleteRunResponse>, Status> {
        let call = Call::of(&request, "CompleteRun");
        let req = request.into_inner();
        let mut v = Violations::new();
        let (id, token, completion) = completion_of(&mut v, "", (&req).into());
        v.finish()?;
        let now = self.core.now();
        let policy = finish::Policy::of(&self.core);
        let resp = self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let run =
                        finish::complete_run(txn, &id, &token, completion, now, &policy).await?;
                    Ok(pb::CompleteRunResponse {
                        run: Some(convert::run(&run)),
                    })
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn complete_runs(
        &self,
        request: Request<pb::CompleteRunsRequest>,
    ) -> std::result::Result<Response<pb::CompleteRunsResponse>, Status> {
        let call = Call::of(&request, "CompleteRuns");
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.completions.is_empty() || req.completions.len() > MAX_RUNS_PER_COMPLETION {
            v.add(
                "completions",
                format!("must hold 1-{MAX_RUNS_PER_COMPLETION} completions"),
            );
        }
        let mut seen = HashSet::new();
        let mut completions = Vec::with_capacity(req.completions.len());
        for (i, c) in req.completions.iter().enumerate() {
            let prefix = format!("completions[{i}].");
            if !seen.insert(c.run_id.as_str()) {
                v.add(
                    format!("{prefix}run_id"),
                    "names a run completed earlier in this call",
                );
            }
            let (run_id, lease_token, completion) = completion_of(&mut v, &prefix, c.clone());
            completions.push(finish::RunCompletion {
                run_id,
                lease_token,
                completion,
            });
        }
        v.finish()?;
        let now = self.core.now();
        let policy = finish::Policy::of(&self.core);
        let resp = self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let runs = finish::complete_runs(txn, &completions, now, &policy).await?;
                    Ok(pb::CompleteRunsResponse {
                        runs: runs.iter().map(convert::run).collect(),
                    })
                })
            })
            .await?;
        Ok(Response::new(resp))
    }
}

/// The most runs one CompleteRuns call completes.
pub const MAX_RUNS_PER_COMPLETION: usize = 100;

/// A completion's fields, checked into `v` under `prefix` (`completions[i].` in a batch):
/// the run, its lease token and how it ended.
fn completion_of(
    v: &mut Violations,
    prefix: &str,
    c: pb::RunCompletion,
) -> (String, String, Completion) {
    let id = check::id(v, &format!("{prefix}run_id"), &c.run_id);
    if c.lease_token.is_empty() {
        v.add(format!("{prefix}lease_token"), "is required");
    }
    let succeeded = match pb::RunOutcome::try_from(c.outcome) {
        Ok(pb::RunOutcome::Succeeded) => true,
        Ok(pb::RunOutcome::Failed) => false,
        _ => {
            v.add(
                format!("{prefix}outcome"),
                "must be RUN_OUTCOME_SUCCEEDED or RUN_OUTCOME_FAILED",
            );
            false
        }
    };
    if c.state_version_serial < 0 {
        v.add(
            format!("{prefix}state_version_serial"),
            "must not be negative",
        );
    }
    if c.output_tail.len() > 1024 * 1024 {
        v.add(
            format!("{prefix}output_tail"),
            "must be at most 1 MiB (only the last 16 KiB are kept)",
        );
    }
    let completion = Completion {
        succeeded,
        exit_code: c.exit_code,
        output_tail: c.output_tail,
        state_version_serial: (c.state_version_serial > 0).then_some(c.state_version_serial),
    };
    (id, c.lease_token, completion)
}
