//! docs/runbook.md works: every ```sh block of it runs, in order, with real grpcurl against a
//! live `ebb serve`, and each answer contains the fragments its `# expect:` lines name.
//!
//! Annotations (comment lines inside a block):
//! * `# expect: FRAGMENT` — stdout must contain FRAGMENT (after `$VAR` substitution);
//! * `# sets: NAME=a.b.0.c` — the answer's JSON value at that path becomes `$NAME` for the
//!   following blocks;
//! * `# retry: 30s` — repeat the command until the fragments appear, for at most that long.
//!
//! A block of nothing but `export NAME=...` lines tells the operator which variables to set;
//! the test provides those itself (EBB_ADDR, EBB_TOKEN, HOOK_URL) and checks it knows each.
//! Blocks run under `bash -euo pipefail`, so an unset variable fails the step.
//!
//! The webhook behind `$HOOK_URL` is a small receiver in this test: it accepts verification
//! messages and answers 410 Gone to deliveries until it has been verified twice (the
//! runbook's "fix the receiver, verify again, redeliver" story), then accepts everything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{ebb_serve, read_request, repo_file};
use ebb_tests::TestDatabases;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::process::Command;

/// One ```sh block of the runbook.
#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    script: String,
    expects: Vec<String>,
    sets: Vec<(String, String)>,
    retry: Option<Duration>,
    /// Names of a block made only of `export NAME=...` lines.
    exports: Option<Vec<String>>,
}

fn parse_runbook(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if line.trim_end() != "```sh" {
            continue;
        }
        let mut body = Vec::new();
        for (_, l) in lines.by_ref() {
            if l.trim_end() == "```" {
                break;
            }
            body.push(l);
        }
        let mut block = Block {
            line: i + 1,
            script: body.join("\n"),
            expects: Vec::new(),
            sets: Vec::new(),
            retry: None,
            exports: None,
        };
        for l in &body {
            let l = l.trim();
            if let Some(f) = l.strip_prefix("# expect:") {
                block.expects.push(f.trim().to_owned());
            } else if let Some(s) = l.strip_prefix("# sets:") {
                let (name, path) = s
                    .trim()
                    .split_once('=')
                    .unwrap_or_else(|| panic!("runbook.md:{}: bad `# sets:` {s}", i + 1));
                block
                    .sets
                    .push((name.trim().to_owned(), path.trim().to_owned()));
            } else if let Some(r) = l.strip_prefix("# retry:") {
                let r = r.trim();
                let secs: u64 = r
                    .strip_suffix('s')
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("runbook.md:{}: bad `# retry:` {r}", i + 1));
                block.retry = Some(Duration::from_secs(secs));
            }
        }
        let code: Vec<&str> = body
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if !code.is_empty() && code.iter().all(|l| l.starts_with("export ")) {
            block.exports = Some(
                code.iter()
                    .map(|l| {
                        l["export ".len()..]
                            .split('=')
                            .next()
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .collect(),
            );
        }
        blocks.push(block);
    }
    blocks
}

/// `text` with `$NAME` and `${NAME}` replaced by known values.
fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = text.to_owned();
    // Longest names first, so `$WS` never eats the start of a longer name.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out
            .replace(&format!("${{{name}}}"), &vars[name])
            .replace(&format!("${name}"), &vars[name]);
    }
    out
}

/// The JSON value at a dotted path (`runs.0.id`), as a string.
fn json_path(answer: &str, path: &str) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_str(answer).ok()?;
    for part in path.split('.') {
        v = match part.parse::<usize>() {
            Ok(i) => v.get(i)?.clone(),
            Err(_) => v.get(part)?.clone(),
        };
    }
    match v {
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// A webhook receiver: 200 to verification messages; 410 Gone to deliveries until it has been
/// verified twice, 200 after. Returns its URL.
async fn webhook_receiver() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let verifications = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let verifications = verifications.clone();
            tokio::spawn(async move {
                let Ok(Some(request)) = read_request(&mut conn, &mut Vec::new()).await else {
                    return;
                };
                let body = String::from_utf8_lossy(&request.body);
                let status = if body.contains("notification.verification") {
                    verifications.fetch_add(1, Ordering::SeqCst);
                    "200 OK"
                } else if verifications.load(Ordering::SeqCst) >= 2 {
                    "200 OK"
                } else {
                    "410 Gone"
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\
                     connection: close\r\n\r\nok"
                );
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    format!("http://{addr}/ebb")
}

/// Runs one block once: (success, stdout, stderr).
async fn run_block(script: &str, vars: &BTreeMap<String, String>) -> (bool, String, String) {
    let mut cmd = Command::new("bash");
    cmd.env(
        "PATH",
        crate::tools::path_with(&[crate::tools::python_bin().await]),
    )
    .arg("-c")
    .arg(format!("set -euo pipefail\n{script}"))
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    match tokio::time::timeout(Duration::from_secs(60), cmd.output()).await {
        Ok(Ok(out)) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => (false, String::new(), format!("cannot run bash: {e}")),
        Err(_) => (false, String::new(), "timed out after 60s".to_owned()),
    }
}

#[tokio::test]
async fn every_runbook_command_answers_as_documented() {
    let grpcurl = crate::tools::grpcurl().await;
    let version = Command::new(&grpcurl).arg("-version").output().await;
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "{} does not run",
        grpcurl.display()
    );
    let text = std::fs::read_to_string(repo_file("docs/runbook.md")).expect("docs/runbook.md");
    let blocks = parse_runbook(&text);
    assert!(
        blocks.len() >= 30,
        "only {} sh blocks found in docs/runbook.md",
        blocks.len()
    );

    let token = format!("ebb-test-{}", uuid::Uuid::new_v4().simple());
    let dbs = TestDatabases::on(None);
    let (server, _) = ebb_serve(
        &dbs,
        &[
            ("EBB_ADMIN_TOKEN", token.clone()),
            // The test's webhook receiver listens on loopback.
            ("EBB_NOTIFIER__EGRESS__ALLOW_LOOPBACK", "true".to_owned()),
        ],
    )
    .await;

    let mut vars = BTreeMap::from([
        ("EBB_ADDR".to_owned(), server.addr.to_string()),
        ("EBB_TOKEN".to_owned(), token),
        ("HOOK_URL".to_owned(), webhook_receiver().await),
    ]);
    let mut ran = 0;
    for block in &blocks {
        let at = format!("docs/runbook.md:{}", block.line);
        if let Some(names) = &block.exports {
            for name in names {
                assert!(
                    vars.contains_key(name),
                    "{at}: the test does not provide ${name}"
                );
            }
            continue;
        }
        assert!(!block.expects.is_empty(), "{at}: no `# expect:` line");
        if block.script.contains("grpcurl ") {
            assert!(
                block
                    .script
                    .contains(r#"-H "authorization: Bearer $EBB_TOKEN""#),
                "{at}: every grpcurl call must send the token"
            );
        }
        let expects: Vec<String> = block.expects.iter().map(|e| substitute(e, &vars)).collect();
        let deadline = Instant::now() + block.retry.unwrap_or_default();
        let stdout = loop {
            let (ok, stdout, stderr) = run_block(&block.script, &vars).await;
            let missing: Vec<&String> = expects.iter().filter(|e| !stdout.contains(*e)).collect();
            if ok && missing.is_empty() {
                break stdout;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{at}: {}\n--- command\n{}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- ebb serve log\n{}",
                    if ok {
                        format!("the answer lacks {missing:?}")
                    } else {
                        "the command failed".to_owned()
                    },
                    block.script,
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        for (name, path) in &block.sets {
            let value = json_path(&stdout, path).unwrap_or_else(|| {
                panic!("{at}: `# sets: {name}={path}`: no such field in\n{stdout}")
            });
            vars.insert(name.clone(), value);
        }
        ran += 1;
    }
    assert!(ran >= 28, "only {ran} runbook commands ran");
    server.kill().await;
}
