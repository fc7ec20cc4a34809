//! The policy changes the safety model makes, each through the code path the API takes.

use std::collections::BTreeMap;

use ebb_common::time::EpochMs;
use sea_orm::ConnectionTrait;

use crate::auto_destroy::policy;
use crate::tenancy::orgs::OrgSettings;

use super::case::API;
use super::world::windows;

/// A policy change of [`World::policy_change`].
#[derive(Debug, Clone, Copy)]
pub(super) enum PolicyChange {
    /// The label policy protects `env=prod` (or nothing).
    Labels(bool),
    /// The organization's destroy windows.
    Windows(Option<usize>),
    /// A project's default inactivity.
    ProjectDefault(usize, Option<i64>),
}

impl PolicyChange {
    pub(super) async fn apply(
        self,
        conn: &impl ConnectionTrait,
        org: &str,
        projects: &[String; 2],
        confirm_count: i32,
        now: EpochMs,
    ) -> ebb_common::Result<()> {
        match self {
            PolicyChange::Labels(protect_prod) => {
                let merge = move |mut s: OrgSettings| {
                    s.protected_labels = if protect_prod {
                        BTreeMap::from([("env".into(), "prod".into())])
                    } else {
                        BTreeMap::new()
                    };
                    s
                };
                let change = policy::SettingsChange {
                    merge: &merge,
                    etag: "",
                    confirm_count,
                };
                policy::update_org_settings(conn, org, &change, API, now).await?;
            }
            PolicyChange::Windows(pattern) => {
                let merge = move |mut s: OrgSettings| {
                    s.destroy_windows = pattern.map(windows);
                    s
                };
                let change = policy::SettingsChange {
                    merge: &merge,
                    etag: "",
                    confirm_count,
                };
                policy::update_org_settings(conn, org, &change, API, now).await?;
            }
            PolicyChange::ProjectDefault(project, inactivity) => {
                let changes = crate::tenancy::projects::ProjectChanges {
                    default_inactivity_ms: Some(inactivity),
                    ..Default::default()
                };
                policy::update_project(conn, &projects[project], &changes, confirm_count, API, now)
                    .await?;
            }
        }
        Ok(())
    }
}
