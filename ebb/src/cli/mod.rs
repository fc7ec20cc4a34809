//! The operator commands of `ebb`: workspaces and their schedules, runs, deprovisioning,
//! notification deliveries, scheduler tasks and online audit verification, as tables for
//! people or JSON for scripts.
//!
//! Every command talks gRPC to one address serving all four services (`ebb serve`, or the
//! services behind one proxy). Errors are one line on standard error and exit code 1; usage
//! errors exit 2.

pub mod audit;
pub mod config;
pub mod connection;
pub mod contexts;
pub mod deprovision;
pub mod grid;
pub mod mode;
pub mod names;
pub mod notifier;
pub mod orgs;
pub mod runs;
pub mod scheduler;
pub mod status;
pub mod tokens;
pub mod windows;
pub mod workspaces;

pub mod output;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use ebb_common::client::TracedChannel;
use tonic_types::StatusExt;

pub use connection::{Connection, Target, connect, server_url};
pub use output::{Output, Render};

/// Why a command failed; decides the exit code.
#[derive(Debug)]
pub enum CliError {
    /// A call was refused or failed: what was asked, and the status.
    Status {
        /// What the command was doing, naming the thing it asked about.
        context: String,
        /// The answer.
        status: Box<tonic::Status>,
    },
    /// The command cannot run as given (exit code 2).
    Usage(String),
    /// Anything else (exit code 1).
    Failed(String),
}

impl CliError {
    /// A failed call, with what it was about.
    pub fn status(context: impl Into<String>, status: tonic::Status) -> Self {
        Self::Status {
            context: context.into(),
            status: Box::new(status),
        }
    }

    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status { context, status } => {
                write!(f, "{context}: {}", describe_status(status))?;
                match SERVER.get() {
                    Some(server) if unreachable(status) => write!(f, " (server {server})"),
                    _ => Ok(()),
                }
            }
            Self::Usage(m) | Self::Failed(m) => f.write_str(m),
        }
    }
}

/// One line for a gRPC status: its code, its message, and the field violations and failed
/// preconditions it carries that the message does not already say.
pub fn describe_status(status: &tonic::Status) -> String {
    // "NOT_FOUND" reads "not found".
    let code = ebb_common::error::code_name(status.code())
        .to_ascii_lowercase()
        .replace('_', " ");
    let message = status.message().trim();
    // Ebb's messages often start with the code's name already.
    let mut line = if message.is_empty() {
        code.clone()
    } else if message
        .to_ascii_lowercase()
        .starts_with(&format!("{code}:"))
    {
        message.to_owned()
    } else {
        format!("{code}: {message}")
    };
    let details = status.get_error_details();
    let mut extra = Vec::new();
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            let text = format!("{}: {}", v.field, v.description);
            if !message.contains(&text) {
                extra.push(format!("field `{}`: {}", v.field, v.description));
            }
        }
    }
    if let Some(pre) = details.precondition_failure() {
        for v in &pre.violations {
            if !v.description.is_empty() && !message.contains(&v.description) {
                extra.push(v.description.clone());
            }
        }
    }
    if !extra.is_empty() {
        line.push_str(" (");
        line.push_str(&extra.join("; "));
        line.push(')');
    }
    line.replace('\n', " ")
}

/// A connected command: the channel to the server and how to print.
pub struct Ctx {
    /// Carries the token and trace context on every call.
    pub channel: TracedChannel,
    /// Tables or JSON.
    pub output: Output,
}

impl Ctx {
    /// Prints `message` as a table (through `render`) or as its proto JSON.
    pub fn print<M: prost::Message>(
        &self,
        message: &M,
        full_name: &str,
        render: Render<'_, M>,
    ) -> Result<(), CliError> {
        output::print(self.output, message, full_name, render)
    }
}

/// The server the command talks to, to name it in errors of an unreachable server.
pub static SERVER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the server the command talks to.
pub fn set_server(url: &str) {
    let _ = SERVER.set(url.to_owned());
}

/// Whether a status says the server could not be reached (rather than that it answered).
pub fn unreachable(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => true,
        tonic::Code::Unknown => status.message().contains("transport error"),
        _ => false,
    }
}

/// Runs one operator command to completion on a fresh runtime and turns its outcome into
/// the exit code, printing a failure as one line on standard error.
pub fn run<F>(command: &str, future: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), CliError>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ebb {command}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ebb {command}: {e}");
            e.exit_code()
        }
    }
}

/// The multi-threaded runtime of a long-running command (`serve`, `runner`, `console`); when
/// it cannot start, says so on standard error and answers the exit code.
pub fn server_runtime(command: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("ebb {command}: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Asks `question` on the terminal before a bulk change; `yes` (`--yes`) skips asking. Without
/// a terminal to ask on, the change is refused unless `yes`.
pub fn confirm(question: &str, yes: bool) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!(
            "{question} Confirm with --yes (standard input is not a terminal to ask on), or \
             look first with --dry-run"
        )));
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| CliError::Failed(format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Failed(
            "not confirmed; nothing was changed".into(),
        ))
    }
}

/// A duration flag: "14d", "18h", "90m" or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    ebb_common::config::parse_duration(text)
}

/// A duration flag passed on to the server as written, after checking it parses.
pub fn duration_text(text: &str) -> Result<String, String> {
    parse_duration(text).map(|_| text.trim().to_owned())
}

/// A time flag in RFC 3339, such as `2030-01-01T00:00:00Z`.
pub fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time such as 2030-01-01T00:00:00Z: {e}"))
}

/// A `KEY=VALUE` flag.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// A flag naming a value of a proto enum by its short name (`failed` for
/// `DELIVERY_STATUS_FAILED`).
pub fn enum_parser<T: Clone + Send + Sync + 'static>(
    prefix: &'static str,
    from_name: fn(&str) -> Option<T>,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        let name = format!(
            "{prefix}{}",
            text.trim().replace('-', "_").to_ascii_uppercase()
        );
        from_name(&name)
            .filter(|_| !name.ends_with("_UNSPECIFIED"))
            .ok_or_else(|| format!("`{text}` is not one of the known values"))
    }
}

/// `--at` or `now + --in`.
pub fn at_or_in(
    at: Option<chrono::DateTime<chrono::Utc>>,
    in_: Option<std::time::Duration>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, CliError> {
    match (at, in_) {
        (Some(at), _) => Ok(Some(at)),
        (None, Some(d)) => chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| chrono::Utc::now().checked_add_signed(d))
            .map(Some)
            .ok_or_else(|| CliError::Usage("--in is too long".into())),
        (None, None) => Ok(None),
    }
}

/// A proto timestamp from a chrono time.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A request id for a mutating call: retrying the same command does not repeat its effect
/// only when the caller passes its own, so a fresh one is made per invocation.
pub fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether progress bars may be drawn: only when standard error is a terminal.
pub fn progress_visible() -> bool {
    std::io::stderr().is_terminal()
}

/// A progress bar of `total` steps on standard error, hidden when it is not a terminal.
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = if progress_visible() {
        indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {prefix} [{elapsed_precise}] [{wide_bar}] {pos}/{len} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_name_field_violations_once() {
        let mut details = tonic_types::ErrorDetails::new();
        details.add_bad_request_violation("auto_destroy_at", "must be in the future");
        let status =
            tonic::Status::with_error_details(tonic::Code::InvalidArgument, "bad", details);
        assert_eq!(
            describe_status(&status),
            "invalid argument: bad (field `auto_destroy_at`: must be in the future)"
        );
        let mut details = tonic_types::ErrorDetails::new();
        details.add_bad_request_violation("x", "bad");
        let status = tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "invalid argument: x: bad",
            details,
        );
        assert_eq!(describe_status(&status), "invalid argument: x: bad");
    }

    #[test]
    fn enum_flags_take_short_names() {
        use ebb_proto::notifier::v1::DeliveryStatus;
        let parse = enum_parser("DELIVERY_STATUS_", DeliveryStatus::from_str_name);
        assert_eq!(parse("failed"), Ok(DeliveryStatus::Failed));
        assert_eq!(parse("FAILED"), Ok(DeliveryStatus::Failed));
        assert!(parse("unspecified").is_err());
        assert!(parse("gone").is_err());
    }
}
