//! Sign-in and sessions. The token a caller signs in with stays on the console's side: the
//! browser holds only a random session id, in an `HttpOnly`, `SameSite=Strict` cookie that
//! expires with the session (never after the token). Every form carries the session's CSRF
//! token, and the sign-in form a token of its own cookie (double submit), so no other site
//! can sign a browser in or act in its name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};

use super::Shared;
use super::api::Clients;

/// The session cookie.
pub(super) const SESSION_COOKIE: &str = "ebb_session";
/// The sign-in form's own CSRF cookie.
pub(super) const SIGNIN_COOKIE: &str = "ebb_signin";
/// How long a sign-in form may be left open.
pub(super) const SIGNIN_FORM_TTL: Duration = Duration::from_secs(900);

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

    /// Whether a form's CSRF token is this session's.
    pub fn csrf_matches(&self, given: &str) -> bool {
        same(given, &self.csrf)
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
    pub(super) fn start(
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

    pub(super) fn end(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }

    pub(super) fn cookie(
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
pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in the request.
pub(super) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
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
