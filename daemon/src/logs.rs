//! Log setup of a daemon: `tracing` to stderr, filtered by `RUST_LOG`.

/// The filter used when `RUST_LOG` is unset: `info`, with tarpc's
/// per-request lines at `warn`.
pub const DEFAULT_FILTER: &str = "info,tarpc=warn";

/// Sends this process's logs to stderr (with colours only on a terminal),
/// filtered by `RUST_LOG`, else by [`DEFAULT_FILTER`]. Spans are printed
/// with their fields, so `RUST_LOG=stripefs_master=debug` follows one
/// request through the layers. Does nothing if logging is already set up.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into()),
        )
        .try_init();
}
