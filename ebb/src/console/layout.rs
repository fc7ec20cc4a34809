//! The page around every view: header, navigation, the organization picker, the flash
//! message; the security headers of every response; the stylesheet and script, compiled in.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use ebb_proto::lifecycle::v1 as lc;
use maud::{DOCTYPE, Markup, html};

use super::api::failure;
use super::session::Session;

const STYLESHEET: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");

/// Nothing but this console's own stylesheet and script, no inline code, no frames, forms
/// posting back here only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every response.
pub async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

pub async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

/// Which part of the console a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Upcoming,
    Deprovision,
    Audit,
    Health,
}

impl Nav {
    const ALL: [Nav; 4] = [Nav::Upcoming, Nav::Deprovision, Nav::Audit, Nav::Health];

    fn path(self) -> &'static str {
        match self {
            Nav::Upcoming => "/",
            Nav::Deprovision => "/deprovision",
            Nav::Audit => "/audit",
            Nav::Health => "/health",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Nav::Upcoming => "Upcoming destroys",
            Nav::Deprovision => "Deprovisioning",
            Nav::Audit => "Audit",
            Nav::Health => "Health",
        }
    }
}

/// The organization a page shows, and the ones the caller may switch to.
#[derive(Debug, Clone)]
pub struct Org {
    pub id: String,
    pub name: String,
}

/// The organization of a page: the caller's own, or for the bootstrap admin the one asked
/// for (else the first).
pub async fn org(session: &Session, asked: &str) -> Result<(Org, Vec<Org>), String> {
    let mut api = session.api.lifecycle();
    if let Some(own) = &session.caller.organization_id {
        let o = api
            .get_organization(lc::GetOrganizationRequest {
                organization_id: own.clone(),
            })
            .await
            .map_err(|s| failure("Reading your organization", &s))?
            .into_inner()
            .organization
            .unwrap_or_default();
        let org = Org {
            id: o.id,
            name: o.name,
        };
        return Ok((org.clone(), vec![org]));
    }
    let all: Vec<Org> = api
        .list_organizations(lc::ListOrganizationsRequest {
            page_size: 200,
            ..Default::default()
        })
        .await
        .map_err(|s| failure("Listing organizations", &s))?
        .into_inner()
        .organizations
        .into_iter()
        .map(|o| Org {
            id: o.id,
            name: o.name,
        })
        .collect();
    let chosen = all
        .iter()
        .find(|o| o.id == asked || (!asked.is_empty() && o.name == asked))
        .or_else(|| all.first())
        .cloned()
        .ok_or("There are no organizations yet: create one with `ebb orgs create`.")?;
    Ok((chosen, all))
}

/// `path` with `?org=` for callers that may switch organizations.
pub fn with_org(path: &str, session: &Session, org: &Org) -> String {
    if session.caller.organization_id.is_some() {
        return path.to_owned();
    }
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}org={}", enc(&org.id))
}

/// Percent-encodes a query value.
pub fn enc(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// What a page is in: the caller, the organization shown and its siblings.
pub struct Frame<'a> {
    pub session: &'a Session,
    pub org: Option<&'a (Org, Vec<Org>)>,
    pub nav: Option<Nav>,
}

impl<'a> Frame<'a> {
    pub fn new(session: &'a Session, org: Option<&'a (Org, Vec<Org>)>, nav: Nav) -> Self {
        Self {
            session,
            org,
            nav: Some(nav),
        }
    }
}

/// The page, or why it could not be built.
pub fn outcome(frame: &Frame, title: &str, body: Result<Markup, String>) -> Response {
    match body {
        Ok(b) => page(frame, title, b),
        Err(e) => failed(frame, title, &e),
    }
}

/// A page about one organization: the one asked for (see [`org`]), and `body` for it.
pub async fn org_page(
    session: &Session,
    asked: &str,
    nav: Nav,
    title: &str,
    body: impl AsyncFnOnce(&Org) -> Result<Markup, String>,
) -> Response {
    match org(session, asked).await {
        Ok(orgs) => outcome(
            &Frame::new(session, Some(&orgs), nav),
            title,
            body(&orgs.0).await,
        ),
        Err(e) => failed(&Frame::new(session, None, nav), title, &e),
    }
}

/// After a form's call: its outcome shown on the next page (`failed` says what could not be
/// done), and the browser sent to `back`.
pub fn after(
    session: &Session,
    result: Result<String, tonic::Status>,
    failed: &str,
    back: &str,
) -> Response {
    match result {
        Ok(text) => session.flash(true, text),
        Err(s) => session.flash(false, failure(failed, &s)),
    }
    Redirect::to(back).into_response()
}

/// The document head; `script` for pages with live parts.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Ebb console" }
            link rel="stylesheet" href="/static/console.css";
            @if script { script src="/static/console.js" defer {} }
        }
    }
}

/// A whole page.
pub fn page(frame: &Frame, title: &str, body: Markup) -> Response {
    let session = frame.session;
    let flash = session.take_flash();
    let org = frame.org.map(|(o, _)| o);
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body {
                header.top {
                    a.brand href="/" { "Ebb" }
                    nav {
                        @for n in Nav::ALL {
                            @let href = match org { Some(o) => with_org(n.path(), session, o), None => n.path().to_owned() };
                            a href=(href) aria-current=[(frame.nav == Some(n)).then_some("page")] { (n.label()) }
                        }
                    }
                    div.who {
                        span.role { (session.caller.role.name()) }
                        " "
                        span.token title="token id" { (session.caller.token_id) }
                        form.inline method="post" action="/signout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                @if let Some((o, all)) = frame.org {
                    @if session.caller.organization_id.is_none() && all.len() > 1 {
                        form.orgpick method="get" {
                            label for="org" { "Organization" }
                            select #org name="org" {
                                @for x in all {
                                    option value=(x.id) selected[x.id == o.id] { (x.name) }
                                }
                            }
                            button type="submit" { "Show" }
                        }
                    } @else {
                        p.orgname { "Organization " strong { (o.name) } }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(f) = flash {
                        p.flash.ok[f.ok].error[!f.ok] role="status" { (f.text) }
                    }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// A page without the signed-in header (the sign-in form).
pub fn bare(title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body { (body) }
        }
    };
    Html(markup.into_string()).into_response()
}

/// The refusal of a form whose CSRF token is not its session's.
pub fn stale_form(session: &Session, csrf: &str) -> Option<Response> {
    (!session.csrf_matches(csrf)).then(|| {
        refused(
            "This form is stale or did not come from this console (its CSRF token does not \
             match your session). Reload the page and try again.",
        )
    })
}

/// A page saying the request was refused.
pub fn refused(text: &str) -> Response {
    let mut r = bare(
        "Refused",
        html! { main { h1 { "Refused" } p.flash.error { (text) } p { a href="/" { "Back to the console" } } } },
    );
    *r.status_mut() = StatusCode::FORBIDDEN;
    r
}

/// A page that could not be built: why, within the console's frame.
pub fn failed(frame: &Frame, title: &str, why: &str) -> Response {
    // A token revoked or expired during the session: the way on is signing in again.
    let signed_out = why.contains("unauthenticated");
    let mut r = page(
        frame,
        title,
        html! {
            p.flash.error role="alert" { (why) }
            @if signed_out { p { "Your token no longer works. " a href="/signin" { "Sign in again" } } }
        },
    );
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

pub async fn not_found() -> Response {
    let mut r = bare(
        "Not found",
        html! { main { h1 { "Not found" } p { "No page here. " a href="/" { "Upcoming destroys" } } } },
    );
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

/// A timestamp as UTC text.
pub fn when(ts: Option<&prost_types::Timestamp>) -> String {
    crate::cli::output::datetime(ts)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "—".into())
}

/// A timestamp relative to now ("in 3h", "2d ago").
pub fn relative(ts: Option<&prost_types::Timestamp>) -> String {
    crate::cli::output::datetime(ts)
        .map(|t| crate::cli::output::relative_to(t, chrono::Utc::now()))
        .unwrap_or_default()
}
