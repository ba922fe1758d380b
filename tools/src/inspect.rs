//! `status`, `info` and `policy`.

use crate::target::Target;
use anyhow::{bail, Context as _};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use stripefs_proto::types::{DataClass, FileKind, Policy, WorkerStatus};
use stripefs_proto::{FsError, InodeId};
use tarpc::context;

/// Bytes as a short human figure (binary units).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses `on`, `off` or a zstd level.
pub fn parse_compression(s: &str) -> anyhow::Result<i8> {
    match s {
        "on" => Ok(1),
        "off" => Ok(0),
        n => match n.parse::<i8>() {
            Ok(l) if (1..=Policy::MAX_COMPRESSION_LEVEL).contains(&l) => Ok(l),
            _ => bail!("--compression takes on, off or a zstd level 1-{}, not {s:?}", Policy::MAX_COMPRESSION_LEVEL),
        },
    }
}

/// `stripefs status`.
pub async fn status(t: &Target, json: bool) -> anyhow::Result<()> {
    let c = t.connect().await?;
    let nodes = c.nodes(context::current()).await?.map_err(|e| anyhow::anyhow!("master: {e}"))?;
    let fs = c.statfs(context::current()).await?.map_err(|e| anyhow::anyhow!("master: {e}"))?;
    let workers = c.workers(context::current()).await?.map_err(|e| anyhow::anyhow!("master: {e}"))?;
    let group = c.group(context::current()).await?.map_err(|e| anyhow::anyhow!("master: {e}"))?;
    if json {
        let list: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n.id.0, "addr": n.addr, "host": n.host, "zone": n.zone,
                    "state": if n.alive { "up" } else { "down" },
                    "capacity_bytes": n.capacity_bytes, "free_bytes": n.free_bytes,
                    "used_bytes": n.used_bytes, "chunks": n.chunk_count,
                    "pending_deletions": n.pending_deletions,
                    "workers": n.workers.iter().map(worker_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "master": t.master, "nodes": list,
            "workers": workers.iter().map(worker_json).collect::<Vec<_>>(),
            "total_bytes": fs.total_bytes, "free_bytes": fs.free_bytes, "files": fs.files,
            "masters": crate::masters::health_line(&group),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("master {}", t.master);
    println!("{}", crate::masters::health_line(&group));
    println!(
        "{:>4}  {:<22} {:<12} {:<10} {:<5} {:>10} {:>10} {:>10} {:>8} {:>9}",
        "ID", "ADDRESS", "HOST", "ZONE", "STATE", "CAPACITY", "USED", "FREE", "CHUNKS", "DELETING"
    );
    let (mut used, mut chunks, mut up, mut deleting) = (0, 0, 0, 0);
    for n in &nodes {
        let state = if n.alive { "up" } else { "down" };
        up += n.alive as usize;
        used += n.used_bytes;
        chunks += n.chunk_count;
        deleting += n.pending_deletions;
        println!(
            "{:>4}  {:<22} {:<12} {:<10} {:<5} {:>10} {:>10} {:>10} {:>8} {:>9}",
            n.id.0,
            n.addr,
            n.host,
            n.zone,
            state,
            human(n.capacity_bytes),
            human(n.used_bytes),
            human(n.free_bytes),
            n.chunk_count,
            n.pending_deletions
        );
    }
    println!(
        "total: {up}/{} nodes up, capacity {}, free {}, used by chunks {}, {chunks} chunk replicas, \
         {deleting} replica deletions pending, {} inodes",
        nodes.len(),
        human(fs.total_bytes),
        human(fs.free_bytes),
        human(used),
        fs.files
    );
    println!("background work:");
    for w in &workers {
        println!("  master  {}", worker_line(w));
    }
    for n in nodes.iter().filter(|n| n.alive) {
        for w in &n.workers {
            println!("  node {:<3} {}", n.id.0, worker_line(w));
        }
    }
    Ok(())
}

/// A worker's status as JSON.
fn worker_json(w: &WorkerStatus) -> serde_json::Value {
    serde_json::json!({
        "name": w.name, "state": w.state.to_string(), "detail": w.detail,
        "steps": w.steps, "errors": w.errors, "last_error": w.last_error,
    })
}

/// A worker's status on one line: name, state, what it does, errors.
fn worker_line(w: &WorkerStatus) -> String {
    let errors = match (&w.last_error, w.errors) {
        (Some(e), n) => format!(" [{n} errors, last: {e}]"),
        (None, _) => String::new(),
    };
    format!("{:<14} {:<4}  {}{errors}", w.name, w.state, w.detail)
}

/// `stripefs info PATH`.
pub async fn info(t: &Target, path: &Path, json: bool) -> anyhow::Result<()> {
    let ino = InodeId(std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?.ino());
    let c = t.connect().await?;
    let attr = c.getattr(context::current(), ino).await?.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut chunks = Vec::new();
    if attr.kind == FileKind::File {
        let mut first = 0;
        loop {
            let batch = c
                .chunks(context::current(), ino, first, 4096)
                .await?
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let full = batch.len() == 4096;
            first = batch.last().map(|l| l.index + 1).unwrap_or(u64::MAX);
            chunks.extend(batch);
            if !full {
                break;
            }
        }
    }
    let stored: u64 = chunks.iter().map(|c| c.stored_bytes).sum();
    let logical: u64 = chunks.iter().map(|c| c.length as u64).sum();
    if json {
        let list: Vec<serde_json::Value> = chunks
            .iter()
            .map(|l| {
                serde_json::json!({
                    "index": l.index, "chunk": l.chunk.0, "version": l.version.0,
                    "length": l.length, "stored_bytes": l.stored_bytes,
                    "replicas": l.replicas.iter().map(|r| serde_json::json!({
                        "node": r.node.0, "addr": r.addr, "host": r.host, "zone": r.zone,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "path": path.display().to_string(), "inode": ino.0, "size": attr.size,
            "replication": attr.policy.replication, "compression_level": attr.policy.compression_level,
            "class": attr.class.describe(), "home": attr.home.map(|h| h.0),
            "scratch": scratch_xattr(path),
            "stored_bytes": stored, "chunks": list,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{}: inode {}, {:?}, {} bytes, {}",
        path.display(),
        ino.0,
        attr.kind,
        attr.size,
        attr.class.with_policy(&attr.policy)
    );
    if attr.kind != FileKind::File {
        return Ok(());
    }
    if attr.class.is_scratch() {
        // The mount this path is in says how it reaches the data.
        match scratch_xattr(path) {
            Some(s) => println!("scratch: {s}"),
            None => println!("scratch: home node {}", attr.home.map_or("none".into(), |h| h.to_string())),
        }
        if attr.home.is_some() {
            println!("the data is one plain file on the home node; lost if that host is");
            return Ok(());
        }
    }
    println!(
        "{:>8}  {:>10} {:>10} {:>10} {:>10} {:>6}  REPLICAS",
        "INDEX", "CHUNK", "VERSION", "LENGTH", "STORED", "RATIO"
    );
    for l in &chunks {
        let ratio = if l.stored_bytes > 0 { l.length as f64 / l.stored_bytes as f64 } else { 0.0 };
        let replicas: Vec<String> = l.replicas.iter().map(|r| format!("{}@{}({})", r.node.0, r.host, r.addr)).collect();
        println!(
            "{:>8}  {:>10} {:>10} {:>10} {:>10} {:>6.2}  {}",
            l.index,
            l.chunk.0,
            l.version.0,
            l.length,
            l.stored_bytes,
            ratio,
            replicas.join(" ")
        );
    }
    let ratio = if stored > 0 { logical as f64 / stored as f64 } else { 0.0 };
    println!(
        "{} chunks, {} of data stored in {} per replica (ratio {ratio:.2}); holes read as zeros",
        chunks.len(),
        human(logical),
        human(stored)
    );
    Ok(())
}

/// The `user.stripefs.scratch` xattr of `path`: how the mount reaches a
/// scratch file's data (None: not a scratch file, or not on a mount).
fn scratch_xattr(path: &Path) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::getxattr(path, stripefs_client::core::SCRATCH_XATTR, &mut buf[..]).ok()?;
    buf.truncate(n);
    String::from_utf8(buf).ok()
}

/// `stripefs policy PATH [...]`.
pub async fn policy(
    t: &Target,
    path: &Path,
    replication: Option<u8>,
    level: Option<i8>,
    class: Option<DataClass>,
) -> anyhow::Result<()> {
    if let Some(r) = replication {
        if r == 0 || r > Policy::MAX_REPLICATION {
            bail!("--replication must be between 1 and {}", Policy::MAX_REPLICATION);
        }
    }
    let ino = InodeId(std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?.ino());
    let c = t.connect().await?;
    let fail = |e: FsError| anyhow::anyhow!("{}: {e}", path.display());
    let mut attr = if replication.is_none() && level.is_none() {
        c.getattr(context::current(), ino).await?
    } else {
        let op = stripefs_proto::ops::SetPolicy { ino, replication, compression_level: level };
        c.set_policy(context::current(), stripefs_proto::ops::Request::single(op)).await?.map(|a| a.value)
    }
    .map_err(fail)?;
    if let Some(class) = class {
        let op = stripefs_proto::ops::SetClass { ino, class };
        attr = match c.set_class(context::current(), stripefs_proto::ops::Request::single(op)).await? {
            Ok(a) => a.value,
            Err(FsError::NotSupported) => {
                bail!("{}: a file that holds data keeps its class; set the class of its directory", path.display())
            }
            Err(e) => return Err(fail(e)),
        };
    }
    println!("{}: {}", path.display(), attr.class.with_policy(&attr.policy));
    Ok(())
}

/// The data class named on the command line.
pub fn parse_class(s: &str, remove_lost: bool) -> anyhow::Result<DataClass> {
    match s {
        "replicated" if remove_lost => bail!("--remove-lost goes with --class scratch"),
        "replicated" => Ok(DataClass::Replicated),
        "scratch" => Ok(DataClass::Scratch { remove_lost }),
        other => bail!("--class {other:?}: expected replicated or scratch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(4 << 20), "4.0 MiB");
    }

    #[test]
    fn compression_parses() {
        assert_eq!(parse_compression("on").expect("on"), 1);
        assert_eq!(parse_compression("off").expect("off"), 0);
        assert_eq!(parse_compression("7").expect("7"), 7);
        assert!(parse_compression("99").is_err());
        assert!(parse_compression("fast").is_err());
    }
}
