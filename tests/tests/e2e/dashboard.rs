//! The gRPC series follow the grpc-ecosystem layout, the process series and `ebb_build_info`
//! are served, and every series the Grafana dashboard in deploy/grafana/ebb.json queries is in
//! a live `ebb serve`'s scrape after some calls.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{ebb_serve, repo_file};
use ebb_tests::cluster::{eventually, fixture};
use ebb_tests::proto::audit::v1 as apb;
use ebb_tests::proto::audit::v1::audit_service_client::AuditServiceClient;
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_tests::{Scrape, TestDatabases};

/// PromQL aggregations, which may be followed by `by (...)` before their argument.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// PromQL words that are not metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
];

/// The metric names a PromQL expression selects: identifiers outside label matchers, ranges,
/// strings and grouping clauses that are neither function calls nor keywords.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // Skips from an opening bracket to its match.
    let skip_group = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < chars.len() {
            if chars[i] == '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            } else if chars[i] == open {
                depth += 1;
            } else if chars[i] == close {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '"' {
            i = skip_group(i, '"', '"');
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next] == ' ' {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if KEYWORDS.contains(&word.as_str()) {
                if call {
                    i = skip_group(next, '(', ')');
                }
            } else if !call && !word.starts_with('$') && !AGGREGATIONS.contains(&word.as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every PromQL expression of the dashboard's panels (rows included).
fn dashboard_queries() -> Vec<String> {
    let path = repo_file("deploy/grafana/ebb.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push(expr.to_owned());
            }
        }
    }
    exprs
}

#[test]
fn promql_names_are_found_and_the_rest_is_not() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, grpc_service) (rate(grpc_server_handling_seconds_bucket{job=~"$job", grpc_type="unary"}[$__rate_interval])))"#
        ),
        ["grpc_server_handling_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            "sum by (s) (grpc_server_started_total) - sum by (s) (grpc_server_handled_total{c!=\"OK\"})"
        ),
        ["grpc_server_started_total", "grpc_server_handled_total"]
    );
    assert_eq!(
        metric_names("time() - process_start_time_seconds offset 5m"),
        ["process_start_time_seconds"]
    );
}

#[tokio::test]
async fn the_dashboard_queries_only_series_ebb_serve_serves() {
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 20,
        "the dashboard has its panels: {queries:?}"
    );
    let queried: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    for family in ["grpc_server_", "grpc_client_", "process_", "ebb_build_info"] {
        assert!(
            queried.iter().any(|n| n.starts_with(family)),
            "the dashboard shows {family}*: {queried:?}"
        );
    }

    let dbs = TestDatabases::new();
    let (server, _) = ebb_serve(&dbs, &[]).await;
    let channel = server.channel().await;
    let mut api = LifecycleServiceClient::new(channel.clone());
    let f = fixture(&mut api, None, "dashboard").await;
    let refused = api
        .get_workspace(pb::GetWorkspaceRequest {
            workspace_id: "not-a-uuid".into(),
        })
        .await
        .expect_err("a malformed id is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // A server stream, read to its end once the organization's events are recorded.
    let audit = AuditServiceClient::new(channel);
    let org = f.org.id.clone();
    eventually(Duration::from_secs(10), "an exported chain", || {
        let mut audit = audit.clone();
        let org = org.clone();
        async move {
            let mut stream = audit
                .export_events(apb::ExportEventsRequest {
                    organization_id: org,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            let mut events = 0;
            while let Some(chunk) = stream.message().await.ok()? {
                events += chunk.events.len();
            }
            (events > 0).then_some(())
        }
    })
    .await;

    let scrape = server.scrape().await.expect("scrape");
    let missing: Vec<&String> = queried.iter().filter(|name| !scrape.has(name)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries series that `ebb serve` does not serve: {missing:?}"
    );
    check_layout(&scrape);
}

/// The series of the calls above, by the grpc-ecosystem labels, and the process series.
fn check_layout(scrape: &Scrape) {
    let lifecycle = |method: &'static str, code: &'static str| {
        [
            ("grpc_service", "ebb.lifecycle.v1.LifecycleService"),
            ("grpc_method", method),
            ("grpc_type", "unary"),
            ("grpc_code", code),
        ]
    };
    for (method, code) in [
        ("CreateOrganization", "OK"),
        ("GetWorkspace", "InvalidArgument"),
    ] {
        let handled = scrape.value("grpc_server_handled_total", &lifecycle(method, code));
        assert_eq!(handled, Some(1.0), "{method} {code}");
        let started = scrape.value("grpc_server_started_total", &lifecycle(method, code)[..3]);
        assert!(started >= Some(1.0), "{method} started");
        let timed = scrape.value(
            "grpc_server_handling_seconds_count",
            &lifecycle(method, code)[..3],
        );
        assert!(timed >= Some(1.0), "{method} timed");
    }
    let export = [
        ("grpc_service", "ebb.audit.v1.AuditService"),
        ("grpc_method", "ExportEvents"),
        ("grpc_type", "server_stream"),
        ("grpc_code", "OK"),
    ];
    assert!(scrape.value("grpc_server_handled_total", &export) >= Some(1.0));
    // The scheduler's calls to lifecycle, from the client's side.
    let queue_due = [
        ("grpc_service", "ebb.lifecycle.v1.SchedulingService"),
        ("grpc_method", "QueueDueWorkspaces"),
        ("grpc_type", "unary"),
        ("grpc_code", "OK"),
    ];
    assert!(scrape.value("grpc_client_handled_total", &queue_due) >= Some(1.0));
    // The old layout is gone.
    assert!(
        !scrape
            .series
            .iter()
            .any(|(n, l, _)| n.starts_with("grpc_") && l.contains_key("method")),
        "no gRPC series keeps the single `method` label"
    );

    let value = |name: &str| scrape.value(name, &[]).unwrap_or_else(|| panic!("{name}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        started <= now && now - started < 600.0,
        "the process started moments ago: {started} (now {now})"
    );
    assert!(value("process_resident_memory_bytes") > 1e6);
    let (open, max) = (value("process_open_fds"), value("process_max_fds"));
    assert!(open > 0.0 && open < max, "{open} of {max} descriptors");
    assert!(value("process_cpu_seconds_total") >= 0.0);
    let build = scrape
        .series
        .iter()
        .find(|(n, _, _)| n == "ebb_build_info")
        .expect("ebb_build_info");
    assert_eq!(build.2, 1.0);
    assert_eq!(
        build.1.get("version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let commit = build.1.get("commit").expect("a commit label");
    assert!(
        !commit.is_empty() && commit.chars().all(|c| c.is_ascii_alphanumeric()),
        "commit: {commit:?}"
    );
}
