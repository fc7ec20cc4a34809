//! What several areas need: files of the repository, `ebb serve` on a fresh data directory,
//! running a command to its end, and reading the HTTP requests that Ebb sends to the
//! receivers the tests stand up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ebb_tests::{Process, TestDatabases};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `path`, relative to the repository's root.
pub fn repo_file(path: &str) -> PathBuf {
    repo_root().join(path)
}

/// `ebb serve` on a fresh data directory in `dbs` with `env`, once it serves; the data
/// directory too.
pub async fn ebb_serve(dbs: &TestDatabases, env: &[(&str, String)]) -> (Process, PathBuf) {
    let data = dbs.dir().join("data");
    let server = Process::spawn(
        "ebb",
        &["serve", "--data-dir", data.to_str().expect("utf-8 path")],
        env,
        dbs.dir(),
    )
    .await
    .expect("ebb serve");
    server.wait_serving("").await.expect("serving");
    (server, data)
}

/// Runs `cmd` (no standard input) to completion within `limit`, returning its output;
/// panics naming `what` if it cannot start or does not finish in time.
pub async fn output(what: &str, cmd: &mut tokio::process::Command, limit: Duration) -> Output {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{what}: cannot start: {e}"),
        Err(_) => panic!("{what}: did not finish within {limit:?}"),
    }
}

/// Exit code, stdout and stderr of a finished command, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One HTTP/1.1 request as a test's receiver got it.
pub struct HttpRequest {
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads the next request of a connection: its head, then as much body as `Content-Length`
/// says. Bytes past it stay in `buf` for the next request; `None` once the peer closed
/// before a whole request.
pub async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<HttpRequest>> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .unwrap_or_default()
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let start = head_end + 4;
    while buf.len() < start + len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[start..start + len].to_vec();
    buf.drain(..start + len);
    Ok(Some(HttpRequest {
        path,
        headers,
        body,
    }))
}

/// A mail sink speaking just enough SMTP (RFC 5321: greeting, EHLO/HELO, MAIL, RCPT, DATA with
/// dot-unstuffing, RSET, NOOP, QUIT) to receive what Ebb sends, with no TLS and no
/// authentication. The messages it accepted, whole (headers and body), in order.
pub struct SmtpSink {
    pub port: u16,
    messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl SmtpSink {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP sink");
        let port = listener.local_addr().expect("addr").port();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = messages.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = smtp_session(socket, store).await;
                });
            }
        });
        Self { port, messages }
    }

    /// The messages accepted so far.
    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

async fn smtp_session(
    socket: TcpStream,
    store: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 ebb-test-sink ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-ebb-test-sink\r\n250 8BITMIME\r\n",
            "HELO" | "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 OK\r\n",
            "DATA" => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut message = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    message.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                if let Ok(mut m) = store.lock() {
                    m.push(message);
                }
                b"250 queued\r\n"
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 not implemented\r\n",
        };
        write.write_all(reply).await?;
    }
}

/// The fields a refusal's `google.rpc.BadRequest` names, in order.
pub fn violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The one number `query` answers, read from `sql`.
pub async fn number(sql: &sea_orm::DatabaseConnection, query: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    sql.query_one_raw(sea_orm::Statement::from_string(
        sql.get_database_backend(),
        query,
    ))
    .await
    .expect("query")
    .expect("a row")
    .try_get_by_index::<i64>(0)
    .expect("a number")
}
