//! The gRPC surface of notifier-svc: thin handlers that check input, call the domain, and map
//! the result.

mod configurations;
mod deliveries;
mod events;
mod service;

use ebb_proto::notifier::v1::{self as pb, notifier_service_server::NotifierService};
use tonic::{Request, Response, Status};

use self::service::reply;

pub use self::service::NotifierApi;

#[tonic::async_trait]
impl NotifierService for NotifierApi {
    async fn publish_event(
        &self,
        request: Request<pb::PublishEventRequest>,
    ) -> std::result::Result<Response<pb::PublishEventResponse>, Status> {
        reply(NotifierApi::publish_event(self, request).await)
    }

    async fn create_notification_configuration(
        &self,
        request: Request<pb::CreateNotificationConfigurationRequest>,
    ) -> std::result::Result<Response<pb::CreateNotificationConfigurationResponse>, Status> {
        reply(NotifierApi::create_notification_configuration(self, request).await)
    }

    async fn get_notification_configuration(
        &self,
        request: Request<pb::GetNotificationConfigurationRequest>,
    ) -> std::result::Result<Response<pb::GetNotificationConfigurationResponse>, Status> {
        reply(NotifierApi::get_notification_configuration(self, request).await)
    }

    async fn list_notification_configurations(
        &self,
        request: Request<pb::ListNotificationConfigurationsRequest>,
    ) -> std::result::Result<Response<pb::ListNotificationConfigurationsResponse>, Status> {
        reply(NotifierApi::list_notification_configurations(self, request).await)
    }

    async fn update_notification_configuration(
        &self,
        request: Request<pb::UpdateNotificationConfigurationRequest>,
    ) -> std::result::Result<Response<pb::UpdateNotificationConfigurationResponse>, Status> {
        reply(NotifierApi::update_notification_configuration(self, request).await)
    }

    async fn delete_notification_configuration(
        &self,
        request: Request<pb::DeleteNotificationConfigurationRequest>,
    ) -> std::result::Result<Response<pb::DeleteNotificationConfigurationResponse>, Status> {
        reply(NotifierApi::delete_notification_configuration(self, request).await)
    }

    async fn verify_notification_configuration(
        &self,
        request: Request<pb::VerifyNotificationConfigurationRequest>,
    ) -> std::result::Result<Response<pb::VerifyNotificationConfigurationResponse>, Status> {
        reply(NotifierApi::verify_notification_configuration(self, request).await)
    }

    async fn rotate_signing_secret(
        &self,
        request: Request<pb::RotateSigningSecretRequest>,
    ) -> std::result::Result<Response<pb::RotateSigningSecretResponse>, Status> {
        reply(NotifierApi::rotate_signing_secret(self, request).await)
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> std::result::Result<Response<pb::ListDeliveriesResponse>, Status> {
        reply(NotifierApi::list_deliveries(self, request).await)
    }

    async fn list_delivery_attempts(
        &self,
        request: Request<pb::ListDeliveryAttemptsRequest>,
    ) -> std::result::Result<Response<pb::ListDeliveryAttemptsResponse>, Status> {
        reply(NotifierApi::list_delivery_attempts(self, request).await)
    }

    async fn redeliver_delivery(
        &self,
        request: Request<pb::RedeliverDeliveryRequest>,
    ) -> std::result::Result<Response<pb::RedeliverDeliveryResponse>, Status> {
        reply(NotifierApi::redeliver_delivery(self, request).await)
    }

    async fn redeliver_deliveries(
        &self,
        request: Request<pb::RedeliverDeliveriesRequest>,
    ) -> std::result::Result<Response<pb::RedeliverDeliveriesResponse>, Status> {
        reply(NotifierApi::redeliver_deliveries(self, request).await)
    }
}
