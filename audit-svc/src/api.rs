//! The gRPC surface of audit-svc: validates requests, calls the store, maps the results.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use ebb_common::auth::Caller;
use ebb_common::error::Violations;
use ebb_common::page::Page;
use ebb_common::time::{from_timestamp, to_timestamp};
use ebb_common::{Error, Result};
use ebb_proto::audit::v1::{
    AppendEventsRequest, AppendEventsResponse, AuditEvent, ChainBreak, EventInput,
    ExportEventsRequest, ExportEventsResponse, GetEventRequest, GetEventResponse,
    ListEventsRequest, ListEventsResponse, Order, VerifyChainRequest, VerifyChainResponse,
    audit_service_server::AuditService,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::chain::BreakKind;
use crate::data;
use crate::store::{Filter, NewEvent, Store, StoredEvent, Verification};

/// Most events one AppendEvents call may carry.
pub const MAX_BATCH: usize = 1000;
/// Longest id, organization id, subject or actor accepted.
const MAX_NAME: usize = 256;
/// Largest canonical `data` accepted.
const MAX_DATA_BYTES: usize = 64 * 1024;
/// Events per export message, read from the database only when the client has taken the
/// previous one: an unread stream holds at most this many events.
const EXPORT_CHUNK: i64 = 100;

/// AuditService over the audit database.
pub struct AuditApi {
    store: Store,
    exports: ExportSlots,
}

impl AuditApi {
    /// Serves `store`, each token having at most `max_exports_per_caller` ExportEvents
    /// streams open at once.
    pub fn new(store: Store, max_exports_per_caller: usize) -> Self {
        Self {
            store,
            exports: ExportSlots {
                limit: max_exports_per_caller,
                open: Arc::default(),
            },
        }
    }
}

/// The ExportEvents streams each token has open.
struct ExportSlots {
    limit: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl ExportSlots {
    /// A place for one more stream of `caller`, or RESOURCE_EXHAUSTED naming the limit.
    fn take(&self, caller: &str) -> Result<ExportSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(caller.to_owned()).or_default();
        if *count >= self.limit {
            return Err(Error::ResourceExhausted(format!(
                "at most {} ExportEvents streams may be open at once per token \
                 (export.max_streams_per_caller); finish or cancel one first",
                self.limit
            )));
        }
        *count += 1;
        Ok(ExportSlot {
            open: self.open.clone(),
            caller: caller.to_owned(),
        })
    }
}

/// One open ExportEvents stream; its place is given back when the stream is dropped (ended,
/// failed, or cancelled by the client).
struct ExportSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl Drop for ExportSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

/// Where an export stands: the next page starts at `next`.
struct Export {
    store: Store,
    organization_id: String,
    next: i64,
    to: i64,
    _slot: ExportSlot,
}

impl Export {
    /// The next page and the state after it; `None` once the range is done. Reads the
    /// database only when polled, that is when the client has room for another message.
    async fn page(mut self) -> Option<(Result<ExportEventsResponse, Status>, Option<Self>)> {
        if self.next > self.to {
            return None;
        }
        let chunk = match self
            .store
            .range(&self.organization_id, self.next, self.to, EXPORT_CHUNK)
            .await
        {
            Ok(chunk) => chunk,
            Err(e) => return Some((Err(Status::from(e)), None)),
        };
        let last = chunk.last()?.sequence;
        match chunk.into_iter().map(to_proto).collect::<Result<Vec<_>>>() {
            Ok(events) => {
                self.next = last + 1;
                Some((Ok(ExportEventsResponse { events }), Some(self)))
            }
            Err(e) => Some((Err(Status::from(e)), None)),
        }
    }
}

/// Records what is wrong with a name-like field; `true` when nothing is.
fn check_name(v: &mut Violations, field: &str, value: &str, required: bool) -> bool {
    let problem = if required && value.is_empty() {
        "is required".to_owned()
    } else if value.chars().count() > MAX_NAME {
        format!("must be at most {MAX_NAME} characters")
    } else if value.contains('\0') {
        "must not contain NUL characters".to_owned()
    } else {
        return true;
    };
    v.add(field, problem);
    false
}

/// Validates one offered event and brings its data into canonical form.
fn new_event(v: &mut Violations, field: &str, input: &EventInput) -> Option<NewEvent> {
    let names = [
        ("id", &input.id, true),
        ("organization_id", &input.organization_id, true),
        ("action", &input.action, true),
        ("subject_type", &input.subject_type, false),
        ("subject_id", &input.subject_id, false),
        ("actor", &input.actor, true),
    ];
    let mut names_ok = true;
    for (name, value, required) in names {
        names_ok &= check_name(v, &format!("{field}.{name}"), value, required);
    }
    if input.traceparent.len() > 256 {
        v.add(
            format!("{field}.traceparent"),
            "must be at most 256 characters",
        );
    }
    let occur_time_ms = match &input.occur_time {
        None => {
            v.add(format!("{field}.occur_time"), "is required");
            None
        }
        Some(ts) => v.check(&format!("{field}.occur_time"), from_timestamp(ts)),
    };
    let data = v.check(
        &format!("{field}.data"),
        data::canonical_struct(input.data.as_ref()).and_then(|text| {
            if text.len() > MAX_DATA_BYTES {
                Err(format!("must be at most {MAX_DATA_BYTES} bytes as JSON"))
            } else {
                Ok(text)
            }
        }),
    );
    if !names_ok {
        return None;
    }
    Some(NewEvent {
        id: input.id.clone(),
        organization_id: input.organization_id.clone(),
        action: input.action.clone(),
        subject_type: input.subject_type.clone(),
        subject_id: input.subject_id.clone(),
        actor: input.actor.clone(),
        data: data?,
        occur_time_ms: occur_time_ms?,
    })
}

fn to_proto(event: StoredEvent) -> Result<AuditEvent> {
    let data = data::struct_from_canonical(&event.event.data)
        .map_err(|e| Error::Internal(format!("stored data of event {}: {e}", event.event.id)))?;
    Ok(AuditEvent {
        event: Some(EventInput {
            id: event.event.id,
            organization_id: event.event.organization_id,
            action: event.event.action,
            subject_type: event.event.subject_type,
            subject_id: event.event.subject_id,
            actor: event.event.actor,
            data: Some(data),
            occur_time: Some(to_timestamp(event.event.occur_time_ms)),
            // Not recorded: it describes the delivery, not the event.
            traceparent: String::new(),
        }),
        sequence: event.sequence,
        prev_hash: event.prev_hash,
        hash: event.hash,
        record_time: Some(to_timestamp(event.record_time_ms)),
    })
}

/// Non-empty text as `Some`.
fn some(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// The filter and the page of a ListEvents request, every bad field reported at once.
fn filter(r: &ListEventsRequest) -> Result<(Filter, Page)> {
    let mut v = Violations::new();
    check_name(&mut v, "organization_id", &r.organization_id, true);
    for (field, value) in [
        ("action", &r.action),
        ("action_prefix", &r.action_prefix),
        ("subject_type", &r.subject_type),
        ("subject_id", &r.subject_id),
        ("actor", &r.actor),
    ] {
        check_name(&mut v, field, value, false);
    }
    if !r.action.is_empty() && !r.action_prefix.is_empty() {
        v.add("action_prefix", "cannot be combined with `action`");
    }
    let start_ms = r
        .start_time
        .as_ref()
        .and_then(|t| v.check("start_time", from_timestamp(t)));
    let end_ms = r
        .end_time
        .as_ref()
        .and_then(|t| v.check("end_time", from_timestamp(t)));
    if let (Some(s), Some(e)) = (start_ms, end_ms)
        && e < s
    {
        v.add("end_time", "must not be before `start_time`");
    }
    let newest_first = match Order::try_from(r.order) {
        Ok(Order::Unspecified | Order::OldestFirst) => false,
        Ok(Order::NewestFirst) => true,
        Err(_) => {
            v.add("order", format!("unknown order {}", r.order));
            false
        }
    };
    let filter = Filter {
        organization_id: r.organization_id.clone(),
        action: some(&r.action),
        action_prefix: some(&r.action_prefix),
        subject_type: some(&r.subject_type),
        subject_id: some(&r.subject_id),
        actor: some(&r.actor),
        start_ms,
        end_ms,
        newest_first,
    };
    // A token is bound to every filter field and the order.
    let key = serde_json::to_string(&filter).unwrap_or_default();
    let page = Page::read(&mut v, r.page_size, &r.page_token, &["audit_events", &key]);
    v.finish()?;
    Ok((filter, page))
}

/// Validates a `from_sequence`/`to_sequence` pair; `to` 0 means the head.
fn range(from: i64, to: i64) -> Result<(i64, Option<i64>)> {
    let mut v = Violations::new();
    if from < 0 {
        v.add("from_sequence", "must not be negative");
    }
    if to < 0 {
        v.add("to_sequence", "must not be negative");
    }
    if to > 0 && to < from {
        v.add("to_sequence", "must not be before `from_sequence`");
    }
    v.finish()?;
    Ok((from.max(1), (to > 0).then_some(to)))
}

fn break_reason(kind: BreakKind) -> ChainBreak {
    match kind {
        BreakKind::HashMismatch => ChainBreak::HashMismatch,
        BreakKind::PrevHashMismatch => ChainBreak::PrevHashMismatch,
        BreakKind::SequenceGap => ChainBreak::SequenceGap,
        BreakKind::OrganizationMismatch => ChainBreak::OrganizationMismatch,
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn append_events(
        &self,
        request: Request<AppendEventsRequest>,
    ) -> Result<Response<AppendEventsResponse>, Status> {
        let request = request.into_inner();
        let mut v = Violations::new();
        if request.events.is_empty() {
            v.add("events", "must not be empty");
        }
        if request.events.len() > MAX_BATCH {
            v.add("events", format!("must be at most {MAX_BATCH} events"));
        }
        let mut events: Vec<NewEvent> = Vec::with_capacity(request.events.len());
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        for (i, input) in request.events.iter().enumerate() {
            let Some(event) = new_event(&mut v, &format!("events[{i}]"), input) else {
                continue;
            };
            match seen.get(&event.id) {
                // A repeat within the batch is the same event offered twice.
                Some(&j) if events[j] == event => {}
                Some(&j) => v.add(
                    format!("events[{i}].id"),
                    format!("repeats events[{j}] with different content"),
                ),
                None => {
                    seen.insert(event.id.clone(), events.len());
                    events.push(event);
                }
            }
        }
        v.finish()?;
        let duplicates = request.events.len() - events.len();
        // Each event's own trace gets a span covering the append that records it.
        let spans: Vec<tracing::Span> = request
            .events
            .iter()
            .filter(|input| !input.traceparent.is_empty())
            .map(|input| {
                let span = tracing::info_span!(
                    "audit.record",
                    event_id = %input.id,
                    organization_id = %input.organization_id,
                    action = %input.action,
                );
                ebb_common::telemetry::follow_remote(&input.traceparent, span)
            })
            .collect();
        let out = self
            .store
            .append(&events, ebb_common::time::now_ms())
            .await?;
        drop(spans);
        tracing::debug!(
            appended = out.appended,
            already_recorded = out.already_recorded,
            "events appended"
        );
        Ok(Response::new(AppendEventsResponse {
            appended: out.appended as i32,
            already_recorded: (out.already_recorded + duplicates) as i32,
        }))
    }

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let request = request.into_inner();
        let (filter, page) = filter(&request)?;
        let events = self
            .store
            .list(&filter, page.after_int()?, page.limit())
            .await?;
        let (events, next_page_token) = page.finish(events, |e| vec![e.sequence.to_string()]);
        let events = events
            .into_iter()
            .map(to_proto)
            .collect::<Result<Vec<_>>>()?;
        Ok(Response::new(ListEventsResponse {
            events,
            next_page_token,
        }))
    }

    async fn get_event(
        &self,
        request: Request<GetEventRequest>,
    ) -> Result<Response<GetEventResponse>, Status> {
        let id = request.into_inner().id;
        let mut v = Violations::new();
        check_name(&mut v, "id", &id, true);
        v.finish()?;
        let event = self
            .store
            .get(&id)
            .await?
            .ok_or_else(|| Error::not_found("audit event", &id))?;
        Ok(Response::new(GetEventResponse {
            event: Some(to_proto(event)?),
        }))
    }

    async fn verify_chain(
        &self,
        request: Request<VerifyChainRequest>,
    ) -> Result<Response<VerifyChainResponse>, Status> {
        let request = request.into_inner();
        let mut v = Violations::new();
        check_name(&mut v, "organization_id", &request.organization_id, true);
        v.finish()?;
        let (from, to) = range(request.from_sequence, request.to_sequence)?;
        let outcome = self
            .store
            .verify(&request.organization_id, from, to)
            .await?
            .ok_or_else(|| Error::not_found("audit chain", &request.organization_id))?;
        let response = match outcome {
            Verification::Intact {
                verified,
                head_sequence,
                head_hash,
            } => VerifyChainResponse {
                intact: true,
                verified_count: verified,
                head_sequence,
                head_hash,
                ..Default::default()
            },
            Verification::Broken { verified, at } => {
                tracing::warn!(
                    organization_id = %request.organization_id,
                    sequence = at.sequence,
                    detail = %at.detail,
                    "audit chain broken"
                );
                VerifyChainResponse {
                    intact: false,
                    verified_count: verified,
                    first_bad_sequence: at.sequence,
                    break_reason: break_reason(at.kind) as i32,
                    detail: at.detail,
                    ..Default::default()
                }
            }
        };
        Ok(Response::new(response))
    }

    type ExportEventsStream = ExportStream;

    async fn export_events(
        &self,
        request: Request<ExportEventsRequest>,
    ) -> Result<Response<Self::ExportEventsStream>, Status> {
        let caller = Caller::of(&request)?.token_id.clone();
        let request = request.into_inner();
        let mut v = Violations::new();
        check_name(&mut v, "organization_id", &request.organization_id, true);
        v.finish()?;
        let (from, to) = range(request.from_sequence, request.to_sequence)?;
        let organization_id = request.organization_id;
        let slot = self.exports.take(&caller)?;
        let (head, _) = self
            .store
            .head(&organization_id)
            .await?
            .ok_or_else(|| Error::not_found("audit chain", &organization_id))?;
        // The head when the export starts bounds it, so a busy chain still ends.
        let export = Export {
            store: self.store.clone(),
            organization_id,
            next: from,
            to: to.unwrap_or(head).min(head),
            _slot: slot,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            Some(export),
            |export| async move { export?.page().await },
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_bound_to_their_filter_and_order() {
        let request = ListEventsRequest {
            organization_id: "o".into(),
            action_prefix: "deprovision.".into(),
            page_size: 1,
            ..Default::default()
        };
        let (_, page) = filter(&request).expect("valid");
        let (_, token) = page.finish(vec![41, 42], |s| vec![s.to_string()]);
        let next = ListEventsRequest {
            page_token: token.clone(),
            ..request.clone()
        };
        let (_, page) = filter(&next).expect("same filter");
        assert_eq!(page.after_int().expect("position"), Some(41));
        // Unspecified and oldest-first are one order.
        let oldest = ListEventsRequest {
            order: Order::OldestFirst as i32,
            ..next.clone()
        };
        assert!(filter(&oldest).is_ok());
        for other in [
            ListEventsRequest {
                order: Order::NewestFirst as i32,
                ..next.clone()
            },
            ListEventsRequest {
                action_prefix: "workspace.".into(),
                ..next.clone()
            },
            ListEventsRequest {
                page_token: "not a token!".into(),
                ..request.clone()
            },
        ] {
            let err = filter(&other).expect_err("refused");
            let Error::InvalidArgument(v) = err else {
                panic!("invalid argument")
            };
            assert_eq!(v[0].field, "page_token");
        }
    }
}
