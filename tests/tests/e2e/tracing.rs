//! One trace follows a destroy from the scheduler through lifecycle to audit: the services
//! export OTLP to a real collector endpoint in this test, and the spans of the scheduled
//! auto-destroy chain up, by their parent ids, from audit-svc's record of the event through
//! lifecycle-svc's handling of the scheduler's call to scheduler-svc's task run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebb_tests::cluster::{eventually, fast_lifecycle_env, fast_scheduler_env, fixture, from_now};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_tests::{Process, TestDatabases, start_service};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tonic::{Request, Response, Status};

/// One received span.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

/// An OTLP/gRPC trace collector that keeps what it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                            _ => None,
                        })
                        .collect();
                    received.push(Span {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        attributes,
                    });
                }
            }
        }
        self.spans.lock().expect("lock").extend(received);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Listens on a free port; the endpoint URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("collector");
        });
        format!("http://{addr}")
    }

    /// The chain of services from an `audit.record` span of `action` up to its root, if one
    /// was received whole.
    fn chain(&self, action: &str) -> Option<Vec<Span>> {
        let spans = self.spans.lock().expect("lock").clone();
        let by_id: HashMap<(&[u8], &[u8]), &Span> = spans
            .iter()
            .map(|s| ((s.trace_id.as_slice(), s.span_id.as_slice()), s))
            .collect();
        'records: for record in spans.iter().filter(|s| {
            s.name == "audit.record"
                && s.attributes.get("action").map(String::as_str) == Some(action)
        }) {
            let mut chain = vec![record.clone()];
            let mut current = record;
            while !current.parent_span_id.is_empty() {
                match by_id.get(&(
                    current.trace_id.as_slice(),
                    current.parent_span_id.as_slice(),
                )) {
                    Some(parent) => {
                        chain.push((*parent).clone());
                        current = parent;
                    }
                    // The parent has not arrived (yet).
                    None => continue 'records,
                }
            }
            return Some(chain);
        }
        None
    }

    fn summary(&self) -> String {
        let spans = self.spans.lock().expect("lock");
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for s in spans.iter() {
            *counts
                .entry((s.service.clone(), s.name.clone()))
                .or_default() += 1;
        }
        format!("{counts:?}")
    }
}

/// `binary` on a database of its own, exporting its spans to `otlp` every 200ms (instead of
/// every 5s).
async fn start(
    binary: &str,
    dbs: &mut TestDatabases,
    otlp: &str,
    mut env: Vec<(&'static str, String)>,
) -> Process {
    env.push(("EBB_TELEMETRY__OTLP_ENDPOINT", otlp.to_owned()));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()));
    start_service(binary, dbs, &env).await
}

#[tokio::test]
async fn one_trace_spans_scheduler_lifecycle_and_audit() {
    let collector = Collector::default();
    let otlp = collector.start().await;
    let mut dbs = TestDatabases::new();
    let audit = start("audit-svc", &mut dbs, &otlp, vec![]).await;
    let mut env = fast_lifecycle_env();
    env.push(("EBB_AUDIT_URL", audit.url()));
    let lifecycle = start("lifecycle-svc", &mut dbs, &otlp, env).await;
    let _scheduler = start(
        "scheduler-svc",
        &mut dbs,
        &otlp,
        fast_scheduler_env(&lifecycle.url()),
    )
    .await;

    let mut api = LifecycleServiceClient::new(lifecycle.channel().await);
    let f = fixture(&mut api, None, "traced").await;
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: f.workspace.id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_millis(500))),
        ..Default::default()
    })
    .await
    .expect("set");

    // The destroy run the scheduler queues is recorded by audit in the scheduler's trace.
    let chain = eventually(Duration::from_secs(30), "a whole trace", || async {
        collector.chain("run.queued")
    })
    .await;
    let services: Vec<&str> = chain.iter().map(|s| s.service.as_str()).collect();
    let first = |name: &str| services.iter().position(|s| *s == name);
    let (audit_at, lifecycle_at, scheduler_at) = (
        first("audit-svc"),
        first("lifecycle-svc"),
        first("scheduler-svc"),
    );
    assert!(
        audit_at == Some(0) && lifecycle_at > audit_at && scheduler_at > lifecycle_at,
        "the chain from audit's record to the root runs audit → lifecycle → scheduler: \
         {services:?}; received: {}",
        collector.summary()
    );
    let root = chain.last().expect("root");
    assert_eq!(root.service, "scheduler-svc");
    assert!(
        chain.iter().all(|s| s.trace_id == root.trace_id),
        "one trace id throughout"
    );
    let record = &chain[0];
    assert_eq!(
        record.attributes.get("organization_id"),
        Some(&f.org.id),
        "the record span names its organization"
    );
    let served = chain
        .iter()
        .find(|s| s.service == "lifecycle-svc" && s.name == "grpc.request")
        .expect("lifecycle's server span");
    assert!(
        served
            .attributes
            .get("rpc.method")
            .is_some_and(|m| m.starts_with("/ebb.lifecycle.v1.SchedulingService/")),
        "lifecycle served the scheduler's call: {:?}",
        served.attributes
    );
}
