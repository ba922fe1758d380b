//! Log setup of a daemon: `tracing` to stderr, filtered by `RUST_LOG`.

/// The filter used when `RUST_LOG` is unset: `info`, with tarpc's
/// per-request lines and openraft's inner workings at `warn` (the master
/// logs the group's own events: elections, snapshots, members).
pub const DEFAULT_FILTER: &str = "info,tarpc=warn,openraft=warn";

/// What is added to a `RUST_LOG` for each crate it does not name: their
/// lines (several per request) would drown the requests' own.
const QUIET_UNLESS_NAMED: &[(&str, &str)] = &[("openraft", "openraft=info"), ("tarpc", "tarpc=warn")];

/// Sends this process's logs to stderr (with colours only on a terminal),
/// filtered by `RUST_LOG`, else by [`DEFAULT_FILTER`]. Every request runs
/// in a `debug` span: a kernel request in the mount (`fuse`: op, inode,
/// handle), an RPC on the master or a node (`rpc`: op, peer, inode or
/// chunk, and tarpc's trace id, the same on the calling and the serving
/// side), a chunk write on a node (`write`), a group commit on the master
/// (`commit`: from its proposal to the master group until it is in the
/// log and applied). With `RUST_LOG=debug` (or `stripefs_master=debug`, ...) each
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
        .with_env_filter(filter(std::env::var("RUST_LOG").ok().as_deref()))
        .try_init();
}

/// The filter for a `RUST_LOG` value (None: unset).
fn filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let spec = match rust_log {
        None | Some("") => DEFAULT_FILTER.to_string(),
        Some(s) => {
            let mut spec = s.to_string();
            for (name, quiet) in QUIET_UNLESS_NAMED {
                if !s.contains(name) {
                    spec = format!("{spec},{quiet}");
                }
            }
            spec
        }
    };
    tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("RUST_LOG={spec:?} is not a valid filter ({e}); logging at {DEFAULT_FILTER}");
        DEFAULT_FILTER.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openraft_is_quiet_unless_named() {
        let same = |got: tracing_subscriber::EnvFilter, want: &str| {
            assert_eq!(got.to_string(), tracing_subscriber::EnvFilter::new(want).to_string());
        };
        same(filter(None), DEFAULT_FILTER);
        same(filter(Some("debug")), "debug,openraft=info,tarpc=warn");
        same(filter(Some("debug,openraft=trace")), "debug,openraft=trace,tarpc=warn");
    }
}
