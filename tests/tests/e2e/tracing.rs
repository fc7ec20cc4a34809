//! One trace follows a destroy from the scheduler through lifecycle to audit: the services
//! export OTLP to a real collector endpoint in this test, and the spans of the scheduled
//! auto-destroy chain up, by their parent ids, from audit-svc's record of the event through
//! lifecycle-svc's handling of the scheduler's call to scheduler-svc's task run.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::ebb_serve;
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
                            Value::IntValue(i) => Some((kv.key.clone(), i.to_string())),
                            Value::BoolValue(b) => Some((kv.key.clone(), b.to_string())),
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

    /// Spans received so far.
    fn received(&self) -> Vec<Span> {
        self.spans.lock().expect("lock").clone()
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
    // lifecycle's server span and the scheduler's client span of the same call are named and
    // attributed by the OpenTelemetry RPC conventions.
    let served = chain
        .iter()
        .find(|s| s.service == "lifecycle-svc" && s.attributes.contains_key("rpc.system"))
        .expect("lifecycle's server span");
    let method = served
        .attributes
        .get("rpc.method")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        served.name,
        format!("ebb.lifecycle.v1.SchedulingService/{method}"),
        "lifecycle served the scheduler's call: {:?}",
        served.attributes
    );
    assert_eq!(
        served.attributes.get("rpc.system").map(String::as_str),
        Some("grpc")
    );
    assert_eq!(
        served.attributes.get("rpc.service").map(String::as_str),
        Some("ebb.lifecycle.v1.SchedulingService")
    );
    assert_eq!(
        served
            .attributes
            .get("rpc.grpc.status_code")
            .map(String::as_str),
        Some("0")
    );
    let sent = chain
        .iter()
        .find(|s| s.service == "scheduler-svc" && s.name == served.name)
        .expect("the scheduler's client span of the same call");
    assert_eq!(
        sent.span_id, served.parent_span_id,
        "the call's server span is its child"
    );
    assert_eq!(root.name, "task");
}

/// Root spans among `spans`, counted by service and name.
fn roots(spans: &[Span]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for s in spans.iter().filter(|s| s.parent_span_id.is_empty()) {
        *counts
            .entry((s.service.clone(), s.name.clone()))
            .or_default() += 1;
    }
    counts
}

/// `ebb serve` exporting to `collector` with `env`, once serving.
async fn traced_serve(
    collector: &Collector,
    dbs: &TestDatabases,
    env: &[(&'static str, String)],
) -> Process {
    let otlp = collector.start().await;
    let mut env = env.to_vec();
    env.push(("EBB_TELEMETRY__OTLP_ENDPOINT", otlp));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()));
    ebb_serve(dbs, &env).await.0
}

#[tokio::test]
async fn an_idle_server_exports_no_root_spans() {
    let collector = Collector::default();
    let dbs = TestDatabases::new();
    let server = traced_serve(&collector, &dbs, &[]).await;
    // Settle: what the start exported is not idle work.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = collector.received().len();
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let idle = collector.received().split_off(before);
    let roots = roots(&idle);
    let total: usize = roots.values().sum();
    eprintln!(
        "idle `ebb serve` for {window:?}: {} spans, {total} root spans ({:.1}/s): {roots:?}",
        idle.len(),
        total as f64 / window.as_secs_f64()
    );
    assert_eq!(total, 0, "an idle server exports no root spans: {roots:?}");
    assert!(
        idle.is_empty(),
        "nor any other span: {}",
        collector.summary()
    );

    // A call is a root span named and attributed by the RPC conventions, with its status.
    let mut api = LifecycleServiceClient::new(server.channel().await);
    let f = fixture(&mut api, None, "named").await;
    let refused = api
        .get_workspace(pb::GetWorkspaceRequest {
            workspace_id: "not-a-uuid".into(),
        })
        .await
        .expect_err("a malformed id is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let span_of = |method: &'static str| {
        let collector = collector.clone();
        move || {
            let name = format!("ebb.lifecycle.v1.LifecycleService/{method}");
            let found = collector
                .received()
                .into_iter()
                .find(|s| s.name == name && s.parent_span_id.is_empty());
            std::future::ready(found)
        }
    };
    let created = eventually(
        Duration::from_secs(10),
        "the CreateOrganization span",
        span_of("CreateOrganization"),
    )
    .await;
    let attribute = |s: &Span, key: &str| s.attributes.get(key).cloned().unwrap_or_default();
    assert_eq!(created.service, "ebb");
    assert_eq!(attribute(&created, "rpc.system"), "grpc");
    assert_eq!(
        attribute(&created, "rpc.service"),
        "ebb.lifecycle.v1.LifecycleService"
    );
    assert_eq!(attribute(&created, "rpc.method"), "CreateOrganization");
    assert_eq!(attribute(&created, "rpc.grpc.status_code"), "0");
    let failed = eventually(
        Duration::from_secs(10),
        "the GetWorkspace span",
        span_of("GetWorkspace"),
    )
    .await;
    assert_eq!(attribute(&failed, "rpc.grpc.status_code"), "3");

    // Work done by a loop is exported: the auto-destroy the scheduler queues is a trace whose
    // root is the scheduler's task run, down to audit's record of the queued run.
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: f.workspace.id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_millis(500))),
        ..Default::default()
    })
    .await
    .expect("set");
    let chain = eventually(Duration::from_secs(30), "a whole trace", || async {
        collector.chain("run.queued")
    })
    .await;
    let root = chain.last().expect("root");
    assert_eq!(root.name, "task", "{chain:?}");
    assert_eq!(attribute(root, "task"), "auto_destroy_check");
}

#[tokio::test]
async fn the_sample_ratio_applies_to_new_traces_and_callers_decide_for_theirs() {
    let collector = Collector::default();
    let dbs = TestDatabases::new();
    let server = traced_serve(
        &collector,
        &dbs,
        &[("EBB_TELEMETRY__SAMPLE_RATIO", "0".to_owned())],
    )
    .await;
    let mut api = LifecycleServiceClient::new(server.channel().await);
    fixture(&mut api, None, "unsampled").await;

    // A caller that sampled its trace gets the server's spans in it despite the ratio.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(pb::ListOrganizationsRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .expect("value"),
    );
    api.list_organizations(request).await.expect("list");
    let listed = eventually(Duration::from_secs(10), "the caller's trace", || async {
        collector
            .received()
            .into_iter()
            .find(|s| hex(&s.trace_id) == trace_id)
    })
    .await;
    assert_eq!(
        listed.name,
        "ebb.lifecycle.v1.LifecycleService/ListOrganizations"
    );
    assert_eq!(hex(&listed.parent_span_id), "00f067aa0ba902b7");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let others: Vec<Span> = collector
        .received()
        .into_iter()
        .filter(|s| hex(&s.trace_id) != trace_id)
        .collect();
    assert!(
        others.is_empty(),
        "with sample_ratio 0 the server starts no exported trace: {}",
        collector.summary()
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
