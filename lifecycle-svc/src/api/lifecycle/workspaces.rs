//! Workspaces and their state versions.

use ebb_common::error::Violations;
use ebb_common::{Error, Result, page};
use ebb_proto::lifecycle::v1 as pb;
use tonic::Request;

use super::{LifecycleApi, Reply, ok};
use crate::api::lifecycle::{API_ACTOR, after_position};
use crate::api::{convert, validate as check};
use crate::core::Call;
use crate::workspaces;
use crate::workspaces::{WorkspaceChanges, WorkspaceFilter, lock, state_versions};

impl LifecycleApi {
    pub(super) async fn create_workspace(
        &self,
        request: Request<pb::CreateWorkspaceRequest>,
    ) -> Reply<pb::CreateWorkspaceResponse> {
        let call = Call::of(&request, "CreateWorkspace");
        let req = request.into_inner();
        let mut v = Violations::new();
        let (owner_email, owner_slack_user_id) = check::owner(&mut v, "owner", req.owner.as_ref());
        let new = workspaces::NewWorkspace {
            project_id: check::id(&mut v, "project_id", &req.project_id),
            name: check::name(&mut v, "name", &req.name),
            labels: check::labels(&mut v, "labels", &req.labels),
            protected: req.protected,
            working_directory: check::text(
                &mut v,
                "working_directory",
                &req.working_directory,
                1024,
            ),
            owner_email,
            owner_slack_user_id,
        };
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = workspaces::create_workspace(txn, new, API_ACTOR, now).await?;
                    Ok(pb::CreateWorkspaceResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn get_workspace(
        &self,
        request: Request<pb::GetWorkspaceRequest>,
    ) -> Reply<pb::GetWorkspaceResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        v.finish()?;
        let w = workspaces::reads::get_workspace(&self.core.workspace_reads, &id).await?;
        ok(Ok(pb::GetWorkspaceResponse {
            workspace: Some(convert::workspace(&w)?),
        }))
    }

    pub(super) async fn list_workspaces(
        &self,
        request: Request<pb::ListWorkspacesRequest>,
    ) -> Reply<pb::ListWorkspacesResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let (status, waiting) = v
            .check(
                "auto_destroy_status",
                convert::auto_destroy_status_filter(req.auto_destroy_status),
            )
            .unwrap_or_default();
        let filter = WorkspaceFilter {
            organization_id: check::id(&mut v, "organization_id", &req.organization_id),
            project_id: check::optional_id(&mut v, "project_id", &req.project_id),
            state: v
                .check("state", convert::workspace_state_filter(req.state))
                .flatten(),
            auto_destroy_status: status,
            waiting_for_window: waiting,
            next_before: check::timestamp(
                &mut v,
                "next_auto_destroy_before",
                &req.next_auto_destroy_before,
            ),
            scheduled_only: req.scheduled_only,
            owner: (!req.owner.is_empty()).then(|| check::text(&mut v, "owner", &req.owner, 254)),
            name: (!req.name.is_empty()).then(|| check::name(&mut v, "name", &req.name)),
        };
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "workspaces",
            &filter.organization_id,
            filter.project_id.as_deref().unwrap_or_default(),
            filter.state.map_or("", |s| s.as_str()),
            filter.auto_destroy_status.map_or("", |s| s.as_str()),
            &format!("{:?}", filter.waiting_for_window),
            &format!("{:?}", filter.next_before),
            &filter.scheduled_only.to_string(),
            filter.owner.as_deref().unwrap_or_default(),
            filter.name.as_deref().unwrap_or_default(),
        ]);
        let after = match page::decode(&req.page_token, &fh)? {
            Some(pos) => Some(after_position(&pos)?),
            None => None,
        };
        let rows =
            workspaces::list_workspaces(&self.core.db.read, &filter, after, size + 1).await?;
        let (rows, next_page_token) = page::split(rows, size, &fh, |last| {
            vec![last.created_at.to_string(), last.id.clone()]
        });
        ok(Ok(pb::ListWorkspacesResponse {
            workspaces: rows.iter().map(convert::workspace).collect::<Result<_>>()?,
            next_page_token,
        }))
    }

    pub(super) async fn update_workspace(
        &self,
        request: Request<pb::UpdateWorkspaceRequest>,
    ) -> Reply<pb::UpdateWorkspaceResponse> {
        let call = Call::of(&request, "UpdateWorkspace");
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(w) = req.workspace.clone() else {
            return Err(Error::invalid("workspace", "is required").into());
        };
        let id = check::id(&mut v, "workspace.id", &w.id);
        let paths = req
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        if paths.is_empty() {
            v.add(
                "update_mask",
                "name at least one path: name, labels, protected, working_directory, owner",
            );
        }
        let mut changes = WorkspaceChanges::default();
        for p in &paths {
            match p.as_str() {
                "name" => changes.name = Some(check::name(&mut v, "workspace.name", &w.name)),
                "labels" => {
                    changes.labels = Some(check::labels(&mut v, "workspace.labels", &w.labels))
                }
                "protected" => changes.protected = Some(w.protected),
                "working_directory" => {
                    changes.working_directory = Some(check::text(
                        &mut v,
                        "workspace.working_directory",
                        &w.working_directory,
                        1024,
                    ))
                }
                "owner" => {
                    let (email, slack) = check::owner(&mut v, "workspace.owner", w.owner.as_ref());
                    changes.owner_email = Some(email);
                    changes.owner_slack_user_id = Some(slack);
                }
                other => v.add(
                    "update_mask",
                    format!("unknown or read-only path `{other}`"),
                ),
            }
        }
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = workspaces::update_workspace(txn, &id, changes, API_ACTOR, now).await?;
                    Ok(pb::UpdateWorkspaceResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn lock_workspace(
        &self,
        request: Request<pb::LockWorkspaceRequest>,
    ) -> Reply<pb::LockWorkspaceResponse> {
        let call = Call::of(&request, "LockWorkspace");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        let reason = check::text(&mut v, "reason", &req.reason, 1024);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = lock::set_lock(txn, &id, Some(reason), API_ACTOR, now).await?;
                    Ok(pb::LockWorkspaceResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn unlock_workspace(
        &self,
        request: Request<pb::UnlockWorkspaceRequest>,
    ) -> Reply<pb::UnlockWorkspaceResponse> {
        let call = Call::of(&request, "UnlockWorkspace");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = lock::set_lock(txn, &id, None, API_ACTOR, now).await?;
                    Ok(pb::UnlockWorkspaceResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn archive_workspace(
        &self,
        request: Request<pb::ArchiveWorkspaceRequest>,
    ) -> Reply<pb::ArchiveWorkspaceResponse> {
        let call = Call::of(&request, "ArchiveWorkspace");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = lock::set_archived(txn, &id, true, API_ACTOR, now).await?;
                    Ok(pb::ArchiveWorkspaceResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn restore_workspace(
        &self,
        request: Request<pb::RestoreWorkspaceRequest>,
    ) -> Reply<pb::RestoreWorkspaceResponse> {
        let call = Call::of(&request, "RestoreWorkspace");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = lock::set_archived(txn, &id, false, API_ACTOR, now).await?;
                    Ok(pb::RestoreWorkspaceResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn record_state_version(
        &self,
        request: Request<pb::RecordStateVersionRequest>,
    ) -> Reply<pb::RecordStateVersionResponse> {
        let call = Call::of(&request, "RecordStateVersion");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        if req.serial <= 0 {
            v.add("serial", "must be positive");
        }
        v.finish()?;
        let serial = req.serial;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let (sv, w) = state_versions::record_state_version(
                        txn, &id, serial, None, false, API_ACTOR, now,
                    )
                    .await?;
                    Ok(pb::RecordStateVersionResponse {
                        state_version: Some(convert::state_version(&sv)),
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn list_state_versions(
        &self,
        request: Request<pb::ListStateVersionsRequest>,
    ) -> Reply<pb::ListStateVersionsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&["state_versions", &id]);
        let before = match page::decode(&req.page_token, &fh)?.as_deref() {
            Some([serial]) => Some(
                serial
                    .parse::<i64>()
                    .map_err(|_| Error::invalid("page_token", "malformed"))?,
            ),
            Some(_) => return Err(Error::invalid("page_token", "malformed").into()),
            None => None,
        };
        let rows =
            state_versions::list_state_versions(&self.core.db.conn, &id, before, size + 1).await?;
        let (rows, next_page_token) =
            page::split(rows, size, &fh, |last| vec![last.serial.to_string()]);
        ok(Ok(pb::ListStateVersionsResponse {
            state_versions: rows.iter().map(convert::state_version).collect(),
            next_page_token,
        }))
    }
}
