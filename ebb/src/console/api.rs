//! The console's clients of the API: one connection to the server, and per request the
//! signed-in caller's token on every call.

use std::time::Duration;

use ebb_common::client::{Bearer, ClientSettings, TracedChannel, channel_with};
use ebb_proto::audit::v1::audit_service_client::AuditServiceClient;
use ebb_proto::lifecycle::v1::deprovision_service_client::DeprovisionServiceClient;
use ebb_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_proto::lifecycle::v1::token_service_client::TokenServiceClient;
use ebb_proto::notifier::v1::notifier_service_client::NotifierServiceClient;
use ebb_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic_health::pb::health_client::HealthClient;

/// How long one call of a page may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The channel with a caller's token.
pub type AsCaller = InterceptedService<TracedChannel, Bearer>;

/// The server's API.
#[derive(Clone)]
pub struct Api {
    channel: TracedChannel,
}

impl Api {
    /// A lazily connected channel to `server`, trusting `settings`' CA; it presents no token
    /// of its own.
    pub fn new(server: &str, settings: &ClientSettings) -> Result<Self, String> {
        let settings = ClientSettings {
            token: String::new(),
            ..settings.clone()
        };
        Ok(Self {
            channel: channel_with(server, CALL_TIMEOUT, &settings)?,
        })
    }

    /// The API as the caller presenting `token`.
    pub fn as_caller(&self, token: &str) -> Result<Clients, String> {
        let channel = InterceptedService::new(self.channel.clone(), Bearer::new(token)?);
        Ok(Clients { channel })
    }
}

/// Clients of every service, presenting one caller's token.
#[derive(Clone)]
pub struct Clients {
    channel: AsCaller,
}

impl Clients {
    pub fn lifecycle(&self) -> LifecycleServiceClient<AsCaller> {
        LifecycleServiceClient::new(self.channel.clone())
    }

    pub fn deprovision(&self) -> DeprovisionServiceClient<AsCaller> {
        DeprovisionServiceClient::new(self.channel.clone())
    }

    pub fn tokens(&self) -> TokenServiceClient<AsCaller> {
        TokenServiceClient::new(self.channel.clone())
    }

    pub fn audit(&self) -> AuditServiceClient<AsCaller> {
        AuditServiceClient::new(self.channel.clone())
    }

    pub fn notifier(&self) -> NotifierServiceClient<AsCaller> {
        NotifierServiceClient::new(self.channel.clone())
    }

    pub fn scheduler(&self) -> SchedulerServiceClient<AsCaller> {
        SchedulerServiceClient::new(self.channel.clone())
    }

    pub fn health(&self) -> HealthClient<AsCaller> {
        HealthClient::new(self.channel.clone())
    }
}

/// A failed call as one line for a page: what was asked and the answer.
pub fn failure(what: &str, status: &tonic::Status) -> String {
    format!("{what}: {}", crate::cli::describe_status(status))
}
