//! The gRPC surface of notifier-svc.

use ebb_common::db::Db;
use ebb_proto::notifier::v1::{
    PublishEventRequest, PublishEventResponse, notifier_service_server::NotifierService,
};
use tonic::{Request, Response, Status};

/// NotifierService over the notifier database.
pub struct NotifierApi {
    #[allow(dead_code)]
    db: Db,
}

impl NotifierApi {
    /// Serves `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl NotifierService for NotifierApi {
    async fn publish_event(
        &self,
        _request: Request<PublishEventRequest>,
    ) -> Result<Response<PublishEventResponse>, Status> {
        Err(Status::unimplemented("publish is not implemented yet"))
    }
}
