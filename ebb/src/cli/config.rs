//! `ebb config`: the contexts of the config file: add or change one, pick the current one,
//! list them. Tokens are never printed.

use std::path::PathBuf;
use std::process::ExitCode;

use super::CliError;
use super::contexts::{self, ConfigFile, Context};
use super::output::{self, Output, or_none, table, text};

/// `ebb config`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List the contexts; `*` marks the current one.
    GetContexts {
        /// How to print: table, wide, json, yaml or name.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Without the header row.
        #[arg(long)]
        no_headers: bool,
    },
    /// Print the name of the current context.
    CurrentContext,
    /// Make a context the current one.
    UseContext {
        /// Context name.
        name: String,
    },
    /// Add a context, or change the settings given of an existing one.
    SetContext {
        /// Context name.
        name: String,
        /// Address of the server.
        #[arg(long)]
        server: Option<String>,
        /// Bearer token, kept in the config file (written owner-only).
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        /// File holding the bearer token, read at each command.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// PEM CA bundle for an `https://` server.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Default organization of the commands.
        #[arg(id = "context_org", long = "org", visible_alias = "organization")]
        organization: Option<String>,
        /// Make it the current context too.
        #[arg(long = "use")]
        use_it: bool,
    },
    /// Remove a context.
    DeleteContext {
        /// Context name.
        name: String,
    },
}

/// Runs `ebb config`.
pub fn main(args: ConfigArgs) -> ExitCode {
    match run(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ebb config: {e}");
            match e {
                CliError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn file_path() -> Result<PathBuf, CliError> {
    contexts::path().ok_or_else(|| {
        CliError::Usage(
            "no place for the config file: set HOME, XDG_CONFIG_HOME or EBB_CLI_CONFIG".into(),
        )
    })
}

fn run(command: Command) -> Result<(), CliError> {
    let path = file_path()?;
    let mut file = ConfigFile::load(&path).map_err(CliError::Usage)?;
    let save = |file: &ConfigFile| file.save(&path).map_err(CliError::Failed);
    match command {
        Command::GetContexts { output, no_headers } => {
            output::set_mode(output, no_headers);
            list(&file, output)
        }
        Command::CurrentContext => match &file.current_context {
            Some(name) => {
                output::emit(name);
                Ok(())
            }
            None => Err(CliError::Failed(format!(
                "no current context in {} (pick one with `ebb config use-context`)",
                path.display()
            ))),
        },
        Command::UseContext { name } => {
            if !file.contexts.contains_key(&name) {
                return Err(CliError::Usage(file.unknown(&name)));
            }
            file.current_context = Some(name.clone());
            save(&file)?;
            eprintln!("switched to context `{name}`");
            Ok(())
        }
        Command::SetContext {
            name,
            server,
            token,
            token_file,
            ca,
            organization,
            use_it,
        } => {
            if name.trim().is_empty() {
                return Err(CliError::Usage("the context name is empty".into()));
            }
            let created = !file.contexts.contains_key(&name);
            let context = file.contexts.entry(name.clone()).or_default();
            update(context, server, token, token_file, ca, organization);
            if use_it || file.current_context.is_none() {
                file.current_context = Some(name.clone());
            }
            save(&file)?;
            eprintln!(
                "context `{name}` {} in {}",
                if created { "added" } else { "changed" },
                path.display()
            );
            Ok(())
        }
        Command::DeleteContext { name } => {
            if file.contexts.remove(&name).is_none() {
                return Err(CliError::Usage(file.unknown(&name)));
            }
            if file.current_context.as_deref() == Some(name.as_str()) {
                file.current_context = None;
            }
            save(&file)?;
            eprintln!("context `{name}` deleted");
            Ok(())
        }
    }
}

/// Sets the settings given; an empty value clears one.
fn update(
    c: &mut Context,
    server: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    organization: Option<String>,
) {
    let text = |v: String| Some(v).filter(|v| !v.trim().is_empty());
    let path = |p: PathBuf| Some(p).filter(|p| !p.as_os_str().is_empty());
    if let Some(s) = server {
        c.server = text(s);
    }
    // A token and a token file exclude each other: setting one drops the other.
    if let Some(t) = token {
        c.token = text(t);
        c.token_file = None;
    }
    if let Some(f) = token_file {
        c.token_file = path(f);
        c.token = None;
    }
    if let Some(p) = ca {
        c.ca = path(p);
    }
    if let Some(o) = organization {
        c.organization = text(o);
    }
}

/// How a context authenticates, without its secret.
fn token_source(c: &Context) -> String {
    match (&c.token, &c.token_file) {
        (Some(_), _) => "(inline)".to_owned(),
        (None, Some(f)) => f.display().to_string(),
        (None, None) => "-".to_owned(),
    }
}

fn list(file: &ConfigFile, output: Output) -> Result<(), CliError> {
    let current = file.current_context.as_deref();
    let value = serde_json::json!({
        "currentContext": current,
        "contexts": file.contexts.iter().map(|(name, c)| serde_json::json!({
            "name": name,
            "current": Some(name.as_str()) == current,
            "server": c.server,
            "token": c.token.as_ref().map(|_| "(inline)"),
            "tokenFile": c.token_file,
            "ca": c.ca,
            "organization": c.organization,
        })).collect::<Vec<_>>(),
    });
    let names: Vec<String> = file
        .contexts
        .keys()
        .map(|n| format!("context/{n}"))
        .collect();
    output::print_value(output, &value, &names, &|| {
        let mut t =
            table(&["current", "name", "server", "organization", "token", "ca"]).wide_only(&["ca"]);
        for (name, c) in &file.contexts {
            t.add_row(vec![
                if Some(name.as_str()) == current {
                    "*"
                } else {
                    ""
                }
                .to_owned(),
                name.clone(),
                c.server.clone().unwrap_or_else(|| "-".to_owned()),
                text(c.organization.as_deref().unwrap_or_default()),
                token_source(c),
                c.ca.as_ref()
                    .map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
            ]);
        }
        or_none(
            t,
            file.contexts.len(),
            "no contexts (add one with `ebb config set-context`)",
        )
    })
}
