//! Log setup of a daemon: `tracing` to stderr, filtered by `RUST_LOG`.

/// The filter used when `RUST_LOG` is unset: `info`, with tarpc's
/// per-request lines at `warn`.
pub const DEFAULT_FILTER: &str = "info,tarpc=warn";

/// Sends this process's logs to stderr (with colours only on a terminal),
/// filtered by `RUST_LOG`, else by [`DEFAULT_FILTER`]. Every request runs
/// in a `debug` span: a kernel request in the mount (`fuse`: op, inode,
/// handle), an RPC on the master or a node (`rpc`: op, peer, inode or
/// chunk, and tarpc's trace id, the same on the calling and the serving
/// side), a chunk write on a node (`write`), a group commit on the master
/// (`commit`). With `RUST_LOG=debug` (or `stripefs_master=debug`, ...) each
/// line names the spans it ran in and each span logs its end with its
/// time, so one slow `create` can be followed from the kernel to the disk.
/// Does nothing if logging is already set up.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A request's span logs its end with the time it took, at the
        // span's level (debug: silent unless asked for).
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into()),
        )
        .try_init();
}
