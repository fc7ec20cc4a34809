//! Reads under load: GetWorkspace calls that arrive together share statements, and each call
//! still gets its own workspace, as it was when the call was made.

use ebb_tests::Process;
use ebb_tests::cluster::{Cluster, create_workspace, fixture};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;

/// `ebb_coalesced_reads_total` and `ebb_coalesced_statements_total` of workspace reads.
async fn coalesced(lifecycle: &Process) -> (f64, f64) {
    let scrape = lifecycle.scrape().await.expect("scrape");
    let kind = [("kind", "workspace")];
    (
        scrape
            .value("ebb_coalesced_reads_total", &kind)
            .unwrap_or(0.0),
        scrape
            .value("ebb_coalesced_statements_total", &kind)
            .unwrap_or(0.0),
    )
}

#[tokio::test]
async fn workspace_reads_arriving_together_share_statements_and_each_gets_its_own() {
    let cluster = Cluster::start(0).await;
    let mut api = LifecycleServiceClient::new(cluster.lifecycle.channel().await);
    let f = fixture(&mut api, None, "w0").await;
    let mut workspaces = vec![f.workspace.clone()];
    for i in 1..40 {
        workspaces.push(create_workspace(&mut api, &f.project.id, &format!("w{i}")).await);
    }
    // A change committed just before the calls: every call that reads it sees it.
    let locked = api
        .lock_workspace(pb::LockWorkspaceRequest {
            workspace_id: workspaces[7].id.clone(),
            reason: "maintenance".into(),
            ..Default::default()
        })
        .await
        .expect("lock a workspace")
        .into_inner()
        .workspace
        .expect("the workspace");
    assert!(locked.locked);
    workspaces[7] = locked;

    let (reads_before, statements_before) = coalesced(&cluster.lifecycle).await;
    let missing = uuid::Uuid::now_v7().to_string();
    let mut calls = Vec::new();
    for c in 0..8 {
        let api = LifecycleServiceClient::new(cluster.lifecycle.channel().await);
        for s in 0..64 {
            let mut api = api.clone();
            let asked = if (c, s) == (3, 17) {
                None
            } else {
                Some(workspaces[(c * 64 + s) % workspaces.len()].clone())
            };
            let id = asked.as_ref().map_or(missing.clone(), |w| w.id.clone());
            calls.push(tokio::spawn(async move {
                let answer = api
                    .get_workspace(pb::GetWorkspaceRequest { workspace_id: id })
                    .await;
                (asked, answer)
            }));
        }
    }
    let n = calls.len() as f64;
    for call in calls {
        let (asked, answer) = call.await.expect("call task");
        match asked {
            Some(w) => {
                let got = answer
                    .unwrap_or_else(|s| panic!("GetWorkspace {}: {s:?}", w.id))
                    .into_inner()
                    .workspace
                    .expect("the workspace");
                assert_eq!(
                    (got.id.as_str(), got.name.as_str(), got.locked),
                    (w.id.as_str(), w.name.as_str(), w.locked),
                    "each call answers its own workspace as it is"
                );
            }
            None => {
                let status = answer.expect_err("no such workspace");
                assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
                assert!(status.message().contains(&missing), "{status:?}");
            }
        }
    }
    let (reads, statements) = coalesced(&cluster.lifecycle).await;
    let (reads, statements) = (reads - reads_before, statements - statements_before);
    assert_eq!(reads, n, "every call is one read");
    assert!(
        statements >= 1.0 && statements < reads,
        "{reads} reads arriving together share statements, yet took {statements}"
    );
}
