//! The gRPC surface of audit-svc.

use ebb_common::db::Db;
use ebb_proto::audit::v1::{
    AppendEventsRequest, AppendEventsResponse, ListEventsRequest, ListEventsResponse,
    audit_service_server::AuditService,
};
use tonic::{Request, Response, Status};

/// AuditService over the audit database.
pub struct AuditApi {
    #[allow(dead_code)]
    db: Db,
}

impl AuditApi {
    /// Serves `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn append_events(
        &self,
        _request: Request<AppendEventsRequest>,
    ) -> Result<Response<AppendEventsResponse>, Status> {
        Err(Status::unimplemented("append is not implemented yet"))
    }

    async fn list_events(
        &self,
        _request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        Err(Status::unimplemented("list is not implemented yet"))
    }
}
