//! Action runs: trigger (or plan with a dry run), follow, retry, cancel, and complete a webhook step by its callback token.

use ebb_common::auth::Caller;
use ebb_common::error::Violations;
use ebb_common::page;
use ebb_proto::lifecycle::v1 as pb;
use tonic::Request;

use super::{DeprovisionApi, Reply, ok};
use crate::actor::Actor;
use crate::api::deprovision::{
    ACTOR, action_run_pb, after, grace_period, kept_pb, parameters, plan_pb, short_name,
};
use crate::api::validate as check;
use crate::core::Call;
use crate::deprovision::action_runs::ActionRunStatus;
use crate::deprovision::{action_runs, callbacks, steps, trigger};

impl DeprovisionApi {
    pub(super) async fn trigger_action(
        &self,
        request: Request<pb::TriggerActionRequest>,
    ) -> Reply<pb::TriggerActionResponse> {
        let call = Call::of(&request, "TriggerAction");
        let req = request.into_inner();
        let mut v = Violations::new();
        let entity = check::id(&mut v, "entity_id", &req.entity_id);
        let action = short_name(&mut v, "action", &req.action);
        let params = parameters(&mut v, &req.parameters);
        grace_period(&mut v, &params, self.core.config.max_grace_period);
        v.finish()?;
        let (dry_run, now, engine) = (req.dry_run, self.core.now(), steps::Engine::of(&self.core));
        let confirm_count = req.confirm_count;
        let resp = self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let t = trigger::trigger(
                        txn, &engine, &entity, &action, &params, dry_run, None, ACTOR, now,
                    )
                    .await?;
                    if !dry_run {
                        // AD-13: refused here, the whole trigger rolls back.
                        trigger::check_blast_radius(
                            &t.plan,
                            t.org.confirm_threshold,
                            confirm_count,
                        )?;
                    }
                    let run = match &t.run {
                        Some(r) => Some(action_run_pb(txn, r).await?),
                        None => None,
                    };
                    Ok(pb::TriggerActionResponse {
                        action_run: run,
                        plan: plan_pb(&t.plan),
                        kept: kept_pb(&t.plan),
                        destroy_count: i32::try_from(t.plan.nodes.len()).unwrap_or(i32::MAX),
                    })
                })
            })
            .await;
        self.core.runs_queued.notify_waiters();
        ok(resp)
    }

    pub(super) async fn get_action_run(
        &self,
        request: Request<pb::GetActionRunRequest>,
    ) -> Reply<pb::GetActionRunResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "action_run_id", &req.action_run_id);
        v.finish()?;
        let r = action_runs::get_action_run(&self.core.db.conn, &id).await?;
        ok(Ok(pb::GetActionRunResponse {
            action_run: Some(action_run_pb(&self.core.db.conn, &r).await?),
        }))
    }

    pub(super) async fn list_action_runs(
        &self,
        request: Request<pb::ListActionRunsRequest>,
    ) -> Reply<pb::ListActionRunsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::id(&mut v, "organization_id", &req.organization_id);
        let entity = check::optional_id(&mut v, "entity_id", &req.entity_id);
        let status = match pb::ActionRunStatus::try_from(req.status) {
            Ok(pb::ActionRunStatus::Unspecified) => None,
            Ok(pb::ActionRunStatus::Running) => Some(ActionRunStatus::Running),
            Ok(pb::ActionRunStatus::Succeeded) => Some(ActionRunStatus::Succeeded),
            Ok(pb::ActionRunStatus::Failed) => Some(ActionRunStatus::Failed),
            Ok(pb::ActionRunStatus::Canceled) => Some(ActionRunStatus::Canceled),
            Err(_) => {
                v.add(
                    "status",
                    format!("unknown action run status {}", req.status),
                );
                None
            }
        };
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "action_runs",
            &org,
            entity.as_deref().unwrap_or_default(),
            status.map_or("", |s| s.as_str()),
        ]);
        let before = match page::decode(&req.page_token, &fh)? {
            Some(p) => Some(after(&p)?),
            None => None,
        };
        let filter = action_runs::ActionRunFilter {
            organization_id: org,
            entity_id: entity,
            status,
        };
        let rows = action_runs::list(&self.core.db.conn, &filter, before, size + 1).await?;
        let (rows, next_page_token) = page::split(rows, size, &fh, |l| {
            vec![l.created_at.to_string(), l.id.clone()]
        });
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(action_run_pb(&self.core.db.conn, r).await?);
        }
        ok(Ok(pb::ListActionRunsResponse {
            action_runs: out,
            next_page_token,
        }))
    }

    pub(super) async fn retry_action_run(
        &self,
        request: Request<pb::RetryActionRunRequest>,
    ) -> Reply<pb::RetryActionRunResponse> {
        let call = Call::of(&request, "RetryActionRun");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "action_run_id", &req.action_run_id);
        v.finish()?;
        let (now, engine) = (self.core.now(), steps::Engine::of(&self.core));
        let resp = self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let (r, _) = trigger::retry(txn, &engine, &id, ACTOR, now).await?;
                    Ok(pb::RetryActionRunResponse {
                        action_run: Some(action_run_pb(txn, &r).await?),
                    })
                })
            })
            .await;
        self.core.runs_queued.notify_waiters();
        ok(resp)
    }

    pub(super) async fn cancel_action_run(
        &self,
        request: Request<pb::CancelActionRunRequest>,
    ) -> Reply<pb::CancelActionRunResponse> {
        let call = Call::of(&request, "CancelActionRun");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "action_run_id", &req.action_run_id);
        v.finish()?;
        let (now, engine) = (self.core.now(), steps::Engine::of(&self.core));
        let resp = self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let (r, _) = trigger::cancel(txn, &engine, &id, ACTOR, now).await?;
                    Ok(pb::CancelActionRunResponse {
                        action_run: Some(action_run_pb(txn, &r).await?),
                    })
                })
            })
            .await;
        // Runs waiting on its upstreams may have queued destroy runs.
        self.core.runs_queued.notify_waiters();
        ok(resp)
    }

    pub(super) async fn complete_action_step(
        &self,
        request: Request<pb::CompleteActionStepRequest>,
    ) -> Reply<pb::CompleteActionStepResponse> {
        let mut call = Call::of(&request, "CompleteActionStep");
        let anonymous = request.extensions().get::<Caller>().is_none();
        let req = request.into_inner();
        let mut v = Violations::new();
        let step = check::id(&mut v, "step_id", &req.step_id);
        // The external system completing the step acts through its callback token.
        call.actor = Actor::Callback {
            step_id: step.clone(),
        };
        // Without a bearer token (see `SELF_AUTHORIZED`) the step is the scope of request ids.
        if anonymous {
            call.organization_id = format!("callback:{step}");
        }
        if req.callback_token.is_empty() || req.callback_token.len() > 200 {
            v.add(
                "callback_token",
                "is required (the token sent with the webhook)",
            );
        }
        let succeeded = match pb::StepOutcome::try_from(req.outcome) {
            Ok(pb::StepOutcome::Succeeded) => true,
            Ok(pb::StepOutcome::Failed) => false,
            _ => {
                v.add(
                    "outcome",
                    "must be STEP_OUTCOME_SUCCEEDED or STEP_OUTCOME_FAILED",
                );
                false
            }
        };
        let message = check::text(&mut v, "message", &req.message, 4096);
        v.finish()?;
        let (now, engine, token) = (
            self.core.now(),
            steps::Engine::of(&self.core),
            req.callback_token.clone(),
        );
        let resp = self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let (r, _) = callbacks::complete_step(
                        txn, &engine, &step, &token, succeeded, &message, now,
                    )
                    .await?;
                    Ok(pb::CompleteActionStepResponse {
                        action_run: Some(action_run_pb(txn, &r).await?),
                    })
                })
            })
            .await;
        self.core.runs_queued.notify_waiters();
        ok(resp)
    }
}
