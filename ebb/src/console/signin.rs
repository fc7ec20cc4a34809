//! Signing in and out: the sign-in form (with a CSRF cookie of its own), checking the token
//! with the API, and starting or ending the session ([`super::session`]).

use std::time::{Duration, SystemTime};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use ebb_proto::lifecycle::v1 as lc;
use maud::html;
use serde::Deserialize;

use super::Shared;
use super::layout;
use super::session::{
    Caller, Role, SESSION_COOKIE, SIGNIN_COOKIE, SIGNIN_FORM_TTL, Signed, cookie_value, same,
};

/// Where to go after signing in: a path of this console only.
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

#[derive(Deserialize)]
pub struct Next {
    #[serde(default)]
    next: String,
}

/// `GET /signin`: the sign-in form, with a fresh CSRF cookie.
pub async fn signin_page(State(state): State<Shared>, Query(q): Query<Next>) -> Response {
    signin_form(&state, local_path(&q.next), None)
}

fn signin_form(state: &Shared, next: &str, error: Option<&str>) -> Response {
    let csrf = ebb_common::auth::new_secret();
    let body = html! {
        main.signin {
            h1 { "Sign in to Ebb" }
            p { "Paste an API token: an admin, operator or reader token of your organization, or \
                 the bootstrap admin token of the server. The console keeps it on its side for \
                 this session only." }
            @if let Some(e) = error { p.flash.error role="alert" { (e) } }
            form method="post" action="/signin" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button type="submit" { "Sign in" }
            }
        }
    };
    let mut response = layout::bare("Sign in", body);
    let cookie = state
        .sessions
        .cookie(SIGNIN_COOKIE, csrf, "/signin", SIGNIN_FORM_TTL);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
pub struct SigninForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

/// `POST /signin`: checks the token with the API and starts a session.
pub async fn signin(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<SigninForm>,
) -> Response {
    let next = local_path(&form.next).to_owned();
    let expected = cookie_value(&headers, SIGNIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same(&expected, &form.csrf) {
        return signin_form(
            &state,
            &next,
            Some("The sign-in form expired or did not come from this console; try again."),
        );
    }
    let token = form.token.trim();
    if token.is_empty() {
        return signin_form(&state, &next, Some("Paste a token to sign in."));
    }
    let api = match state.api.as_caller(token) {
        Ok(api) => api,
        Err(_) => {
            return signin_form(
                &state,
                &next,
                Some("That is not a token: it has characters no token has."),
            );
        }
    };
    let answer = match api.tokens().get_caller(lc::GetCallerRequest {}).await {
        Ok(a) => a.into_inner(),
        Err(status) => {
            let why = match status.code() {
                tonic::Code::Unauthenticated => {
                    "The server does not know this token (unknown, revoked or expired).".to_owned()
                }
                tonic::Code::PermissionDenied => {
                    "Runner and service tokens cannot sign in to the console: use an admin, \
                     operator or reader token."
                        .to_owned()
                }
                _ => super::api::failure("Checking the token", &status),
            };
            return signin_form(&state, &next, Some(&why));
        }
    };
    let role = match lc::TokenRole::try_from(answer.role) {
        Ok(lc::TokenRole::Admin) => Role::Admin,
        Ok(lc::TokenRole::Operator) => Role::Operator,
        Ok(lc::TokenRole::Reader) => Role::Reader,
        _ => {
            return signin_form(
                &state,
                &next,
                Some("Runner and service tokens cannot sign in to the console."),
            );
        }
    };
    let caller = Caller {
        token_id: answer.token_id,
        role,
        organization_id: Some(answer.organization_id).filter(|o| !o.is_empty()),
    };
    let token_expires = answer.expire_time.and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    });
    let Some((id, ttl)) = state.sessions.start(caller, api, token_expires) else {
        return layout::refused("The console cannot keep sessions right now; try again.");
    };
    let mut response = Redirect::to(&next).into_response();
    let session = state.sessions.cookie(SESSION_COOKIE, id, "/", ttl);
    let done = state
        .sessions
        .cookie(SIGNIN_COOKIE, String::new(), "/signin", Duration::ZERO);
    for c in [session, done] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /signout`: ends the session.
pub async fn signout(
    State(state): State<Shared>,
    headers: HeaderMap,
    Signed(session): Signed,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(r) = layout::stale_form(&session, &form.csrf) {
        return r;
    }
    if let Some(id) = cookie_value(&headers, SESSION_COOKIE) {
        state.sessions.end(&id);
    }
    let mut response = Redirect::to("/signin").into_response();
    let gone = state
        .sessions
        .cookie(SESSION_COOKIE, String::new(), "/", Duration::ZERO);
    if let Ok(v) = HeaderValue::from_str(&gone) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}
