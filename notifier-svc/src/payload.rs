//! What a delivery sends: the signed JSON envelope, a Slack Block Kit message, a Teams
//! Adaptive Card, or an email with text and HTML parts.

use ebb_common::text::html_escape;
use serde_json::{Map, Value, json};

use crate::configurations::Destination;
use crate::publish::EventRecord;

/// Version of the envelope's `data` layout; raised on incompatible changes.
pub const PAYLOAD_VERSION: u32 = 1;

/// The configuration a message is rendered for.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// Configuration id.
    pub id: String,
    /// Configuration name.
    pub name: String,
}

/// A rendered message.
#[derive(Debug, Clone)]
pub enum Rendered {
    /// A JSON body to POST.
    Json(Vec<u8>),
    /// An email.
    Email {
        /// Subject line.
        subject: String,
        /// text/plain part.
        text: String,
        /// text/html part.
        html: String,
    },
}

/// Renders `event` for a destination of type `destination`.
pub fn render(destination: Destination, event: &EventRecord, to: &Recipient) -> Rendered {
    let summary = Summary::of(event, to);
    match destination {
        Destination::Webhook => Rendered::Json(to_bytes(&envelope(event, to))),
        Destination::Slack => Rendered::Json(to_bytes(&slack(&summary, &Owner::of(event)))),
        Destination::Teams => Rendered::Json(to_bytes(&teams(&summary))),
        Destination::Email => {
            let (text, html) = email(&summary);
            Rendered::Email {
                subject: format!("[Ebb] {}", summary.headline),
                text,
                html,
            }
        }
    }
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// `{type, timestamp, payload_version, data}`; `data` holds the event's own fields and what it
/// is about (ids and names), which win over event fields of the same name.
pub fn envelope(event: &EventRecord, to: &Recipient) -> Value {
    let mut data = match &event.data {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let mut put = |k: &str, v: Value| {
        data.insert(k.to_owned(), v);
    };
    put("event_id", json!(event.id));
    put("organization_id", json!(event.organization_id));
    put(
        "subject",
        json!({"type": event.subject_type, "id": event.subject_id, "name": event.subject_name}),
    );
    if !event.actor.is_empty() {
        put("actor", json!(event.actor));
    }
    for (k, v) in [
        ("project_id", &event.project_id),
        ("workspace_id", &event.workspace_id),
        ("entity_id", &event.entity_id),
    ] {
        if !v.is_empty() {
            put(k, json!(v));
        }
    }
    put(
        "notification_configuration",
        json!({"id": to.id, "name": to.name}),
    );
    json!({
        "type": event.event_type,
        "timestamp": ebb_common::time::rfc3339(event.occur_ms),
        "payload_version": PAYLOAD_VERSION,
        "data": Value::Object(data),
    })
}

/// The owner an event names (`data.owner`: the workspace's or entity's owner), told about
/// reminders and results: Slack messages mention the owner, email goes to the owner too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// An email address.
    pub email: Option<String>,
    /// A Slack member id.
    pub slack_user_id: Option<String>,
}

impl Owner {
    /// The owner of `event`; parts that do not look like an address or a member id (the
    /// publisher's input) are left out rather than sent on.
    pub fn of(event: &EventRecord) -> Self {
        let part = |name: &str| {
            event
                .data
                .get("owner")
                .and_then(|o| o.get(name))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Self {
            email: part("email").filter(|e| {
                e.len() <= 254
                    && e.contains('@')
                    && !e
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
            }),
            slack_user_id: part("slack_user_id").filter(|id| {
                id.len() <= 21
                    && id
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            }),
        }
    }
}

/// The addresses an email goes to: the configuration's, and the event's owner if not among
/// them.
pub fn email_recipients(configured: &[String], event: &EventRecord) -> Vec<String> {
    let mut to = configured.to_vec();
    if let Some(owner) = Owner::of(event).email
        && !to.iter().any(|a| a.eq_ignore_ascii_case(&owner))
    {
        to.push(owner);
    }
    to
}

/// The human view of an event shared by Slack, Teams and email.
struct Summary {
    headline: String,
    facts: Vec<(String, String)>,
    footer: String,
    snooze: Option<Snooze>,
}

/// The snooze link of a reminder (lifecycle-svc adds `snooze_url` and `snooze_by`).
struct Snooze {
    url: String,
    /// The link's token: the last segment of its address, which the Slack button carries.
    token: String,
    /// How much later it pushes the destroy, e.g. "1d".
    by: String,
}

impl Snooze {
    fn of(data: &Value) -> Option<Self> {
        let url = data.get("snooze_url").and_then(scalar)?;
        let token = url.rsplit_once("/v1/snooze/")?.1.to_owned();
        let by = data.get("snooze_by").and_then(scalar).unwrap_or_default();
        Some(Self { url, token, by })
    }

    fn label(&self) -> String {
        if self.by.is_empty() {
            "Snooze".into()
        } else {
            format!("Snooze {}", self.by)
        }
    }
}

impl Summary {
    fn of(event: &EventRecord, to: &Recipient) -> Self {
        let subject = if event.subject_name.is_empty() {
            event.subject_id.clone()
        } else {
            event.subject_name.clone()
        };
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| event.data.get(*n).and_then(scalar))
                .unwrap_or_default()
        };
        let headline = match event.event_type.as_str() {
            "workspace.auto_destroy.reminder" => {
                let at = field(&[
                    "next_auto_destroy_at",
                    "auto_destroy_at",
                    "due_at",
                    "scheduled_at",
                ]);
                if at.is_empty() {
                    format!("Workspace {subject} will be auto-destroyed soon")
                } else {
                    format!("Workspace {subject} will be auto-destroyed at {at}")
                }
            }
            "workspace.auto_destroy.queued" => {
                format!("Auto-destroy run queued for workspace {subject}")
            }
            "workspace.auto_destroy.deferred" => {
                format!("Auto-destroy of workspace {subject} deferred")
            }
            "workspace.auto_destroy.skipped" => {
                format!("Auto-destroy of workspace {subject} skipped")
            }
            "workspace.auto_destroy.succeeded" => format!("Workspace {subject} was auto-destroyed"),
            "workspace.auto_destroy.failed" => {
                format!("Auto-destroy of workspace {subject} failed")
            }
            "notification.verification" => {
                format!("Ebb notifications for \"{}\" are verified", to.name)
            }
            "notification.delivery.exhausted" => {
                format!(
                    "Ebb gave up delivering {} to a notification configuration",
                    field(&["failed_event_type"])
                )
            }
            other if event.subject_type.is_empty() => other.to_owned(),
            other => format!("{other}: {} {subject}", event.subject_type),
        };
        let mut facts = vec![("Event".to_owned(), event.event_type.clone())];
        if !event.subject_type.is_empty() {
            let who = if event.subject_name.is_empty() || event.subject_name == event.subject_id {
                event.subject_id.clone()
            } else {
                format!("{} ({})", event.subject_name, event.subject_id)
            };
            facts.push((capitalize(&event.subject_type), who));
        }
        let owner = Owner::of(event);
        if let Some(owner) = owner.email.or(owner.slack_user_id) {
            facts.push(("Owner".to_owned(), owner));
        }
        if let Value::Object(m) = &event.data {
            for (k, v) in m.iter() {
                if facts.len() >= 10 {
                    break;
                }
                if k.starts_with("snooze_") {
                    continue;
                }
                if let Some(text) = scalar(v) {
                    facts.push((k.replace('_', " "), truncate(&text, 200)));
                }
            }
        }
        let footer = format!(
            "Ebb · event {} · {} · configuration {}",
            event.id,
            ebb_common::time::rfc3339(event.occur_ms),
            to.name
        );
        Self {
            headline,
            facts,
            footer,
            snooze: Snooze::of(&event.data),
        }
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// Slack Block Kit: header, fields, context; `text` is the notification fallback. An owner
/// with a Slack member id is mentioned (`<@U…>`), so Slack notifies that user: incoming
/// webhooks post to their channel and cannot message a user directly.
fn slack(s: &Summary, owner: &Owner) -> Value {
    let fields: Vec<Value> = s
        .facts
        .iter()
        .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{}*\n{}", slack_escape(k), slack_escape(v))}))
        .collect();
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&s.headline, 150), "emoji": false}}),
        json!({"type": "section", "fields": fields}),
    ];
    let mut text = s.headline.clone();
    if let Some(id) = &owner.slack_user_id {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("Owner: <@{id}>")}}));
        text = format!("<@{id}> {text}");
    }
    if let Some(snooze) = &s.snooze {
        // Pressed in Slack, it reaches lifecycle's /v1/slack/interactions (the Slack app's
        // interactivity request URL), which verifies Slack's signature and snoozes once.
        blocks.push(json!({"type": "actions", "elements": [{
            "type": "button",
            "action_id": "ebb_snooze",
            "text": {"type": "plain_text", "text": snooze.label(), "emoji": false},
            "value": snooze.token,
        }]}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": slack_escape(&s.footer)}]}));
    json!({"text": text, "blocks": blocks})
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Microsoft Teams: an Adaptive Card in a message attachment.
fn teams(s: &Summary) -> Value {
    let facts: Vec<Value> = s
        .facts
        .iter()
        .map(|(k, v)| json!({"title": k, "value": v}))
        .collect();
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "text": s.headline, "wrap": true},
                    {"type": "FactSet", "facts": facts},
                    {"type": "TextBlock", "text": s.footer, "isSubtle": true, "size": "Small", "wrap": true},
                ],
                "actions": s.snooze.iter().map(|z| json!({
                    "type": "Action.OpenUrl", "title": z.label(), "url": z.url,
                })).collect::<Vec<_>>(),
            },
        }],
    })
}

/// Text and HTML bodies of an email.
fn email(s: &Summary) -> (String, String) {
    let mut text = format!("{}\n\n", s.headline);
    for (k, v) in &s.facts {
        text.push_str(&format!("{k}: {v}\n"));
    }
    if let Some(z) = &s.snooze {
        text.push_str(&format!("\n{}: {}\n", z.label(), z.url));
    }
    text.push_str(&format!("\n-- \n{}\n", s.footer));
    let rows: String = s
        .facts
        .iter()
        .map(|(k, v)| {
            format!(
                "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
                html_escape(k),
                html_escape(v)
            )
        })
        .collect();
    let snooze = s
        .snooze
        .as_ref()
        .map(|z| {
            format!(
                "<p><a href=\"{}\">{}</a></p>",
                html_escape(&z.url),
                html_escape(&z.label())
            )
        })
        .unwrap_or_default();
    let html = format!(
        "<!DOCTYPE html><html><body><h2>{}</h2><table>{rows}</table>{snooze}<p style=\"color:#666\">{}</p></body></html>",
        html_escape(&s.headline),
        html_escape(&s.footer)
    );
    (text, html)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> EventRecord {
        EventRecord {
            id: "evt_1".into(),
            organization_id: "org_1".into(),
            event_type: "workspace.auto_destroy.reminder".into(),
            subject_type: "workspace".into(),
            subject_id: "ws_1".into(),
            subject_name: "staging <eu>".into(),
            actor: "scheduler".into(),
            project_id: "prj_1".into(),
            workspace_id: "ws_1".into(),
            entity_id: String::new(),
            data: json!({"auto_destroy_at": "2030-01-01T00:00:00Z", "lead_time": "24h"}),
            occur_ms: 1_900_000_000_000,
        }
    }

    fn to() -> Recipient {
        Recipient {
            id: "nc_1".into(),
            name: "ops".into(),
        }
    }

    #[test]
    fn the_owner_is_mentioned_on_slack_and_mailed() {
        let mut owned = event();
        owned.data["owner"] = json!({"email": "ana@example.com", "slack_user_id": "U024BE7LH"});
        let Rendered::Json(slack) = render(Destination::Slack, &owned, &to()) else {
            panic!("json")
        };
        let slack: Value = serde_json::from_slice(&slack).expect("json");
        assert!(
            slack["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("<@U024BE7LH> "))
        );
        assert_eq!(slack["blocks"][2]["text"]["text"], "Owner: <@U024BE7LH>");
        let configured = vec!["ops@example.com".to_owned()];
        assert_eq!(
            email_recipients(&configured, &owned),
            vec!["ops@example.com".to_owned(), "ana@example.com".to_owned()]
        );
        // Without an owner, or with one that does not look like an address, nothing is added.
        assert_eq!(email_recipients(&configured, &event()), configured);
        owned.data["owner"] =
            json!({"email": "a@b.c, evil@example.com", "slack_user_id": "<!channel>"});
        assert_eq!(email_recipients(&configured, &owned), configured);
        assert_eq!(Owner::of(&owned), Owner::default());
    }

    #[test]
    fn a_reminder_s_snooze_link_is_a_slack_button_a_teams_action_and_an_email_link() {
        let mut e = event();
        e.data = json!({
            "due_at": "2030-01-01T00:00:00Z",
            "snooze_url": "https://ebb.example.com/v1/snooze/abc.def",
            "snooze_by": "1d",
        });
        let json_of = |d| match render(d, &e, &to()) {
            Rendered::Json(b) => serde_json::from_slice::<Value>(&b).expect("json"),
            _ => panic!("json"),
        };
        let slack = json_of(Destination::Slack);
        let actions = &slack["blocks"][2];
        assert_eq!(actions["type"], "actions");
        assert_eq!(actions["elements"][0]["action_id"], "ebb_snooze");
        assert_eq!(actions["elements"][0]["value"], "abc.def");
        assert_eq!(actions["elements"][0]["text"]["text"], "Snooze 1d");
        let teams = json_of(Destination::Teams);
        let action = &teams["attachments"][0]["content"]["actions"][0];
        assert_eq!(action["type"], "Action.OpenUrl");
        assert_eq!(action["url"], "https://ebb.example.com/v1/snooze/abc.def");
        let Rendered::Email { text, html, .. } = render(Destination::Email, &e, &to()) else {
            panic!("email")
        };
        assert!(text.contains("Snooze 1d: https://ebb.example.com/v1/snooze/abc.def"));
        assert!(
            html.contains("<a href=\"https://ebb.example.com/v1/snooze/abc.def\">Snooze 1d</a>")
        );
        // The link is an action, not a fact; a reminder without one has no action.
        assert!(!text.contains("snooze url"));
        let plain = json_of_plain(&event());
        assert_eq!(plain["blocks"].as_array().map(Vec::len), Some(3));
    }

    fn json_of_plain(e: &EventRecord) -> Value {
        match render(Destination::Slack, e, &to()) {
            Rendered::Json(b) => serde_json::from_slice(&b).expect("json"),
            _ => panic!("json"),
        }
    }

    #[test]
    fn envelope_names_what_it_is_about() {
        let v = envelope(&event(), &to());
        assert_eq!(v["type"], "workspace.auto_destroy.reminder");
        assert_eq!(v["payload_version"], 1);
        assert_eq!(v["data"]["subject"]["name"], "staging <eu>");
        assert_eq!(v["data"]["workspace_id"], "ws_1");
        assert_eq!(v["data"]["auto_destroy_at"], "2030-01-01T00:00:00Z");
        assert_eq!(v["data"]["notification_configuration"]["id"], "nc_1");
    }

    #[test]
    fn slack_teams_and_email_formats() {
        let Rendered::Json(slack) = render(Destination::Slack, &event(), &to()) else {
            panic!("json")
        };
        let slack: Value = serde_json::from_slice(&slack).expect("json");
        assert_eq!(slack["blocks"][0]["type"], "header");
        assert!(
            slack["text"]
                .as_str()
                .is_some_and(|t| t.contains("2030-01-01"))
        );
        let Rendered::Json(teams) = render(Destination::Teams, &event(), &to()) else {
            panic!("json")
        };
        let teams: Value = serde_json::from_slice(&teams).expect("json");
        assert_eq!(
            teams["attachments"][0]["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(teams["attachments"][0]["content"]["type"], "AdaptiveCard");
        let Rendered::Email {
            subject,
            text,
            html,
        } = render(Destination::Email, &event(), &to())
        else {
            panic!("email")
        };
        assert!(subject.starts_with("[Ebb] Workspace staging <eu>"));
        assert!(text.contains("lead time: 24h"));
        assert!(html.contains("staging &lt;eu&gt;"));
    }
}
