//! Sign-in and sessions. The token a caller signs in with stays on the console's side: the
//! browser holds only a random session id, in an `HttpOnly`, `SameSite=Strict` cookie that
//! expires with the session (never after the token). Every form carries the session's CSRF
//! token, and the sign-in form a token of its own cookie (double submit), so no other site
//! can sign a browser in or act in its name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use ebb_proto::lifecycle::v1 as lc;
use maud::html;
use serde::Deserialize;

use super::Shared;
use super::api::Clients;
use super::layout;

/// The session cookie.
const SESSION_COOKIE: &str = "ebb_session";
/// The sign-in form's own CSRF cookie.
const SIGNIN_COOKIE: &str = "ebb_signin";
/// How long a sign-in form may be left open.
const SIGNIN_FORM_TTL: Duration = Duration::from_secs(900);

/// What the signed-in token may do in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Operator,
    Reader,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Reader => "reader",
        }
    }
}

/// Who signed in.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
    /// `None` for the bootstrap admin, which sees every organization.
    pub organization_id: Option<String>,
}

impl Caller {
    /// Whether the role changes things (extend, lock, trigger, approve...).
    pub fn may_change(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Operator)
    }
}

/// A message shown once on the next page.
#[derive(Debug, Clone)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

/// One signed-in browser.
pub struct Session {
    pub caller: Caller,
    /// Every form of the session carries it.
    pub csrf: String,
    /// The API as the caller.
    pub api: Clients,
    expires: Instant,
    flash: Mutex<Option<Flash>>,
}

impl Session {
    /// Shows `text` on the next page.
    pub fn flash(&self, ok: bool, text: impl Into<String>) {
        if let Ok(mut f) = self.flash.lock() {
            *f = Some(Flash {
                ok,
                text: text.into(),
            });
        }
    }

    /// The message to show, once.
    pub fn take_flash(&self) -> Option<Flash> {
        self.flash.lock().ok().and_then(|mut f| f.take())
    }

    /// The refusal of a form whose CSRF token is not this session's.
    pub fn csrf_refusal(&self, given: &str) -> Option<Response> {
        if same(given, &self.csrf) {
            None
        } else {
            Some(layout::refused(
                "This form is stale or did not come from this console (its CSRF token does not \
                 match your session). Reload the page and try again.",
            ))
        }
    }
}

/// The signed-in sessions of this console process.
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    ttl: Duration,
    secure: bool,
}

impl Sessions {
    pub fn new(ttl: Duration, secure: bool) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
            secure,
        }
    }

    /// The live session of `id`.
    fn get(&self, id: &str) -> Option<Arc<Session>> {
        let mut map = self.map.lock().ok()?;
        let session = map.get(id)?.clone();
        if session.expires <= Instant::now() {
            map.remove(id);
            return None;
        }
        Some(session)
    }

    /// Starts a session; answers its id and how long it lasts.
    fn start(
        &self,
        caller: Caller,
        api: Clients,
        token_expires: Option<SystemTime>,
    ) -> Option<(String, Duration)> {
        let left = token_expires
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .map_or(self.ttl, |d| d.min(self.ttl));
        let now = Instant::now();
        let id = ebb_common::auth::new_secret();
        let session = Session {
            caller,
            csrf: ebb_common::auth::new_secret(),
            api,
            expires: now + left,
            flash: Mutex::new(None),
        };
        let mut map = self.map.lock().ok()?;
        map.retain(|_, s| s.expires > now);
        map.insert(id.clone(), Arc::new(session));
        Some((id, left))
    }

    fn end(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }

    fn cookie(
        &self,
        name: &'static str,
        value: String,
        path: &'static str,
        ttl: Duration,
    ) -> String {
        Cookie::build((name, value))
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.secure)
            .path(path)
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            ))
            .build()
            .to_string()
    }
}

/// Equal strings, compared in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in the request.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// The signed-in session of a request; without one, the browser is sent to sign in.
pub struct Signed(pub Arc<Session>);

impl FromRequestParts<Shared> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Response> {
        if let Some(session) =
            cookie_value(&parts.headers, SESSION_COOKIE).and_then(|id| state.sessions.get(&id))
        {
            return Ok(Signed(session));
        }
        let here = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|_| parts.method == axum::http::Method::GET)
            .unwrap_or("/");
        let next: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
        Err(Redirect::to(&format!("/signin?next={next}")).into_response())
    }
}

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
    if let Some(r) = session.csrf_refusal(&form.csrf) {
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
