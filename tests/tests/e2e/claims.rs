//! Runners that take several runs per call: `ClaimRuns`, and `ebb runner --parallel`, which
//! fills its free slots with it.

use std::time::Duration;

use crate::support::{number, violations};
use ebb_tests::Process;
use ebb_tests::cluster::{Cluster, create_workspace, events, eventually, fixture, secs};
use ebb_tests::proto::lifecycle::v1 as pb;
use sea_orm::{FromQueryResult, Statement};
use tonic::Code;

/// Queues a destroy run on each of `n` new workspaces of `project`, oldest first.
async fn queue_runs(
    api: &mut ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient<
        ebb_tests::Channel,
    >,
    project: &str,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let ws = create_workspace(api, project, &format!("{prefix}-{i}")).await;
        let run = api
            .create_run(pb::CreateRunRequest {
                workspace_id: ws.id,
                is_destroy: true,
                auto_apply: true,
                ..Default::default()
            })
            .await
            .expect("queue a run")
            .into_inner()
            .run
            .expect("the run");
        ids.push(run.id);
    }
    ids
}

/// Starts `ebb runner` as `runner_id` on `org`, simulating runs of `duration` that succeed,
/// `parallel` at a time, with `extra` flags.
async fn start_runner(
    cluster: &Cluster,
    org: &str,
    runner_id: &str,
    duration: &str,
    parallel: u32,
    extra: &[&str],
) -> Process {
    let (server, parallel) = (cluster.lifecycle.url(), parallel.to_string());
    let mut args = vec![
        "runner",
        "--server",
        &server,
        "--org",
        org,
        "--runner-id",
        runner_id,
        "--simulate",
        "succeed",
        "--simulate-duration",
        duration,
        "--claim-wait",
        "1s",
        "--parallel",
        &parallel,
    ];
    args.extend(extra);
    Process::spawn_worker("ebb", &args, &[], cluster.dbs.dir())
        .await
        .expect("ebb runner")
}

#[tokio::test]
async fn claim_runs_takes_the_oldest_runs_at_once_each_under_a_lease_of_its_own() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "first").await;
    let queued = queue_runs(&mut api, &f.project.id, "batch", 5).await;
    let mut runner = cluster.runner().await;
    let claim = |max_runs: i32| pb::ClaimRunsRequest {
        organization_id: f.org.id.clone(),
        runner_id: "batch-runner".into(),
        wait: None,
        max_runs,
    };

    // Three of five, oldest first, then the other two, then none.
    let first = runner
        .claim_runs(claim(3))
        .await
        .expect("claim three")
        .into_inner();
    assert!(first.lease_duration.is_some());
    let runs: Vec<&pb::Run> = first.claims.iter().filter_map(|c| c.run.as_ref()).collect();
    let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        queued[..3].iter().map(String::as_str).collect::<Vec<_>>()
    );
    for run in &runs {
        assert_eq!(run.status, pb::RunStatus::Running as i32);
        assert_eq!(run.runner_id, "batch-runner");
        assert_eq!(run.attempt, 1);
    }
    let tokens: std::collections::HashSet<&str> = first
        .claims
        .iter()
        .map(|c| c.lease_token.as_str())
        .collect();
    assert_eq!(tokens.len(), 3, "a token of its own per run");
    assert!(!tokens.contains(""));
    let rest = runner
        .claim_runs(claim(10))
        .await
        .expect("claim the rest")
        .into_inner();
    let rest_ids: Vec<String> = rest
        .claims
        .iter()
        .filter_map(|c| c.run.as_ref().map(|r| r.id.clone()))
        .collect();
    assert_eq!(rest_ids, queued[3..].to_vec());
    let none = runner
        .claim_runs(claim(10))
        .await
        .expect("nothing left")
        .into_inner();
    assert!(none.claims.is_empty());

    // Each token fences its own run only.
    let (a, b) = (&first.claims[0], &first.claims[1]);
    let (run_a, run_b) = (a.run.as_ref().expect("a"), b.run.as_ref().expect("b"));
    let err = runner
        .heartbeat_run(pb::HeartbeatRunRequest {
            run_id: run_a.id.clone(),
            lease_token: b.lease_token.clone(),
        })
        .await
        .expect_err("another run's token");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    runner
        .heartbeat_run(pb::HeartbeatRunRequest {
            run_id: run_a.id.clone(),
            lease_token: a.lease_token.clone(),
        })
        .await
        .expect("its own token");
    let err = runner
        .complete_run(pb::CompleteRunRequest {
            run_id: run_b.id.clone(),
            lease_token: a.lease_token.clone(),
            outcome: pb::RunOutcome::Succeeded as i32,
            request_id: "wrong-token".into(),
            ..Default::default()
        })
        .await
        .expect_err("completing with another run's token");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let done = runner
        .complete_run(pb::CompleteRunRequest {
            run_id: run_a.id.clone(),
            lease_token: a.lease_token.clone(),
            outcome: pb::RunOutcome::Succeeded as i32,
            request_id: "right-token".into(),
            ..Default::default()
        })
        .await
        .expect("completing with its token")
        .into_inner()
        .run
        .expect("run");
    assert_eq!(done.status, pb::RunStatus::Succeeded as i32);
    let sql = cluster.lifecycle_sql().await;
    #[derive(FromQueryResult)]
    struct Status {
        status: String,
    }
    let b_now = Status::find_by_statement(Statement::from_sql_and_values(
        sql.get_database_backend(),
        "SELECT status FROM runs WHERE id = $1",
        [run_b.id.clone().into()],
    ))
    .one(&sql)
    .await
    .expect("read")
    .expect("run b");
    assert_eq!(
        b_now.status, "running",
        "a refused completion changes nothing"
    );

    // One claim event per run, naming the runner.
    let claimed = events(&mut api, &f.org.id, "run.claimed").await;
    assert_eq!(claimed.len(), 5);
    assert!(claimed.iter().all(|e| e.actor == "runner:batch-runner"));

    // Bad input names its field; an unknown organization is not waited on.
    for (request, field) in [
        (claim(0), "max_runs"),
        (claim(101), "max_runs"),
        (
            pb::ClaimRunsRequest {
                wait: Some(secs(61)),
                ..claim(1)
            },
            "wait",
        ),
        (
            pb::ClaimRunsRequest {
                runner_id: String::new(),
                ..claim(1)
            },
            "runner_id",
        ),
    ] {
        let err = runner
            .claim_runs(request)
            .await
            .expect_err("bad input is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(violations(&err), vec![field.to_owned()]);
    }
    let err = runner
        .claim_runs(pb::ClaimRunsRequest {
            organization_id: uuid::Uuid::new_v4().to_string(),
            wait: Some(secs(5)),
            ..claim(2)
        })
        .await
        .expect_err("an unknown organization");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn ebb_runner_carries_out_as_many_runs_side_by_side_as_it_is_told() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "first").await;
    let queued = queue_runs(&mut api, &f.project.id, "side", 7).await;
    // Three slots, runs of 1.5 s each, seven runs: 3 + 3 + 1.
    let mut runner = start_runner(
        &cluster,
        &f.org.id,
        "three-slots",
        "1500ms",
        3,
        &["--max-runs", "7"],
    )
    .await;
    let sql = cluster.lifecycle_sql().await;
    #[derive(FromQueryResult, Debug)]
    struct Span {
        id: String,
        claimed_at: i64,
        finished_at: Option<i64>,
        status: String,
    }
    let spans = eventually(Duration::from_secs(60), "every run finished", || {
        let sql = &sql;
        async move {
            let spans = Span::find_by_statement(Statement::from_string(
                sql.get_database_backend(),
                "SELECT id, claimed_at, finished_at, status FROM runs WHERE runner_id = 'three-slots'",
            ))
            .all(sql)
            .await
            .expect("read runs");
            (spans.len() == 7 && spans.iter().all(|s| s.finished_at.is_some())).then_some(spans)
        }
    })
    .await;
    let mut ids: Vec<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    let mut expected: Vec<&str> = queued.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "each run once");
    assert!(spans.iter().all(|s| s.status == "succeeded"), "{spans:?}");
    // The most runs under way at one moment: three, never more.
    let most = spans
        .iter()
        .map(|s| {
            spans
                .iter()
                .filter(|o| {
                    o.claimed_at <= s.claimed_at && o.finished_at.unwrap_or(i64::MAX) > s.claimed_at
                })
                .count()
        })
        .max()
        .unwrap_or(0);
    assert_eq!(most, 3, "three slots: {spans:?}");
    // Runs that ended together were completed together: fewer calls than runs.
    let scrape = cluster
        .lifecycle
        .scrape()
        .await
        .expect("scrape lifecycle-svc");
    let calls = |method: &str| {
        scrape
            .value(
                "grpc_server_handled_total",
                &[("grpc_method", method), ("grpc_code", "OK")],
            )
            .unwrap_or(0.0)
    };
    let (one, several) = (calls("CompleteRun"), calls("CompleteRuns"));
    assert!(
        several >= 1.0 && one + several < 7.0,
        "{one} CompleteRun and {several} CompleteRuns calls for seven runs"
    );
    // It stops by itself after --max-runs.
    let status = runner
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the runner exits after --max-runs");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn ebb_runner_finishes_the_runs_it_holds_on_sigterm_and_takes_no_more() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "first").await;
    queue_runs(&mut api, &f.project.id, "drain", 4).await;
    let mut runner = start_runner(&cluster, &f.org.id, "draining", "2s", 2, &[]).await;
    let sql = cluster.lifecycle_sql().await;
    #[derive(FromQueryResult, Debug, PartialEq)]
    struct Count {
        status: String,
        n: i64,
    }
    let count = || {
        let sql = &sql;
        async move {
            Count::find_by_statement(Statement::from_string(
                sql.get_database_backend(),
                "SELECT status, count(*) AS n FROM runs GROUP BY status ORDER BY status",
            ))
            .all(sql)
            .await
            .expect("count runs")
        }
    };
    eventually(Duration::from_secs(20), "two runs under way", || async {
        count()
            .await
            .iter()
            .any(|c| c.status == "running" && c.n == 2)
            .then_some(())
    })
    .await;
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    let status = runner
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the runner exits once its runs are done");
    assert!(status.success(), "{status:?}");
    let by_status = count().await;
    assert_eq!(
        by_status,
        vec![
            Count {
                status: "queued".into(),
                n: 2
            },
            Count {
                status: "succeeded".into(),
                n: 2
            },
        ],
        "the two held runs finished; no more were taken"
    );
    let log = runner.log_text();
    assert_eq!(
        log.matches("shutting down: letting the run finish").count(),
        2,
        "said once per run: {log}"
    );
}

#[tokio::test]
async fn complete_runs_ends_several_runs_in_one_call_all_or_none() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "first").await;
    queue_runs(&mut api, &f.project.id, "together", 4).await;
    let mut runner = cluster.runner().await;
    let claims = runner
        .claim_runs(pb::ClaimRunsRequest {
            organization_id: f.org.id.clone(),
            runner_id: "batch-runner".into(),
            wait: None,
            max_runs: 4,
        })
        .await
        .expect("claim four")
        .into_inner()
        .claims;
    assert_eq!(claims.len(), 4);
    let run = |i: usize| claims[i].run.clone().expect("run");
    let done = |i: usize, outcome: pb::RunOutcome| pb::RunCompletion {
        run_id: run(i).id,
        lease_token: claims[i].lease_token.clone(),
        outcome: outcome as i32,
        ..Default::default()
    };
    let sql = cluster.lifecycle_sql().await;
    let running = || number(&sql, "SELECT count(*) FROM runs WHERE status = 'running'");

    // One lost lease refuses the whole call, naming the completion; nothing is completed.
    let err = runner
        .complete_runs(pb::CompleteRunsRequest {
            request_id: "wrong-token".into(),
            completions: vec![
                done(0, pb::RunOutcome::Succeeded),
                pb::RunCompletion {
                    lease_token: claims[2].lease_token.clone(),
                    ..done(1, pb::RunOutcome::Succeeded)
                },
            ],
        })
        .await
        .expect_err("another run's token");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("completions[1]"), "{err:?}");
    assert!(err.message().contains(&run(1).id), "{err:?}");
    assert_eq!(running().await, 4, "a refused call changes nothing");

    // Three at once, answered in the order asked, each with its own outcome.
    let request = pb::CompleteRunsRequest {
        request_id: "three".into(),
        completions: vec![
            done(2, pb::RunOutcome::Succeeded),
            pb::RunCompletion {
                exit_code: 3,
                output_tail: "boom\n".into(),
                ..done(0, pb::RunOutcome::Failed)
            },
            done(1, pb::RunOutcome::Succeeded),
        ],
    };
    let ended = runner
        .complete_runs(request.clone())
        .await
        .expect("complete three")
        .into_inner()
        .runs;
    let seen: Vec<(String, i32, i32)> = ended
        .iter()
        .map(|r| (r.id.clone(), r.status, r.exit_code))
        .collect();
    assert_eq!(
        seen,
        vec![
            (run(2).id, pb::RunStatus::Succeeded as i32, 0),
            (run(0).id, pb::RunStatus::Failed as i32, 3),
            (run(1).id, pb::RunStatus::Succeeded as i32, 0),
        ]
    );
    assert_eq!(ended[1].output_tail, "boom\n");
    assert_eq!(running().await, 1);
    // The same request again answers the same and changes nothing.
    let again = runner
        .complete_runs(request)
        .await
        .expect("the same request again")
        .into_inner()
        .runs;
    assert_eq!(again, ended);
    let completed = events(&mut api, &f.org.id, "run.completed").await;
    assert_eq!(completed.len(), 3, "one event per run, once");
    assert!(completed.iter().all(|e| e.actor == "runner:batch-runner"));
    // A run completed by the call cannot be completed again.
    let err = runner
        .complete_runs(pb::CompleteRunsRequest {
            request_id: "late".into(),
            completions: vec![
                done(3, pb::RunOutcome::Succeeded),
                done(2, pb::RunOutcome::Succeeded),
            ],
        })
        .await
        .expect_err("a completed run");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("completions[1]"), "{err:?}");
    assert_eq!(running().await, 1, "the fourth stays running");

    // Bad input names its field.
    let unknown = |i: usize| pb::RunCompletion {
        run_id: uuid::Uuid::new_v4().to_string(),
        lease_token: format!("token-{i}"),
        outcome: pb::RunOutcome::Succeeded as i32,
        ..Default::default()
    };
    for (completions, field) in [
        (vec![], "completions"),
        ((0..101).map(unknown).collect(), "completions"),
        (
            vec![
                done(3, pb::RunOutcome::Succeeded),
                done(3, pb::RunOutcome::Failed),
            ],
            "completions[1].run_id",
        ),
        (
            vec![pb::RunCompletion {
                outcome: 0,
                ..done(3, pb::RunOutcome::Succeeded)
            }],
            "completions[0].outcome",
        ),
        (
            vec![
                unknown(0),
                pb::RunCompletion {
                    lease_token: String::new(),
                    ..done(3, pb::RunOutcome::Succeeded)
                },
            ],
            "completions[1].lease_token",
        ),
    ] {
        let err = runner
            .complete_runs(pb::CompleteRunsRequest {
                request_id: String::new(),
                completions,
            })
            .await
            .expect_err("bad input is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(violations(&err), vec![field.to_owned()]);
    }
    // An unknown run is not found, by its id.
    let ghost = unknown(7);
    let err = runner
        .complete_runs(pb::CompleteRunsRequest {
            request_id: String::new(),
            completions: vec![done(3, pb::RunOutcome::Succeeded), ghost.clone()],
        })
        .await
        .expect_err("an unknown run");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&ghost.run_id), "{err:?}");
    assert_eq!(running().await, 1);
}
