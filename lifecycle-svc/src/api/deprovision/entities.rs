//! The catalog and entities.

use ebb_common::error::Violations;
use ebb_common::{Error, Result, page};
use ebb_proto::lifecycle::v1 as pb;
use tonic::Request;

use super::{DeprovisionApi, Reply, ok};
use crate::api::deprovision::{ACTOR, after, entity_pb, kind_pb, short_name};
use crate::api::validate as check;
use crate::core::Call;
use crate::deprovision::entities::EntityFilter;
use crate::deprovision::{catalog, entities};

/// Refuses webhook URLs whose host is an address the egress guard refuses (metadata,
/// link-local, loopback unless allowed): they could never be sent, and saying so now beats a
/// step failing later. Host names are checked each time they resolve.
fn refuse_guarded_urls(
    catalog: &catalog::Catalog,
    egress: &ebb_common::egress::EgressConfig,
) -> Result<()> {
    let guard = ebb_common::egress::EgressGuard::new(egress);
    for (k, kind) in catalog.kinds.iter().enumerate() {
        for (a, action) in kind.actions.iter().enumerate() {
            if let catalog::TriggerDef::Webhook { url } = &action.trigger {
                let checked = reqwest::Url::parse(url)
                    .map_err(|e| e.to_string())
                    .and_then(|u| guard.check_url(&u));
                if let Err(e) = checked {
                    return Err(Error::invalid(
                        "yaml",
                        format!("at kinds[{k}].actions[{a}].trigger.url: {e}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

impl DeprovisionApi {
    pub(super) async fn apply_catalog(
        &self,
        request: Request<pb::ApplyCatalogRequest>,
    ) -> Reply<pb::ApplyCatalogResponse> {
        let call = Call::of(&request, "ApplyCatalog");
        let req = request.into_inner();
        // Parsing is CPU work (bounded, but up to a megabyte of YAML): off the async runtime,
        // so health checks and other calls keep being answered meanwhile.
        let yaml = req.yaml.clone();
        let catalog = tokio::task::spawn_blocking(move || catalog::parse(&yaml))
            .await
            .map_err(|e| Error::Internal(format!("catalog parsing failed: {e}")))?
            .map_err(|e| Error::invalid("yaml", e.to_string()))?;
        refuse_guarded_urls(&catalog, &self.core.config.egress)?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    catalog::store(txn, &catalog, "api", now).await?;
                    Ok(pb::ApplyCatalogResponse {
                        kinds: catalog.kinds.iter().map(kind_pb).collect(),
                    })
                })
            })
            .await)
    }

    pub(super) async fn list_entity_kinds(
        &self,
        _request: Request<pb::ListEntityKindsRequest>,
    ) -> Reply<pb::ListEntityKindsResponse> {
        let kinds = catalog::kinds(&self.core.db.conn).await?;
        ok(Ok(pb::ListEntityKindsResponse {
            kinds: kinds.iter().map(kind_pb).collect(),
        }))
    }

    pub(super) async fn get_entity_kind(
        &self,
        request: Request<pb::GetEntityKindRequest>,
    ) -> Reply<pb::GetEntityKindResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let name = short_name(&mut v, "name", &req.name);
        v.finish()?;
        let kind = catalog::kind(&self.core.db.conn, &name).await?;
        ok(Ok(pb::GetEntityKindResponse {
            kind: Some(kind_pb(&kind)),
        }))
    }

    pub(super) async fn create_entity(
        &self,
        request: Request<pb::CreateEntityRequest>,
    ) -> Reply<pb::CreateEntityResponse> {
        let call = Call::of(&request, "CreateEntity");
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::id(&mut v, "organization_id", &req.organization_id);
        let kind = short_name(&mut v, "kind", &req.kind);
        let name = check::name(&mut v, "name", &req.name);
        let attributes = check::labels(&mut v, "attributes", &req.attributes);
        let workspace = check::optional_id(&mut v, "workspace_id", &req.workspace_id);
        let owner = check::owner(&mut v, "owner", req.owner.as_ref());
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let e = entities::create_entity(
                        txn,
                        &org,
                        &kind,
                        &name,
                        &attributes,
                        workspace.as_deref(),
                        (&owner.0, &owner.1),
                        ACTOR,
                        now,
                    )
                    .await?;
                    Ok(pb::CreateEntityResponse {
                        entity: Some(entity_pb(&e)?),
                    })
                })
            })
            .await)
    }

    pub(super) async fn get_entity(
        &self,
        request: Request<pb::GetEntityRequest>,
    ) -> Reply<pb::GetEntityResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "entity_id", &req.entity_id);
        v.finish()?;
        let e = entities::get_entity(&self.core.db.conn, &id).await?;
        ok(Ok(pb::GetEntityResponse {
            entity: Some(entity_pb(&e)?),
        }))
    }

    pub(super) async fn list_entities(
        &self,
        request: Request<pb::ListEntitiesRequest>,
    ) -> Reply<pb::ListEntitiesResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::id(&mut v, "organization_id", &req.organization_id);
        let kind = (!req.kind.is_empty()).then(|| short_name(&mut v, "kind", &req.kind));
        let state = (!req.state.is_empty()).then(|| short_name(&mut v, "state", &req.state));
        let owner = (!req.owner.is_empty()).then(|| check::text(&mut v, "owner", &req.owner, 254));
        let name = (!req.name.is_empty()).then(|| check::name(&mut v, "name", &req.name));
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "entities",
            &org,
            kind.as_deref().unwrap_or_default(),
            state.as_deref().unwrap_or_default(),
            name.as_deref().unwrap_or_default(),
            owner.as_deref().unwrap_or_default(),
        ]);
        let pos = match page::decode(&req.page_token, &fh)? {
            Some(p) => Some(after(&p)?),
            None => None,
        };
        let rows = entities::list_entities(
            &self.core.db.conn,
            &org,
            EntityFilter {
                kind: kind.as_deref(),
                state: state.as_deref(),
                name: name.as_deref(),
                owner: owner.as_deref(),
            },
            pos,
            size + 1,
        )
        .await?;
        let (rows, next_page_token) = page::split(rows, size, &fh, |l| {
            vec![l.created_at.to_string(), l.id.clone()]
        });
        ok(Ok(pb::ListEntitiesResponse {
            entities: rows.iter().map(entity_pb).collect::<Result<_>>()?,
            next_page_token,
        }))
    }

    pub(super) async fn update_entity(
        &self,
        request: Request<pb::UpdateEntityRequest>,
    ) -> Reply<pb::UpdateEntityResponse> {
        let call = Call::of(&request, "UpdateEntity");
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(e) = req.entity.clone() else {
            return Err(Error::invalid("entity", "is required").into());
        };
        let id = check::id(&mut v, "entity.id", &e.id);
        let paths = req
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        if paths.is_empty() {
            v.add(
                "update_mask",
                "name at least one path: name, attributes, workspace_id, owner",
            );
        }
        let (mut name, mut attributes, mut workspace, mut owner) = (None, None, None, None);
        for p in &paths {
            match p.as_str() {
                "name" => name = Some(check::name(&mut v, "entity.name", &e.name)),
                "attributes" => {
                    attributes = Some(check::labels(&mut v, "entity.attributes", &e.attributes))
                }
                "owner" => owner = Some(check::owner(&mut v, "entity.owner", e.owner.as_ref())),
                "workspace_id" => {
                    workspace = Some(check::optional_id(
                        &mut v,
                        "entity.workspace_id",
                        &e.workspace_id,
                    ))
                }
                other => v.add(
                    "update_mask",
                    format!(
                        "unknown or read-only path `{other}` (state changes only through actions)"
                    ),
                ),
            }
        }
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let changes = entities::EntityChanges {
                        name,
                        attributes,
                        workspace_id: workspace,
                        owner,
                    };
                    let e = entities::update_entity(txn, &id, changes, ACTOR, now).await?;
                    Ok(pb::UpdateEntityResponse {
                        entity: Some(entity_pb(&e)?),
                    })
                })
            })
            .await)
    }
}
