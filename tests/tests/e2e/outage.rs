//! A database outage as callers see it: lifecycle-svc on PostgreSQL through a TCP proxy that is
//! cut in the middle of a burst of calls and restored. Health turns NOT_SERVING within 5 s of
//! the cut and SERVING within 5 s of the return; calls during the cut fail fast with a
//! retryable code (never INTERNAL, never raw database text); and retrying every call with its
//! request id afterwards leaves each change made exactly once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_tests::cluster::fixture;
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_tests::{Process, TestDatabases, require_postgres};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A TCP proxy that can be cut (every connection closed, new ones refused) and restored.
struct Proxy {
    addr: std::net::SocketAddr,
    open: Arc<watch::Sender<bool>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(watch::channel(true).0);
        let state = open.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut open = state.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if !*open.borrow_and_update() {
                        return; // cut: the connection is closed at once
                    }
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = open.wait_for(|o| !*o) => {}
                    }
                });
            }
        });
        Self { addr, open }
    }

    fn set(&self, open: bool) {
        self.open.send_replace(open);
    }
}

async fn health(lifecycle: &Process) -> Option<i32> {
    health_at(&lifecycle.url()).await
}

async fn health_at(url: &str) -> Option<i32> {
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let ask = client.check(HealthCheckRequest {
        service: String::new(),
    });
    let answer = tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()?;
    answer.ok().map(|r| r.into_inner().status)
}

/// How long until lifecycle's health is `want`, polled every 100 ms for at most 10 s.
async fn time_until(lifecycle: &Process, want: ServingStatus) -> Duration {
    let start = Instant::now();
    while health(lifecycle).await != Some(want as i32) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "health did not become {want:?}; log:\n{}",
            lifecycle.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

fn create(project: &str, i: usize) -> pb::CreateWorkspaceRequest {
    pb::CreateWorkspaceRequest {
        request_id: format!("outage-{i}"),
        project_id: project.to_owned(),
        name: format!("ws-{i}"),
        ..Default::default()
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EBB_TEST_DATABASE_URL"]
async fn a_database_outage_is_not_serving_fails_fast_and_loses_nothing() {
    let server = require_postgres("the outage test");
    let mut dbs = TestDatabases::new();
    let url = dbs.create("outage_lifecycle").await;
    let host = server
        .split_once('@')
        .map_or("127.0.0.1:5432", |(_, rest)| {
            rest.split('/').next().unwrap_or(rest)
        });
    let proxy = Proxy::start(host.to_owned()).await;
    let proxied = url.replacen(host, &proxy.addr.to_string(), 1);
    let lifecycle = Process::spawn(
        "lifecycle-svc",
        &[],
        &[
            ("EBB_DATABASE_URL", proxied),
            ("EBB_MIN_INACTIVITY", "1s".into()),
        ],
        dbs.dir(),
    )
    .await
    .expect("lifecycle-svc");
    lifecycle.wait_serving("").await.expect("serving");
    let mut api = LifecycleServiceClient::new(lifecycle.channel().await);
    let f = fixture(&mut api, None, "before").await;

    // A burst of creations; the proxy is cut after the first ten and restored after five
    // more, each of which fails.
    const N: usize = 20;
    let mut made = BTreeSet::new();
    let mut failed = Vec::new();
    let mut watcher = None;
    for i in 0..N {
        if i == 10 {
            proxy.set(false);
            // Health is watched while the calls go on.
            let process_url = lifecycle.url();
            let cut = Instant::now();
            watcher = Some(tokio::spawn(async move {
                while health_at(&process_url).await != Some(ServingStatus::NotServing as i32) {
                    if cut.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                cut.elapsed()
            }));
        }
        if i == 15 {
            let after_cut = watcher.take().expect("watching").await.expect("watcher");
            eprintln!("NOT_SERVING {after_cut:?} after the cut");
            assert!(
                after_cut <= Duration::from_secs(5),
                "NOT_SERVING only {after_cut:?} after the cut"
            );
            proxy.set(true);
            let back = time_until(&lifecycle, ServingStatus::Serving).await;
            eprintln!("SERVING {back:?} after the return");
            assert!(
                back <= Duration::from_secs(5),
                "SERVING {back:?} after the return"
            );
        }
        let started = Instant::now();
        match api.create_workspace(create(&f.project.id, i)).await {
            Ok(r) => {
                made.insert(r.into_inner().workspace.expect("ws").id);
            }
            Err(status) => {
                assert!(
                    matches!(status.code(), Code::Unavailable | Code::Aborted),
                    "call {i} during the outage: {status:?}"
                );
                assert!(
                    status.message().contains("database unavailable (ref ")
                        || status.message().contains("retry (ref "),
                    "raw database text reached the caller: {status:?}"
                );
                assert!(
                    started.elapsed() < Duration::from_secs(6),
                    "call {i} took {:?} to fail",
                    started.elapsed()
                );
                failed.push(i);
            }
        }
    }
    assert!(
        (10..15).all(|i| failed.contains(&i)),
        "every call during the cut fails: {failed:?}"
    );

    // Every call retried with its request id: each workspace exists exactly once.
    for i in 0..N {
        let mut attempt = 0;
        let ws = loop {
            match api.create_workspace(create(&f.project.id, i)).await {
                Ok(r) => break r.into_inner().workspace.expect("ws"),
                Err(s) if matches!(s.code(), Code::Unavailable | Code::Aborted) && attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(s) => panic!("retry of call {i}: {s:?}"),
            }
        };
        made.insert(ws.id);
    }
    let listed = api
        .list_workspaces(pb::ListWorkspacesRequest {
            organization_id: f.org.id.clone(),
            project_id: f.project.id.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .workspaces;
    let names: BTreeSet<String> = listed.iter().map(|w| w.name.clone()).collect();
    assert_eq!(
        listed.len(),
        N + 1,
        "one workspace per request id, plus the fixture's"
    );
    assert_eq!(names.len(), N + 1, "no name twice");
    assert_eq!(
        made.len(),
        N,
        "a retried call answers the workspace it made"
    );
    lifecycle.kill().await;
}
