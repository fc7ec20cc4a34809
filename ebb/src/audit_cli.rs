//! `ebb audit`: export an organization's audit chain to JSON lines, and verify such a file
//! offline with the same chain code the server uses.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use audit_svc::chain::{GENESIS_HASH, Record, Verifier, parse_hash};
use clap::{Args, Subcommand};
use ebb_common::client::channel_with;
use ebb_proto::audit::v1::ExportEventsRequest;
use ebb_proto::audit::v1::audit_service_client::AuditServiceClient;

use crate::cli::CliError;

/// `ebb audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The server (audit-svc's or `ebb serve`'s address), token and CA, as every command
    /// takes them.
    #[command(flatten)]
    target: crate::cli::Target,
    /// The organization whose chain is exported: its id or name.
    #[arg(
        long,
        visible_alias = "org",
        alias = "organization-id",
        env = "EBB_ORGANIZATION_ID"
    )]
    organization: String,
    /// First sequence number.
    #[arg(long, default_value_t = 1)]
    from_sequence: i64,
    /// Last sequence number (0: the head).
    #[arg(long, default_value_t = 0)]
    to_sequence: i64,
    /// File to write (standard output when absent).
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
}

/// `ebb audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify an exported chain (JSON lines) offline; exits non-zero naming the first bad
    /// sequence number.
    Verify {
        /// The export file.
        file: PathBuf,
    },
    /// Export an organization's chain as JSON lines (to standard output, or --file).
    Export(ExportArgs),
    /// Verify an organization's chain on the server (in chunks, with a progress bar);
    /// exits 1 naming the first bad sequence number.
    VerifyChain(crate::cli::audit::VerifyChainArgs),
    /// List an organization's audit events, newest first.
    Events(crate::cli::audit::EventsArgs),
}

/// Runs `ebb audit`: 0 when the chain verifies (or the export completed), 1 when it does
/// not, 2 when the input cannot be read.
pub fn main(args: AuditArgs) -> ExitCode {
    match args.command {
        AuditCommand::Verify { file } => verify(&file),
        AuditCommand::VerifyChain(args) => crate::cli::audit::verify_chain(args),
        AuditCommand::Events(args) => crate::cli::audit::events(args),
        AuditCommand::Export(args) => crate::cli::run("audit export", async move {
            let n = export(args).await?;
            eprintln!("exported {n} events");
            Ok(())
        }),
    }
}

fn verify(file: &PathBuf) -> ExitCode {
    let reader = match std::fs::File::open(file) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) => {
            eprintln!("ebb audit verify: cannot open {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let mut verifier: Option<Verifier> = None;
    for (index, line) in reader.lines().enumerate() {
        let line_no = index + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("ebb audit verify: line {line_no}: {e}");
                return ExitCode::from(2);
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("ebb audit verify: line {line_no} is not an audit record: {e}");
                return ExitCode::from(2);
            }
        };
        let v = verifier.get_or_insert_with(|| {
            // An export of a range starts after an event the file does not hold: trust the
            // first line's link to it; from sequence 1 the link must be the genesis hash.
            let prev = if record.sequence <= 1 {
                GENESIS_HASH
            } else {
                parse_hash(&record.prev_hash).unwrap_or(GENESIS_HASH)
            };
            Verifier::new(&record.organization_id, record.sequence.max(1), prev)
        });
        if let Err(b) = v.check_record(&record) {
            eprintln!(
                "chain broken at sequence {} (line {line_no}): {}",
                b.sequence, b.detail
            );
            println!("BROKEN first_bad_sequence={}", b.sequence);
            return ExitCode::FAILURE;
        }
    }
    match verifier {
        None => {
            eprintln!("ebb audit verify: {} holds no events", file.display());
            ExitCode::from(2)
        }
        Some(v) => {
            println!(
                "OK verified={} head_sequence={} head_hash={}",
                v.verified(),
                v.head_sequence(),
                hex_encode(&v.head_hash())
            );
            ExitCode::SUCCESS
        }
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn export(args: ExportArgs) -> Result<u64, CliError> {
    let target = args.target.resolve()?;
    crate::cli::set_server(&target.server);
    // A long export streams for as long as it takes.
    let channel = channel_with(&target.server, Duration::from_secs(3600), &target.settings)
        .map_err(|e| CliError::Usage(format!("--server: {e}")))?;
    let organization_id = crate::cli::names::audit_org_id(&channel, &args.organization).await?;
    let mut client = AuditServiceClient::new(channel);
    let org = args.organization.clone();
    let failed = |s| CliError::status(format!("export the audit chain of organization {org}"), s);
    let mut stream = client
        .export_events(ExportEventsRequest {
            organization_id,
            from_sequence: args.from_sequence,
            to_sequence: args.to_sequence,
        })
        .await
        .map_err(failed)?
        .into_inner();
    let mut out: Box<dyn Write> = match &args.file {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", path.display())))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let written = |e: std::io::Error| CliError::Failed(format!("cannot write the export: {e}"));
    let mut out = BufWriter::new(&mut out);
    let mut n = 0;
    while let Some(chunk) = stream.message().await.map_err(failed)? {
        for event in &chunk.events {
            let record = audit_svc::data::record_from_proto(event).map_err(|e| {
                CliError::Failed(format!("event {} cannot be exported: {e}", event.sequence))
            })?;
            serde_json::to_writer(&mut out, &record)
                .map_err(|e| written(std::io::Error::other(e)))?;
            out.write_all(b"\n").map_err(written)?;
            n += 1;
        }
    }
    out.flush().map_err(written)?;
    Ok(n)
}
