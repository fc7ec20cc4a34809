//! Snooze links in reminders, end to end through lifecycle-svc's HTTP port: a reminder carries
//! a link; opening it changes nothing, using it pushes the destroy by the organization's snooze
//! step once, audited with the reminder as actor; a used, altered or stale link says so and
//! changes nothing; a Slack button press counts only with Slack's `v0` signature, computed here
//! as Slack's documentation describes (SHA-256 and HMAC independent of the service's crates).

use std::time::Duration;

use crate::notifier::{hex, hmac, sha256};
use ebb_tests::cluster::{Cluster, events, fixture, from_now, secs, workspace};
use ebb_tests::proto::lifecycle::v1 as pb;

const REMINDERS: &str = "auto_destroy_reminders";
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// A string in an event's data, at `path`.
fn data_str(event: &pb::OutboxEvent, path: &[&str]) -> Option<String> {
    crate::safety::data_str(event, path).map(str::to_owned)
}

async fn next_destroy(
    api: &mut pb::lifecycle_service_client::LifecycleServiceClient<ebb_tests::Channel>,
    id: &str,
) -> i64 {
    workspace(api, id)
        .await
        .next_auto_destroy_at
        .map_or(0, |t| t.seconds)
}

/// Schedules a destroy of `id` in 30 minutes, runs the reminder task, and returns the snooze
/// link of the reminder.
async fn remind(
    cluster: &Cluster,
    api: &mut pb::lifecycle_service_client::LifecycleServiceClient<ebb_tests::Channel>,
    org: &str,
    id: &str,
) -> String {
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: id.into(),
        auto_destroy_at: Some(from_now(Duration::from_secs(1800))),
        ..Default::default()
    })
    .await
    .expect("set");
    cluster.scheduler_rounds(REMINDERS, 1).await;
    let reminder = events(api, org, "workspace.auto_destroy.reminder")
        .await
        .into_iter()
        .find(|e| e.subject_id == id)
        .expect("a reminder");
    assert_eq!(data_str(&reminder, &["snooze_by"]).as_deref(), Some("2h"));
    data_str(&reminder, &["snooze_url"]).expect("the reminder carries a snooze link")
}

fn slack_request(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    secret: &str,
    at: i64,
) -> reqwest::RequestBuilder {
    let payload = serde_json::json!({
        "type": "block_actions",
        "user": {"id": "U0SNOOZER"},
        "actions": [{"action_id": "ebb_snooze", "type": "button", "value": token}],
    });
    let body = format!(
        "payload={}",
        payload
            .to_string()
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    let base = format!("v0:{at}:{body}");
    let signature = format!(
        "v0={}",
        hex(&hmac(sha256, 64, secret.as_bytes(), base.as_bytes()))
    );
    http.post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", at.to_string())
        .header("x-slack-signature", signature)
        .body(body)
}

#[tokio::test]
async fn a_reminder_s_link_snoozes_once_and_a_slack_button_needs_slack_s_signature() {
    let cluster = Cluster::start_on(
        ebb_tests::TestDatabases::new(),
        1,
        &[("EBB_SNOOZE__SLACK_SIGNING_SECRET", SLACK_SECRET.into())],
    )
    .await;
    let mut api = cluster.api().await;
    let settings = pb::OrganizationSettings {
        reminder_lead_times: vec![secs(3600)],
        snooze_step: Some(secs(7200)),
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "snoozed").await;
    let org = f.org.id.clone();
    let id = f.workspace.id.clone();
    let http = reqwest::Client::new();

    let url = remind(&cluster, &mut api, &org, &id).await;
    let before = next_destroy(&mut api, &id).await;

    // Opening the link shows what it would do and changes nothing.
    let shown = http.get(&url).send().await.expect("GET");
    assert_eq!(shown.status(), 200);
    let csp = shown.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(shown.headers()["referrer-policy"], "no-referrer");
    let page = shown.text().await.expect("body");
    assert!(
        page.contains("Snooze by 2h") && page.contains("method=\"post\""),
        "{page}"
    );
    assert_eq!(next_destroy(&mut api, &id).await, before);

    // Using it pushes the destroy by the step, once.
    let used = http.post(&url).send().await.expect("POST");
    assert_eq!(used.status(), 200);
    assert!(used.text().await.expect("body").contains("Snoozed"));
    assert_eq!(next_destroy(&mut api, &id).await, before + 7200);
    let extended = events(&mut api, &org, "workspace.auto_destroy.extended").await;
    let by_link = extended.last().expect("an extended event");
    assert!(by_link.actor.starts_with("reminder:"), "{}", by_link.actor);
    assert_eq!(
        data_str(by_link, &["actor", "kind"]).as_deref(),
        Some("reminder")
    );
    assert_eq!(
        data_str(by_link, &["actor", "via"]).as_deref(),
        Some("link")
    );

    for again in [http.post(&url).send().await, http.get(&url).send().await] {
        let again = again.expect("again");
        assert_eq!(again.status(), 410);
        assert!(again.text().await.expect("body").contains("used already"));
    }
    assert_eq!(next_destroy(&mut api, &id).await, before + 7200);

    // An altered link and a stale one change nothing.
    let mut altered = url.clone();
    let last = altered.pop().expect("a character");
    altered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(
        http.post(&altered).send().await.expect("POST").status(),
        400
    );
    let stale_ws = ebb_tests::cluster::create_workspace(&mut api, &f.project.id, "stale").await;
    let stale = remind(&cluster, &mut api, &org, &stale_ws.id).await;
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: stale_ws.id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(2400))),
        ..Default::default()
    })
    .await
    .expect("move the schedule");
    let moved = next_destroy(&mut api, &stale_ws.id).await;
    let answer = http.post(&stale).send().await.expect("POST");
    assert_eq!(answer.status(), 409);
    assert!(
        answer
            .text()
            .await
            .expect("body")
            .contains("schedule changed")
    );
    assert_eq!(next_destroy(&mut api, &stale_ws.id).await, moved);

    // The Slack button: refused without Slack's signature, or with an old one; accepted with it.
    let button_ws = ebb_tests::cluster::create_workspace(&mut api, &f.project.id, "button").await;
    let link = remind(&cluster, &mut api, &org, &button_ws.id).await;
    let token = link
        .rsplit_once("/v1/snooze/")
        .expect("a link")
        .1
        .to_owned();
    let interactions = format!(
        "{}/v1/slack/interactions",
        link.split_once("/v1/snooze/").expect("a link").0
    );
    let before = next_destroy(&mut api, &button_ws.id).await;
    let now = chrono::Utc::now().timestamp();
    for (secret, at) in [("not the app's secret", now), (SLACK_SECRET, now - 600)] {
        let refused = slack_request(&http, &interactions, &token, secret, at)
            .send()
            .await
            .expect("POST");
        assert_eq!(refused.status(), 401);
    }
    assert_eq!(next_destroy(&mut api, &button_ws.id).await, before);
    let pressed = slack_request(&http, &interactions, &token, SLACK_SECRET, now)
        .send()
        .await
        .expect("POST");
    assert_eq!(pressed.status(), 200);
    let reply: serde_json::Value =
        serde_json::from_str(&pressed.text().await.expect("body")).expect("json");
    assert!(
        reply["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Snoozed")),
        "{reply}"
    );
    assert_eq!(next_destroy(&mut api, &button_ws.id).await, before + 7200);
    let by_button = events(&mut api, &org, "workspace.auto_destroy.extended")
        .await
        .into_iter()
        .rfind(|e| e.subject_id == button_ws.id)
        .expect("extended by the button");
    assert_eq!(
        data_str(&by_button, &["actor", "via"]).as_deref(),
        Some("slack")
    );
    assert_eq!(
        data_str(&by_button, &["actor", "slack_user"]).as_deref(),
        Some("U0SNOOZER")
    );
    let twice = slack_request(&http, &interactions, &token, SLACK_SECRET, now)
        .send()
        .await
        .expect("POST");
    let reply: serde_json::Value =
        serde_json::from_str(&twice.text().await.expect("body")).expect("json");
    assert!(
        reply["text"]
            .as_str()
            .is_some_and(|t| t.contains("used already")),
        "{reply}"
    );
    assert_eq!(next_destroy(&mut api, &button_ws.id).await, before + 7200);
}

#[tokio::test]
async fn an_organization_can_turn_snooze_links_off() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let settings = pb::OrganizationSettings {
        reminder_lead_times: vec![secs(3600)],
        snooze_step: Some(secs(0)),
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "no-snooze").await;
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: f.workspace.id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(1800))),
        ..Default::default()
    })
    .await
    .expect("set");
    cluster.scheduler_rounds(REMINDERS, 1).await;
    let reminder = events(&mut api, &f.org.id, "workspace.auto_destroy.reminder")
        .await
        .pop()
        .expect("a reminder");
    assert_eq!(data_str(&reminder, &["snooze_url"]), None);
    let got = api
        .get_organization(pb::GetOrganizationRequest {
            organization_id: f.org.id.clone(),
        })
        .await
        .expect("get org")
        .into_inner()
        .organization
        .expect("org");
    assert_eq!(
        got.settings
            .expect("settings")
            .snooze_step
            .map(|d| d.seconds),
        Some(0)
    );
}
