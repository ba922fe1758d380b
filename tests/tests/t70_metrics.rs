//! Prometheus metrics and health checks: the master, every node and a
//! mount serve /metrics, /healthz and /readyz over HTTP, and their numbers
//! move with the work done through the mount.

use std::fs;
use stripefs_client::MountOptions;
use stripefs_tests::{free_addr, http_get, metric, random_bytes, TestCluster};

fn scrape(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "GET {addr}/metrics: {body}");
    body
}

/// The sum of every sample of `name` (whatever its labels).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The sample of `name` whose labels contain `label` (e.g. `create"`).
fn labelled(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn every_daemon_serves_metrics_and_health_and_the_numbers_move_with_the_work() {
    let c = TestCluster::builder().nodes(3).chunk_size(256 * 1024).start();
    let mount_metrics = free_addr();
    let m = c.mount_with(MountOptions { metrics: Some(mount_metrics.clone()), ..Default::default() });
    let master = c.master_metrics_addr();
    let nodes: Vec<String> = (0..3).map(|i| c.node_metrics_addr(i)).collect();
    for addr in std::iter::once(&master).chain(&nodes).chain([&mount_metrics]) {
        assert_eq!(http_get(addr, "/healthz").0, 200, "{addr}/healthz");
        let (status, body) = http_get(addr, "/readyz");
        assert_eq!(status, 200, "{addr}/readyz: {body}");
        assert_eq!(http_get(addr, "/nothing").0, 404);
    }

    let before = (scrape(&master), nodes.iter().map(|a| scrape(a)).collect::<Vec<_>>(), scrape(&mount_metrics));
    assert_eq!(metric(&before.0, "stripefs_master_nodes_up"), 3.0, "{}", before.0);
    let data = random_bytes(300_000);
    for i in 0..5 {
        fs::write(m.join(format!("f{i}")), &data).expect("write");
    }
    for i in 0..5 {
        assert_eq!(fs::read(m.join(format!("f{i}"))).expect("read").len(), data.len());
    }
    let after = (scrape(&master), nodes.iter().map(|a| scrape(a)).collect::<Vec<_>>(), scrape(&mount_metrics));
    eprintln!("master after:\n{}", after.0);

    // Master: the creates and commits it served, the inodes it holds.
    let creates = |t: &str| labelled(t, "stripefs_master_rpc_requests_total", "create\"");
    assert!(creates(&after.0) >= creates(&before.0) + 5.0, "creates did not move:\n{}", after.0);
    let commits = |t: &str| labelled(t, "stripefs_master_rpc_requests_total", "commit_chunk\"");
    assert!(commits(&after.0) >= commits(&before.0) + 10.0, "5 files of 2 chunks: 10 commits:\n{}", after.0);
    assert!(
        metric(&after.0, "stripefs_master_commit_batch_commands_count")
            > metric(&before.0, "stripefs_master_commit_batch_commands_count"),
        "no group commit counted"
    );
    assert_eq!(metric(&after.0, "stripefs_master_inodes"), metric(&before.0, "stripefs_master_inodes") + 5.0);
    // A group of one: it leads, its log grew with the work and is applied.
    assert_eq!(metric(&after.0, "stripefs_master_group_is_leader"), 1.0);
    assert_eq!(metric(&after.0, "stripefs_master_group_voters"), 1.0);
    assert!(metric(&after.0, "stripefs_master_group_term") >= 1.0);
    let (log_before, log_after) = (
        metric(&before.0, "stripefs_master_group_last_log_index"),
        metric(&after.0, "stripefs_master_group_last_log_index"),
    );
    assert!(log_after >= log_before + 15.0, "5 creates and 10 commits: the log grew from {log_before} to {log_after}");
    assert!(metric(&after.0, "stripefs_master_group_applied_index") >= log_after - 1.0, "the log is applied");
    assert!(metric(&after.0, "stripefs_master_log_disk_bytes") > 0.0);
    // The log is on disk up to near its end; nobody to wait for.
    assert!(metric(&after.0, "stripefs_master_log_durable_index") >= log_before + 15.0, "{}", after.0);
    assert_eq!(metric(&after.0, "stripefs_master_sessions_awaiting_replay"), 0.0);
    assert!(metric(&after.0, "stripefs_master_chunks") >= 10.0);
    assert!(total(&after.0, "stripefs_master_node_capacity_bytes") > 0.0);
    // Nodes: two replicas of each chunk written, on two nodes.
    let written: f64 = after.1.iter().map(|t| metric(t, "stripefs_node_written_bytes_total")).sum::<f64>()
        - before.1.iter().map(|t| metric(t, "stripefs_node_written_bytes_total")).sum::<f64>();
    assert!(written >= 2.0 * 5.0 * 300_000.0 * 0.99, "nodes stored {written} bytes");
    let replicas: f64 = after.1.iter().map(|t| metric(t, "stripefs_node_replicas")).sum();
    assert!(replicas >= 20.0, "{replicas} replicas");
    // The mount: the kernel's writes and reads, and their bytes.
    let t = &after.2;
    assert!(metric(t, "stripefs_mount_written_bytes_total") >= 5.0 * 300_000.0, "{t}");
    assert!(metric(t, "stripefs_mount_read_bytes_total") >= 5.0 * 300_000.0, "{t}");
    let writes = |t: &str| labelled(t, "stripefs_mount_fuse_requests_total", "write\"");
    assert!(writes(t) > writes(&before.2), "{t}");
    assert!(metric(t, "stripefs_mount_open_files") >= 0.0);
    assert!(metric(t, "stripefs_mount_held_changes") >= 0.0, "{t}");

    // Every metric the Grafana dashboard and the alert rules use exists.
    let exposed = format!("{}\n{}\n{}", after.0, after.1.join("\n"), after.2);
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for file in ["grafana/stripefs.json", "prometheus/stripefs-alerts.yml"] {
        let text = fs::read_to_string(deploy.join(file)).expect("read deploy file");
        let mut used: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("stripefs_") && w.len() > "stripefs_".len() + 6)
            .collect();
        used.sort();
        used.dedup();
        assert!(!used.is_empty(), "{file} uses no metric");
        for name in used {
            let base = name.trim_end_matches("_bucket");
            assert!(exposed.lines().any(|l| l.starts_with(base)), "{file} uses {name}, which no daemon exposes");
        }
    }
}
