//! The web console in a real browser: Debian's Chromium, driven through ChromeDriver, against
//! `ebb serve`. An operator signs in, sees a scheduled workspace on the timeline (and one
//! waiting for a destroy window, marked so) and extends it; approves a destroy run awaiting
//! approval; plans a four-stack cascade (four steps leaves first, a shared upstream kept and marked)
//! and follows its action run to the end while runs complete; verifies the audit chain; sees
//! health. Every page fits 1280 and 390 pixel wide windows. A reader sees no action buttons,
//! and a POST forged in the reader's session is refused by the API. The session cookie, CSRF
//! and security headers are checked over plain HTTP too, on `ebb console --server`. Screenshots go to
//! `target/console-screenshots/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ebb_tests::TestDatabases;
use ebb_tests::cluster::{create_workspace, fixture, from_now};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::deprovision_service_client::DeprovisionServiceClient;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_tests::proto::lifecycle::v1::runner_service_client::RunnerServiceClient;
use ebb_tests::proto::lifecycle::v1::token_service_client::TokenServiceClient;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::Command;

use crate::auth::create_token;
use crate::support::ebb_serve;
use crate::tools::{chromium, tools_dir};

type Api = LifecycleServiceClient<ebb_tests::Channel>;
type Dep = DeprovisionServiceClient<ebb_tests::Channel>;

const CATALOG: &str = include_str!("../../../deploy/catalog/deprovision-tenant.yaml");
const WAIT: Duration = Duration::from_secs(30);

/// Where the screenshots go: `console-screenshots` in cargo's target directory.
fn screenshots() -> PathBuf {
    let dir = tools_dir()
        .parent()
        .expect("target directory")
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// ChromeDriver on a free port, and a headless Chromium session through it.
struct Browser {
    client: Client,
    base: String,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(console: SocketAddr) -> Self {
        let (chromium, chromedriver) = chromium().await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("profile directory");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        let mut client = None;
        for _ in 0..60 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        let client = client.unwrap_or_else(|| panic!("no WebDriver session: {last:?}"));
        Self {
            client,
            base: format!("http://{console}"),
            _driver: driver,
            _profile: profile,
        }
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .expect("navigate");
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.wait_for(css, WAIT).await
    }

    async fn wait_for(&self, css: &str, limit: Duration) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(limit)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => panic!("no `{css}` on the page: {e}\n{}", self.text().await),
        }
    }

    async fn all(&self, css: &str) -> Vec<fantoccini::elements::Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .expect("find elements")
    }

    async fn text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(b) => b.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    async fn fill(&self, css: &str, value: &str) {
        let e = self.find(css).await;
        e.clear().await.expect("clear");
        e.send_keys(value).await.expect("type");
    }

    async fn select(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .expect("select");
    }

    async fn flash(&self) -> String {
        self.find(".flash").await.text().await.expect("flash text")
    }

    async fn sign_in(&self, token: &str) {
        self.goto("/").await;
        self.fill("#token", token).await;
        self.click("button[type=submit]").await;
        self.find("header.top").await;
    }

    async fn sign_out(&self) {
        self.click("form[action='/signout'] button").await;
        self.find("#token").await;
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(screenshots().join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Fails when the page is wider than the window (a horizontal scroll bar).
    async fn fits(&self, what: &str) {
        let widths = self
            .client
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth];",
                vec![],
            )
            .await
            .expect("measure");
        let (page, window) = (
            widths[0].as_f64().unwrap_or(0.0),
            widths[1].as_f64().unwrap_or(0.0),
        );
        assert!(
            page <= window + 1.0,
            "{what}: the page is {page}px wide in a {window}px window"
        );
    }

    async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("resize");
    }
}

/// A tenant on an app stack, on a network stack, on an account, each with a workspace; the
/// tenant also runs on a monitoring stack that another tenant uses. Answers the tenant's id.
async fn fleet(api: &mut Api, dep: &mut Dep, project: &str, org: &str) -> String {
    dep.apply_catalog(pb::ApplyCatalogRequest {
        yaml: CATALOG.into(),
        ..Default::default()
    })
    .await
    .expect("catalog");
    let mut ids = std::collections::HashMap::new();
    for (kind, name) in [
        ("tenant", "acme"),
        ("app_stack", "acme-app"),
        ("network_stack", "acme-net"),
        ("account", "acme-aws"),
        ("app_stack", "monitoring"),
        ("tenant", "beta"),
    ] {
        let ws = create_workspace(api, project, &format!("{name}-ws")).await;
        let e = dep
            .create_entity(pb::CreateEntityRequest {
                organization_id: org.into(),
                kind: kind.into(),
                name: name.into(),
                workspace_id: ws.id,
                ..Default::default()
            })
            .await
            .expect("entity")
            .into_inner()
            .entity
            .expect("entity");
        ids.insert(name, e.id);
    }
    for (from, to) in [
        ("acme", "acme-app"),
        ("acme-app", "acme-net"),
        ("acme-net", "acme-aws"),
        ("acme", "monitoring"),
        ("beta", "monitoring"),
    ] {
        dep.create_relationship(pb::CreateRelationshipRequest {
            r#type: "runs_on".into(),
            from_entity_id: ids[from].clone(),
            to_entity_id: ids[to].clone(),
            ..Default::default()
        })
        .await
        .expect("relationship");
    }
    ids["acme"].clone()
}

/// Claims and succeeds the organization's runs until `stop`.
fn runner(channel: ebb_tests::Channel, org: String, stop: Stop) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut runner = RunnerServiceClient::new(channel);
        let mut done = 0;
        while !stop.is_set() {
            let claim = runner
                .claim_run(pb::ClaimRunRequest {
                    organization_id: org.clone(),
                    runner_id: "console-test".into(),
                    wait: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                })
                .await;
            let Ok(claim) = claim.map(|c| c.into_inner()) else {
                continue;
            };
            let Some(run) = &claim.run else { continue };
            runner
                .complete_run(pb::CompleteRunRequest {
                    run_id: run.id.clone(),
                    lease_token: claim.lease_token.clone(),
                    outcome: pb::RunOutcome::Succeeded as i32,
                    ..Default::default()
                })
                .await
                .expect("complete run");
            done += 1;
        }
        done
    })
}

/// A flag a background task polls.
#[derive(Clone, Default)]
struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Stop {
    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn next_destroy(api: &mut Api, id: &str) -> i64 {
    api.get_workspace(pb::GetWorkspaceRequest {
        workspace_id: id.into(),
    })
    .await
    .expect("workspace")
    .into_inner()
    .workspace
    .and_then(|w| w.next_auto_destroy_at)
    .expect("scheduled")
    .seconds
}

#[tokio::test]
async fn operators_see_and_act_on_destroys_and_cascades_in_a_browser() {
    if ebb_tests::postgres_url().is_some() {
        eprintln!(
            "skipped on the PostgreSQL pass: `ebb serve` runs on SQLite, and so does this test"
        );
        return;
    }
    let dbs = TestDatabases::on(None);
    let (server, _data) = ebb_serve(&dbs, &[]).await;
    let console = server
        .console_addr
        .expect("ebb serve prints its console address");
    let channel = server.channel().await;
    let mut api = LifecycleServiceClient::new(channel.clone());
    let mut dep = DeprovisionServiceClient::new(channel.clone());
    let mut tokens = TokenServiceClient::new(channel.clone());

    // A workspace with applied state, to be destroyed in two days.
    // Auto-destroys of workspaces labelled approval=required wait for a person's approval.
    let settings = pb::OrganizationSettings {
        require_approval: true,
        approval_window: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        approval_labels: [("approval".to_owned(), "required".to_owned())].into(),
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "preview-42").await;
    api.record_state_version(pb::RecordStateVersionRequest {
        workspace_id: f.workspace.id.clone(),
        serial: 1,
        ..Default::default()
    })
    .await
    .expect("state");
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: f.workspace.id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(2 * 86_400))),
        ..Default::default()
    })
    .await
    .expect("schedule");
    // Another project's workspace is due outside its project's destroy window: it waits.
    let opens = (chrono::Utc::now() + chrono::Duration::hours(6))
        .format("%H")
        .to_string();
    let closes = match opens.as_str() {
        "23" => "24:00".to_owned(),
        h => format!("{:02}:00", h.parse::<u32>().expect("hour") + 1),
    };
    let staging = api
        .create_project(pb::CreateProjectRequest {
            organization_id: f.org.id.clone(),
            name: "staging".into(),
            destroy_windows: Some(pb::DestroyWindows {
                time_zone: "UTC".into(),
                windows: vec![pb::DestroyWindow {
                    days: "mon-sun".into(),
                    start: format!("{opens}:00"),
                    end: closes,
                }],
            }),
            ..Default::default()
        })
        .await
        .expect("project with a window")
        .into_inner()
        .project
        .expect("project");
    let held = create_workspace(&mut api, &staging.id, "nightly-7").await;
    api.record_state_version(pb::RecordStateVersionRequest {
        workspace_id: held.id.clone(),
        serial: 1,
        ..Default::default()
    })
    .await
    .expect("state");
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: held.id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(3 * 86_400))),
        ..Default::default()
    })
    .await
    .expect("schedule");
    let tenant = fleet(&mut api, &mut dep, &f.project.id, &f.org.id).await;
    // One that comes due in two seconds, and waits for approval.
    let guarded = api
        .create_workspace(pb::CreateWorkspaceRequest {
            project_id: f.project.id.clone(),
            name: "prod-db".into(),
            labels: [("approval".to_owned(), "required".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect("workspace")
        .into_inner()
        .workspace
        .expect("workspace");
    api.record_state_version(pb::RecordStateVersionRequest {
        workspace_id: guarded.id.clone(),
        serial: 1,
        ..Default::default()
    })
    .await
    .expect("state");
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: guarded.id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(2))),
        ..Default::default()
    })
    .await
    .expect("schedule");
    let (_, operator) = create_token(&mut tokens, &f.org.id, pb::TokenRole::Operator, None).await;
    let (_, reader) = create_token(&mut tokens, &f.org.id, pb::TokenRole::Reader, None).await;

    let b = Browser::start(console).await;

    // Signing in lands on the timeline, which shows the workspace with its reminders to come.
    b.sign_in(&operator).await;
    let lane = b
        .find(&format!("g.lanerow[data-workspace='{}']", f.workspace.id))
        .await;
    let due_before = lane
        .attr("data-due")
        .await
        .expect("attr")
        .expect("data-due");
    assert_eq!(
        b.all(&format!(
            "g.lanerow[data-workspace='{}'] circle.reminder.tocome",
            f.workspace.id
        ))
        .await
        .len(),
        2,
        "the default 24h and 12h reminders are still to come"
    );
    let held_lane = format!("g.lanerow[data-workspace='{}']", held.id);
    b.find(&format!("{held_lane} polygon.destroy.window")).await;
    b.find(&format!("{held_lane} line.held")).await;
    b.fits("timeline at 1280px").await;
    b.screenshot("upcoming").await;

    // The workspace page says why, and Extend moves the destroy a day later.
    let before = next_destroy(&mut api, &f.workspace.id).await;
    b.click(&format!(
        "#upcoming a[href='/workspaces/{}']",
        f.workspace.id
    ))
    .await;
    let why = b.find("#why").await.text().await.expect("why");
    assert!(why.contains("one-shot"), "{why}");
    b.fill("#extend_by", "1d").await;
    b.click("#extend").await;
    let flash = b.flash().await;
    assert!(flash.starts_with("Extended"), "{flash}");
    assert_eq!(
        next_destroy(&mut api, &f.workspace.id).await,
        before + 86_400
    );
    b.screenshot("workspace").await;
    b.goto("/").await;
    let due_after = b
        .find(&format!("g.lanerow[data-workspace='{}']", f.workspace.id))
        .await
        .attr("data-due")
        .await
        .expect("attr")
        .expect("data-due");
    assert_ne!(due_before, due_after, "the timeline moved it");

    // The plan: four steps leaves first, the shared monitoring stack kept and marked.
    b.goto("/deprovision").await;
    b.select("#entity", &tenant).await;
    b.click("form.filters button[type=submit]").await;
    b.select("#action", "DeprovisionTenant").await;
    b.click("form.filters button[type=submit]").await;
    b.find("svg.plan").await;
    let mut steps = Vec::new();
    for node in b.all("svg.plan g.node.planned").await {
        let order: i32 = node
            .attr("data-order")
            .await
            .expect("attr")
            .expect("order")
            .parse()
            .expect("number");
        let wave: i32 = node
            .attr("data-wave")
            .await
            .expect("attr")
            .expect("wave")
            .parse()
            .expect("number");
        let name = node.attr("data-name").await.expect("attr").expect("name");
        steps.push((order, wave, name));
    }
    steps.sort();
    assert_eq!(
        steps,
        vec![
            (0, 1, "acme".to_owned()),
            (1, 2, "acme-app".to_owned()),
            (2, 3, "acme-net".to_owned()),
            (3, 4, "acme-aws".to_owned()),
        ],
        "four steps, leaves first"
    );
    let kept = b.find("svg.plan g.node.kept[data-name='monitoring']").await;
    let users = kept
        .attr("data-used-by")
        .await
        .expect("attr")
        .unwrap_or_default();
    assert!(
        users.contains("beta"),
        "the kept stack names its other user: {users}"
    );
    assert_eq!(
        b.find("#destroy-count").await.text().await.expect("count"),
        "4"
    );
    b.fits("plan at 1280px").await;
    b.screenshot("plan").await;

    // Trigger with confirmation, then follow the run to its end while a runner completes the
    // destroy runs one wave at a time.
    b.click("#confirm").await;
    b.click("#fire").await;
    b.find("#live").await;
    let stop = Stop::default();
    let worker = runner(channel.clone(), f.org.id.clone(), stop.clone());
    b.screenshot("action-run-running").await;
    b.wait_for("#live[data-status='succeeded']", Duration::from_secs(60))
        .await;
    stop.set();
    assert_eq!(
        worker.await.expect("runner"),
        4,
        "one destroy run per torn-down entity"
    );
    assert_eq!(
        b.all("#live svg.plan g.node.succeeded").await.len(),
        4,
        "every step drawn as succeeded"
    );
    b.screenshot("action-run").await;

    // The destroy run awaiting approval is approved from its workspace's page, with a reason.
    let awaiting = ebb_tests::cluster::eventually(WAIT, "a run awaiting approval", || {
        let mut api = api.clone();
        let request = pb::ListRunsRequest {
            organization_id: f.org.id.clone(),
            workspace_id: guarded.id.clone(),
            status: pb::RunStatus::AwaitingApproval as i32,
            ..Default::default()
        };
        async move {
            let runs = api.list_runs(request).await.ok()?.into_inner().runs;
            runs.into_iter().next()
        }
    })
    .await;
    b.goto(&format!("/workspaces/{}", guarded.id)).await;
    let form = format!("form[action='/runs/{}/approve']", awaiting.id);
    b.fill(
        &format!("{form} input[name=reason]"),
        "change window CHG-1234",
    )
    .await;
    b.click(&format!("{form} button")).await;
    let flash = b.flash().await;
    assert!(flash.starts_with("Approved"), "{flash}");
    let approved = api
        .get_run(pb::GetRunRequest {
            run_id: awaiting.id.clone(),
        })
        .await
        .expect("run")
        .into_inner()
        .run
        .expect("run");
    assert_eq!(approved.status, pb::RunStatus::Queued as i32);
    assert_eq!(
        approved.approval.expect("approval").reason,
        "change window CHG-1234"
    );

    // The audit chain verifies.
    b.goto("/audit").await;
    b.find("#events").await;
    b.click("#verify button").await;
    let flash = b.flash().await;
    assert!(flash.starts_with("Intact"), "{flash}");
    b.screenshot("audit").await;

    // Health: every service serving, the scheduler's tasks with their leases.
    b.goto("/health").await;
    assert_eq!(
        b.all("#services .badge.good").await.len(),
        4,
        "{}",
        b.text().await
    );
    assert!(!b.all("#tasks tbody tr").await.is_empty());
    b.screenshot("health").await;

    // A phone-wide window: every page fits.
    b.resize(390, 844).await;
    for (path, what) in [
        ("/".to_owned(), "timeline"),
        (format!("/workspaces/{}", f.workspace.id), "workspace"),
        (
            format!("/deprovision?entity={tenant}&action=DeprovisionTenant"),
            "plan",
        ),
        ("/audit".to_owned(), "audit"),
        ("/health".to_owned(), "health"),
    ] {
        b.goto(&path).await;
        b.find("main h1").await;
        b.fits(&format!("{what} at 390px")).await;
    }
    b.goto("/").await;
    b.screenshot("upcoming-390").await;
    b.resize(1280, 900).await;

    // A reader sees no buttons; a POST forged in the reader's session is refused by the API.
    b.sign_out().await;
    b.sign_in(&reader).await;
    b.goto(&format!("/workspaces/{}", f.workspace.id)).await;
    b.find("#schedule").await;
    assert!(
        b.all("#extend, #lock, #clear").await.is_empty(),
        "a reader is offered no action"
    );
    b.goto(&format!(
        "/deprovision?entity={tenant}&action=DeprovisionTenant"
    ))
    .await;
    let note = b.flash().await;
    assert!(note.contains("operator or admin"), "{note}");
    assert!(b.all("#fire").await.is_empty(), "a reader triggers nothing");
    b.find("#action-runs a").await;
    b.goto(&format!("/workspaces/{}", f.workspace.id)).await;
    b.find("#schedule").await;
    let before = next_destroy(&mut api, &f.workspace.id).await;
    b.client
        .execute(
            "const csrf = document.querySelector('form[action=\"/signout\"] input[name=csrf]').value;
             const f = document.createElement('form');
             f.method = 'post';
             f.action = '/workspaces/' + arguments[0] + '/extend';
             for (const [k, v] of [['csrf', csrf], ['extend_by', '5d']]) {
               const i = document.createElement('input');
               i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i);
             }
             document.body.appendChild(f);
             f.submit();",
            vec![json!(f.workspace.id)],
        )
        .await
        .expect("forge a form");
    let flash = b.flash().await;
    assert!(flash.contains("permission denied"), "{flash}");
    assert_eq!(
        next_destroy(&mut api, &f.workspace.id).await,
        before,
        "nothing moved"
    );
    b.client.close().await.expect("close the browser");
}

/// `ebb console --server URL` on a free port, once it says where it listens.
async fn console_for(server: &str) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = Command::new(ebb_tests::bin_path("ebb"))
        .args(["console", "--server", server, "--listen", "127.0.0.1:0"])
        .env_remove("EBB_CONTEXT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start ebb console");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("ebb console starts in time")
        .expect("read")
        .expect("a first line");
    let addr = line
        .strip_prefix("console on http://")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("ebb console printed {line:?}"));
    assert!(line.ends_with(&format!("for {server}")), "{line}");
    (child, addr)
}

#[tokio::test]
async fn sessions_are_http_only_strict_and_forms_need_their_csrf_token() {
    let dbs = TestDatabases::on(None);
    let (server, _data) = ebb_serve(&dbs, &[]).await;
    // `ebb console` against the server, as against a deployed cluster.
    let (_console, addr) = console_for(&format!("http://{}", server.addr)).await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // Every answer carries the security headers; pages need a session.
    let r = http.get(format!("{base}/")).send().await.expect("get /");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/signin?next=%2F");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");

    // Signing in needs the form's own CSRF cookie.
    let form = http
        .get(format!("{base}/signin"))
        .send()
        .await
        .expect("signin");
    let cookie = form.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let csrf = cookie
        .split(';')
        .next()
        .and_then(|c| c.split_once('='))
        .map(|(_, v)| v.to_owned())
        .expect("csrf value");
    let forged = http
        .post(format!("{base}/signin"))
        .form(&[
            ("token", ebb_tests::ADMIN_TOKEN),
            ("csrf", "guessed"),
            ("next", "/"),
        ])
        .header("cookie", format!("ebb_signin={csrf}"))
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), 200, "the form again, not a session");
    assert!(
        forged
            .headers()
            .get("set-cookie")
            .is_some_and(|c| !c.to_str().unwrap_or("").starts_with("ebb_session"))
    );

    // A bad token is named as such.
    let bad = http
        .post(format!("{base}/signin"))
        .form(&[
            ("token", "ebb_not-a-real-token"),
            ("csrf", csrf.as_str()),
            ("next", "/"),
        ])
        .header("cookie", format!("ebb_signin={csrf}"))
        .send()
        .await
        .expect("post");
    let text = bad.text().await.expect("body");
    assert!(text.contains("does not know this token"), "{text}");

    // The right token starts a session: HttpOnly, SameSite=Strict, with an expiry; an
    // open redirect is not followed.
    let ok = http
        .post(format!("{base}/signin"))
        .form(&[
            ("token", ebb_tests::ADMIN_TOKEN),
            ("csrf", csrf.as_str()),
            ("next", "//evil.example/"),
        ])
        .header("cookie", format!("ebb_signin={csrf}"))
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/");
    let session = ok
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("ebb_session="))
        .expect("session cookie")
        .to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Max-Age=28800", "Path=/"] {
        assert!(session.contains(attr), "{attr} in {session}");
    }
    let id = session.split(';').next().expect("pair").to_owned();

    // With the session, pages answer; a POST without the session's CSRF token is refused.
    let page = http
        .get(format!("{base}/health"))
        .header("cookie", &id)
        .send()
        .await
        .expect("health");
    assert_eq!(page.status(), 200);
    let refused = http
        .post(format!("{base}/audit/verify"))
        .header("cookie", &id)
        .form(&[("csrf", "not-the-token")])
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.expect("body").contains("CSRF"));

    // A token revoked during its session: pages say so and lead back to the sign-in.
    let channel = server.channel().await;
    let f = fixture(
        &mut LifecycleServiceClient::new(channel.clone()),
        None,
        "ws",
    )
    .await;
    let mut tokens = TokenServiceClient::new(channel);
    let (token, secret) = create_token(&mut tokens, &f.org.id, pb::TokenRole::Operator, None).await;
    let form = http
        .get(format!("{base}/signin"))
        .send()
        .await
        .expect("signin");
    let csrf = form.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .and_then(|c| c.split_once('='))
        .map(|(_, v)| v.to_owned())
        .expect("csrf");
    let signed = http
        .post(format!("{base}/signin"))
        .form(&[
            ("token", secret.as_str()),
            ("csrf", csrf.as_str()),
            ("next", "/"),
        ])
        .header("cookie", format!("ebb_signin={csrf}"))
        .send()
        .await
        .expect("sign in");
    let id = signed
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("ebb_session="))
        .and_then(|c| c.split(';').next())
        .expect("session")
        .to_owned();
    tokens
        .revoke_token(pb::RevokeTokenRequest {
            token_id: token.id,
            ..Default::default()
        })
        .await
        .expect("revoke");
    let after = ebb_tests::cluster::eventually(WAIT, "the revocation to reach the console", || {
        let (http, base, id) = (http.clone(), base.clone(), id.clone());
        async move {
            let page = http
                .get(format!("{base}/"))
                .header("cookie", id)
                .send()
                .await
                .ok()?;
            let text = page.text().await.ok()?;
            text.contains("Sign in again").then_some(text)
        }
    })
    .await;
    assert!(after.contains("unauthenticated"), "{after}");
}
