//! What the three stripefs daemons (`stripefs-master`, `stripefs-node`,
//! `stripefs-mount`) share instead of copying: log setup ([`logs`]),
//! stopping on SIGTERM or Ctrl-C ([`signals`]), poison-tolerant locks
//! ([`sync`]), background workers with one shape ([`worker`]), the
//! Prometheus metrics and health-check listener ([`metrics`]) and
//! listening on a fixed address right after a crash ([`listen`]).

pub mod listen;
pub mod logs;
pub mod metrics;
pub mod signals;
pub mod sync;
pub mod worker;

pub use sync::lock;
pub use worker::{Step, Worker, Workers};
