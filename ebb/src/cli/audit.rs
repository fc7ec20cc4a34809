//! `ebb audit verify-chain` and `ebb audit events`: the server-side check of an
//! organization's hash chain, walked in chunks with a progress bar, and the audit log as a
//! table.

use ebb_proto::audit::v1 as pb;
use ebb_proto::audit::v1::audit_service_client::AuditServiceClient;

use super::output::{fields, json, label, or_none, struct_text, table, time};
use super::{CliError, Connection, Ctx};

/// `ebb audit verify-chain`.
#[derive(Debug, clap::Args)]
pub struct VerifyChainArgs {
    #[command(flatten)]
    conn: Connection,
    /// Organization whose chain is verified: its id or name.
    #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
    organization: String,
    /// First sequence number (1: from the start).
    #[arg(long, default_value_t = 1)]
    from_sequence: i64,
    /// Last sequence number (0: the chain's head).
    #[arg(long, default_value_t = 0)]
    to_sequence: i64,
    /// Events verified per call; each chunk is checked against the end of the one before.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..))]
    chunk: i64,
}

/// `ebb audit events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    conn: Connection,
    /// Organization whose log is listed: its id or name.
    #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
    organization: String,
    /// Exact action, e.g. `deprovision.finalized`.
    #[arg(long, conflicts_with = "action_prefix")]
    action: Option<String>,
    /// Action prefix, e.g. `workspace.auto_destroy.`.
    #[arg(long)]
    action_prefix: Option<String>,
    /// Only events about this subject id.
    #[arg(long)]
    subject: Option<String>,
    /// Oldest first instead of newest first.
    #[arg(long)]
    oldest_first: bool,
    /// At most this many events.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i32).range(1..=1000))]
    limit: i32,
}

type Audit = AuditServiceClient<ebb_common::client::TracedChannel>;

/// Runs `ebb audit verify-chain`: 0 when the range verifies, 1 when it does not.
pub fn verify_chain(args: VerifyChainArgs) -> std::process::ExitCode {
    super::run("audit verify-chain", async move {
        let ctx = super::connect(&args.conn)?;
        verify(&ctx, &args).await
    })
}

/// Runs `ebb audit events`.
pub fn events(args: EventsArgs) -> std::process::ExitCode {
    super::run("audit events", async move {
        let ctx = super::connect(&args.conn)?;
        let mut audit = Audit::new(ctx.channel.clone());
        let org = &args.organization;
        let organization_id = super::names::audit_org_id(&ctx.channel, org).await?;
        let answer = audit
            .list_events(pb::ListEventsRequest {
                organization_id,
                page_size: args.limit,
                action: args.action.clone().unwrap_or_default(),
                action_prefix: args.action_prefix.clone().unwrap_or_default(),
                subject_id: args.subject.clone().unwrap_or_default(),
                order: if args.oldest_first {
                    pb::Order::OldestFirst
                } else {
                    pb::Order::NewestFirst
                } as i32,
                ..Default::default()
            })
            .await
            .map_err(|s| CliError::status(format!("audit events of organization {org}"), s))?
            .into_inner();
        ctx.print(&answer, "ebb.audit.v1.ListEventsResponse", &|r| {
            events_table(&r.events)
        })
    })
}

/// Audit events as a table; `who` reads the structured actor each event carries.
pub fn events_table(events: &[pb::AuditEvent]) -> String {
    let mut t = table(&["seq", "occurred (UTC)", "action", "subject", "who", "data"])
        .summarise(&["who", "data"]);
    for e in events {
        let input = e.event.clone().unwrap_or_default();
        let mut data = input.data.clone().unwrap_or_default();
        let detail = data.fields.remove("actor");
        t.add_row(vec![
            e.sequence.to_string(),
            time(input.occur_time.as_ref()),
            input.action,
            format!("{} {}", input.subject_type, input.subject_id),
            who(&input.actor, detail.as_ref()),
            struct_text(Some(&data)),
        ]);
    }
    or_none(t, events.len(), "no events")
}

/// Who caused an event, from its actor id and the details events carry under `actor`: the
/// token's role and description, the scheduler's shard and replica, the runner's run.
pub fn who(actor: &str, detail: Option<&prost_types::Value>) -> String {
    let Some(serde_json::Value::Object(d)) = detail.map(json) else {
        return actor.to_owned();
    };
    let field = |k: &str| d.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    let extra: Vec<String> = match field("kind") {
        Some("token") => [field("role"), field("description")]
            .into_iter()
            .flatten()
            .map(str::to_owned)
            .collect(),
        Some("scheduler") => [
            field("shard").map(|s| format!("shard {s}")),
            field("replica").map(|r| format!("replica {r}")),
        ]
        .into_iter()
        .flatten()
        .collect(),
        Some("runner") => field("run_id")
            .map(|r| vec![format!("run {r}")])
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    if extra.is_empty() {
        actor.to_owned()
    } else {
        format!("{actor} ({})", extra.join(", "))
    }
}

async fn verify(ctx: &Ctx, args: &VerifyChainArgs) -> Result<(), CliError> {
    let mut audit = Audit::new(ctx.channel.clone());
    let org = &args.organization;
    let id = super::names::audit_org_id(&ctx.channel, org).await?;
    // The head, to know how far to go.
    let newest = audit
        .list_events(pb::ListEventsRequest {
            organization_id: id.clone(),
            page_size: 1,
            order: pb::Order::NewestFirst as i32,
            ..Default::default()
        })
        .await
        .map_err(|s| CliError::status(format!("audit chain of organization {org}"), s))?
        .into_inner();
    let head = newest.events.first().map_or(0, |e| e.sequence);
    if head == 0 {
        return Err(CliError::Failed(format!(
            "organization {org} has no audit events yet"
        )));
    }
    let from = args.from_sequence.max(1);
    let to = if args.to_sequence <= 0 {
        head
    } else {
        args.to_sequence.min(head)
    };
    let total = u64::try_from((to - from + 1).max(0)).unwrap_or(0);
    let bar = super::progress_bar(total, "verifying");
    let mut result = pb::VerifyChainResponse {
        intact: true,
        ..Default::default()
    };
    let mut start = from;
    while start <= to {
        let end = start.saturating_add(args.chunk - 1).min(to);
        let chunk = audit
            .verify_chain(pb::VerifyChainRequest {
                organization_id: id.clone(),
                from_sequence: start,
                to_sequence: end,
            })
            .await
            .map_err(|s| {
                bar.finish_and_clear();
                CliError::status(
                    format!("verify the audit chain of organization {org} at {start}..{end}"),
                    s,
                )
            })?
            .into_inner();
        result.verified_count += chunk.verified_count;
        bar.inc(u64::try_from(chunk.verified_count).unwrap_or(0));
        if !chunk.intact {
            result.intact = false;
            result.first_bad_sequence = chunk.first_bad_sequence;
            result.break_reason = chunk.break_reason;
            result.detail = chunk.detail;
            break;
        }
        result.head_sequence = chunk.head_sequence;
        result.head_hash = chunk.head_hash;
        start = end + 1;
    }
    bar.finish_and_clear();
    ctx.print(&result, "ebb.audit.v1.VerifyChainResponse", &|r| {
        if r.intact {
            fields(vec![
                ("organization", id.clone()),
                ("result", "intact".to_owned()),
                ("range", format!("{from}..{to}")),
                ("verified", r.verified_count.to_string()),
                ("head sequence", r.head_sequence.to_string()),
                ("head hash", r.head_hash.clone()),
            ])
        } else {
            fields(vec![
                ("organization", id.clone()),
                ("result", "BROKEN".to_owned()),
                ("verified", r.verified_count.to_string()),
                ("first bad sequence", r.first_bad_sequence.to_string()),
                (
                    "reason",
                    label(r.break_reason, "CHAIN_BREAK_", pb::ChainBreak::as_str_name),
                ),
                ("detail", r.detail.clone()),
            ])
        }
    })?;
    if result.intact {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "the audit chain of organization {org} is broken at sequence {}",
            result.first_bad_sequence
        )))
    }
}
