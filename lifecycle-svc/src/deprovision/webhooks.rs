//! Sends the requests of webhook-triggered steps (PR-driven flows) after their transaction
//! committed. A step's request goes out at least once; the external system completes the step
//! with the callback token it carries.

use std::time::Duration;

use ebb_common::Result;
use ebb_common::time::rfc3339;
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::core::Lifecycle;
use crate::deprovision::catalog::TriggerDef;
use ebb_common::sql;

use crate::deprovision::action_runs::STEP_COLUMNS;
use crate::deprovision::action_runs::StepRow;
use crate::deprovision::{action_runs, callbacks, catalog, entities, steps};
use crate::store::{exec, query_all, query_one};

const POLL: Duration = Duration::from_millis(500);
const BATCH: u64 = 20;

/// Loads the callback-token key, creating it on first start; replicas share it.
pub async fn callback_secret(conn: &impl ConnectionTrait) -> Result<Vec<u8>> {
    let fresh: [u8; 32] = rand::random();
    exec(
        conn,
        "INSERT INTO lifecycle_secrets (name, value) VALUES ('callback_tokens', $1) ON CONFLICT (name) DO NOTHING",
        [hex::encode(fresh).into()],
    )
    .await?;
    #[derive(FromQueryResult)]
    struct Secret {
        value: String,
    }
    let row: Option<Secret> = query_one(
        conn,
        "SELECT value FROM lifecycle_secrets WHERE name = 'callback_tokens'",
        [],
    )
    .await?;
    let value = row.map(|r| r.value).unwrap_or_default();
    hex::decode(value)
        .map_err(|e| ebb_common::Error::Internal(format!("stored callback secret is not hex: {e}")))
}

/// Dispatches pending webhook requests until shutdown.
pub async fn run(core: Lifecycle, shutdown: CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; webhook steps will time out");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        if let Err(e) = dispatch_once(&core, &client).await {
            tracing::warn!(error = %e, "dispatching webhook steps failed");
        }
    }
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
async fn dispatch_once(core: &Lifecycle, client: &reqwest::Client) -> Result<()> {
    for request in claim(core).await? {
        let Request { step, url, body } = request;
        let answer = client
            .post(&url)
            .header("webhook-id", format!("{}-{}", step.id, step.attempt))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let error = match answer {
            Ok(r) if r.status().is_success() => {
                tracing::info!(step_id = %step.id, %url, "webhook step requested");
                continue;
            }
            Ok(r) => {
                let status = r.status();
                let text: String = r
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(500)
                    .collect();
                format!("the webhook answered {status}: {text}")
            }
            Err(e) => format!("the webhook could not be reached: {e}"),
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
