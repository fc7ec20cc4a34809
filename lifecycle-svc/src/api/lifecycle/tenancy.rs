//! Organizations and projects.

use ebb_common::auth::Caller;
use ebb_common::error::Violations;
use ebb_common::page::Page;
use ebb_proto::lifecycle::v1 as pb;
use tonic::Request;

use super::{LifecycleApi, Reply, ok};
use crate::api::lifecycle::{API_ACTOR, settings};
use crate::api::{convert, validate as check};
use crate::auto_destroy::policy;
use crate::core::Call;
use crate::tenancy::orgs::OrgSettings;
use crate::tenancy::{orgs, projects};

impl LifecycleApi {
    pub(super) async fn create_organization(
        &self,
        request: Request<pb::CreateOrganizationRequest>,
    ) -> Reply<pb::CreateOrganizationResponse> {
        let call = Call::of(&request, "CreateOrganization");
        let req = request.into_inner();
        let mut v = Violations::new();
        let name = check::name(&mut v, "name", &req.name);
        let settings = settings(&mut v, req.settings.as_ref(), &[], OrgSettings::default());
        v.finish()?;
        let core = self.core.clone();
        let now = core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let org = orgs::create_org(txn, &name, &settings, API_ACTOR, now).await?;
                    Ok(pb::CreateOrganizationResponse {
                        organization: Some(convert::organization(&org)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn get_organization(
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

    pub(super) async fn list_organizations(
        &self,
        request: Request<pb::ListOrganizationsRequest>,
    ) -> Reply<pb::ListOrganizationsResponse> {
        let only = Caller::of(&request)?.organization_id.clone();
        let req = request.into_inner();
        let mut v = Violations::new();
        let name = (!req.name.is_empty()).then(|| check::name(&mut v, "name", &req.name));
        let page = Page::read(
            &mut v,
            req.page_size,
            &req.page_token,
            &[
                "organizations",
                only.as_deref().unwrap_or_default(),
                name.as_deref().unwrap_or_default(),
            ],
        );
        v.finish()?;
        let rows = orgs::list_orgs(
            &self.core.db.conn,
            only.as_deref(),
            name.as_deref(),
            page.after_key_id()?,
            page.limit(),
        )
        .await?;
        let (rows, next_page_token) = page.finish(rows, |last| {
            vec![last.created_at.to_string(), last.id.clone()]
        });
        ok(Ok(pb::ListOrganizationsResponse {
            organizations: rows
                .iter()
                .map(convert::organization)
                .collect::<ebb_common::Result<_>>()?,
            next_page_token,
        }))
    }

    pub(super) async fn update_organization_settings(
        &self,
        request: Request<pb::UpdateOrganizationSettingsRequest>,
    ) -> Reply<pb::UpdateOrganizationSettingsResponse> {
        let call = Call::of(&request, "UpdateOrganizationSettings");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "organization_id", &req.organization_id);
        if req.settings.is_none() {
            v.add("settings", "is required");
        }
        v.finish()?;
        let mask = req
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        // Validated now; merged into the settings as they are inside the transaction, under
        // the organization's row lock, so concurrent masked updates lose nothing.
        let mut v = Violations::new();
        settings(&mut v, req.settings.as_ref(), &mask, OrgSettings::default());
        v.finish()?;
        let given = req.settings.clone();
        let (etag, confirm_count) = (req.etag.clone(), req.confirm_count);
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let merge = |current: OrgSettings| {
                        settings(&mut Violations::new(), given.as_ref(), &mask, current)
                    };
                    let change = policy::SettingsChange {
                        merge: &merge,
                        etag: &etag,
                        confirm_count,
                    };
                    let (org, scheduled) =
                        policy::update_org_settings(txn, &id, &change, API_ACTOR, now).await?;
                    // Scheduled actions obey the organization's destroy windows too.
                    crate::deprovision::scheduled::follow_windows(txn, &org, now).await?;
                    Ok(pb::UpdateOrganizationSettingsResponse {
                        organization: Some(convert::organization(&org)?),
                        scheduled: scheduled
                            .iter()
                            .map(|s| convert::scheduled(s, now))
                            .collect(),
                    })
                })
            })
            .await)
    }

    pub(super) async fn create_project(
        &self,
        request: Request<pb::CreateProjectRequest>,
    ) -> Reply<pb::CreateProjectResponse> {
        let call = Call::of(&request, "CreateProject");
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
        let windows =
            check::destroy_windows(&mut v, "destroy_windows", req.destroy_windows.as_ref());
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let p = projects::create_project(
                        txn,
                        &org,
                        &name,
                        default,
                        windows.as_ref(),
                        API_ACTOR,
                        now,
                    )
                    .await?;
                    Ok(pb::CreateProjectResponse {
                        project: Some(convert::project(&p)),
                    })
                })
            })
            .await)
    }

    pub(super) async fn get_project(
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

    pub(super) async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Reply<pb::ListProjectsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::id(&mut v, "organization_id", &req.organization_id);
        let name = (!req.name.is_empty()).then(|| check::name(&mut v, "name", &req.name));
        let page = Page::read(
            &mut v,
            req.page_size,
            &req.page_token,
            &["projects", &org, name.as_deref().unwrap_or_default()],
        );
        v.finish()?;
        let rows = projects::list_projects(
            &self.core.db.conn,
            &org,
            name.as_deref(),
            page.after_key_id()?,
            page.limit(),
        )
        .await?;
        let (rows, next_page_token) = page.finish(rows, |last| {
            vec![last.created_at.to_string(), last.id.clone()]
        });
        ok(Ok(pb::ListProjectsResponse {
            projects: rows.iter().map(convert::project).collect(),
            next_page_token,
        }))
    }

    pub(super) async fn update_project(
        &self,
        request: Request<pb::UpdateProjectRequest>,
    ) -> Reply<pb::UpdateProjectResponse> {
        let call = Call::of(&request, "UpdateProject");
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
                "name at least one path: name, default_auto_destroy_inactivity, destroy_windows",
            );
        }
        let (mut name, mut default, mut windows) = (None, None, None);
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
                "destroy_windows" => {
                    windows = Some(check::destroy_windows(
                        &mut v,
                        "destroy_windows",
                        req.destroy_windows.as_ref(),
                    ))
                }
                other => v.add("update_mask", format!("unknown path `{other}`")),
            }
        }
        v.finish()?;
        let now = self.core.now();
        let confirm_count = req.confirm_count;
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let changes = projects::ProjectChanges {
                        name: name.as_deref(),
                        default_inactivity_ms: default,
                        destroy_windows: windows.as_ref().map(Option::as_ref),
                    };
                    let (p, scheduled) =
                        policy::update_project(txn, &id, &changes, confirm_count, API_ACTOR, now)
                            .await?;
                    Ok(pb::UpdateProjectResponse {
                        project: Some(convert::project(&p)),
                        scheduled: scheduled
                            .iter()
                            .map(|s| convert::scheduled(s, now))
                            .collect(),
                    })
                })
            })
            .await)
    }
}
