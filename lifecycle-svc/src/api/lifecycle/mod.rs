//! `ebb.lifecycle.v1.LifecycleService`: thin handlers that validate, call the domain and map.

mod auto_destroy;
mod runs;
mod tenancy;
mod workspaces;

use ebb_common::error::Violations;
use ebb_common::time::from_duration;
use ebb_common::{Error, Result};
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::lifecycle_service_server::LifecycleService;
use tonic::{Request, Response, Status};

use super::validate as check;
use crate::auto_destroy::settings;
use crate::core::Lifecycle;
use crate::tenancy::orgs::OrgSettings;

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
            "minimum_notice",
            "confirm_threshold",
            "snooze_step",
            "require_approval",
            "approval_window",
            "destroy_windows",
            "approval_labels",
            "approval_cascade_threshold",
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
    if wants("minimum_notice") && (!mask.is_empty() || s.minimum_notice.is_some()) {
        out.minimum_notice_ms = match &s.minimum_notice {
            None => None,
            Some(d) => match from_duration(d) {
                Ok(ms) if (0..=90 * 86_400_000).contains(&ms) => Some(ms),
                Ok(_) => {
                    v.add("settings.minimum_notice", "must be between 0 and 90 days");
                    None
                }
                Err(e) => {
                    v.add("settings.minimum_notice", e);
                    None
                }
            },
        };
    }
    if wants("confirm_threshold") && (!mask.is_empty() || s.confirm_threshold.is_some()) {
        let threshold = s.confirm_threshold.unwrap_or(25);
        if !(0..=100_000).contains(&threshold) {
            v.add("settings.confirm_threshold", "must be between 0 and 100000");
        }
        out.confirm_threshold = threshold;
    }
    if wants("require_approval") && (!mask.is_empty() || s.require_approval) {
        out.require_approval = s.require_approval;
    }
    if wants("approval_labels") && (!mask.is_empty() || !s.approval_labels.is_empty()) {
        out.approval_labels = check::labels(v, "settings.approval_labels", &s.approval_labels);
    }
    if wants("approval_cascade_threshold")
        && (!mask.is_empty() || s.approval_cascade_threshold.is_some())
    {
        if s.approval_cascade_threshold
            .is_some_and(|n| !(0..=100_000).contains(&n))
        {
            v.add(
                "settings.approval_cascade_threshold",
                "must be between 0 and 100000 (unset: cascades need no approval)",
            );
        }
        out.approval_cascade_threshold = s.approval_cascade_threshold;
    }
    if wants("destroy_windows") && (!mask.is_empty() || s.destroy_windows.is_some()) {
        out.destroy_windows =
            check::destroy_windows(v, "settings.destroy_windows", s.destroy_windows.as_ref());
    }
    if wants("approval_window") && (!mask.is_empty() || s.approval_window.is_some()) {
        out.approval_window_ms = match &s.approval_window {
            None => 86_400_000,
            Some(d) => match from_duration(d) {
                Ok(ms) if (1_000..=30 * 86_400_000).contains(&ms) => ms,
                Ok(_) => {
                    v.add("settings.approval_window", "must be between 1s and 30 days");
                    out.approval_window_ms
                }
                Err(e) => {
                    v.add("settings.approval_window", e);
                    out.approval_window_ms
                }
            },
        };
    }
    if wants("snooze_step") && (!mask.is_empty() || s.snooze_step.is_some()) {
        out.snooze_step_ms = match &s.snooze_step {
            None => None,
            Some(d) => match from_duration(d) {
                Ok(ms) if (0..=90 * 86_400_000).contains(&ms) => Some(ms),
                Ok(_) => {
                    v.add("settings.snooze_step", "must be between 0 and 90 days");
                    None
                }
                Err(e) => {
                    v.add("settings.snooze_step", e);
                    None
                }
            },
        };
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
        LifecycleApi::create_organization(self, request).await
    }

    async fn get_organization(
        &self,
        request: Request<pb::GetOrganizationRequest>,
    ) -> Reply<pb::GetOrganizationResponse> {
        LifecycleApi::get_organization(self, request).await
    }

    async fn list_organizations(
        &self,
        request: Request<pb::ListOrganizationsRequest>,
    ) -> Reply<pb::ListOrganizationsResponse> {
        LifecycleApi::list_organizations(self, request).await
    }

    async fn update_organization_settings(
        &self,
        request: Request<pb::UpdateOrganizationSettingsRequest>,
    ) -> Reply<pb::UpdateOrganizationSettingsResponse> {
        LifecycleApi::update_organization_settings(self, request).await
    }

    async fn create_project(
        &self,
        request: Request<pb::CreateProjectRequest>,
    ) -> Reply<pb::CreateProjectResponse> {
        LifecycleApi::create_project(self, request).await
    }

    async fn get_project(
        &self,
        request: Request<pb::GetProjectRequest>,
    ) -> Reply<pb::GetProjectResponse> {
        LifecycleApi::get_project(self, request).await
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Reply<pb::ListProjectsResponse> {
        LifecycleApi::list_projects(self, request).await
    }

    async fn update_project(
        &self,
        request: Request<pb::UpdateProjectRequest>,
    ) -> Reply<pb::UpdateProjectResponse> {
        LifecycleApi::update_project(self, request).await
    }

    async fn create_workspace(
        &self,
        request: Request<pb::CreateWorkspaceRequest>,
    ) -> Reply<pb::CreateWorkspaceResponse> {
        LifecycleApi::create_workspace(self, request).await
    }

    async fn get_workspace(
        &self,
        request: Request<pb::GetWorkspaceRequest>,
    ) -> Reply<pb::GetWorkspaceResponse> {
        LifecycleApi::get_workspace(self, request).await
    }

    async fn list_workspaces(
        &self,
        request: Request<pb::ListWorkspacesRequest>,
    ) -> Reply<pb::ListWorkspacesResponse> {
        LifecycleApi::list_workspaces(self, request).await
    }

    async fn update_workspace(
        &self,
        request: Request<pb::UpdateWorkspaceRequest>,
    ) -> Reply<pb::UpdateWorkspaceResponse> {
        LifecycleApi::update_workspace(self, request).await
    }

    async fn lock_workspace(
        &self,
        request: Request<pb::LockWorkspaceRequest>,
    ) -> Reply<pb::LockWorkspaceResponse> {
        LifecycleApi::lock_workspace(self, request).await
    }

    async fn unlock_workspace(
        &self,
        request: Request<pb::UnlockWorkspaceRequest>,
    ) -> Reply<pb::UnlockWorkspaceResponse> {
        LifecycleApi::unlock_workspace(self, request).await
    }

    async fn archive_workspace(
        &self,
        request: Request<pb::ArchiveWorkspaceRequest>,
    ) -> Reply<pb::ArchiveWorkspaceResponse> {
        LifecycleApi::archive_workspace(self, request).await
    }

    async fn restore_workspace(
        &self,
        request: Request<pb::RestoreWorkspaceRequest>,
    ) -> Reply<pb::RestoreWorkspaceResponse> {
        LifecycleApi::restore_workspace(self, request).await
    }

    async fn record_state_version(
        &self,
        request: Request<pb::RecordStateVersionRequest>,
    ) -> Reply<pb::RecordStateVersionResponse> {
        LifecycleApi::record_state_version(self, request).await
    }

    async fn list_state_versions(
        &self,
        request: Request<pb::ListStateVersionsRequest>,
    ) -> Reply<pb::ListStateVersionsResponse> {
        LifecycleApi::list_state_versions(self, request).await
    }

    async fn create_run(
        &self,
        request: Request<pb::CreateRunRequest>,
    ) -> Reply<pb::CreateRunResponse> {
        LifecycleApi::create_run(self, request).await
    }

    async fn get_run(&self, request: Request<pb::GetRunRequest>) -> Reply<pb::GetRunResponse> {
        LifecycleApi::get_run(self, request).await
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Reply<pb::ListRunsResponse> {
        LifecycleApi::list_runs(self, request).await
    }

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Reply<pb::CancelRunResponse> {
        LifecycleApi::cancel_run(self, request).await
    }

    async fn approve_run(
        &self,
        request: Request<pb::ApproveRunRequest>,
    ) -> Reply<pb::ApproveRunResponse> {
        LifecycleApi::approve_run(self, request).await
    }

    async fn reject_run(
        &self,
        request: Request<pb::RejectRunRequest>,
    ) -> Reply<pb::RejectRunResponse> {
        LifecycleApi::reject_run(self, request).await
    }

    async fn set_auto_destroy(
        &self,
        request: Request<pb::SetAutoDestroyRequest>,
    ) -> Reply<pb::SetAutoDestroyResponse> {
        LifecycleApi::set_auto_destroy(self, request).await
    }

    async fn clear_auto_destroy(
        &self,
        request: Request<pb::ClearAutoDestroyRequest>,
    ) -> Reply<pb::ClearAutoDestroyResponse> {
        LifecycleApi::clear_auto_destroy(self, request).await
    }

    async fn extend_auto_destroy(
        &self,
        request: Request<pb::ExtendAutoDestroyRequest>,
    ) -> Reply<pb::ExtendAutoDestroyResponse> {
        LifecycleApi::extend_auto_destroy(self, request).await
    }

    async fn preview_auto_destroy(
        &self,
        request: Request<pb::PreviewAutoDestroyRequest>,
    ) -> Reply<pb::PreviewAutoDestroyResponse> {
        LifecycleApi::preview_auto_destroy(self, request).await
    }

    async fn list_outbox_events(
        &self,
        request: Request<pb::ListOutboxEventsRequest>,
    ) -> Reply<pb::ListOutboxEventsResponse> {
        LifecycleApi::list_outbox_events(self, request).await
    }
}

impl LifecycleApi {
    fn min_inactivity_ms(&self) -> i64 {
        i64::try_from(self.core.config.min_inactivity.as_millis()).unwrap_or(i64::MAX)
    }
}
