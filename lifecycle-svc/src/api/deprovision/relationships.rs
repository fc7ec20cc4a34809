//! Relationships: create, read, list, and force-finalize an edge in its grace period.

use ebb_common::error::Violations;
use ebb_common::page;
use ebb_proto::lifecycle::v1 as pb;
use tonic::Request;

use super::{DeprovisionApi, Reply, ok};
use crate::api::deprovision::{ACTOR, after, relationship_pb, short_name};
use crate::api::validate as check;
use crate::core::Call;
use crate::deprovision::relationships;
use crate::deprovision::relationships::{EdgeState, RelationshipFilter};

impl DeprovisionApi {
    pub(super) async fn create_relationship(
        &self,
        request: Request<pb::CreateRelationshipRequest>,
    ) -> Reply<pb::CreateRelationshipResponse> {
        let call = Call::of(&request, "CreateRelationship");
        let req = request.into_inner();
        let mut v = Violations::new();
        let rel_type = short_name(&mut v, "type", &req.r#type);
        let from = check::id(&mut v, "from_entity_id", &req.from_entity_id);
        let to = check::id(&mut v, "to_entity_id", &req.to_entity_id);
        if !from.is_empty() && from == to {
            v.add("to_entity_id", "an entity cannot relate to itself");
        }
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let r =
                        relationships::create_relationship(txn, &rel_type, &from, &to, ACTOR, now)
                            .await?;
                    Ok(pb::CreateRelationshipResponse {
                        relationship: Some(relationship_pb(&r)),
                    })
                })
            })
            .await)
    }

    pub(super) async fn get_relationship(
        &self,
        request: Request<pb::GetRelationshipRequest>,
    ) -> Reply<pb::GetRelationshipResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "relationship_id", &req.relationship_id);
        v.finish()?;
        let r = relationships::get_relationship(&self.core.db.conn, &id).await?;
        ok(Ok(pb::GetRelationshipResponse {
            relationship: Some(relationship_pb(&r)),
        }))
    }

    pub(super) async fn list_relationships(
        &self,
        request: Request<pb::ListRelationshipsRequest>,
    ) -> Reply<pb::ListRelationshipsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let state = match pb::RelationshipState::try_from(req.state) {
            Ok(pb::RelationshipState::Unspecified) => None,
            Ok(pb::RelationshipState::Active) => Some(EdgeState::Active),
            Ok(pb::RelationshipState::Removing) => Some(EdgeState::Removing),
            Ok(pb::RelationshipState::Removed) => Some(EdgeState::Removed),
            Err(_) => {
                v.add("state", format!("unknown relationship state {}", req.state));
                None
            }
        };
        let filter = RelationshipFilter {
            organization_id: check::id(&mut v, "organization_id", &req.organization_id),
            state,
            overdue: req.overdue,
            entity_id: check::optional_id(&mut v, "entity_id", &req.entity_id),
        };
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "relationships",
            &filter.organization_id,
            filter.state.map_or("", |s| s.as_str()),
            &filter.overdue.to_string(),
            filter.entity_id.as_deref().unwrap_or_default(),
        ]);
        let pos = match page::decode(&req.page_token, &fh)? {
            Some(p) => Some(after(&p)?),
            None => None,
        };
        let rows = relationships::list_relationships(
            &self.core.db.conn,
            &filter,
            pos,
            size + 1,
            self.core.now(),
        )
        .await?;
        let (rows, next_page_token) = page::split(rows, size, &fh, |l| {
            vec![l.created_at.to_string(), l.id.clone()]
        });
        ok(Ok(pb::ListRelationshipsResponse {
            relationships: rows.iter().map(relationship_pb).collect(),
            next_page_token,
        }))
    }

    pub(super) async fn force_finalize_relationship(
        &self,
        request: Request<pb::ForceFinalizeRelationshipRequest>,
    ) -> Reply<pb::ForceFinalizeRelationshipResponse> {
        let call = Call::of(&request, "ForceFinalizeRelationship");
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "relationship_id", &req.relationship_id);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(call, &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let r = relationships::force_finalize(txn, &id, ACTOR, now).await?;
                    Ok(pb::ForceFinalizeRelationshipResponse {
                        relationship: Some(relationship_pb(&r)),
                    })
                })
            })
            .await)
    }
}
