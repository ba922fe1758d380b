//! Listening on a daemon's fixed address, also right after its previous
//! process was killed.
//!
//! A process killed with `kill -9` (or by the OOM killer) lets go of its
//! listening socket only once its last thread has ended, and one stuck in
//! an `fdatasync` can take a while after the process already looks dead.
//! A restart in that moment (by hand, by systemd, by `stripefs up`) would
//! fail with "Address already in use"; instead it waits for the address.

use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// How long a daemon waits for its address to be let go of.
pub const WAIT_FOR_ADDRESS: Duration = Duration::from_secs(15);

/// Listens on `addr`, waiting up to `wait` (with a log line) while another
/// socket still holds it.
pub async fn listen(addr: &str, wait: Duration) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + wait;
    let mut warned = false;
    loop {
        match TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !warned {
                    tracing::warn!(
                        "{addr} is still in use (a previous process still closing?); waiting up to {wait:?}"
                    );
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_let_go_of_meanwhile_is_taken() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr").to_string();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let l = listen(&addr, Duration::from_secs(10)).await.expect("listens once it is free");
        assert_eq!(l.local_addr().expect("addr").to_string(), addr);
        releaser.join().expect("releaser");
    }

    #[tokio::test]
    async fn an_address_still_held_after_the_wait_is_an_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr").to_string();
        let e = listen(&addr, Duration::from_millis(300)).await.expect_err("still held");
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    }
}
