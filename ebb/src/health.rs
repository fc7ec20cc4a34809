//! `ebb health`: the gRPC health probe of one Ebb server, for container healthchecks and
//! scripts. Prints the status and exits 0 when it is SERVING, 1 when it is not or cannot be
//! asked, 2 for a usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ebb_common::client::{ClientSettings, channel_with};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Probes a server's gRPC health (grpc.health.v1; no token needed).
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Address of the server: `http://HOST:PORT`, `https://HOST:PORT`, or HOST:PORT.
    /// Default: the current context's, else http://127.0.0.1:50051.
    #[arg(long, env = "EBB_SERVER")]
    server: Option<String>,
    /// The service to ask about (such as `ebb.lifecycle.v1.LifecycleService`); empty asks
    /// about the whole server, which is SERVING only when all of it is.
    #[arg(long, default_value = "")]
    service: String,
    /// PEM CA bundle to trust for an `https://` server. Default: the current context's.
    #[arg(long, env = "EBB_TLS_CA_PATH")]
    ca: Option<PathBuf>,
    /// How long to wait for the answer, connecting included.
    #[arg(long, default_value = "3s", value_parser = crate::cli::parse_duration)]
    timeout: Duration,
}

/// Asks once and maps the answer to the exit code.
pub fn main(args: HealthArgs) -> ExitCode {
    // The context gives the server and CA a flag or the environment leaves out; no token is
    // needed.
    let context = match crate::cli::connection::active_context(None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ebb health: {e}");
            return ExitCode::from(2);
        }
    };
    let server = args
        .server
        .clone()
        .or_else(|| context.as_ref().and_then(|(_, _, c)| c.server.clone()))
        .unwrap_or_else(|| crate::cli::connection::DEFAULT_SERVER.to_owned());
    let server = crate::cli::server_url(&server);
    let ca = args.ca.clone().or_else(|| {
        context.as_ref().and_then(|(file, _, c)| {
            c.ca.as_ref()
                .map(|p| crate::cli::contexts::resolve_path(file, p))
        })
    });
    let ca_path = match ca.as_deref().map(|p| p.to_str()) {
        Some(Some(p)) => p.to_owned(),
        Some(None) => {
            eprintln!("ebb health: --ca: the path is not UTF-8");
            return ExitCode::from(2);
        }
        None => String::new(),
    };
    let settings = ClientSettings {
        ca_path,
        ..ClientSettings::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ebb health: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let service = args.service.clone();
    // The channel is made inside the runtime, which its lazy connection needs.
    let answer = runtime.block_on(async {
        let channel = channel_with(&server, args.timeout, &settings)?;
        let mut client = HealthClient::new(channel);
        Ok::<_, String>(
            tokio::time::timeout(args.timeout, client.check(HealthCheckRequest { service })).await,
        )
    });
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("ebb health: --server: {e}");
            return ExitCode::from(2);
        }
    };
    let what = if args.service.is_empty() {
        server.clone()
    } else {
        format!("{} on {server}", args.service)
    };
    match answer {
        Ok(Ok(r)) => {
            let status =
                ServingStatus::try_from(r.into_inner().status).unwrap_or(ServingStatus::Unknown);
            println!("{}", status.as_str_name());
            if status == ServingStatus::Serving {
                ExitCode::SUCCESS
            } else {
                eprintln!("ebb health: {what} is {}", status.as_str_name());
                ExitCode::FAILURE
            }
        }
        Ok(Err(status)) => {
            println!("UNKNOWN");
            eprintln!(
                "ebb health: {what}: {:?}: {}",
                status.code(),
                status.message()
            );
            ExitCode::FAILURE
        }
        Err(_) => {
            println!("UNKNOWN");
            eprintln!(
                "ebb health: {what} did not answer within {:?}",
                args.timeout
            );
            ExitCode::FAILURE
        }
    }
}
