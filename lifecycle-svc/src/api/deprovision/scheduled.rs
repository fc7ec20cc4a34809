//! Scheduled actions.

use ebb_common::error::Violations;
use ebb_common::{Result, page};
use ebb_proto::lifecycle::v1 as pb;
use tonic::Request;

use super::{DeprovisionApi, Reply, ok};
use crate::api::deprovision::{ACTOR, after, grace_period, parameters, scheduled_pb, short_name};
use crate::api::validate as check;
use crate::core::Call;
use crate::deprovision::scheduled;

impl DeprovisionApi {
    pub(super) async fn schedule_action(
        &self,
        request: Request<pb::ScheduleActionRequest>,
    ) -> Reply<pb::ScheduleActionResponse> {
        let call = Call::of(&request, "ScheduleAction");
        let req = request.into_inner();
        let mut v = Violations::new();
        let entity = check::id(&mut v, "entity_id", &req.entity_id);
        let action = short_name(&mut v, "action", &req.action);
        let params = parameters(&mut v, &req.parameters);
        grace_period(&mut v, &params, self.core.config.max_grace_period);
        let at = check::timestamp(&mut v, "scheduled_time", &req.scheduled_time);
        let recurring = req
            .recurring
            .as_ref()
            .and_then(|r| check::recurring(&mut v, "recurring", r));
        match (&req.scheduled_time, &req.recurring) {
            (None, None) => v.add("scheduled_time", "is required (or a recurring schedule)"),
            (Some(_), Some(_)) => v.add(
                "recurring",
                "give either scheduled_time or a recurring schedule, not both",
            ),
            _ => {}
        }
        v.finish()?;
        let now = self.core.now();
        let when = match recurring {
            Some(r) => scheduled::When::Recurring(Box::new(r)),
            None => scheduled::When::At(at.unwrap_or_default()),
        };
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let s = scheduled::schedule_action(
                        txn,
                        &entity,
                        &action,
                        &params,
                        when.clone(),
                        ACTOR,
                        now,
                    )
                    .await?;
                    Ok(pb::ScheduleActionResponse {
                        scheduled_action: Some(scheduled_pb(&s)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn list_scheduled_actions(
        &self,
        request: Request<pb::ListScheduledActionsRequest>,
    ) -> Reply<pb::ListScheduledActionsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::id(&mut v, "organization_id", &req.organization_id);
        let entity = check::optional_id(&mut v, "entity_id", &req.entity_id);
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "scheduled_actions",
            &org,
            entity.as_deref().unwrap_or_default(),
        ]);
        let position = match page::decode(&req.page_token, &fh)? {
            Some(p) => Some(after(&p)?),
            None => None,
        };
        let rows = scheduled::list(
            &self.core.db.conn,
            &org,
            entity.as_deref(),
            position,
            size + 1,
        )
        .await?;
        let (rows, next_page_token) = page::split(rows, size, &fh, |l| {
            vec![l.scheduled_at.to_string(), l.id.clone()]
        });
        ok(Ok(pb::ListScheduledActionsResponse {
            scheduled_actions: rows.iter().map(scheduled_pb).collect::<Result<_>>()?,
            next_page_token,
        }))
    }

    pub(super) async fn cancel_scheduled_action(
        &self,
        request: Request<pb::CancelScheduledActionRequest>,
    ) -> Reply<pb::CancelScheduledActionResponse> {
        let call = Call::of(&request, "CancelScheduledAction");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "scheduled_action_id", &req.scheduled_action_id);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let s = scheduled::cancel_scheduled(txn, &id, ACTOR, now).await?;
                    Ok(pb::CancelScheduledActionResponse {
                        scheduled_action: Some(scheduled_pb(&s)?),
                    })
                })
            })
            .await)
    }
}
