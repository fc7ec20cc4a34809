//! How `ebb runner` reports runs that ended. One run at a time, each completion is its own
//! CompleteRun. With runs side by side, the runs that end while a report is on its way are
//! reported together in the next, one CompleteRuns call, so a runner whose runs end at once
//! costs the server one transaction, not one per run.

use std::time::Duration;

use ebb_common::client::TracedChannel;
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::runner_service_client::RunnerServiceClient;
use tokio::sync::{mpsc, oneshot};

/// The most completions one CompleteRuns call carries (the server's limit).
const MAX_PER_CALL: usize = 100;
/// How many times a report is sent before a transient failure is given up on.
const ATTEMPTS: u32 = 5;

type Client = RunnerServiceClient<TracedChannel>;

/// Reports completions: directly, or through the task that gathers them into batches.
#[derive(Clone)]
pub struct Reporter {
    client: Client,
    /// The gathering task's queue; `None` reports each completion on its own.
    gathered: Option<mpsc::UnboundedSender<Pending>>,
}

/// A completion waiting to be reported, and who waits for the answer.
struct Pending {
    request: pb::CompleteRunRequest,
    answer: oneshot::Sender<Result<(), tonic::Status>>,
}

impl Reporter {
    /// A reporter over `client`; with `gather`, completions that wait together are sent in
    /// one call, by a task that ends once every clone of the reporter is dropped.
    pub fn new(client: Client, gather: bool) -> Self {
        let gathered = gather.then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(gather_and_send(client.clone(), rx));
            tx
        });
        Self { client, gathered }
    }

    /// Reports one completion, retrying transient failures; the server's answer for it.
    pub async fn complete(&self, request: pb::CompleteRunRequest) -> Result<(), tonic::Status> {
        let Some(tx) = &self.gathered else {
            return complete_one(self.client.clone(), request).await;
        };
        let (answer, answered) = oneshot::channel();
        tx.send(Pending { request, answer })
            .map_err(|_| tonic::Status::unavailable("the runner is shutting down"))?;
        answered
            .await
            .unwrap_or_else(|_| Err(tonic::Status::unavailable("the report was dropped")))
    }
}

fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::DeadlineExceeded
    )
}

/// Sends a report with `send` until it is answered or refused, retrying transient failures
/// (the same request each time, so a report whose answer was lost is answered from the
/// server's record of it, not refused) up to [`ATTEMPTS`] times with a doubling pause.
async fn retrying<F, Fut>(what: &str, mut send: F) -> Result<(), tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut attempt = 0;
    loop {
        match send().await {
            Err(s) if transient(&s) && attempt + 1 < ATTEMPTS => {
                tracing::warn!(what, error = %s.message(), attempt, "a report failed; retrying");
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                attempt += 1;
            }
            answered => return answered,
        }
    }
}

/// CompleteRun for one run.
async fn complete_one(
    client: Client,
    request: pb::CompleteRunRequest,
) -> Result<(), tonic::Status> {
    let what = format!("completing run {}", request.run_id);
    retrying(&what, || {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.complete_run(request).await.map(drop) }
    })
    .await
}

/// The gathering task: takes every completion waiting, sends them in one CompleteRuns call
/// (retried as a whole, under one request id), and answers each. Completions the call refused
/// — one lost lease refuses them all — are sent again one by one, each to its own answer;
/// so are all of them against a server that does not know CompleteRuns.
async fn gather_and_send(client: Client, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batches = true;
    while let Some(first) = rx.recv().await {
        // Runs that ended in the same moment are still adding theirs: let them.
        tokio::task::yield_now().await;
        let mut pending = vec![first];
        while pending.len() < MAX_PER_CALL {
            match rx.try_recv() {
                Ok(p) => pending.push(p),
                Err(_) => break,
            }
        }
        if batches && pending.len() > 1 {
            match complete_all(client.clone(), &pending).await {
                Ok(()) => {
                    for p in pending {
                        let _ = p.answer.send(Ok(()));
                    }
                    continue;
                }
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    tracing::warn!(
                        "the server cannot complete several runs per call; completing one at a time"
                    );
                    batches = false;
                }
                Err(s) if transient(&s) => {
                    for p in pending {
                        let _ = p.answer.send(Err(s.clone()));
                    }
                    continue;
                }
                Err(s) => {
                    tracing::warn!(runs = pending.len(), error = %s.message(), "completing runs together was refused; completing each on its own");
                }
            }
        }
        let sent = pending.into_iter().map(|p| {
            let client = client.clone();
            async move {
                let _ = p.answer.send(complete_one(client, p.request).await);
            }
        });
        futures::future::join_all(sent).await;
    }
}

/// CompleteRuns for `pending`, under one request id.
async fn complete_all(client: Client, pending: &[Pending]) -> Result<(), tonic::Status> {
    let first = &pending[0].request;
    let request = pb::CompleteRunsRequest {
        request_id: format!("{}-and-{}-more", first.request_id, pending.len() - 1),
        completions: pending.iter().map(|p| (&p.request).into()).collect(),
    };
    let what = format!("completing {} runs", pending.len());
    retrying(&what, || {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.complete_runs(request).await.map(drop) }
    })
    .await
}
