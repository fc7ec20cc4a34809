//! Traces that are exported only if they did something. A loop that polls for work (the
//! scheduler's task runs, health probes) starts each round as a *deferred* root span; most
//! rounds find nothing, and exporting each of them would bury the traces that matter. The
//! sampler marks a deferred root's trace with `tracestate: ebb=deferred`, which every child
//! inherits, in this process and, through the propagated context, in the services it calls.
//! The span processor holds the ended spans of such a trace until the local root of their
//! part of it ends (the deferred root itself, or the server span of a call it made), then
//! exports them if the trace did work by then ([`mark_work`]: a domain event written, a
//! failed call, a task that found something to do) and drops them otherwise.
//!
//! Each process decides for its own part: a call of a kept trace that changed nothing in the
//! service it reached is dropped there, so a kept trace can miss the server side of its idle
//! calls (such as the lookup before the work).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, ShouldSample, Span, SpanData, SpanProcessor,
};

/// The attribute that makes a root span deferred (`ebb.deferred = true` in `tracing`).
pub const DEFERRED_ATTRIBUTE: &str = "ebb.deferred";

const STATE_KEY: &str = "ebb";
const STATE_VALUE: &str = "deferred";

/// How long a trace's work mark is kept for later parts of the trace (the next call of the
/// same task run); marks are small, and a round lasts seconds.
const MARK_TTL: Duration = Duration::from_secs(300);

/// Ended spans waiting for their local root; a trace that outgrows this is exported as is.
const MAX_HELD_PER_TRACE: usize = 512;

#[derive(Default)]
struct State {
    held: HashMap<TraceId, Vec<SpanData>>,
    worked: HashMap<TraceId, Instant>,
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(Mutex::default);

/// Whether `context` belongs to a deferred trace.
pub fn is_deferred(context: &SpanContext) -> bool {
    context.trace_state().get(STATE_KEY) == Some(STATE_VALUE)
}

/// Records that the trace of `context` did work, so that its deferred spans are exported.
pub fn mark_work(context: &SpanContext) {
    if !is_deferred(context) {
        return;
    }
    let now = Instant::now();
    if let Ok(mut state) = STATE.lock() {
        state
            .worked
            .retain(|_, marked| now.duration_since(*marked) < MARK_TTL);
        state.worked.insert(context.trace_id(), now);
    }
}

/// The parent-based ratio sampler, which also marks the traces of deferred roots.
#[derive(Debug, Clone)]
pub struct DeferringSampler {
    inner: Sampler,
}

impl DeferringSampler {
    /// Samples root spans at `ratio` (0 to 1); children follow their parent's decision.
    pub fn new(ratio: f64) -> Self {
        Self {
            inner: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
        }
    }
}

impl ShouldSample for DeferringSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let mut result =
            self.inner
                .should_sample(parent_context, trace_id, name, span_kind, attributes, links);
        let is_root = parent_context.is_none_or(|cx| !cx.has_active_span());
        let deferred = attributes
            .iter()
            .any(|kv| kv.key.as_str() == DEFERRED_ATTRIBUTE && kv.value.as_str() == "true");
        if is_root && deferred && result.decision == SamplingDecision::RecordAndSample {
            result.trace_state = result
                .trace_state
                .insert(STATE_KEY, STATE_VALUE)
                .unwrap_or_else(|_| TraceState::default());
        }
        result
    }
}

/// Holds the spans of deferred traces until their local root ends; passes others on to
/// `inner` at once.
#[derive(Debug)]
pub struct DeferringProcessor<P> {
    inner: P,
}

impl<P> DeferringProcessor<P> {
    pub fn new(inner: P) -> Self {
        Self { inner }
    }
}

impl<P: SpanProcessor> SpanProcessor for DeferringProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !is_deferred(&span.span_context) {
            return self.inner.on_end(span);
        }
        let trace = span.span_context.trace_id();
        let local_root = span.parent_span_id == opentelemetry::trace::SpanId::INVALID
            || span.parent_span_is_remote;
        let Ok(mut state) = STATE.lock() else {
            return self.inner.on_end(span);
        };
        if !local_root {
            let held = state.held.entry(trace).or_default();
            if held.len() < MAX_HELD_PER_TRACE {
                held.push(span);
                return;
            }
            let held = state.held.remove(&trace).unwrap_or_default();
            drop(state);
            held.into_iter().for_each(|s| self.inner.on_end(s));
            return self.inner.on_end(span);
        }
        let held = state.held.remove(&trace).unwrap_or_default();
        let worked = if span.parent_span_id == opentelemetry::trace::SpanId::INVALID {
            // The deferred root itself ends the trace here.
            state.worked.remove(&trace).is_some()
        } else {
            state.worked.contains_key(&trace)
        };
        drop(state);
        if worked {
            held.into_iter().for_each(|s| self.inner.on_end(s));
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{
        Span as _, SpanContext, TraceContextExt, TraceFlags, Tracer, TracerProvider as _,
    };
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    /// Keeps the names of the spans passed on for export.
    #[derive(Debug, Default, Clone)]
    struct Exported(Arc<Mutex<Vec<String>>>);

    impl SpanProcessor for Exported {
        fn on_start(&self, _: &mut Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().expect("lock").push(span.name.into_owned());
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    impl Exported {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock().expect("lock"))
        }
    }

    fn provider(ratio: f64) -> (SdkTracerProvider, Exported) {
        let exported = Exported::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(DeferringSampler::new(ratio))
            .with_span_processor(DeferringProcessor::new(exported.clone()))
            .build();
        (provider, exported)
    }

    /// A root (deferred or not) with one child; `work` marks the child's trace.
    fn round(provider: &SdkTracerProvider, deferred: bool, work: bool) {
        let tracer = provider.tracer("test");
        let attributes = if deferred {
            vec![KeyValue::new(DEFERRED_ATTRIBUTE, true)]
        } else {
            vec![]
        };
        let root = tracer
            .span_builder("root")
            .with_attributes(attributes)
            .start(&tracer);
        let cx = Context::current_with_span(root);
        let mut child = tracer.start_with_context("child", &cx);
        if work {
            mark_work(child.span_context());
        }
        child.end();
        cx.span().end();
    }

    #[test]
    fn a_deferred_round_is_exported_only_if_it_did_work() {
        let (provider, exported) = provider(1.0);
        round(&provider, true, false);
        assert!(exported.take().is_empty(), "an idle round exports nothing");
        round(&provider, true, true);
        assert_eq!(exported.take(), ["child", "root"]);
        round(&provider, false, false);
        assert_eq!(exported.take(), ["child", "root"], "other traces pass");
    }

    #[test]
    fn a_callee_keeps_its_part_of_a_deferred_trace_only_if_it_did_work() {
        let (provider, exported) = provider(1.0);
        let tracer = provider.tracer("test");
        let state = TraceState::default()
            .insert(STATE_KEY, STATE_VALUE)
            .expect("state");
        for (work, expected) in [(false, vec![]), (true, vec!["handler", "served"])] {
            let caller = SpanContext::new(
                TraceId::from(rand::random::<u128>().max(1)),
                opentelemetry::trace::SpanId::from(7),
                TraceFlags::SAMPLED,
                true,
                state.clone(),
            );
            let remote = Context::new().with_remote_span_context(caller);
            let served = tracer.start_with_context("served", &remote);
            let cx = remote.with_span(served);
            let mut handler = tracer.start_with_context("handler", &cx);
            assert!(
                is_deferred(handler.span_context()),
                "the caller's mark is inherited"
            );
            if work {
                mark_work(handler.span_context());
            }
            handler.end();
            cx.span().end();
            assert_eq!(exported.take(), expected, "work: {work}");
        }
    }

    #[test]
    fn roots_follow_the_ratio_and_children_their_parent() {
        let (provider, exported) = provider(0.0);
        round(&provider, false, false);
        assert!(exported.take().is_empty(), "ratio 0 samples no new trace");
        let tracer = provider.tracer("test");
        let caller = SpanContext::new(
            TraceId::from(42u128),
            opentelemetry::trace::SpanId::from(7),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let remote = Context::new().with_remote_span_context(caller);
        tracer.start_with_context("served", &remote).end();
        assert_eq!(exported.take(), ["served"], "a sampled caller decides");
    }
}
