//! The shipped deployments work as shipped: `deploy/compose.yaml` and the Kubernetes base are
//! read, and the four services are started with exactly the commands, environment and config
//! files they give (the test's database instead of theirs, local ports instead of cluster
//! names), then a workspace is driven to an archived destroy and its events reach audit. A
//! manifest that forgets a token, names a wrong key or points a service at the wrong peer
//! fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::repo_root;
use ebb_tests::cluster::{eventually, from_now};
use ebb_tests::proto::audit::v1 as audit_pb;
use ebb_tests::proto::audit::v1::audit_service_client::AuditServiceClient;
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_tests::{Process, TestDatabases};
use serde_norway::Value;

const WAIT: Duration = Duration::from_secs(30);

/// The four services, in the order they are started (peers first).
const SERVICES: [&str; 4] = ["audit", "notifier", "lifecycle", "scheduler"];

/// One service as a deployment runs it.
#[derive(Debug)]
struct Launch {
    service: &'static str,
    /// The command line, `ebb` first.
    command: Vec<String>,
    env: BTreeMap<String, String>,
}

/// Local stand-ins for the deployment's addresses: `host:port` of each service's name, and
/// the test's database of each service.
struct Site {
    ports: BTreeMap<&'static str, u16>,
    databases: BTreeMap<&'static str, String>,
    dir: PathBuf,
}

/// A port free now, below the range the system hands out for `127.0.0.1:0` and for the
/// source ports of outgoing connections: the services start after it is picked, and a port
/// from that range could be taken meanwhile by another test's server or client.
fn unused_port(taken: &BTreeMap<&'static str, u16>) -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..32_000);
        if taken.values().any(|p| *p == port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Site {
    async fn new(dbs: &mut TestDatabases) -> Self {
        let mut ports = BTreeMap::new();
        let mut databases = BTreeMap::new();
        for service in SERVICES {
            ports.insert(service, unused_port(&ports));
            databases.insert(service, dbs.create(&format!("deploy_{service}")).await);
        }
        Self {
            ports,
            databases,
            dir: dbs.dir().to_owned(),
        }
    }

    /// `text` with the deployment's addresses replaced by local ones: peer URLs
    /// (`http://lifecycle:50061`), listen addresses (`0.0.0.0:50061`) and metrics addresses.
    fn localize(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (service, deployed) in [
            ("lifecycle", 50061),
            ("scheduler", 50062),
            ("notifier", 50063),
            ("audit", 50064),
        ] {
            let local = format!("127.0.0.1:{}", self.ports[service]);
            out = out
                .replace(&format!("{service}:{deployed}"), &local)
                .replace(&format!("0.0.0.0:{deployed}"), &local)
                .replace(&format!("0.0.0.0:94{}", deployed - 50000), "127.0.0.1:0");
        }
        out
    }
}

/// Compose's variable interpolation: `${VAR}`, `${VAR:-default}`, `${VAR:?message}`; the last
/// stops `docker compose up` when VAR is unset or empty, which is the error here.
fn interpolate(text: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map(|e| e + start)
            .ok_or_else(|| format!("unclosed ${{ in `{}`", &rest[start..]))?;
        let expr = &rest[start + 2..end];
        let set = |name: &str| vars.get(name).filter(|v| !v.is_empty()).cloned();
        let value = if let Some((name, default)) = expr.split_once(":-") {
            set(name).unwrap_or_else(|| default.to_owned())
        } else if let Some((name, message)) = expr.split_once(":?") {
            set(name).ok_or_else(|| format!("{name}: {message}"))?
        } else {
            set(expr).unwrap_or_default()
        };
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn read(path: &str) -> String {
    let full = repo_root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            let mut value = <Value as serde::Deserialize>::deserialize(doc).expect("yaml");
            value.apply_merge().expect("merge keys");
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The services of `deploy/compose.yaml`, with `deploy/.env` as its one-liner writes it.
fn compose(site: &Site, tokens: &BTreeMap<&str, String>) -> Vec<Launch> {
    let text = interpolate(&read("deploy/compose.yaml"), tokens)
        .unwrap_or_else(|e| panic!("compose would refuse to start: {e}"));
    let doc = yaml_docs(&text).remove(0);
    let services = &doc["services"];
    SERVICES
        .iter()
        .map(|&service| {
            let name = if service == "scheduler" {
                "scheduler-1"
            } else {
                service
            };
            let svc = &services[name];
            assert!(svc.is_mapping(), "compose.yaml has no service {name}");
            let test = strings(&svc["healthcheck"]["test"]);
            assert_eq!(
                test.get(1..3),
                Some(&["ebb".to_owned(), "health".to_owned()][..]),
                "{name}: the healthcheck probes with `ebb health`: {test:?}"
            );
            let command = strings(&svc["command"])
                .iter()
                .map(|a| site.localize(a))
                .collect();
            let mut env = BTreeMap::new();
            if let Some(vars) = svc["environment"].as_mapping() {
                for (k, v) in vars {
                    let key = scalar(k);
                    // The database is the test's; the rest is as compose gives it.
                    let value = if key == "EBB_DATABASE_URL" {
                        site.databases[service].clone()
                    } else {
                        site.localize(&scalar(v))
                    };
                    env.insert(key, value);
                }
            }
            Launch {
                service,
                command,
                env,
            }
        })
        .collect()
}

/// The Deployments of the Kubernetes base, with the Secrets of `deploy/k8s/examples` and the
/// ConfigMaps its kustomization generates, mounted where the Deployments mount them.
fn kubernetes(site: &Site) -> Vec<Launch> {
    let kustomization = yaml_docs(&read("deploy/k8s/base/kustomization.yaml")).remove(0);
    let mut config_maps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for generator in kustomization["configMapGenerator"]
        .as_sequence()
        .expect("configMapGenerator")
    {
        config_maps.insert(scalar(&generator["name"]), strings(&generator["files"]));
    }
    let mut secrets: BTreeMap<(String, String), String> = BTreeMap::new();
    let examples = repo_root().join("deploy/k8s/examples");
    for entry in std::fs::read_dir(&examples).expect("examples") {
        let path = entry.expect("entry").path();
        for doc in yaml_docs(&std::fs::read_to_string(&path).expect("read")) {
            if doc["kind"].as_str() == Some("Secret") {
                let name = scalar(&doc["metadata"]["name"]);
                for (k, v) in doc["stringData"].as_mapping().expect("stringData") {
                    secrets.insert((name.clone(), scalar(k)), scalar(v));
                }
            }
        }
    }
    let mut launches = Vec::new();
    for service in SERVICES {
        let doc = yaml_docs(&read(&format!("deploy/k8s/base/{service}.yaml")))
            .into_iter()
            .find(|d| d["kind"].as_str() == Some("Deployment"))
            .unwrap_or_else(|| panic!("no Deployment in deploy/k8s/base/{service}.yaml"));
        let pod = &doc["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        // Each volume mounted from a generated ConfigMap becomes a directory of its files.
        let mut mounts: BTreeMap<String, PathBuf> = BTreeMap::new();
        for mount in container["volumeMounts"].as_sequence().expect("mounts") {
            let volume = pod["volumes"]
                .as_sequence()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("the mounted volume");
            let Some(map) = volume["configMap"]["name"].as_str() else {
                continue;
            };
            let dir = site.dir.join(format!("k8s-{service}-{map}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            for file in &config_maps[map] {
                let text = read(&format!("deploy/k8s/base/{file}"));
                let name = Path::new(file).file_name().expect("file name");
                std::fs::write(dir.join(name), site.localize(&text)).expect("write config");
            }
            mounts.insert(scalar(&mount["mountPath"]), dir);
        }
        let on_disk = |arg: &str| {
            mounts
                .iter()
                .find_map(|(at, dir)| {
                    arg.strip_prefix(&format!("{at}/"))
                        .map(|rest| dir.join(rest).display().to_string())
                })
                .unwrap_or_else(|| arg.to_owned())
        };
        let command = strings(&container["command"])
            .into_iter()
            .chain(strings(&container["args"]))
            .map(|a| on_disk(&a))
            .collect();
        let mut env = BTreeMap::new();
        for var in container["env"].as_sequence().expect("env") {
            let key = scalar(&var["name"]);
            let value = if key == "EBB_DATABASE_URL" {
                site.databases[service].clone()
            } else if let Some(value) = var.get("value") {
                scalar(value)
            } else if let Some(secret) = var["valueFrom"].get("secretKeyRef") {
                let at = (scalar(&secret["name"]), scalar(&secret["key"]));
                secrets
                    .get(&at)
                    .unwrap_or_else(|| panic!("{service}: no example Secret {at:?}"))
                    .clone()
            } else if var["valueFrom"].get("fieldRef").is_some() {
                format!("{service}-pod-1")
            } else {
                panic!("{service}: {key} has no value the test understands");
            };
            env.insert(key, value);
        }
        launches.push(Launch {
            service,
            command,
            env,
        });
    }
    launches
}

/// Starts the four services as `launches` say and drives a workspace to an archived destroy.
async fn drive(launches: Vec<Launch>, site: &Site, admin_token: &str) {
    let mut processes = BTreeMap::new();
    for launch in &launches {
        let (binary, args) = launch.command.split_first().expect("a command");
        assert_eq!(
            binary, "ebb",
            "{}: one binary runs every service",
            launch.service
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(
            args.get(..2),
            Some(&["service", launch.service][..]),
            "{launch:?}"
        );
        let env: Vec<(&str, String)> = launch
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .chain([("EBB_TOKEN", admin_token.to_owned())])
            .collect();
        // Faster rounds than production's, so the test takes seconds; and the listen address
        // the test harness would otherwise pick for a command line without --listen is the
        // one of the config file.
        let mut env = env;
        // Only what the deployment gives: the harness's own credentials must not fill a gap.
        for var in [
            "EBB_ADMIN_TOKEN",
            "EBB_AUTH__SERVICE_TOKEN",
            "EBB_ENCRYPTION__KEY",
        ] {
            if !launch.env.contains_key(var) {
                env.push((var, String::new()));
            }
        }
        env.push((
            "EBB_LISTEN",
            format!("127.0.0.1:{}", site.ports[launch.service]),
        ));
        if launch.service == "lifecycle" {
            env.push(("EBB_SNOOZE__LISTEN", "127.0.0.1:0".into()));
        }
        if launch.service == "scheduler" {
            env.extend(
                ebb_tests::cluster::fast_scheduler_env("unused")
                    .into_iter()
                    .filter(|(k, _)| *k != "EBB_LIFECYCLE_URL"),
            );
        }
        let process = Process::spawn("ebb", &args, &env, &site.dir)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", launch.service));
        process
            .wait_serving("")
            .await
            .unwrap_or_else(|e| panic!("{} is not SERVING: {e:#}", launch.service));
        processes.insert(launch.service, process);
    }
    let lifecycle = &processes["lifecycle"];
    let mut api = LifecycleServiceClient::new(lifecycle.channel_as(admin_token).await);
    let org = api
        .create_organization(pb::CreateOrganizationRequest {
            name: "deployed".into(),
            ..Default::default()
        })
        .await
        .expect("the admin token of the deployment creates an organization")
        .into_inner()
        .organization
        .expect("org");
    let project = api
        .create_project(pb::CreateProjectRequest {
            organization_id: org.id.clone(),
            name: "p".into(),
            ..Default::default()
        })
        .await
        .expect("project")
        .into_inner()
        .project
        .expect("project");
    let ws = ebb_tests::cluster::create_workspace(&mut api, &project.id, "w").await;
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: ws.id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(2))),
        ..Default::default()
    })
    .await
    .expect("schedule");
    let _runner = Process::spawn_worker(
        "ebb",
        &[
            "runner",
            "--lifecycle-url",
            &lifecycle.url(),
            "--organization-id",
            &org.id,
            "--simulate",
            "succeed",
            "--claim-wait",
            "1s",
        ],
        &[("EBB_TOKEN", admin_token.to_owned())],
        &site.dir,
    )
    .await
    .expect("ebb runner");
    eventually(
        WAIT,
        "the scheduler queued the destroy and it archived",
        || {
            let mut api = api.clone();
            let id = ws.id.clone();
            async move {
                let w = api
                    .get_workspace(pb::GetWorkspaceRequest { workspace_id: id })
                    .await
                    .ok()?
                    .into_inner()
                    .workspace?;
                (w.state == pb::WorkspaceState::Archived as i32).then_some(())
            }
        },
    )
    .await;
    // The outbox relay's token is accepted by audit-svc: the destroy is on the record.
    let audit = AuditServiceClient::new(processes["audit"].channel_as(admin_token).await);
    eventually(WAIT, "the archive relayed to audit", || {
        let mut audit = audit.clone();
        let org = org.id.clone();
        async move {
            let events = audit
                .list_events(audit_pb::ListEventsRequest {
                    organization_id: org,
                    action: "workspace.archived".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .events;
            (!events.is_empty()).then_some(())
        }
    })
    .await;
    for (_, p) in processes {
        p.kill().await;
    }
}

/// What `deploy/.env` holds after the one-liner at the top of compose.yaml.
fn compose_env() -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("EBB_ADMIN_TOKEN", "a".repeat(64)),
        ("EBB_SERVICE_TOKEN", "b".repeat(64)),
        (
            "EBB_ENCRYPTION_KEY",
            ebb_common::sealing::generate_key("k1"),
        ),
    ])
}

#[tokio::test]
async fn compose_runs_a_workspace_to_an_archived_destroy() {
    let mut dbs = TestDatabases::new();
    let site = Site::new(&mut dbs).await;
    let tokens = compose_env();
    let launches = compose(&site, &tokens);
    drive(launches, &site, &tokens["EBB_ADMIN_TOKEN"]).await;
}

#[tokio::test]
async fn compose_refuses_to_start_without_the_tokens() {
    let text = read("deploy/compose.yaml");
    let refused = interpolate(&text, &BTreeMap::new())
        .expect_err("compose.yaml must stop `up` without deploy/.env (${EBB_ADMIN_TOKEN:?…})");
    assert!(
        refused.starts_with("EBB_ADMIN_TOKEN: write deploy/.env first"),
        "{refused}"
    );
    assert!(interpolate(&text, &compose_env()).is_ok());
}

#[tokio::test]
async fn kubernetes_runs_a_workspace_to_an_archived_destroy() {
    let mut dbs = TestDatabases::new();
    let site = Site::new(&mut dbs).await;
    let launches = kubernetes(&site);
    let admin = launches
        .iter()
        .find(|l| l.service == "lifecycle")
        .and_then(|l| l.env.get("EBB_ADMIN_TOKEN").cloned())
        .expect("lifecycle gets EBB_ADMIN_TOKEN from the tokens Secret");
    drive(launches, &site, &admin).await;
}
