//! The arguments of `ebb workspaces`: its subcommands and their options.

use std::time::Duration;

use chrono::Utc;
use ebb_proto::lifecycle::v1 as pb;

use crate::cli::{
    Connection, duration_text, enum_parser, parse_duration, parse_key_value, parse_time,
};

/// `ebb workspaces`.
#[derive(Debug, clap::Args)]
pub struct WorkspacesArgs {
    #[command(flatten)]
    pub(super) conn: Connection,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// List an organization's workspaces (optionally of one project, or in one state).
    List {
        /// Organization whose workspaces are listed.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// Only workspaces in this state: active or archived.
        #[arg(long, value_parser = enum_parser("WORKSPACE_STATE_", pb::WorkspaceState::from_str_name))]
        state: Option<pb::WorkspaceState>,
        /// Only this auto-destroy status: idle, deferred, queued, retrying, succeeded, failed.
        #[arg(long, value_parser = enum_parser("AUTO_DESTROY_STATUS_", pb::AutoDestroyStatus::from_str_name))]
        status: Option<pb::AutoDestroyStatus>,
        /// Only workspaces with a pending destroy.
        #[arg(long)]
        scheduled: bool,
        /// At most this many workspaces.
        #[arg(long, default_value_t = 500)]
        limit: usize,
    },
    /// Show one workspace and its schedule.
    Show {
        /// Workspace id.
        workspace: String,
    },
    /// Create a workspace in a project.
    Create {
        /// Project the workspace belongs to.
        #[arg(long)]
        project: String,
        /// Workspace name.
        name: String,
        /// A label, KEY=VALUE; repeatable.
        #[arg(long = "label", value_parser = parse_key_value)]
        labels: Vec<(String, String)>,
        /// Working directory handed to runners.
        #[arg(long)]
        working_directory: Option<String>,
        /// Protect it from every auto-destroy.
        #[arg(long)]
        protected: bool,
    },
    /// Change a workspace's name, labels, protection or working directory.
    Update {
        /// Workspace id.
        workspace: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// Replace the labels with these, KEY=VALUE; repeatable.
        #[arg(long = "label", value_parser = parse_key_value, conflicts_with = "clear_labels")]
        labels: Vec<(String, String)>,
        /// Remove every label.
        #[arg(long)]
        clear_labels: bool,
        /// Protect it from every auto-destroy (true) or not (false).
        #[arg(long)]
        protected: Option<bool>,
        /// Working directory handed to runners.
        #[arg(long)]
        working_directory: Option<String>,
    },
    /// Archive a workspace: it leaves the listings of active workspaces and is never
    /// auto-destroyed.
    Archive {
        /// Workspace id.
        workspace: String,
    },
    /// Restore an archived workspace.
    Restore {
        /// Workspace id.
        workspace: String,
    },
    /// Set a destroy time (--at or --in) and/or an inactivity period.
    Schedule {
        /// Workspace id.
        workspace: String,
        /// Destroy at this time (RFC 3339, e.g. 2030-01-01T00:00:00Z).
        #[arg(long, value_parser = parse_time, conflicts_with = "in")]
        at: Option<chrono::DateTime<Utc>>,
        /// Destroy this long from now (e.g. 2h, 3d, 90m).
        #[arg(id = "in", long = "in", value_name = "DURATION", value_parser = parse_duration)]
        in_: Option<Duration>,
        /// Destroy after this long without an applied state change (1h to 9999d, e.g. 14d).
        #[arg(long, value_parser = duration_text)]
        inactivity: Option<String>,
    },
    /// Clear the destroy time and the workspace's own inactivity period.
    Clear {
        /// Workspace id.
        workspace: String,
        /// Clear only the destroy time (`at`) or only the inactivity period (`inactivity`).
        #[arg(long, value_enum)]
        only: Option<Part>,
        /// Return to the project's default inactivity instead of none.
        #[arg(long)]
        inherit_project_default: bool,
    },
    /// Push the pending destroy later, within the organization's maximum.
    Extend {
        /// Workspace id.
        workspace: String,
        /// How much later, e.g. 1d or 12h.
        #[arg(long, value_parser = duration_text)]
        by: String,
    },
    /// Destroys due within a window, soonest first.
    Upcoming {
        /// Organization whose workspaces are looked at.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// The window from now, e.g. 24h or 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        within: Duration,
        /// At most this many workspaces.
        #[arg(long, default_value_t = 500)]
        limit: usize,
    },
    /// Which workspaces a proposed setting would destroy, and when; changes nothing.
    Preview {
        /// Organization whose workspaces are looked at.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// Only workspaces carrying this label, KEY=VALUE; repeatable.
        #[arg(long = "label", value_parser = parse_key_value)]
        labels: Vec<(String, String)>,
        /// Proposed destroy time (RFC 3339).
        #[arg(long, value_parser = parse_time, conflicts_with = "in")]
        at: Option<chrono::DateTime<Utc>>,
        /// Proposed destroy time, this long from now.
        #[arg(id = "in", long = "in", value_name = "DURATION", value_parser = parse_duration)]
        in_: Option<Duration>,
        /// Proposed inactivity period.
        #[arg(long, value_parser = duration_text)]
        inactivity: Option<String>,
    },
    /// Lock a workspace: its destroy is deferred until it is unlocked.
    Lock {
        /// Workspace id.
        workspace: String,
        /// Why; deferrals quote it.
        #[arg(long)]
        reason: String,
    },
    /// Unlock a workspace.
    Unlock {
        /// Workspace id.
        workspace: String,
    },
    /// Why a workspace's destroy was deferred: its lock, its active runs and the deferral
    /// events.
    WhyDeferred {
        /// Workspace id.
        workspace: String,
    },
    /// Every auto-destroy decision about a workspace from the audit log, newest first.
    History {
        /// Workspace id.
        workspace: String,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: i32,
    },
}

/// One part of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Part {
    /// The one-shot destroy time.
    At,
    /// The workspace's own inactivity period.
    Inactivity,
}
