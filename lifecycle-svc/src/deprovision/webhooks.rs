//! Sends the requests of webhook-triggered steps (PR-driven flows) after their transaction
//! committed. A step's request goes out at least once; the external system completes the step
//! with the callback token it carries.

use std::sync::Arc;
use std::time::Duration;

use ebb_common::egress::{self, EgressGuard};
use ebb_common::sealing::Keyring;
use ebb_common::signing;

use ebb_common::Result;
use ebb_common::time::rfc3339;
use sea_orm::ConnectionTrait;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::core::Lifecycle;
use crate::deprovision::catalog::TriggerDef;
use ebb_common::sql;

use crate::deprovision::action_runs::STEP_COLUMNS;
use crate::deprovision::action_runs::StepRow;
use crate::deprovision::{action_runs, callbacks, catalog, entities, steps};
use crate::store::{exec, query_all};

const POLL: Duration = Duration::from_millis(500);
const BATCH: u64 = 20;

/// Loads the callback-token key, creating it on first start; replicas share it.
pub async fn callback_secret(conn: &impl ConnectionTrait, keys: &Keyring) -> Result<Vec<u8>> {
    crate::secrets::shared_key(conn, keys, "callback_tokens").await
}

/// Dispatches pending webhook requests until shutdown.
pub async fn run(core: Lifecycle, shutdown: CancellationToken) {
    let guard = Arc::new(EgressGuard::new(&core.config.egress));
    let client = match egress::http_client(
        guard.clone(),
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("Ebb-Lifecycle/", env!("CARGO_PKG_VERSION"))),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; webhook steps will time out");
            return;
        }
    };
    if core.config.step_signing_secret.is_empty() {
        tracing::warn!(
            "webhook-step requests are unsigned: set step_signing_secret (whsec_...) so receivers can verify them"
        );
    }
    let sender = Sender { client, guard };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        if let Err(e) = dispatch_once(&core, &sender).await {
            tracing::warn!(error = %e, "dispatching webhook steps failed");
        }
    }
}

/// The HTTP client of webhook steps and the guard it resolves through.
struct Sender {
    client: reqwest::Client,
    guard: Arc<EgressGuard>,
}

impl Sender {
    /// Sends one step request: through the egress guard, never following a redirect, signed
    /// when a secret is configured. `Err` says what went wrong, quoting at most the status
    /// line of the answer: its body (or where a redirect points) is none of the step's
    /// readers' business.
    async fn send(
        &self,
        url: &str,
        msg_id: &str,
        body: Vec<u8>,
        secret: &str,
    ) -> std::result::Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        self.guard.check_url(&parsed)?;
        let timestamp = chrono::Utc::now().timestamp();
        let mut request = self
            .client
            .post(parsed)
            .header("content-type", "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string());
        if !secret.is_empty() {
            let signature = signing::standard_signature(secret, msg_id, timestamp, &body)?;
            request = request.header("webhook-signature", signature);
        }
        match request.body(body).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!(
                "the webhook answered {}",
                egress::status_line(r.status())
            )),
            Err(e) => Err(format!(
                "the webhook could not be reached: {}",
                reqwest_reason(&e)
            )),
        }
    }
}

/// Why a request failed, without the URL (reqwest's message repeats it) but with the cause
/// (an egress refusal names the address and the rule).
fn reqwest_reason(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A webhook request ready to send.
struct Request {
    step: StepRow,
    url: String,
    body: serde_json::Value,
}

/// Claims pending webhook steps in a short transaction, then sends their requests with no
/// transaction open: a slow receiver must not hold database locks (on SQLite, the only
/// connection). A process that dies between the claim and the send leaves the step to its
/// timeout.
async fn dispatch_once(core: &Lifecycle, sender: &Sender) -> Result<()> {
    for request in claim(core).await? {
        let Request { step, url, body } = request;
        let msg_id = format!("{}-{}", step.id, step.attempt);
        let sent = sender
            .send(
                &url,
                &msg_id,
                body.to_string().into_bytes(),
                &core.config.step_signing_secret,
            )
            .await;
        let error = match sent {
            Ok(()) => {
                tracing::info!(step_id = %step.id, %url, "webhook step requested");
                continue;
            }
            Err(e) => e,
        };
        let txn = core.begin().await?;
        fail(&txn, core, &step, &error, core.now()).await?;
        txn.commit().await?;
    }
    Ok(())
}

async fn claim(core: &Lifecycle) -> Result<Vec<Request>> {
    let txn = core.begin().await?;
    let skip = sql::for_update()
        .skip_locked()
        .sql(txn.get_database_backend());
    let pending: Vec<StepRow> = query_all(
        &txn,
        &format!(
            "SELECT {STEP_COLUMNS} FROM action_steps WHERE status = 'running' AND trigger_type = 'webhook' \
             AND dispatched_at IS NULL ORDER BY started_at LIMIT {BATCH}{skip}"
        ),
        [],
    )
    .await?;
    let engine = steps::Engine::of(core);
    let now = core.now();
    let mut requests = Vec::with_capacity(pending.len());
    for step in pending {
        exec(
            &txn,
            "UPDATE action_steps SET dispatched_at = $1 WHERE id = $2",
            [now.into(), step.id.clone().into()],
        )
        .await?;
        let run = action_runs::get_action_run(&txn, &step.action_run_id).await?;
        let root = entities::get_entity(&txn, &run.entity_id).await?;
        let entity = entities::get_entity(&txn, &step.entity_id).await?;
        let url = match catalog::kind(&txn, &root.kind)
            .await?
            .action(&run.action)
            .map(|a| a.trigger.clone())
        {
            Some(TriggerDef::Webhook { url }) => url,
            _ => continue,
        };
        let expires_at = now + engine.callback_ttl_ms;
        let token =
            callbacks::callback_token(&engine.callback_secret, &step.id, step.attempt, expires_at);
        let body = json!({
            "type": "action_step.requested",
            "action_run_id": run.id,
            "action": run.action,
            "parameters": run.parameters()?,
            "step_id": step.id,
            "entity": {"id": entity.id, "kind": entity.kind, "name": entity.name, "workspace_id": entity.workspace_id},
            "callback": {
                "rpc": "ebb.lifecycle.v1.DeprovisionService/CompleteActionStep",
                "step_id": step.id,
                "callback_token": token,
                "expires_at": rfc3339(expires_at),
            },
        });
        requests.push(Request { step, url, body });
    }
    txn.commit().await?;
    Ok(requests)
}

async fn fail(
    conn: &impl ConnectionTrait,
    core: &Lifecycle,
    step: &StepRow,
    error: &str,
    now: i64,
) -> Result<()> {
    tracing::warn!(step_id = %step.id, error, "webhook step failed");
    // The step may have been canceled or timed out while its request was out.
    let failed = exec(
        conn,
        "UPDATE action_steps SET status = 'failed', error = $1, finished_at = $2 \
         WHERE id = $3 AND status = 'running' AND attempt = $4",
        [
            error.into(),
            now.into(),
            step.id.clone().into(),
            step.attempt.into(),
        ],
    )
    .await?;
    if failed == 0 {
        return Ok(());
    }
    steps::advance(
        conn,
        &steps::Engine::of(core),
        &step.action_run_id,
        "webhook",
        now,
    )
    .await?;
    Ok(())
}
