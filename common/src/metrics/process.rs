//! The process itself: the Prometheus process collector's series (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`, …, read from `/proc` on Linux) and `ebb_build_info`.

use std::sync::LazyLock;

/// The version Ebb is built as.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit Ebb is built from (`EBB_COMMIT` at build time, else git's, else `unknown`).
pub const COMMIT: &str = env!("EBB_COMMIT");

static COLLECTOR: LazyLock<metrics_process::Collector> =
    LazyLock::new(metrics_process::Collector::default);

/// Describes the series and sets `ebb_build_info`.
pub(super) fn describe() {
    COLLECTOR.describe();
    metrics::describe_gauge!(
        "ebb_build_info",
        "Always 1; the labels say which version and commit this process runs."
    );
    metrics::gauge!("ebb_build_info", "version" => VERSION, "commit" => COMMIT).set(1.0);
}

/// Reads the process's current figures into their gauges (at each scrape).
pub(super) fn collect() {
    COLLECTOR.collect();
}
