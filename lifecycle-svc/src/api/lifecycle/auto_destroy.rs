//! Auto-destroy schedules: set, clear, extend, and the preview of a proposed policy.

use ebb_common::error::Violations;
use ebb_common::{Error, page};
use ebb_proto::lifecycle::v1 as pb;
use tonic::Request;

use super::{LifecycleApi, Reply, ok};
use crate::api::lifecycle::API_ACTOR;
use crate::api::{convert, validate as check};
use crate::auto_destroy::{preview, settings};
use crate::core::Call;

impl LifecycleApi {
    pub(super) async fn set_auto_destroy(
        &self,
        request: Request<pb::SetAutoDestroyRequest>,
    ) -> Reply<pb::SetAutoDestroyResponse> {
        let call = Call::of(&request, "SetAutoDestroy");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        let at = check::timestamp(&mut v, "auto_destroy_at", &req.auto_destroy_at);
        let now = self.core.now();
        if at.is_some_and(|at| at <= now) {
            v.add("auto_destroy_at", "must be in the future");
        }
        let inactivity = if req.auto_destroy_inactivity.is_empty() {
            None
        } else {
            check::inactivity(
                &mut v,
                "auto_destroy_inactivity",
                &req.auto_destroy_inactivity,
                self.min_inactivity_ms(),
            )
        };
        let recurring = req
            .recurring
            .as_ref()
            .and_then(|r| check::recurring(&mut v, "recurring", r));
        if req.auto_destroy_at.is_none()
            && req.auto_destroy_inactivity.is_empty()
            && req.recurring.is_none()
        {
            v.add(
                "auto_destroy_at",
                "set auto_destroy_at, auto_destroy_inactivity, recurring or several",
            );
        }
        v.finish()?;
        let schedule = settings::Schedule {
            at,
            inactivity_ms: inactivity,
            recurring,
        };
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = settings::set_auto_destroy(txn, &id, schedule, API_ACTOR, now).await?;
                    Ok(pb::SetAutoDestroyResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn clear_auto_destroy(
        &self,
        request: Request<pb::ClearAutoDestroyRequest>,
    ) -> Reply<pb::ClearAutoDestroyResponse> {
        let call = Call::of(&request, "ClearAutoDestroy");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        if !req.clear_auto_destroy_at && !req.clear_auto_destroy_inactivity && !req.clear_recurring
        {
            v.add(
                "clear_auto_destroy_at",
                "set clear_auto_destroy_at, clear_auto_destroy_inactivity, clear_recurring or \
                 several",
            );
        }
        if req.inherit_project_default && !req.clear_auto_destroy_inactivity {
            v.add(
                "inherit_project_default",
                "only applies with clear_auto_destroy_inactivity",
            );
        }
        v.finish()?;
        let now = self.core.now();
        let clear = settings::Clear {
            at: req.clear_auto_destroy_at,
            inactivity: req.clear_auto_destroy_inactivity,
            inherit: req.inherit_project_default,
            recurring: req.clear_recurring,
        };
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = settings::clear_auto_destroy(txn, &id, clear, API_ACTOR, now).await?;
                    Ok(pb::ClearAutoDestroyResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn extend_auto_destroy(
        &self,
        request: Request<pb::ExtendAutoDestroyRequest>,
    ) -> Reply<pb::ExtendAutoDestroyResponse> {
        let call = Call::of(&request, "ExtendAutoDestroy");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        let by = check::positive_duration(&mut v, "extend_by", &req.extend_by);
        v.finish()?;
        let by = by.unwrap_or_default();
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = settings::extend_auto_destroy(txn, &id, by, API_ACTOR, now).await?;
                    Ok(pb::ExtendAutoDestroyResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn preview_auto_destroy(
        &self,
        request: Request<pb::PreviewAutoDestroyRequest>,
    ) -> Reply<pb::PreviewAutoDestroyResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::id(&mut v, "organization_id", &req.organization_id);
        let project = check::optional_id(&mut v, "project_id", &req.project_id);
        let inactivity = if req.auto_destroy_inactivity.is_empty() {
            None
        } else {
            check::inactivity(
                &mut v,
                "auto_destroy_inactivity",
                &req.auto_destroy_inactivity,
                self.min_inactivity_ms(),
            )
        };
        let at = check::timestamp(&mut v, "auto_destroy_at", &req.auto_destroy_at);
        let now = self.core.now();
        if at.is_some_and(|at| at <= now) {
            v.add("auto_destroy_at", "must be in the future");
        }
        let selector = check::labels(&mut v, "label_selector", &req.label_selector);
        let recurring = req
            .recurring
            .as_ref()
            .and_then(|r| check::recurring(&mut v, "recurring", r));
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let proposal = preview::Proposal {
            organization_id: org,
            project_id: project,
            inactivity_ms: inactivity,
            auto_destroy_at: at,
            label_selector: selector,
            recurring,
        };
        let outcome = preview::preview(&self.core.db.conn, &proposal, now).await?;
        let (items, skipped) = (outcome.items, outcome.skipped);
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE) as usize;
        let fh = page::filter_hash(&["preview", &format!("{proposal:?}")]);
        let start = match page::decode(&req.page_token, &fh)?.as_deref() {
            Some([n]) => n
                .parse::<usize>()
                .map_err(|_| Error::invalid("page_token", "malformed"))?,
            Some(_) => return Err(Error::invalid("page_token", "malformed").into()),
            None => 0,
        };
        let end = (start + size).min(items.len());
        let next_page_token = if end < items.len() {
            page::encode(&fh, vec![end.to_string()])
        } else {
            String::new()
        };
        let items = items.get(start..end).unwrap_or_default().to_vec();
        ok(Ok(pb::PreviewAutoDestroyResponse {
            items,
            skipped_count: skipped,
            next_page_token,
            confirm_count: outcome.confirm_count,
        }))
    }
}
