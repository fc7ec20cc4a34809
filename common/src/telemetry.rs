//! Logs and traces: `tracing` with an env filter, pretty or JSON output, an optional OTLP
//! exporter with a parent-based ratio sampler, and W3C trace context carried in gRPC metadata
//! in both directions. Call spans are named `package.Service/Method` and carry the
//! OpenTelemetry RPC attributes (`rpc.system`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code`); loops that poll for work start deferred traces ([`deferred`]),
//! exported only when they did some.

mod deferred;

pub use deferred::DEFERRED_ATTRIBUTE;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};

/// Keeps the tracer provider alive; [`TelemetryGuard::shutdown`] flushes pending spans.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes and stops span export. Safe to call more than once.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans failed: {e}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Installs the global subscriber and propagator. Call once, at the start of `main`.
pub fn init(
    config: &TelemetryConfig,
    default_service_name: &str,
) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::try_new(&config.log_filter)?,
    };
    let fmt = match config.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            // Colours only for a person at a terminal: none in files, pipes and `NO_COLOR`.
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .boxed(),
    };

    let service_name = if config.service_name.is_empty() {
        default_service_name.to_owned()
    } else {
        config.service_name.clone()
    };
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(deferred::DeferringSampler::new(config.sample_ratio))
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.clone())
                .build(),
        );
    if !config.otlp_endpoint.is_empty() {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.otlp_endpoint.clone())
            .build()?;
        let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build();
        builder = builder.with_span_processor(deferred::DeferringProcessor::new(batch));
    }
    // A provider exists even without an exporter so that spans carry real ids and trace
    // context is still forwarded from one service to the next.
    let provider = builder.build();
    let tracer = provider.tracer(service_name);
    global::set_tracer_provider(provider.clone());

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()?;
    if let Some(file) = crate::time::test_clock::enabled() {
        tracing::warn!(
            file,
            "the test clock is on: every decision reads the time moved by the offset in this \
             file; never run like this in production"
        );
    }
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The span of one incoming call of `rpc`, child of the caller's `traceparent` if any. A health
/// check that starts a trace starts a deferred one: probes are exported only when they fail.
pub fn server_span<B>(request: &http::Request<B>, rpc: &crate::rpcs::Rpc) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt;
    let parent: Context =
        global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    let probe = rpc.service == "grpc.health.v1.Health" && !parent.span().span_context().is_valid();
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = rpc.name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = rpc.service,
        rpc.method = rpc.method,
        rpc.grpc.status_code = tracing::field::Empty,
        ebb.deferred = probe.then_some(true),
    );
    let _ = span.set_parent(parent);
    span
}

/// The span of one outgoing call of `rpc`, a child of the current span.
pub fn client_span(rpc: &crate::rpcs::Rpc) -> tracing::Span {
    tracing::info_span!(
        "grpc.client",
        otel.name = rpc.name,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = rpc.service,
        rpc.method = rpc.method,
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

/// A root span for one round of a loop that polls for work: its trace is exported only if
/// the round calls [`mark_work`] (or something in the trace fails or writes a domain event).
/// `name` is the span's name; further fields can be recorded on the span later.
#[macro_export]
macro_rules! deferred_root_span {
    ($name:expr, $($fields:tt)*) => {
        ::tracing::info_span!(parent: None, $name, ebb.deferred = true, $($fields)*)
    };
}

/// Records that the current trace did work: a deferred trace it belongs to is exported.
pub fn mark_work() {
    mark_work_in(&tracing::Span::current());
}

/// Records that the trace of `span` did work (see [`mark_work`]).
pub fn mark_work_in(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    deferred::mark_work(context.span().span_context());
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Writes the trace context of `span` into outgoing request headers.
pub fn inject_into_headers(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let context = span.context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(headers)));
}

/// The W3C `traceparent` of the current span, to be stored with a domain event that others
/// will follow; empty outside any span. Handing the trace on counts as work ([`mark_work`]).
pub fn current_traceparent() -> String {
    mark_work();
    let context = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the remote span `traceparent` names (W3C). An empty or invalid
/// `traceparent` leaves `span` where it is (a child of the current span, if any).
pub fn follow_remote(traceparent: &str, span: tracing::Span) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt;
    if traceparent.is_empty() || traceparent.len() > 256 {
        return span;
    }
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent: Context = global::get_text_map_propagator(|p| p.extract(&carrier));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

/// Writes the current span's trace context into outgoing request metadata.
pub fn inject_trace_context(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut MetadataInjector(metadata))
    });
}

/// A client interceptor that carries the caller's trace context to the callee.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_trace_context(request.metadata_mut());
        Ok(request)
    }
}
