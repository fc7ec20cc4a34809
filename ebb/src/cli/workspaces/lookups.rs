//! Reading workspaces from lifecycle: one by id, or every page of a listing.

use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;

use crate::cli::CliError;

/// The client of LifecycleService the commands use.
pub(super) type Lifecycle = LifecycleServiceClient<ebb_common::client::TracedChannel>;

/// One workspace, or an error naming it.
pub async fn get(api: &mut Lifecycle, workspace: &str) -> Result<pb::Workspace, CliError> {
    api.get_workspace(pb::GetWorkspaceRequest {
        workspace_id: workspace.to_owned(),
    })
    .await
    .map_err(|s| CliError::status(format!("workspace {workspace}"), s))?
    .into_inner()
    .workspace
    .ok_or_else(|| CliError::Failed(format!("workspace {workspace}: the answer is empty")))
}

/// Every page of a listing, up to `limit` workspaces, as one answer.
pub(super) async fn list_all(
    api: &mut Lifecycle,
    mut request: pb::ListWorkspacesRequest,
    limit: usize,
    organization: &str,
) -> Result<pb::ListWorkspacesResponse, CliError> {
    let mut all = pb::ListWorkspacesResponse::default();
    loop {
        request.page_size = i32::try_from(limit.saturating_sub(all.workspaces.len()))
            .unwrap_or(i32::MAX)
            .clamp(1, 1000);
        let page = api
            .list_workspaces(request.clone())
            .await
            .map_err(|s| CliError::status(format!("workspaces of organization {organization}"), s))?
            .into_inner();
        all.workspaces.extend(page.workspaces);
        all.next_page_token = page.next_page_token;
        if all.next_page_token.is_empty() || all.workspaces.len() >= limit {
            all.workspaces.truncate(limit);
            return Ok(all);
        }
        request.page_token = all.next_page_token.clone();
    }
}
