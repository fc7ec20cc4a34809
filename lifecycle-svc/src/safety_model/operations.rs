//! Each operation as its caller performs it in production: the API, the scheduler, a
//! runner.

use std::collections::BTreeMap;

use ebb_common::Error;
use serde_json::json;

use crate::actor;
use crate::approval;
use crate::auto_destroy::{queue, reminders, settings};
use crate::deprovision::{relationships, steps, trigger};
use crate::finish::{self, Completion};
use crate::runs::lease;
use crate::tenancy::orgs;
use crate::timing::recurrence::Recurrence;
use crate::timing::{self, due};
use crate::workspaces::{self, WorkspaceChanges, WorkspaceRow, lock, manual_runs, state_versions};

use super::case::{
    API, HOUR, LAYOUT, MAX_RUN_ATTEMPTS, MINUTE, Op, RECURRING, RUN_LEASE_MS, SHARDS, WORKSPACES,
};
use super::model::newly_within_week;
use super::policy_change::PolicyChange;
use super::running::count;
use super::world::{Applied, Done, World, admin, claimant, runner_token, scheduler, unexpected};

impl World {
    pub(super) async fn apply(
        &mut self,
        op: &Op,
        before: &[WorkspaceRow],
    ) -> Result<Applied, String> {
        let now = self.model.now;
        let ws = |i: usize| self.ws[i].clone();
        let mut applied = Applied::default();
        match op.clone() {
            Op::Tick => {
                self.tick().await?;
                applied.tick = true;
            }
            Op::Advance { minutes } => self.model.now += minutes * MINUTE,
            Op::ScheduleAt { ws: i, in_minutes } => {
                let (id, at) = (ws(i), now + in_minutes * MINUTE);
                let done = self
                    .txn(admin(), move |t| {
                        Box::pin(async move {
                            let schedule = settings::Schedule {
                                at: Some(at),
                                ..settings::Schedule::default()
                            };
                            settings::set_auto_destroy(t, &id, schedule, API, now).await
                        })
                    })
                    .await?;
                applied = self.scheduled(i, done, "an auto_destroy_at")?;
                applied.explicit.push(i);
                applied.resettled.push(i);
            }
            Op::ScheduleInactivity { ws: i, hours } => {
                let id = ws(i);
                let done = self
                    .txn(admin(), move |t| {
                        Box::pin(async move {
                            let schedule = settings::Schedule {
                                inactivity_ms: Some(hours * HOUR),
                                ..settings::Schedule::default()
                            };
                            settings::set_auto_destroy(t, &id, schedule, API, now).await
                        })
                    })
                    .await?;
                applied = self.scheduled(i, done, "an inactivity period")?;
                applied.implicit.push(i);
                applied.resettled.push(i);
            }
            Op::Extend { ws: i, hours } => {
                let id = ws(i);
                let done = self
                    .txn(admin(), move |t| {
                        Box::pin(async move {
                            settings::extend_auto_destroy(t, &id, hours * HOUR, API, now).await
                        })
                    })
                    .await?;
                applied = outcome(done);
                applied.explicit.push(i);
                applied.resettled.push(i);
            }
            Op::Clear {
                ws: i,
                at,
                inactivity,
                inherit,
            } => {
                let id = ws(i);
                let done = self
                    .txn(admin(), move |t| {
                        Box::pin(async move {
                            let clear = settings::Clear {
                                at,
                                inactivity,
                                inherit,
                                recurring: false,
                            };
                            settings::clear_auto_destroy(t, &id, clear, API, now).await
                        })
                    })
                    .await?;
                applied = outcome(done);
                applied.implicit.push(i);
                applied.resettled.push(i);
            }
            Op::ScheduleRecurring { ws: i, pattern } => {
                let (id, (cron, zone)) = (ws(i), RECURRING[pattern]);
                let recurrence =
                    Recurrence::parse(cron, zone, "cron", "time_zone").map_err(|e| e.reason)?;
                let set = recurrence.clone();
                let done = self
                    .txn(admin(), move |t| {
                        Box::pin(async move {
                            let schedule = settings::Schedule {
                                recurring: Some(set),
                                ..settings::Schedule::default()
                            };
                            settings::set_auto_destroy(t, &id, schedule, API, now).await
                        })
                    })
                    .await?;
                applied = self.scheduled(i, done, "a recurring schedule")?;
                if applied.refused.is_none() {
                    self.model.recurring[i] = Some(recurrence);
                    self.model.recurring_extended[i].clear();
                }
                applied.implicit.push(i);
                applied.resettled.push(i);
            }
            Op::ClearRecurring { ws: i } => {
                let id = ws(i);
                let done = self
                    .txn(admin(), move |t| {
                        Box::pin(async move {
                            let clear = settings::Clear {
                                recurring: true,
                                ..settings::Clear::default()
                            };
                            settings::clear_auto_destroy(t, &id, clear, API, now).await
                        })
                    })
                    .await?;
                applied = outcome(done);
                if applied.refused.is_none() {
                    self.model.recurring[i] = None;
                }
                applied.implicit.push(i);
                applied.resettled.push(i);
            }
            Op::Protect { ws: i, on } => {
                let id = ws(i);
                let done = self
                    .txn(admin(), move |t| {
                        Box::pin(async move {
                            let changes = WorkspaceChanges {
                                protected: Some(on),
                                ..WorkspaceChanges::default()
                            };
                            workspaces::update_workspace(t, &id, changes, API, now).await
                        })
                    })
                    .await?;
                if matches!(done, Done::Ok(_)) {
                    self.model.flag[i] = on;
                }
                applied = outcome(done);
                applied.implicit.push(i);
            }
            Op::Relabel { ws: i, prod } => {
                let id = ws(i);
                let done = self
                    .txn(admin(), move |t| {
                        Box::pin(async move {
                            let env = if prod { "prod" } else { "dev" };
                            let changes = WorkspaceChanges {
                                labels: Some(BTreeMap::from([("env".into(), env.into())])),
                                ..WorkspaceChanges::default()
                            };
                            workspaces::update_workspace(t, &id, changes, API, now).await
                        })
                    })
                    .await?;
                if matches!(done, Done::Ok(_)) {
                    self.model.prod[i] = prod;
                }
                applied = outcome(done);
                applied.implicit.push(i);
            }
            Op::LabelPolicy {
                protect_prod,
                wrong_confirm,
            } => {
                applied = self
                    .policy_change(before, wrong_confirm, PolicyChange::Labels(protect_prod))
                    .await?;
                if applied.refused.is_none() {
                    self.model.policy_prod = protect_prod;
                }
                applied.implicit = (0..WORKSPACES).collect();
            }
            Op::Windows {
                pattern,
                wrong_confirm,
            } => {
                applied = self
                    .policy_change(before, wrong_confirm, PolicyChange::Windows(pattern))
                    .await?;
                if applied.refused.is_none() {
                    self.model.windows = pattern;
                }
                applied.implicit = (0..WORKSPACES).collect();
            }
            Op::ProjectDefault {
                project,
                hours,
                wrong_confirm,
            } => {
                applied = self
                    .policy_change(
                        before,
                        wrong_confirm,
                        PolicyChange::ProjectDefault(project, hours.map(|h| h * HOUR)),
                    )
                    .await?;
                applied.implicit = (0..WORKSPACES)
                    .filter(|i| LAYOUT[*i].0 == project)
                    .collect();
                applied.resettled = (0..WORKSPACES)
                    .filter(|i| LAYOUT[*i].0 == project && before[*i].inherits_project_auto_destroy)
                    .collect();
            }
            Op::Lock { ws: i, on } => {
                let id = ws(i);
                let done = self
                    .txn(admin(), move |t| {
                        Box::pin(async move {
                            let reason = on.then(|| "maintenance".to_owned());
                            lock::set_lock(t, &id, reason, API, now).await
                        })
                    })
                    .await?;
                applied = outcome(done);
            }
            Op::Archive { ws: i, on } => {
                let id = ws(i);
                let done = self
                    .txn(admin(), move |t| {
                        Box::pin(async move { lock::set_archived(t, &id, on, API, now).await })
                    })
                    .await?;
                applied = outcome(done);
                if !on {
                    applied.implicit.push(i);
                }
            }
            Op::Apply { ws: i } => {
                let (id, serial) = (ws(i), before[i].latest_serial + 1);
                let done = self
                    .txn(admin(), move |t| {
                        Box::pin(async move {
                            state_versions::record_state_version(
                                t, &id, serial, None, false, API, now,
                            )
                            .await
                        })
                    })
                    .await?;
                applied = outcome(done);
                applied.activity.push(i);
            }
            Op::ManualDestroy { ws: i } => {
                let id = ws(i);
                let done = self
                    .txn(admin(), move |t| {
                        Box::pin(async move {
                            manual_runs::create_manual_run(t, &id, true, true, "", API, now).await
                        })
                    })
                    .await?;
                applied = outcome(done);
            }
            Op::RunnerSucceeds => self.runner(Some(true)).await?,
            Op::RunnerFails => self.runner(Some(false)).await?,
            Op::RunnerVanishes => self.runner(None).await?,
            Op::RunnerTakesSeveral { succeed } => self.runner_takes_several(succeed).await?,
            Op::LateCompletion { succeed } => {
                if let Some((run, token)) = self.model.abandoned.pop_front() {
                    // The lease may have been lost meanwhile: then it is refused.
                    applied = outcome(self.complete(run, token, succeed).await?);
                }
            }
            Op::RescueLeases => {
                let policy = self.policy.clone();
                let done = self
                    .txn(scheduler("rescue_expired_run_leases", 0), move |t| {
                        Box::pin(async move {
                            finish::rescue_expired_run_leases(
                                t,
                                100,
                                MAX_RUN_ATTEMPTS,
                                now,
                                &policy,
                            )
                            .await
                        })
                    })
                    .await?;
                refusal_is_failure("rescue_expired_run_leases", done)?;
            }
            Op::Cancel { pick } => {
                let active: Vec<String> = self
                    .runs()
                    .await?
                    .into_iter()
                    .filter(|r| matches!(r.status.as_str(), "queued" | "running"))
                    .map(|r| r.id)
                    .collect();
                if !active.is_empty() {
                    let id = active[pick % active.len()].clone();
                    let policy = self.policy.clone();
                    let done = self
                        .txn(admin(), move |t| {
                            Box::pin(
                                async move { finish::cancel_run(t, &id, API, now, &policy).await },
                            )
                        })
                        .await?;
                    applied = outcome(done);
                }
            }
            Op::Deprovision {
                tenant,
                grace_hours,
                wrong_confirm,
            } => applied = self.deprovision(tenant, grace_hours, wrong_confirm).await?,
            Op::Decide { pick, approve } => {
                let pending: Vec<String> = self
                    .runs()
                    .await?
                    .into_iter()
                    .filter(|r| r.status == "queued" && r.approval.as_deref() == Some("pending"))
                    .map(|r| r.id)
                    .collect();
                if !pending.is_empty() {
                    let id = pending[pick % pending.len()].clone();
                    let policy = self.policy.clone();
                    let done = self
                        .txn(admin(), move |t| {
                            Box::pin(async move {
                                if approve {
                                    approval::approve(t, &id, API, "model approves", now).await
                                } else {
                                    approval::reject(t, &id, API, "model rejects", now, &policy)
                                        .await
                                }
                            })
                        })
                        .await?;
                    applied = outcome(done);
                }
            }
            Op::FinalizeGrace => {
                let done = self
                    .txn(scheduler("finalize_grace_periods", 0), move |t| {
                        Box::pin(async move { relationships::finalize_elapsed(t, 100, now).await })
                    })
                    .await?;
                refusal_is_failure("finalize_elapsed", done)?;
            }
        }
        Ok(applied)
    }

    /// What setting a schedule did; a protected workspace must have refused it (AD-4).
    fn scheduled<T>(&self, i: usize, done: Done<T>, what: &str) -> Result<Applied, String> {
        if matches!(done, Done::Ok(_)) && self.model.protected(i) {
            return Err(format!("w{i}: protected, yet it accepted {what}"));
        }
        Ok(outcome(done))
    }

    /// The scheduler's tick, as its tasks run it: for every shard the due scan and the queue
    /// call, then the reminders, then the step timeouts.
    async fn tick(&self) -> Result<(), String> {
        let now = self.model.now;
        for shard in 0..SHARDS {
            let keys = actor::acting(
                scheduler("auto_destroy_check", shard),
                due::find_due(
                    &self.core.db.conn,
                    &timing::WORKSPACES,
                    shard,
                    SHARDS,
                    100,
                    None,
                    now,
                ),
            )
            .await
            .map_err(|e| unexpected("find_due", e))?;
            let done = self
                .txn(scheduler("auto_destroy_check", shard), move |t| {
                    Box::pin(async move { queue::queue_auto_destroy_runs(t, &keys, now).await })
                })
                .await?;
            refusal_is_failure("queue_auto_destroy_runs", done)?;
        }
        for shard in 0..SHARDS {
            let done = self
                .txn(scheduler("auto_destroy_reminders", shard), move |t| {
                    Box::pin(async move {
                        reminders::send_due_reminders(t, shard, SHARDS, 100, None, now).await
                    })
                })
                .await?;
            refusal_is_failure("send_due_reminders", done)?;
            let policy = self.policy.clone();
            let done = self
                .txn(scheduler("auto_destroy_reminders", shard), move |t| {
                    Box::pin(
                        async move { approval::expire_due(t, shard, SHARDS, now, &policy).await },
                    )
                })
                .await?;
            refusal_is_failure("expire approvals", done)?;
        }
        let engine = self.policy.engine.clone();
        let done = self
            .txn(scheduler("time_out_action_steps", 0), move |t| {
                Box::pin(async move { steps::time_out_steps(t, &engine, 100, now).await })
            })
            .await?;
        refusal_is_failure("time_out_steps", done).map(|_| ())
    }

    /// A runner claims the oldest queued run and completes it (`Some`), or vanishes holding
    /// its lease (`None`).
    async fn runner(&mut self, succeed: Option<bool>) -> Result<(), String> {
        let (org, now) = (self.org.clone(), self.model.now);
        let done = self
            .txn(claimant("runner-1"), move |t| {
                Box::pin(
                    async move { lease::claim_run(t, &org, "runner-1", RUN_LEASE_MS, now).await },
                )
            })
            .await?;
        let Some((run, token)) = refusal_is_failure("claim_run", done)? else {
            return Ok(());
        };
        match succeed {
            Some(succeed) => {
                refusal_is_failure("complete_run", self.complete(run.id, token, succeed).await?)?;
            }
            None => self.model.abandoned.push_back((run.id, token)),
        }
        Ok(())
    }

    /// A runner claims up to three of the oldest queued runs in one call and completes each.
    async fn runner_takes_several(&mut self, succeed: bool) -> Result<(), String> {
        let (org, now) = (self.org.clone(), self.model.now);
        let done = self
            .txn(claimant("runner-2"), move |t| {
                Box::pin(async move {
                    lease::claim_runs(t, &org, "runner-2", 3, RUN_LEASE_MS, now).await
                })
            })
            .await?;
        let claimed = refusal_is_failure("claim_runs", done)?;
        if claimed.is_empty() {
            return Ok(());
        }
        // The runs ended together: one call completes them all, as `ebb runner` reports them.
        let completions: Vec<finish::RunCompletion> = claimed
            .into_iter()
            .map(|(run, lease_token)| finish::RunCompletion {
                run_id: run.id,
                lease_token,
                completion: ended(succeed),
            })
            .collect();
        let policy = self.policy.clone();
        let done = self
            .txn(runner_token(), move |t| {
                Box::pin(async move { finish::complete_runs(t, &completions, now, &policy).await })
            })
            .await?;
        refusal_is_failure("complete_runs", done)?;
        Ok(())
    }

    async fn complete(
        &self,
        run: String,
        token: String,
        succeed: bool,
    ) -> Result<Done<crate::runs::RunRow>, String> {
        let (now, policy) = (self.model.now, self.policy.clone());
        self.txn(runner_token(), move |t| {
            Box::pin(async move {
                finish::complete_run(t, &run, &token, ended(succeed), now, &policy).await
            })
        })
        .await
    }

    /// Triggers DeprovisionTenant as the API does: the operator echoes the dry run's count
    /// of entities to tear down as `confirm_count` (or, for a wrong confirmation, that count
    /// plus one), and the cascade's blast-radius guard (AD-13) checks it in the same
    /// transaction.
    async fn deprovision(
        &self,
        tenant: usize,
        grace_hours: i64,
        wrong_confirm: bool,
    ) -> Result<Applied, String> {
        let (entity, org, engine) = (
            self.tenants[tenant].clone(),
            self.org.clone(),
            self.policy.engine.clone(),
        );
        let now = self.model.now;
        let done = self
            .txn(admin(), move |t| {
                Box::pin(async move {
                    let mut parameters = serde_json::Map::new();
                    parameters.insert("gracePeriodSeconds".into(), json!(grace_hours * 3600));
                    let run = |dry_run| {
                        trigger::trigger(
                            t,
                            &engine,
                            &entity,
                            "DeprovisionTenant",
                            &parameters,
                            dry_run,
                            None,
                            API,
                            now,
                        )
                    };
                    let shown = run(true).await?.plan.nodes.len();
                    let confirm = if wrong_confirm { shown + 1 } else { shown };
                    let planned = run(false).await?.plan;
                    let threshold = orgs::get_org(t, &org).await?.confirm_threshold;
                    trigger::check_blast_radius(&planned, threshold, confirm as i32)?;
                    Ok((shown, planned.nodes.len(), threshold))
                })
            })
            .await?;
        if let Done::Ok((shown, planned, threshold)) = &done {
            if shown != planned {
                return Err(format!(
                    "the dry run showed {shown} entities to tear down, the trigger planned \
                     {planned}"
                ));
            }
            if wrong_confirm && *planned > usize::try_from(*threshold).unwrap_or(0) {
                return Err(format!(
                    "the cascade's blast-radius guard accepted confirm_count = {} for {planned} \
                     entities",
                    planned + 1
                ));
            }
        }
        Ok(outcome(done))
    }

    /// A policy change under the blast-radius guard (AD-13), confirmed the way an operator
    /// does: tried once without a count; if the guard asks for one, it is checked against the
    /// destroys the change would bring within 7 days and echoed back (or, for a wrong
    /// confirmation, off by one — which must be refused).
    async fn policy_change(
        &mut self,
        before: &[WorkspaceRow],
        wrong_confirm: bool,
        change: PolicyChange,
    ) -> Result<Applied, String> {
        let now = self.model.now;
        // The trial, rolled back whatever it does.
        let txn = self
            .core
            .begin()
            .await
            .map_err(|e| unexpected("begin", e))?;
        let trial = actor::acting(
            admin(),
            change.apply(&txn, &self.org, &self.projects, -1, now),
        )
        .await;
        let asked = match trial {
            Ok(()) => None,
            Err(Error::FailedPrecondition(p)) if p.message.contains("confirm_count = ") => {
                let asked: usize = p
                    .message
                    .rsplit("confirm_count = ")
                    .next()
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| format!("no count in the guard's refusal: {p}"))?;
                let proposed = self.workspaces(&txn).await?;
                let moved = (0..WORKSPACES)
                    .filter(|i| {
                        newly_within_week(
                            before[*i].next_auto_destroy_at,
                            proposed[*i].next_auto_destroy_at,
                            now,
                        )
                    })
                    .count();
                if moved != asked {
                    return Err(format!(
                        "the blast-radius guard asks confirm_count = {asked}, but the change \
                         brings {moved} destroys within 7 days"
                    ));
                }
                count("model: blast-radius guard asked", 1);
                Some(asked)
            }
            Err(e @ (Error::InvalidArgument(_) | Error::FailedPrecondition(_))) => {
                txn.rollback()
                    .await
                    .map_err(|e| unexpected("rollback", e))?;
                return Ok(Applied::refused(&e));
            }
            Err(e) => return Err(unexpected("policy change", e)),
        };
        txn.rollback()
            .await
            .map_err(|e| unexpected("rollback", e))?;
        let confirm = match (asked, wrong_confirm) {
            (None, _) => 0,
            (Some(n), false) => n as i32,
            (Some(n), true) => n as i32 + 1,
        };
        let (org, projects) = (self.org.clone(), self.projects.clone());
        let done = self
            .txn(admin(), move |t| {
                Box::pin(async move { change.apply(t, &org, &projects, confirm, now).await })
            })
            .await?;
        match (&done, asked.is_some() && wrong_confirm) {
            (Done::Ok(()), true) => Err(format!(
                "the blast-radius guard accepted confirm_count = {confirm} for {asked:?} destroys"
            )),
            (Done::Refused(e), false) => Err(format!(
                "a policy change confirmed with the count its guard asked for was refused: {e}"
            )),
            _ => Ok(outcome(done)),
        }
    }
}

fn outcome<T>(done: Done<T>) -> Applied {
    match done {
        Done::Ok(_) => Applied::default(),
        Done::Refused(e) => Applied::refused(&e),
    }
}

/// Background work refuses nothing: a refusal there is a failure.
fn refusal_is_failure<T>(what: &str, done: Done<T>) -> Result<T, String> {
    match done {
        Done::Ok(v) => Ok(v),
        Done::Refused(e) => Err(format!("{what} refused: {e}")),
    }
}

/// How a model runner's run ended: an instant success, or a failure with exit code 1.
fn ended(succeed: bool) -> Completion {
    Completion {
        succeeded: succeed,
        exit_code: if succeed { 0 } else { 1 },
        output_tail: String::new(),
        state_version_serial: None,
    }
}
