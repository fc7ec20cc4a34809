//! PublishEvent: an event becomes one delivery per matching configuration.

use ebb_common::Result;
use ebb_common::time::now_ms;
use ebb_proto::notifier::v1 as pb;
use sea_orm::TransactionTrait;
use tonic::Request;

use super::service::NotifierApi;
use crate::publish::{self, EventRecord};

impl NotifierApi {
    pub(super) async fn publish_event(
        &self,
        request: Request<pb::PublishEventRequest>,
    ) -> Result<pb::PublishEventResponse> {
        let req = request.into_inner();
        let now = now_ms();
        let event = EventRecord::from_proto(req.event.as_ref(), now)?;
        let txn = self.db.conn.begin().await?;
        let created = publish::publish(&txn, &event, std::time::Duration::ZERO, now).await?;
        txn.commit().await?;
        if created > 0 {
            self.wake.notify_one();
        }
        Ok(pb::PublishEventResponse {
            deliveries_created: created as i32,
        })
    }
}
