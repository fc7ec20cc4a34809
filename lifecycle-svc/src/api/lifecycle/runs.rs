//! Runs, and the outbox of domain events.

use ebb_common::error::Violations;
use ebb_common::{Error, page};
use ebb_proto::lifecycle::v1 as pb;
use tonic::Request;

use super::{LifecycleApi, Reply, ok};
use crate::api::lifecycle::{API_ACTOR, after_position};
use crate::api::{convert, validate as check};
use crate::core::Call;
use crate::events::outbox;
use crate::workspaces::manual_runs;
use crate::{approval, finish, runs};

/// The run id and reason of an approval decision; both are required.
fn decision(run_id: &str, reason: &str) -> ebb_common::Result<(String, String)> {
    let mut v = Violations::new();
    let id = check::id(&mut v, "run_id", run_id);
    let reason = check::text(&mut v, "reason", reason, 500);
    if reason.trim().is_empty() {
        v.add("reason", "is required: say why, for the audit trail");
    }
    v.finish()?;
    Ok((id, reason))
}

impl LifecycleApi {
    pub(super) async fn create_run(
        &self,
        request: Request<pb::CreateRunRequest>,
    ) -> Reply<pb::CreateRunResponse> {
        let call = Call::of(&request, "CreateRun");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        let message = check::text(&mut v, "message", &req.message, 4096);
        v.finish()?;
        let (is_destroy, auto_apply) = (req.is_destroy, req.auto_apply);
        let now = self.core.now();
        let run = self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let r = manual_runs::create_manual_run(
                        txn, &id, is_destroy, auto_apply, &message, API_ACTOR, now,
                    )
                    .await?;
                    Ok(pb::CreateRunResponse {
                        run: Some(convert::run(&r)),
                    })
                })
            })
            .await;
        if run.is_ok() {
            self.core.runs_queued.notify_waiters();
        }
        ok(run)
    }

    pub(super) async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Reply<pb::GetRunResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "run_id", &req.run_id);
        v.finish()?;
        let r = runs::get_run(&self.core.db.conn, &id).await?;
        ok(Ok(pb::GetRunResponse {
            run: Some(convert::run(&r)),
        }))
    }

    pub(super) async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Reply<pb::ListRunsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let (status, awaiting_approval) = v
            .check("status", convert::run_status_filter(req.status))
            .unwrap_or_default();
        let filter = runs::RunFilter {
            organization_id: check::id(&mut v, "organization_id", &req.organization_id),
            workspace_id: check::optional_id(&mut v, "workspace_id", &req.workspace_id),
            status,
            awaiting_approval,
            source: v
                .check("source", convert::run_source_filter(req.source))
                .flatten(),
        };
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "runs",
            &filter.organization_id,
            filter.workspace_id.as_deref().unwrap_or_default(),
            filter.status.map_or("", |s| s.as_str()),
            match filter.awaiting_approval {
                Some(true) => "awaiting_approval",
                Some(false) => "not_awaiting_approval",
                None => "",
            },
            filter.source.map_or("", |s| s.as_str()),
        ]);
        let before = match page::decode(&req.page_token, &fh)? {
            Some(pos) => Some(after_position(&pos)?),
            None => None,
        };
        let rows = runs::list_runs(&self.core.db.conn, &filter, before, size + 1).await?;
        let (rows, next_page_token) = page::split(rows, size, &fh, |last| {
            vec![last.created_at.to_string(), last.id.clone()]
        });
        ok(Ok(pb::ListRunsResponse {
            runs: rows.iter().map(convert::run).collect(),
            next_page_token,
        }))
    }

    pub(super) async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Reply<pb::CancelRunResponse> {
        let call = Call::of(&request, "CancelRun");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "run_id", &req.run_id);
        v.finish()?;
        let now = self.core.now();
        let policy = finish::Policy::of(&self.core);
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let r = finish::cancel_run(txn, &id, API_ACTOR, now, &policy).await?;
                    Ok(pb::CancelRunResponse {
                        run: Some(convert::run(&r)),
                    })
                })
            })
            .await)
    }

    pub(super) async fn approve_run(
        &self,
        request: Request<pb::ApproveRunRequest>,
    ) -> Reply<pb::ApproveRunResponse> {
        let call = Call::of(&request, "ApproveRun");
        let req = request.into_inner();
        let (id, reason) = decision(&req.run_id, &req.reason)?;
        let now = self.core.now();
        let response = self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let r = approval::approve(txn, &id, API_ACTOR, &reason, now).await?;
                    Ok(pb::ApproveRunResponse {
                        run: Some(convert::run(&r)),
                    })
                })
            })
            .await;
        // Runners long-polling in this process see the approved run at once.
        self.core.runs_queued.notify_waiters();
        ok(response)
    }

    pub(super) async fn reject_run(
        &self,
        request: Request<pb::RejectRunRequest>,
    ) -> Reply<pb::RejectRunResponse> {
        let call = Call::of(&request, "RejectRun");
        let req = request.into_inner();
        let (id, reason) = decision(&req.run_id, &req.reason)?;
        let now = self.core.now();
        let policy = finish::Policy::of(&self.core);
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let r = approval::reject(txn, &id, API_ACTOR, &reason, now, &policy).await?;
                    Ok(pb::RejectRunResponse {
                        run: Some(convert::run(&r)),
                    })
                })
            })
            .await)
    }

    pub(super) async fn list_outbox_events(
        &self,
        request: Request<pb::ListOutboxEventsRequest>,
    ) -> Reply<pb::ListOutboxEventsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::optional_id(&mut v, "organization_id", &req.organization_id);
        let subject = check::text(&mut v, "subject_id", &req.subject_id, 200);
        let event_type = check::text(&mut v, "type", &req.r#type, 200);
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "outbox",
            org.as_deref().unwrap_or_default(),
            &event_type,
            &subject,
            &req.after_sequence.to_string(),
        ]);
        let after_seq = match page::decode(&req.page_token, &fh)?.as_deref() {
            Some([n]) => n
                .parse::<i64>()
                .map_err(|_| Error::invalid("page_token", "malformed"))?,
            Some(_) => return Err(Error::invalid("page_token", "malformed").into()),
            None => 0,
        };
        let filter = outbox::OutboxFilter {
            organization: org.map(|o| (o, req.after_sequence)),
            event_type,
            subject_id: subject,
        };
        // What committed before this call is listed with its number.
        outbox::number(&self.core.db.conn)
            .await
            .map_err(Error::from)?;
        let rows = outbox::list(&self.core.db.conn, &filter, after_seq, size + 1).await?;
        let (rows, next_page_token) =
            page::split(rows, size, &fh, |last| vec![last.seq.to_string()]);
        ok(Ok(pb::ListOutboxEventsResponse {
            events: rows
                .iter()
                .map(convert::outbox_event)
                .collect::<ebb_common::Result<_>>()?,
            next_page_token,
        }))
    }
}
