//! How this invocation prints answers (`-o`, `--no-headers`), set once from its flags and read
//! by the printers and the tables.

use std::sync::OnceLock;

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Tables that fit the terminal: the main columns, long text shortened.
    #[default]
    Table,
    /// Tables with every column and nothing shortened, lines not broken.
    Wide,
    /// The proto answer as JSON (the proto3 JSON mapping, as grpcurl prints it, with
    /// default values included).
    Json,
    /// The same answer as YAML.
    Yaml,
    /// One `kind/id` line per object in the answer.
    Name,
}

/// How this invocation prints.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    /// The format.
    pub output: Output,
    /// Tables without their header row.
    pub no_headers: bool,
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Sets how this invocation prints (once, from its flags).
pub fn set_mode(output: Output, no_headers: bool) {
    let _ = MODE.set(Mode { output, no_headers });
}

/// How this invocation prints.
pub fn mode() -> Mode {
    MODE.get().copied().unwrap_or_default()
}
