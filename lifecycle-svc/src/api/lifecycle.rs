//! `ebb.lifecycle.v1.LifecycleService`: thin handlers that validate, call the domain and map.

use ebb_common::error::Violations;
use ebb_common::time::from_duration;
use ebb_common::{Error, Result, page};
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::lifecycle_service_server::LifecycleService;
use sea_orm::Value;
use tonic::{Request, Response, Status};

use super::{convert, validate as check};
use crate::auto_destroy::policy;
use crate::auto_destroy::{preview, settings};
use crate::core::Lifecycle;
use crate::events::outbox::OutboxRow;
use crate::tenancy::orgs::OrgSettings;
use crate::tenancy::{orgs, projects};
use crate::workspaces::{WorkspaceChanges, WorkspaceFilter, lock, manual_runs, state_versions};
use crate::{finish, runs, store, workspaces};

/// The actor recorded on events caused through this API.
pub const API_ACTOR: &str = "api";

/// LifecycleService over the domain.
#[derive(Clone)]
pub struct LifecycleApi {
    core: Lifecycle,
}

impl LifecycleApi {
    /// Serves `core`.
    pub fn new(core: Lifecycle) -> Self {
        Self { core }
    }
}

fn settings(
    v: &mut Violations,
    s: Option<&pb::OrganizationSettings>,
    mask: &[String],
    base: OrgSettings,
) -> OrgSettings {
    let mut out = base;
    let Some(s) = s else { return out };
    let wants = |p: &str| mask.is_empty() || mask.iter().any(|m| m == p);
    for m in mask {
        if ![
            "reminder_lead_times",
            "destroy_retry_limit",
            "max_inactivity",
            "protected_labels",
        ]
        .contains(&m.as_str())
        {
            v.add("update_mask", format!("unknown path `{m}`"));
        }
    }
    if wants("reminder_lead_times") && (!mask.is_empty() || !s.reminder_lead_times.is_empty()) {
        if s.reminder_lead_times.len() > 10 {
            v.add("settings.reminder_lead_times", "at most 10 lead times");
        }
        let mut leads = Vec::new();
        for (i, d) in s.reminder_lead_times.iter().enumerate() {
            match from_duration(d) {
                Ok(ms) if ms > 0 && ms <= 90 * 86_400_000 => leads.push(ms),
                Ok(_) => v.add(
                    format!("settings.reminder_lead_times[{i}]"),
                    "must be between 1ms and 90 days",
                ),
                Err(e) => v.add(format!("settings.reminder_lead_times[{i}]"), e),
            }
        }
        leads.sort_unstable_by(|a, b| b.cmp(a));
        leads.dedup();
        out.reminder_lead_times_ms = leads;
    }
    if wants("destroy_retry_limit") && (!mask.is_empty() || s.destroy_retry_limit != 0) {
        if !(0..=20).contains(&s.destroy_retry_limit) {
            v.add("settings.destroy_retry_limit", "must be between 0 and 20");
        }
        out.destroy_retry_limit = s.destroy_retry_limit;
    }
    if wants("max_inactivity")
        && let Some(d) = &s.max_inactivity
    {
        match from_duration(d) {
            Ok(ms) if ms > 0 && ms <= check::MAX_INACTIVITY_MS => out.max_inactivity_ms = ms,
            Ok(_) => v.add(
                "settings.max_inactivity",
                "must be between 1ms and 9999 days",
            ),
            Err(e) => v.add("settings.max_inactivity", e),
        }
    }
    if wants("protected_labels") && (!mask.is_empty() || !s.protected_labels.is_empty()) {
        out.protected_labels = check::labels(v, "settings.protected_labels", &s.protected_labels);
    }
    out
}

fn after_position(token: &[String]) -> Result<(i64, String)> {
    match token {
        [t, id] => Ok((
            t.parse()
                .map_err(|_| Error::invalid("page_token", "malformed"))?,
            id.clone(),
        )),
        _ => Err(Error::invalid("page_token", "malformed")),
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

fn ok<T>(r: Result<T>) -> Reply<T> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl LifecycleService for LifecycleApi {
    async fn create_organization(
        &self,
        request: Request<pb::CreateOrganizationRequest>,
    ) -> Reply<pb::CreateOrganizationResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let name = check::name(&mut v, "name", &req.name);
        let settings = settings(&mut v, req.settings.as_ref(), &[], OrgSettings::default());
        v.finish()?;
        let core = self.core.clone();
        let now = core.now();
        ok(self
            .core
            .mutate("CreateOrganization", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let org = orgs::create_org(txn, &name, &settings, API_ACTOR, now).await?;
                    Ok(pb::CreateOrganizationResponse {
                        organization: Some(convert::organization(&org)?),
                    })
                })
            })
            .await)
    }

    async fn get_organization(
        &self,
        request: Request<pb::GetOrganizationRequest>,
    ) -> Reply<pb::GetOrganizationResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "organization_id", &req.organization_id);
        v.finish()?;
        let org = orgs::get_org(&self.core.db.conn, &id).await?;
        ok(Ok(pb::GetOrganizationResponse {
            organization: Some(convert::organization(&org)?),
        }))
    }

    async fn update_organization_settings(
        &self,
        request: Request<pb::UpdateOrganizationSettingsRequest>,
    ) -> Reply<pb::UpdateOrganizationSettingsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "organization_id", &req.organization_id);
        if req.settings.is_none() {
            v.add("settings", "is required");
        }
        v.finish()?;
        let current = orgs::get_org(&self.core.db.conn, &id).await?;
        let base = OrgSettings {
            reminder_lead_times_ms: current.lead_times()?,
            destroy_retry_limit: current.destroy_retry_limit,
            max_inactivity_ms: current.max_inactivity_ms,
            protected_labels: current.protected_labels()?,
        };
        let mask = req
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        let mut v = Violations::new();
        let settings = settings(&mut v, req.settings.as_ref(), &mask, base);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(
                "UpdateOrganizationSettings",
                &req.request_id,
                &req,
                move |txn| {
                    Box::pin(async move {
                        let org = policy::update_org_settings(txn, &id, &settings, API_ACTOR, now)
                            .await?;
                        Ok(pb::UpdateOrganizationSettingsResponse {
                            organization: Some(convert::organization(&org)?),
                        })
                    })
                },
            )
            .await)
    }

    async fn create_project(
        &self,
        request: Request<pb::CreateProjectRequest>,
    ) -> Reply<pb::CreateProjectResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::id(&mut v, "organization_id", &req.organization_id);
        let name = check::name(&mut v, "name", &req.name);
        let min = self.min_inactivity_ms();
        let default = if req.default_auto_destroy_inactivity.is_empty() {
            None
        } else {
            check::inactivity(
                &mut v,
                "default_auto_destroy_inactivity",
                &req.default_auto_destroy_inactivity,
                min,
            )
        };
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate("CreateProject", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let p =
                        projects::create_project(txn, &org, &name, default, API_ACTOR, now).await?;
                    Ok(pb::CreateProjectResponse {
                        project: Some(convert::project(&p)),
                    })
                })
            })
            .await)
    }

    async fn get_project(
        &self,
        request: Request<pb::GetProjectRequest>,
    ) -> Reply<pb::GetProjectResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "project_id", &req.project_id);
        v.finish()?;
        let p = projects::get_project(&self.core.db.conn, &id).await?;
        ok(Ok(pb::GetProjectResponse {
            project: Some(convert::project(&p)),
        }))
    }

    async fn update_project(
        &self,
        request: Request<pb::UpdateProjectRequest>,
    ) -> Reply<pb::UpdateProjectResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "project_id", &req.project_id);
        let paths = req
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        if paths.is_empty() {
            v.add(
                "update_mask",
                "name at least one path: name, default_auto_destroy_inactivity",
            );
        }
        let (mut name, mut default) = (None, None);
        for p in &paths {
            match p.as_str() {
                "name" => name = Some(check::name(&mut v, "name", &req.name)),
                "default_auto_destroy_inactivity" => {
                    default = Some(if req.default_auto_destroy_inactivity.is_empty() {
                        None
                    } else {
                        check::inactivity(
                            &mut v,
                            "default_auto_destroy_inactivity",
                            &req.default_auto_destroy_inactivity,
                            self.min_inactivity_ms(),
                        )
                    })
                }
                other => v.add("update_mask", format!("unknown path `{other}`")),
            }
        }
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate("UpdateProject", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let p =
                        policy::update_project(txn, &id, name.as_deref(), default, API_ACTOR, now)
                            .await?;
                    Ok(pb::UpdateProjectResponse {
                        project: Some(convert::project(&p)),
                    })
                })
            })
            .await)
    }

    async fn create_workspace(
        &self,
        request: Request<pb::CreateWorkspaceRequest>,
    ) -> Reply<pb::CreateWorkspaceResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
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
        };
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate("CreateWorkspace", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = workspaces::create_workspace(txn, new, API_ACTOR, now).await?;
                    Ok(pb::CreateWorkspaceResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    async fn get_workspace(
        &self,
        request: Request<pb::GetWorkspaceRequest>,
    ) -> Reply<pb::GetWorkspaceResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        v.finish()?;
        let w = workspaces::get_workspace(&self.core.db.conn, &id).await?;
        ok(Ok(pb::GetWorkspaceResponse {
            workspace: Some(convert::workspace(&w)?),
        }))
    }

    async fn list_workspaces(
        &self,
        request: Request<pb::ListWorkspacesRequest>,
    ) -> Reply<pb::ListWorkspacesResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let filter = WorkspaceFilter {
            organization_id: check::id(&mut v, "organization_id", &req.organization_id),
            project_id: check::optional_id(&mut v, "project_id", &req.project_id),
            state: v
                .check("state", convert::workspace_state_filter(req.state))
                .flatten(),
            auto_destroy_status: v
                .check(
                    "auto_destroy_status",
                    convert::auto_destroy_status_filter(req.auto_destroy_status),
                )
                .flatten(),
            next_before: check::timestamp(
                &mut v,
                "next_auto_destroy_before",
                &req.next_auto_destroy_before,
            ),
            scheduled_only: req.scheduled_only,
        };
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "workspaces",
            &filter.organization_id,
            filter.project_id.as_deref().unwrap_or_default(),
            filter.state.unwrap_or_default(),
            filter.auto_destroy_status.unwrap_or_default(),
            &format!("{:?}", filter.next_before),
            &filter.scheduled_only.to_string(),
        ]);
        let after = match page::decode(&req.page_token, &fh)? {
            Some(pos) => Some(after_position(&pos)?),
            None => None,
        };
        let rows =
            workspaces::list_workspaces(&self.core.db.conn, &filter, after, size + 1).await?;
        let (rows, next_page_token) = page::split(rows, size, &fh, |last| {
            vec![last.created_at.to_string(), last.id.clone()]
        });
        ok(Ok(pb::ListWorkspacesResponse {
            workspaces: rows.iter().map(convert::workspace).collect::<Result<_>>()?,
            next_page_token,
        }))
    }

    async fn update_workspace(
        &self,
        request: Request<pb::UpdateWorkspaceRequest>,
    ) -> Reply<pb::UpdateWorkspaceResponse> {
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
                "name at least one path: name, labels, protected, working_directory",
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
            .mutate("UpdateWorkspace", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = workspaces::update_workspace(txn, &id, changes, API_ACTOR, now).await?;
                    Ok(pb::UpdateWorkspaceResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    async fn lock_workspace(
        &self,
        request: Request<pb::LockWorkspaceRequest>,
    ) -> Reply<pb::LockWorkspaceResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        let reason = check::text(&mut v, "reason", &req.reason, 1024);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate("LockWorkspace", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = lock::set_lock(txn, &id, Some(reason), API_ACTOR, now).await?;
                    Ok(pb::LockWorkspaceResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    async fn unlock_workspace(
        &self,
        request: Request<pb::UnlockWorkspaceRequest>,
    ) -> Reply<pb::UnlockWorkspaceResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate("UnlockWorkspace", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = lock::set_lock(txn, &id, None, API_ACTOR, now).await?;
                    Ok(pb::UnlockWorkspaceResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    async fn archive_workspace(
        &self,
        request: Request<pb::ArchiveWorkspaceRequest>,
    ) -> Reply<pb::ArchiveWorkspaceResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate("ArchiveWorkspace", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = lock::set_archived(txn, &id, true, API_ACTOR, now).await?;
                    Ok(pb::ArchiveWorkspaceResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    async fn restore_workspace(
        &self,
        request: Request<pb::RestoreWorkspaceRequest>,
    ) -> Reply<pb::RestoreWorkspaceResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate("RestoreWorkspace", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = lock::set_archived(txn, &id, false, API_ACTOR, now).await?;
                    Ok(pb::RestoreWorkspaceResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    async fn record_state_version(
        &self,
        request: Request<pb::RecordStateVersionRequest>,
    ) -> Reply<pb::RecordStateVersionResponse> {
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
            .mutate("RecordStateVersion", &req.request_id, &req, move |txn| {
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

    async fn list_state_versions(
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

    async fn create_run(
        &self,
        request: Request<pb::CreateRunRequest>,
    ) -> Reply<pb::CreateRunResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        let message = check::text(&mut v, "message", &req.message, 4096);
        v.finish()?;
        let (is_destroy, auto_apply) = (req.is_destroy, req.auto_apply);
        let now = self.core.now();
        let run = self
            .core
            .mutate("CreateRun", &req.request_id, &req, move |txn| {
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

    async fn get_run(&self, request: Request<pb::GetRunRequest>) -> Reply<pb::GetRunResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "run_id", &req.run_id);
        v.finish()?;
        let r = runs::get_run(&self.core.db.conn, &id).await?;
        ok(Ok(pb::GetRunResponse {
            run: Some(convert::run(&r)),
        }))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Reply<pb::ListRunsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let filter = runs::RunFilter {
            organization_id: check::id(&mut v, "organization_id", &req.organization_id),
            workspace_id: check::optional_id(&mut v, "workspace_id", &req.workspace_id),
            status: v
                .check("status", convert::run_status_filter(req.status))
                .flatten(),
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
            filter.status.unwrap_or_default(),
            filter.source.unwrap_or_default(),
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

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Reply<pb::CancelRunResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "run_id", &req.run_id);
        v.finish()?;
        let now = self.core.now();
        let policy = finish::Policy::of(&self.core);
        ok(self
            .core
            .mutate("CancelRun", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let r = finish::cancel_run(txn, &id, API_ACTOR, now, &policy).await?;
                    Ok(pb::CancelRunResponse {
                        run: Some(convert::run(&r)),
                    })
                })
            })
            .await)
    }

    async fn set_auto_destroy(
        &self,
        request: Request<pb::SetAutoDestroyRequest>,
    ) -> Reply<pb::SetAutoDestroyResponse> {
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
        if req.auto_destroy_at.is_none() && req.auto_destroy_inactivity.is_empty() {
            v.add(
                "auto_destroy_at",
                "set auto_destroy_at, auto_destroy_inactivity or both",
            );
        }
        v.finish()?;
        ok(self
            .core
            .mutate("SetAutoDestroy", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = settings::set_auto_destroy(txn, &id, at, inactivity, API_ACTOR, now)
                        .await?;
                    Ok(pb::SetAutoDestroyResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    async fn clear_auto_destroy(
        &self,
        request: Request<pb::ClearAutoDestroyRequest>,
    ) -> Reply<pb::ClearAutoDestroyResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        if !req.clear_auto_destroy_at && !req.clear_auto_destroy_inactivity {
            v.add(
                "clear_auto_destroy_at",
                "set clear_auto_destroy_at, clear_auto_destroy_inactivity or both",
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
        let (a, i, inherit) = (
            req.clear_auto_destroy_at,
            req.clear_auto_destroy_inactivity,
            req.inherit_project_default,
        );
        ok(self
            .core
            .mutate("ClearAutoDestroy", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = settings::clear_auto_destroy(txn, &id, a, i, inherit, API_ACTOR, now)
                        .await?;
                    Ok(pb::ClearAutoDestroyResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    async fn extend_auto_destroy(
        &self,
        request: Request<pb::ExtendAutoDestroyRequest>,
    ) -> Reply<pb::ExtendAutoDestroyResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "workspace_id", &req.workspace_id);
        let by = check::positive_duration(&mut v, "extend_by", &req.extend_by);
        v.finish()?;
        let by = by.unwrap_or_default();
        let now = self.core.now();
        ok(self
            .core
            .mutate("ExtendAutoDestroy", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let w = settings::extend_auto_destroy(txn, &id, by, API_ACTOR, now).await?;
                    Ok(pb::ExtendAutoDestroyResponse {
                        workspace: Some(convert::workspace(&w)?),
                    })
                })
            })
            .await)
    }

    async fn preview_auto_destroy(
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
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let proposal = preview::Proposal {
            organization_id: org,
            project_id: project,
            inactivity_ms: inactivity,
            auto_destroy_at: at,
            label_selector: selector,
        };
        let (items, skipped) = preview::preview(&self.core.db.conn, &proposal, now).await?;
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
        }))
    }

    async fn list_outbox_events(
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
        let mut sql = String::from(
            "SELECT seq, id, organization_id, org_seq, type AS event_type, subject_type, subject_id, actor, data, created_at FROM outbox WHERE seq > $1",
        );
        let mut values: Vec<Value> = vec![after_seq.into()];
        if let Some(org) = org {
            values.push(org.into());
            sql.push_str(&format!(" AND organization_id = ${}", values.len()));
            values.push(req.after_sequence.into());
            sql.push_str(&format!(" AND org_seq > ${}", values.len()));
        }
        if !event_type.is_empty() {
            if event_type.ends_with('.') || event_type.ends_with('*') {
                let prefix = event_type.trim_end_matches('*');
                values.push(format!("{}%", prefix.replace('%', "").replace('_', "\\_")).into());
                sql.push_str(&format!(" AND type LIKE ${} ESCAPE '\\'", values.len()));
            } else {
                values.push(event_type.into());
                sql.push_str(&format!(" AND type = ${}", values.len()));
            }
        }
        if !subject.is_empty() {
            values.push(subject.into());
            sql.push_str(&format!(" AND subject_id = ${}", values.len()));
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT {}", size + 1));
        let rows: Vec<OutboxRow> = store::query_all(&self.core.db.conn, &sql, values).await?;
        let (rows, next_page_token) =
            page::split(rows, size, &fh, |last| vec![last.seq.to_string()]);
        ok(Ok(pb::ListOutboxEventsResponse {
            events: rows.iter().map(convert::outbox_event).collect(),
            next_page_token,
        }))
    }
}

impl LifecycleApi {
    fn min_inactivity_ms(&self) -> i64 {
        i64::try_from(self.core.config.min_inactivity.as_millis()).unwrap_or(i64::MAX)
    }
}
