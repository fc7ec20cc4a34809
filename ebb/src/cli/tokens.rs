//! `ebb tokens`: create API tokens (the secret is printed once), list them without their
//! secrets, revoke one.

use std::time::Duration;

use chrono::Utc;
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::token_service_client::TokenServiceClient;

use super::output::{fields, label, or_none, table, text, time, when};
use super::{
    CliError, Connection, Ctx, Output, enum_parser, parse_duration, parse_time, request_id,
    timestamp,
};

/// `ebb tokens`.
#[derive(Debug, clap::Args)]
pub struct TokensArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create a token; its secret is printed once and never again.
    Create {
        /// Organization the token acts in: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// What it may do: admin, operator, runner or reader.
        #[arg(long, value_parser = enum_parser("TOKEN_ROLE_", pb::TokenRole::from_str_name))]
        role: pb::TokenRole,
        /// What it is for, e.g. "runner pool eu-1".
        #[arg(long)]
        description: String,
        /// It stops working this long from now (e.g. 90d).
        #[arg(long, value_parser = parse_duration, conflicts_with = "expires_at")]
        expires_in: Option<Duration>,
        /// It stops working at this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        expires_at: Option<chrono::DateTime<Utc>>,
    },
    /// List tokens, without their secrets.
    List {
        /// Only this organization's, by id or name (other callers than the bootstrap admin
        /// see only their own).
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: Option<String>,
        /// Revoked tokens too.
        #[arg(long)]
        include_revoked: bool,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        /// Token id.
        token_id: String,
    },
}

type Tokens = TokenServiceClient<ebb_common::client::TracedChannel>;

/// Runs `ebb tokens`.
pub fn main(args: TokensArgs) -> std::process::ExitCode {
    super::run("tokens", async move {
        let ctx = super::connect(&args.conn)?;
        run(&ctx, args.command).await
    })
}

async fn run(ctx: &Ctx, command: Command) -> Result<(), CliError> {
    let mut api = Tokens::new(ctx.channel.clone());
    match command {
        Command::Create {
            organization,
            role,
            description,
            expires_in,
            expires_at,
        } => {
            let expire = match (expires_at, expires_in) {
                (Some(at), _) => Some(at),
                (None, Some(d)) => Some(
                    chrono::Duration::from_std(d)
                        .ok()
                        .and_then(|d| Utc::now().checked_add_signed(d))
                        .ok_or_else(|| CliError::Usage("--expires-in is too long".into()))?,
                ),
                (None, None) => None,
            };
            let organization_id = super::names::org_id(&ctx.channel, &organization).await?;
            let answer = api
                .create_token(pb::CreateTokenRequest {
                    request_id: request_id(),
                    organization_id,
                    role: role as i32,
                    description,
                    expire_time: expire.map(timestamp),
                })
                .await
                .map_err(|s| {
                    CliError::status(format!("create a token in organization {organization}"), s)
                })?
                .into_inner();
            if matches!(ctx.output, Output::Table | Output::Wide) {
                eprintln!("keep the secret now: it is not shown again");
            }
            ctx.print(&answer, "ebb.lifecycle.v1.CreateTokenResponse", &|r| {
                let mut rows = token_fields(&r.token.clone().unwrap_or_default());
                rows.push(("secret", r.secret.clone()));
                fields(rows)
            })
        }
        Command::List {
            organization,
            include_revoked,
        } => {
            let organization_id = match organization.filter(|o| !o.trim().is_empty()) {
                Some(o) => super::names::org_id(&ctx.channel, &o).await?,
                None => String::new(),
            };
            let mut all = pb::ListTokensResponse::default();
            loop {
                let page = api
                    .list_tokens(pb::ListTokensRequest {
                        organization_id: organization_id.clone(),
                        include_revoked,
                        page_size: 1000,
                        page_token: all.next_page_token.clone(),
                    })
                    .await
                    .map_err(|s| CliError::status("list tokens", s))?
                    .into_inner();
                all.tokens.extend(page.tokens);
                all.next_page_token = page.next_page_token;
                if all.next_page_token.is_empty() {
                    break;
                }
            }
            ctx.print(&all, "ebb.lifecycle.v1.ListTokensResponse", &|r| {
                tokens_table(&r.tokens)
            })
        }
        Command::Revoke { token_id: token } => {
            let revoked = api
                .revoke_token(pb::RevokeTokenRequest {
                    request_id: request_id(),
                    token_id: token.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("revoke token {token}"), s))?
                .into_inner()
                .token
                .unwrap_or_default();
            ctx.print(&revoked, "ebb.lifecycle.v1.Token", &|t| {
                fields(token_fields(t))
            })
        }
    }
}

fn role(t: &pb::Token) -> String {
    label(t.role, "TOKEN_ROLE_", pb::TokenRole::as_str_name)
}

fn token_fields(t: &pb::Token) -> Vec<(&'static str, String)> {
    vec![
        ("id", t.id.clone()),
        ("organization", text(&t.organization_id)),
        ("role", role(t)),
        ("description", text(&t.description)),
        ("created", when(t.create_time.as_ref())),
        ("created by", text(&t.created_by)),
        ("expires", when(t.expire_time.as_ref())),
        ("revoked", when(t.revoke_time.as_ref())),
    ]
}

fn tokens_table(list: &[pb::Token]) -> String {
    let mut t = table(&[
        "id",
        "organization",
        "role",
        "description",
        "created (UTC)",
        "expires (UTC)",
        "revoked (UTC)",
        "created by",
    ])
    .wide_only(&["organization", "created by"])
    .summarise(&["description"]);
    for k in list {
        t.add_row(vec![
            k.id.clone(),
            text(&k.organization_id),
            role(k),
            text(&k.description),
            time(k.create_time.as_ref()),
            time(k.expire_time.as_ref()),
            time(k.revoke_time.as_ref()),
            text(&k.created_by),
        ]);
    }
    or_none(t, list.len(), "no tokens")
}
