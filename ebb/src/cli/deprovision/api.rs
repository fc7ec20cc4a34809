//! The deprovisioning client as the commands use it: its type and the lookups they share.

use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::deprovision_service_client::DeprovisionServiceClient;

use crate::cli::CliError;

pub(super) type Deprovision = DeprovisionServiceClient<ebb_common::client::TracedChannel>;

pub(super) const ACTION_RUN: &str = "ebb.lifecycle.v1.ActionRun";

pub(super) async fn get(
    api: &mut Deprovision,
    action_run: &str,
) -> Result<pb::ActionRun, CliError> {
    api.get_action_run(pb::GetActionRunRequest {
        action_run_id: action_run.to_owned(),
    })
    .await
    .map_err(|s| CliError::status(format!("action run {action_run}"), s))?
    .into_inner()
    .action_run
    .ok_or_else(|| CliError::Failed(format!("action run {action_run}: the answer is empty")))
}
