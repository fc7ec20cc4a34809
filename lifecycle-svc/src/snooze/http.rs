//! The HTTP side of snooze links: `GET /v1/snooze/<token>` shows what the link would do and a
//! button, `POST` to the same address does it, and `POST /v1/slack/interactions` takes the
//! Slack button. Every answer is a small page (or Slack's JSON) that says what happened; a used,
//! expired, stale or altered link changes nothing.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ebb_common::Error;
use ebb_common::text::html_escape;
use ebb_common::time::{EpochMs, rfc3339};
use sea_orm::FromQueryResult;
use tokio_util::sync::CancellationToken;

use super::{Claims, Links, NotDone, Refused, slack};
use crate::core::Lifecycle;
use crate::store::query_one;
use crate::workspaces;

#[derive(Clone)]
struct AppState {
    core: Lifecycle,
    links: Links,
}

/// Binds the snooze server's address.
pub async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| anyhow::anyhow!("snooze.listen {listen:?}: {e}"))?;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("snooze links: cannot listen on {addr}: {e}"))
}

/// Serves snooze links on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    core: Lifecycle,
    links: Links,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/v1/snooze/{token}", get(show).post(use_link))
        .route("/v1/slack/interactions", post(slack_button))
        .with_state(AppState { core, links });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the snooze link server stopped");
    }
}

/// A page: nothing from elsewhere, never framed, never cached, and the token in its address is
/// never sent on as a referrer.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Ebb</title><style>body{{font-family:system-ui,sans-serif;\
         max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}\
         button{{font-size:1rem;padding:.5rem 1rem}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>",
        title = html_escape(title)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn refused_page(refused: Refused) -> Response {
    match refused {
        Refused::Invalid => page(
            StatusCode::BAD_REQUEST,
            "This link is not valid",
            "<p>It is not a snooze link Ebb made, or it was cut or altered. Nothing was changed.</p>",
        ),
        Refused::Expired => page(
            StatusCode::GONE,
            "This link has expired",
            "<p>The destroy it reminded of has come. Nothing was changed.</p>",
        ),
    }
}

fn not_done_page(not_done: NotDone) -> Response {
    match not_done {
        NotDone::Used => page(
            StatusCode::GONE,
            "This link was used already",
            "<p>Each snooze link works once. Nothing was changed.</p>",
        ),
        NotDone::Stale => page(
            StatusCode::CONFLICT,
            "The schedule changed since this reminder",
            "<p>The destroy it reminded of was moved, cleared or has run. Nothing was changed; \
             a new reminder carries a new link.</p>",
        ),
        NotDone::Off => page(
            StatusCode::CONFLICT,
            "Snoozing is off",
            "<p>The organization turned snooze links off. Nothing was changed.</p>",
        ),
        NotDone::Refused(e) => {
            let status = match &e {
                Error::Unavailable(_) | Error::Aborted(_) => StatusCode::SERVICE_UNAVAILABLE,
                Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let what = if status == StatusCode::SERVICE_UNAVAILABLE {
                "Ebb cannot reach its database right now; try the link again in a minute."
                    .to_owned()
            } else {
                tonic::Status::from(e).message().to_owned()
            };
            page(
                status,
                "Not snoozed",
                &format!("<p>{}</p><p>Nothing was changed.</p>", html_escape(&what)),
            )
        }
    }
}

async fn used_before(core: &Lifecycle, link_id: &str) -> Result<bool, Error> {
    #[derive(FromQueryResult)]
    struct Used {
        #[allow(dead_code)]
        used_at: i64,
    }
    let row: Option<Used> = query_one(
        &core.db.read,
        "SELECT used_at FROM snooze_links_used WHERE link_id = $1",
        [link_id.into()],
    )
    .await?;
    Ok(row.is_some())
}

/// `GET`: what the link would do, and the button that does it. Changes nothing.
async fn show(State(app): State<AppState>, Path(token): Path<String>) -> Response {
    let claims = match app.links.check(&token, app.core.now()) {
        Ok(c) => c,
        Err(r) => return refused_page(r),
    };
    match preview(&app.core, &claims).await {
        Ok((name, step)) => page(
            StatusCode::OK,
            &format!("Snooze {name}?"),
            &format!(
                "<p>Workspace <strong>{name}</strong> is to be destroyed at \
                 <time>{due}</time>.</p><p>Snoozing pushes that {step} later, once.</p>\
                 <form method=\"post\"><button type=\"submit\">Snooze by {step}</button></form>",
                name = html_escape(&name),
                due = rfc3339(claims.due_at),
                step = html_escape(&ebb_common::time::human(step)),
            ),
        ),
        Err(not_done) => not_done_page(not_done),
    }
}

async fn preview(core: &Lifecycle, claims: &Claims) -> Result<(String, i64), NotDone> {
    if used_before(core, &claims.link_id)
        .await
        .map_err(NotDone::Refused)?
    {
        return Err(NotDone::Used);
    }
    let ws = match workspaces::get_workspace(&core.db.read, &claims.workspace_id).await {
        Ok(ws) => ws,
        Err(Error::NotFound { .. }) => return Err(NotDone::Stale),
        Err(e) => return Err(NotDone::Refused(e)),
    };
    if ws.next_auto_destroy_at != Some(claims.due_at) {
        return Err(NotDone::Stale);
    }
    let org = crate::tenancy::orgs::get_org(&core.db.read, &ws.organization_id)
        .await
        .map_err(NotDone::Refused)?;
    match org.snooze_step_ms() {
        step if step > 0 => Ok((ws.name, step)),
        _ => Err(NotDone::Off),
    }
}

fn snoozed_text(name: &str, previous: EpochMs, next: Option<EpochMs>) -> String {
    match next {
        Some(next) => format!(
            "Snoozed: workspace {name} is now to be destroyed at {} (was {}).",
            rfc3339(next),
            rfc3339(previous)
        ),
        None => format!("Snoozed: workspace {name} has no pending destroy now."),
    }
}

/// `POST`: uses the link.
async fn use_link(State(app): State<AppState>, Path(token): Path<String>) -> Response {
    let claims = match app.links.check(&token, app.core.now()) {
        Ok(c) => c,
        Err(r) => return refused_page(r),
    };
    match super::snooze(&app.core, &claims, "link", "").await {
        Ok(done) => page(
            StatusCode::OK,
            "Snoozed",
            &format!(
                "<p>{}</p>",
                html_escape(&snoozed_text(
                    &done.workspace_name,
                    done.previous,
                    done.next
                ))
            ),
        ),
        Err(not_done) => not_done_page(not_done),
    }
}

fn slack_reply(status: StatusCode, text: &str) -> Response {
    let body = serde_json::json!({
        "response_type": "ephemeral",
        "replace_original": false,
        "text": text,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Slack interactivity: the snooze button of a reminder.
async fn slack_button(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let secret = &app.core.config.snooze.slack_signing_secret;
    if secret.is_empty() {
        return slack_reply(
            StatusCode::FORBIDDEN,
            "Slack interactivity is not configured here (snooze.slack_signing_secret).",
        );
    }
    let now_secs = app.core.now() / 1000;
    if let Err(why) = slack::verify(secret, &headers, &body, now_secs) {
        tracing::warn!(why, "refused a Slack interactivity request");
        return slack_reply(StatusCode::UNAUTHORIZED, why);
    }
    let press = match slack::snooze_press(&body) {
        Ok(p) => p,
        Err(why) => return slack_reply(StatusCode::BAD_REQUEST, &why),
    };
    let claims = match app.links.check(&press.token, app.core.now()) {
        Ok(c) => c,
        Err(Refused::Invalid) => {
            return slack_reply(StatusCode::OK, "This snooze button is not valid.");
        }
        Err(Refused::Expired) => {
            return slack_reply(
                StatusCode::OK,
                "This snooze button has expired: the destroy has come.",
            );
        }
    };
    let text = match super::snooze(&app.core, &claims, "slack", &press.user).await {
        Ok(done) => snoozed_text(&done.workspace_name, done.previous, done.next),
        Err(NotDone::Used) => "This snooze button was used already; nothing changed.".into(),
        Err(NotDone::Stale) => "The schedule changed since this reminder; nothing changed.".into(),
        Err(NotDone::Off) => "Snoozing is off for this organization; nothing changed.".into(),
        Err(NotDone::Refused(e)) => format!(
            "Not snoozed: {}",
            tonic::Status::from(e).message().to_owned()
        ),
    };
    slack_reply(StatusCode::OK, &text)
}
