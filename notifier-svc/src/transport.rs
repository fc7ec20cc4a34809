//! Sending one rendered message: HTTP POST through the egress guard, or SMTP through the
//! configured relay, and recording what came back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::payload::Rendered;
use crate::retry::{Verdict, parse_retry_after};
use crate::{Config, SmtpTls, signing};
use ebb_common::egress::{self, EgressGuard};

/// Most bytes of a response body kept per attempt.
pub const MAX_BODY: usize = 20 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_HEADER_VALUE: usize = 1024;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx, or accepted by the SMTP relay.
    Succeeded,
    /// Any other answer.
    Rejected,
    /// No answer in time.
    TimedOut,
    /// No answer at all.
    Unreachable,
}

impl Outcome {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Rejected => "rejected",
            Self::TimedOut => "timed_out",
            Self::Unreachable => "unreachable",
        }
    }
}

/// What one attempt produced.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    /// How it ended.
    pub outcome: Outcome,
    /// HTTP status or SMTP reply code; 0 without an answer.
    pub status: i32,
    /// Response headers (lowercase names).
    pub headers: BTreeMap<String, String>,
    /// At most [`MAX_BODY`] bytes of the body, lossily decoded.
    pub body: String,
    /// Whether the body was longer.
    pub truncated: bool,
    /// What went wrong, if anything.
    pub error: String,
    /// How long it took.
    pub duration_ms: i64,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
}

impl AttemptResult {
    fn failed(outcome: Outcome, error: String, started: Instant) -> Self {
        Self {
            outcome,
            status: 0,
            headers: BTreeMap::new(),
            body: String::new(),
            truncated: false,
            error,
            duration_ms: started.elapsed().as_millis() as i64,
            retry_after: None,
        }
    }

    /// What it means for retrying.
    pub fn verdict(&self) -> Verdict {
        match (self.outcome, self.status) {
            (Outcome::Succeeded, _) => Verdict::Delivered,
            // SMTP reply codes are never 410, so only HTTP answers end here.
            (Outcome::Rejected, 410) => Verdict::Gone,
            (outcome, status) => Verdict::Retry {
                throttled: outcome == Outcome::TimedOut || status == 429,
                retry_after: self.retry_after,
            },
        }
    }

    /// One line describing the answer, for errors shown to clients: the status line and what
    /// went wrong on our side, never the body (whatever the endpoint chose to show is kept
    /// with the attempt, for those who may list attempts, not quoted in errors).
    pub fn describe(&self) -> String {
        match self.outcome {
            Outcome::Succeeded | Outcome::Rejected => {
                let status = u16::try_from(self.status)
                    .ok()
                    .and_then(|s| reqwest::StatusCode::from_u16(s).ok())
                    .map_or_else(|| self.status.to_string(), egress::status_line);
                if self.error.is_empty() {
                    format!("the endpoint answered {status}")
                } else {
                    format!("the endpoint answered {status}: {}", self.error)
                }
            }
            Outcome::TimedOut => format!("no answer in time: {}", self.error),
            Outcome::Unreachable => format!("unreachable: {}", self.error),
        }
    }
}

/// Where a message goes.
#[derive(Debug, Clone)]
pub enum Target<'a> {
    /// POST to a URL.
    Url(&'a str),
    /// Email to recipients.
    Mail(&'a [String]),
}

/// Sends messages; one per replica, shared by the API (verification) and the worker.
pub struct Sender {
    http: reqwest::Client,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    guard: Arc<EgressGuard>,
}

impl Sender {
    /// Builds the HTTP client and SMTP transport of a validated configuration.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let guard = Arc::new(EgressGuard::new(&config.egress));
        let http = egress::http_client(
            guard.clone(),
            reqwest::Client::builder()
                .timeout(config.delivery.request_timeout)
                .connect_timeout(config.delivery.connect_timeout)
                .user_agent(concat!("Ebb-Notifier/", env!("CARGO_PKG_VERSION")))
                .pool_max_idle_per_host(config.delivery.concurrency.min(256)),
        )?;
        let smtp = if config.smtp.relay.is_empty() {
            None
        } else {
            let s = &config.smtp;
            let mut builder = match s.tls {
                SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.relay),
                SmtpTls::Starttls => {
                    AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.relay)?
                }
                SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.relay)?,
            }
            .port(s.port)
            .timeout(Some(s.timeout));
            if !s.username.is_empty() {
                builder =
                    builder.credentials(Credentials::new(s.username.clone(), s.password.clone()));
            }
            Some(builder.build())
        };
        Ok(Self {
            http,
            smtp,
            from: config.smtp.from.parse()?,
            guard,
        })
    }

    /// Whether email can be sent.
    pub fn smtp_configured(&self) -> bool {
        self.smtp.is_some()
    }

    /// The egress guard.
    pub fn guard(&self) -> &EgressGuard {
        &self.guard
    }

    /// Sends `message` once. `secrets` sign HTTP messages, newest first.
    pub async fn send(
        &self,
        target: Target<'_>,
        message: &Rendered,
        msg_id: &str,
        secrets: &[String],
    ) -> AttemptResult {
        match (target, message) {
            (Target::Url(url), Rendered::Json(body)) => {
                self.post(url, body.clone(), msg_id, secrets).await
            }
            (
                Target::Mail(to),
                Rendered::Email {
                    subject,
                    text,
                    html,
                },
            ) => self.mail(to, subject, text, html, msg_id).await,
            _ => AttemptResult::failed(
                Outcome::Unreachable,
                "destination and message do not fit".into(),
                Instant::now(),
            ),
        }
    }

    async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        msg_id: &str,
        secrets: &[String],
    ) -> AttemptResult {
        let started = Instant::now();
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) => u,
            Err(e) => return AttemptResult::failed(Outcome::Unreachable, e.to_string(), started),
        };
        if let Err(e) = self.guard.check_url(&parsed) {
            return AttemptResult::failed(Outcome::Unreachable, e, started);
        }
        let timestamp = chrono::Utc::now().timestamp();
        let mut request = self
            .http
            .post(parsed)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(newest) = secrets.first() {
            match signing::standard_header(secrets, msg_id, timestamp, &body) {
                Ok(sig) => request = request.header("webhook-signature", sig),
                Err(e) => return AttemptResult::failed(Outcome::Unreachable, e, started),
            }
            request = request.header(
                "x-ebb-notification-signature",
                signing::hmac_sha512_hex(newest, &body),
            );
        }
        let response = match request.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                let outcome = if e.is_timeout() {
                    Outcome::TimedOut
                } else {
                    Outcome::Unreachable
                };
                return AttemptResult::failed(outcome, error_chain(&e), started);
            }
        };
        let status = response.status();
        let mut headers = BTreeMap::new();
        for (name, value) in response.headers().iter().take(MAX_HEADERS) {
            let v = String::from_utf8_lossy(value.as_bytes());
            headers.insert(
                name.as_str().to_owned(),
                v.chars().take(MAX_HEADER_VALUE).collect(),
            );
        }
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, ebb_common::time::now_ms()));
        let (body, truncated, error, timed_out) = read_capped(response).await;
        let outcome = if timed_out {
            Outcome::TimedOut
        } else if status.is_success() {
            Outcome::Succeeded
        } else {
            Outcome::Rejected
        };
        AttemptResult {
            outcome,
            status: i32::from(status.as_u16()),
            headers,
            body,
            truncated,
            error,
            duration_ms: started.elapsed().as_millis() as i64,
            retry_after,
        }
    }

    async fn mail(
        &self,
        to: &[String],
        subject: &str,
        text: &str,
        html: &str,
        msg_id: &str,
    ) -> AttemptResult {
        let started = Instant::now();
        let Some(smtp) = &self.smtp else {
            return AttemptResult::failed(
                Outcome::Unreachable,
                "no SMTP relay is configured".into(),
                started,
            );
        };
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(format!("<{msg_id}@ebb.notifier>")));
        for addr in to {
            match addr.parse::<Mailbox>() {
                Ok(m) => builder = builder.to(m),
                Err(e) => {
                    return AttemptResult::failed(
                        Outcome::Unreachable,
                        format!("{addr}: {e}"),
                        started,
                    );
                }
            }
        }
        let email = match builder.multipart(MultiPart::alternative_plain_html(
            text.to_owned(),
            html.to_owned(),
        )) {
            Ok(m) => m,
            Err(e) => return AttemptResult::failed(Outcome::Unreachable, e.to_string(), started),
        };
        match smtp.send(email).await {
            Ok(response) => AttemptResult {
                outcome: if response.is_positive() {
                    Outcome::Succeeded
                } else {
                    Outcome::Rejected
                },
                status: smtp_code(&response.code()),
                headers: BTreeMap::new(),
                body: response.message().collect::<Vec<_>>().join("\n"),
                truncated: false,
                error: String::new(),
                duration_ms: started.elapsed().as_millis() as i64,
                retry_after: None,
            },
            Err(e) => {
                let mut r = AttemptResult::failed(
                    if e.is_timeout() {
                        Outcome::TimedOut
                    } else if e.status().is_some() {
                        Outcome::Rejected
                    } else {
                        Outcome::Unreachable
                    },
                    error_chain(&e),
                    started,
                );
                r.status = e.status().map(|c| smtp_code(&c)).unwrap_or(0);
                r
            }
        }
    }
}

fn smtp_code(code: &lettre::transport::smtp::response::Code) -> i32 {
    code.to_string().parse().unwrap_or(0)
}

/// Reads at most [`MAX_BODY`] bytes: (text, truncated, error, timed out).
async fn read_capped(mut response: reqwest::Response) -> (String, bool, String, bool) {
    let mut buf = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_BODY - buf.len();
                if chunk.len() > room {
                    buf.extend_from_slice(&chunk[..room]);
                    return (
                        String::from_utf8_lossy(&buf).into_owned(),
                        true,
                        String::new(),
                        false,
                    );
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => {
                return (
                    String::from_utf8_lossy(&buf).into_owned(),
                    false,
                    String::new(),
                    false,
                );
            }
            Err(e) => {
                return (
                    String::from_utf8_lossy(&buf).into_owned(),
                    false,
                    format!("reading the body: {}", error_chain(&e)),
                    e.is_timeout(),
                );
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
