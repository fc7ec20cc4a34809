//! Clients of one Ebb service to another: lazily connected channels that carry trace context.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::telemetry::TraceContextInterceptor;

/// A channel with trace-context propagation on every call.
pub type TracedChannel = InterceptedService<Channel, TraceContextInterceptor>;

/// A lazily connected channel to `url` (e.g. `http://127.0.0.1:50051`).
pub fn channel(url: &str, timeout: Duration) -> Result<TracedChannel, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("`{url}` is not a valid URL: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(InterceptedService::new(
        endpoint.connect_lazy(),
        TraceContextInterceptor,
    ))
}
