//! The arguments of `ebb workspaces`: its subcommands and their options.

use std::time::Duration;

use chrono::Utc;
use ebb_proto::lifecycle::v1 as pb;

use crate::cli::names::{Scope, WorkspaceRef};
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
        /// Organization whose workspaces are listed: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only this project: its id, or its name (ORG/PROJECT or PROJECT).
        #[arg(long)]
        project: Option<String>,
        /// Only workspaces in this state: active or archived.
        #[arg(long, value_parser = enum_parser("WORKSPACE_STATE_", pb::WorkspaceState::from_str_name))]
        state: Option<pb::WorkspaceState>,
        /// Only this auto-destroy status: idle, deferred, queued, retrying, succeeded, failed,
        /// waiting-for-window.
        #[arg(long, value_parser = enum_parser("AUTO_DESTROY_STATUS_", pb::AutoDestroyStatus::from_str_name))]
        status: Option<pb::AutoDestroyStatus>,
        /// Only workspaces with a pending destroy.
        #[arg(long)]
        scheduled: bool,
        /// Only workspaces whose owner has this email address or Slack user id.
        #[arg(long)]
        owner: Option<String>,
        /// At most this many workspaces.
        #[arg(long, default_value_t = 500)]
        limit: usize,
    },
    /// Show one workspace and its schedule.
    Show {
        #[command(flatten)]
        workspace: WorkspaceRef,
    },
    /// Create a workspace in a project.
    Create {
        /// Project the workspace belongs to: its id, or its name (ORG/PROJECT or PROJECT).
        #[arg(long)]
        project: String,
        #[command(flatten)]
        scope: Scope,
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
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Change what is given of a workspace: its name, labels, protection, working
    /// directory or owner (who is told about its reminders and results).
    Update {
        #[command(flatten)]
        workspace: WorkspaceRef,
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
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Archive a workspace: it leaves the listings of active workspaces and is never
    /// auto-destroyed.
    Archive {
        #[command(flatten)]
        workspace: WorkspaceRef,
    },
    /// Restore an archived workspace.
    Restore {
        #[command(flatten)]
        workspace: WorkspaceRef,
    },
    /// Set a destroy time (--at or --in), an inactivity period and/or a recurring destroy
    /// (--recurring with --time-zone).
    #[command(visible_alias = "set")]
    Schedule {
        #[command(flatten)]
        workspace: WorkspaceRef,
        /// Destroy at this time (RFC 3339, e.g. 2030-01-01T00:00:00Z).
        #[arg(long, value_parser = parse_time, conflicts_with = "in")]
        at: Option<chrono::DateTime<Utc>>,
        /// Destroy this long from now (e.g. 2h, 3d, 90m).
        #[arg(id = "in", long = "in", value_name = "DURATION", value_parser = parse_duration)]
        in_: Option<Duration>,
        /// Destroy after this long without an applied state change (1h to 9999d, e.g. 14d).
        #[arg(long, value_parser = duration_text)]
        inactivity: Option<String>,
        #[command(flatten)]
        recurring: RecurringArgs,
    },
    /// Clear the destroy time, the workspace's own inactivity period and its recurring
    /// destroy.
    Clear {
        #[command(flatten)]
        workspace: WorkspaceRef,
        /// Clear only the destroy time (`at`), the inactivity period (`inactivity`) or the
        /// recurring destroy (`recurring`).
        #[arg(long, value_enum)]
        only: Option<Part>,
        /// Return to the project's default inactivity instead of none.
        #[arg(long)]
        inherit_project_default: bool,
    },
    /// Push the pending destroy later, within the organization's maximum.
    Extend {
        #[command(flatten)]
        workspace: WorkspaceRef,
        /// How much later, e.g. 1d or 12h.
        #[arg(long, value_parser = duration_text)]
        by: String,
    },
    /// Destroys due within a window, soonest first.
    Upcoming {
        /// Organization whose workspaces are looked at: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only this project: its id, or its name (ORG/PROJECT or PROJECT).
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
        /// Organization whose workspaces are looked at: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only this project: its id, or its name (ORG/PROJECT or PROJECT).
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
        #[command(flatten)]
        recurring: RecurringArgs,
    },
    /// Lock a workspace: its destroy is deferred until it is unlocked.
    Lock {
        #[command(flatten)]
        workspace: WorkspaceRef,
        /// Why; deferrals quote it.
        #[arg(long)]
        reason: String,
    },
    /// Unlock a workspace.
    Unlock {
        #[command(flatten)]
        workspace: WorkspaceRef,
    },
    /// Why a workspace's destroy was deferred: its lock, its active runs and the deferral
    /// events.
    WhyDeferred {
        #[command(flatten)]
        workspace: WorkspaceRef,
    },
    /// Every auto-destroy decision about a workspace from the audit log, newest first.
    History {
        #[command(flatten)]
        workspace: WorkspaceRef,
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
    /// The recurring destroy.
    Recurring,
}

/// A recurring destroy: a cron expression in a time zone.
#[derive(Debug, clap::Args)]
pub(super) struct RecurringArgs {
    /// Destroy at every occurrence of this cron expression (minute hour day-of-month month
    /// day-of-week), e.g. "0 19 * * FRI"; only when there was an applied state since the last
    /// destroy.
    #[arg(long, value_name = "CRON", requires = "time_zone")]
    pub(super) recurring: Option<String>,
    /// The IANA time zone the cron expression is read in, e.g. Europe/Berlin or UTC.
    #[arg(long, value_name = "ZONE", requires = "recurring")]
    pub(super) time_zone: Option<String>,
}

impl RecurringArgs {
    /// The schedule, when given.
    pub(super) fn schedule(self) -> Option<pb::RecurringSchedule> {
        Some(pb::RecurringSchedule {
            cron: self.recurring?,
            time_zone: self.time_zone.unwrap_or_default(),
            next_occurrences: Vec::new(),
        })
    }
}

/// An owner: an email address and/or a Slack member id.
#[derive(Debug, clap::Args)]
pub(super) struct OwnerArgs {
    /// The owner's email address.
    #[arg(long)]
    pub(super) owner_email: Option<String>,
    /// The owner's Slack member id, e.g. U024BE7LH.
    #[arg(long)]
    pub(super) owner_slack: Option<String>,
}

impl OwnerArgs {
    /// The owner, when either part is given.
    pub(super) fn owner(self) -> Option<pb::Owner> {
        if self.owner_email.is_none() && self.owner_slack.is_none() {
            return None;
        }
        Some(pb::Owner {
            email: self.owner_email.unwrap_or_default(),
            slack_user_id: self.owner_slack.unwrap_or_default(),
        })
    }
}
