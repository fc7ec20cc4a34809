//! Callback tokens of webhook steps: single use, expiring, bound to the step and its attempt
//! by HMAC; and completing a step with one.

use crate::deprovision::action_runs::ActionRunRow;
use crate::deprovision::action_runs::get_action_run;
use crate::deprovision::steps::Engine;

use crate::deprovision::action_runs::STEP_COLUMNS;
use crate::deprovision::action_runs::StepRow;
use crate::deprovision::action_runs::StepStatus;
use crate::deprovision::progress::Settle;
use crate::deprovision::steps::step_ended;
use crate::store::query_one;
use ebb_common::time::{EpochMs, rfc3339};
use ebb_common::{Error, Result};
use hmac::{Hmac, Mac};
use sea_orm::ConnectionTrait;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The callback token of one attempt of one step: `EXPIRY.HEX(HMAC-SHA256(step ‖ attempt ‖
/// expiry))`, so it is bound to that step and that time.
pub fn callback_token(secret: &[u8], step_id: &str, attempt: i32, expires_at: EpochMs) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("{step_id}:{attempt}:{expires_at}").as_bytes());
    format!("{expires_at}.{}", hex::encode(mac.finalize().into_bytes()))
}

fn verify_token(
    secret: &[u8],
    step_id: &str,
    attempt: i32,
    token: &str,
    now: EpochMs,
) -> Result<()> {
    let bad = || not_valid_for(step_id);
    let (expiry, mac_hex) = token.split_once('.').ok_or_else(bad)?;
    let expires_at: EpochMs = expiry.parse().map_err(|_| bad())?;
    let given = hex::decode(mac_hex).map_err(|_| bad())?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("{step_id}:{attempt}:{expires_at}").as_bytes());
    mac.verify_slice(&given).map_err(|_| bad())?;
    if expires_at < now {
        return Err(Error::precondition(format!(
            "the callback token expired at {}",
            rfc3339(expires_at)
        )));
    }
    Ok(())
}

fn not_valid_for(step_id: &str) -> Error {
    Error::PermissionDenied(format!(
        "the callback token is not valid for step {step_id}"
    ))
}

/// The callback of a webhook step.
pub async fn complete_step(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    step_id: &str,
    token: &str,
    succeeded: bool,
    message: &str,
    now: EpochMs,
) -> Result<(ActionRunRow, bool)> {
    let step: StepRow = query_one(
        conn,
        &format!("SELECT {STEP_COLUMNS} FROM action_steps WHERE id = $1"),
        [step_id.into()],
    )
    .await?
    // Callers without an Ebb token reach this too: an unknown step answers as a wrong token
    // does, so step ids cannot be probed.
    .ok_or_else(|| not_valid_for(step_id))?;
    verify_token(&engine.callback_secret, step_id, step.attempt, token, now)?;
    if step.trigger_type != "webhook" || step.status != StepStatus::Running {
        return Err(Error::precondition(format!(
            "step {step_id} is {} and does not wait for a callback",
            step.status
        )));
    }
    let failure = (!succeeded).then(|| format!("the external system reported failure: {message}"));
    let queued = step_ended(
        conn,
        engine,
        &step.action_run_id,
        step_id,
        failure,
        // The answer shows the run as this callback left it.
        Settle::Now,
        "webhook",
        now,
    )
    .await?;
    Ok((get_action_run(conn, &step.action_run_id).await?, queued))
}
