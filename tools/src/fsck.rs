//! `stripefs fsck`: checks a filesystem through its running master (and
//! repairs it with `--repair`), or a stopped master's database opened
//! read-only (`--db`). Exit codes follow fsck(8).

use crate::inspect::human;
use crate::target::{default_local_dir, Target};
use anyhow::{anyhow, bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use stripefs_proto::types::{FileKind, FsckOutcome, FsckProblem, FsckProblemKind, FsckReport};

/// No problem found.
pub const EXIT_CLEAN: i32 = 0;
/// Problems found and corrected (added to [`EXIT_UNCORRECTED`] when some are left).
pub const EXIT_CORRECTED: i32 = 1;
/// Problems left uncorrected.
pub const EXIT_UNCORRECTED: i32 = 4;
/// fsck could not do its job: the master is unreachable, the database
/// cannot be opened, the arguments are wrong.
pub const EXIT_OPERATIONAL: i32 = 8;

/// How long the master may take to scan (and repair) a large filesystem.
const FSCK_DEADLINE: Duration = Duration::from_secs(3600);

/// Most problems printed in the human report; `--json` lists them all.
const MAX_PRINTED: usize = 1000;
/// Most replicas awaiting garbage collection printed in the human report.
const MAX_GARBAGE_PRINTED: usize = 10;

/// Examples printed at the end of `stripefs fsck --help`.
pub const EXAMPLES: &str = "\
Exit status (as fsck(8)): 0 no problem, 1 problems corrected, 4 problems left uncorrected
(5: some of each), 8 operational error (master unreachable, database unreadable, bad arguments).

Examples:
  # Check the filesystem mounted on /mnt/stripefs, through its master:
  stripefs fsck /mnt/stripefs

  # Check and fix what can be fixed:
  stripefs fsck /mnt/stripefs --repair

  # Check a stopped master's database (read-only; node data is not checked):
  stripefs fsck --db /var/lib/stripefs/master/master.redb --json";

/// Options of `stripefs fsck`.
#[derive(clap::Args, Debug)]
pub struct FsckArgs {
    /// Any path inside a stripefs mount (selects its cluster).
    path: Option<PathBuf>,
    /// Check the database file of a stopped master (DIR/master.redb), opened read-only, instead of a running
    /// master. Node liveness, replica inventories and corrupt replicas are then not checked.
    #[arg(long, value_name = "FILE", conflicts_with = "path")]
    db: Option<PathBuf>,
    /// Fix what can be fixed: wrong entries are removed, link counts, sizes and counters corrected, inodes with
    /// no name moved to /lost+found, stale replicas deleted. Needs the running master.
    #[arg(long)]
    repair: bool,
    /// Machine-readable report on stdout.
    #[arg(long)]
    json: bool,
}

/// Where the report came from.
enum Source {
    Master(String),
    Db(PathBuf),
}

/// Runs `stripefs fsck`; returns the exit code.
pub async fn run(args: FsckArgs, master: Option<&str>, secret_file: Option<&Path>) -> anyhow::Result<i32> {
    let (report, source) = match &args.db {
        Some(db) => {
            if args.repair {
                bail!(
                    "--repair needs the running master (repairs go through its single writer); start the master and \
                     run `stripefs fsck --repair` against it (--master ADDR or a path inside a mount)"
                );
            }
            if master.is_some() {
                bail!("--db checks a stopped master's database; it cannot be combined with --master");
            }
            (offline(db)?, Source::Db(db.clone()))
        }
        None => {
            let target = Target::resolve(master, secret_file, args.path.as_deref(), &default_local_dir())?;
            (online(&target, args.repair).await?, Source::Master(target.master.clone()))
        }
    };
    let code = exit_code(&report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&report, &source, code))?);
    } else {
        print!("{}", render(&report, &source));
    }
    Ok(code)
}

/// The exit code of a report: the sum of fsck(8)'s conditions.
pub fn exit_code(r: &FsckReport) -> i32 {
    let mut code = EXIT_CLEAN;
    if r.corrected > 0 {
        code |= EXIT_CORRECTED;
    }
    if r.uncorrected > 0 {
        code |= EXIT_UNCORRECTED;
    }
    code
}

fn offline(db: &Path) -> anyhow::Result<FsckReport> {
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} checking {msg} [{bar:30}] {pos}/{len} records ({eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(db.display().to_string());
    let report = stripefs_master::fsck::offline(db, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    Ok(report?)
}

async fn online(target: &Target, repair: bool) -> anyhow::Result<FsckReport> {
    let client = target.connect().await?;
    let spinner = if std::io::stderr().is_terminal() { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    spinner.set_message(format!(
        "master {} is {}…",
        target.master,
        if repair { "checking and repairing the filesystem" } else { "checking the filesystem" }
    ));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let result = client.fsck(stripefs_proto::net::context_with_timeout(FSCK_DEADLINE), repair).await;
    spinner.finish_and_clear();
    result
        .with_context(|| format!("fsck call to the master at {}", target.master))?
        .map_err(|e| anyhow!("the master at {} could not run fsck: {e}", target.master))
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "file",
        FileKind::Dir => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "fifo",
        FileKind::Socket => "socket",
        FileKind::CharDevice => "character device",
        FileKind::BlockDevice => "block device",
    }
}

/// A short label and a sentence for a problem.
fn describe(k: &FsckProblemKind) -> (&'static str, String) {
    use FsckProblemKind as P;
    match k {
        P::DanglingEntry { dir, name, child } => {
            ("dangling entry", format!("entry {name:?} in directory {dir} names inode {child}, which does not exist"))
        }
        P::EntryOutsideDir { dir, name, child } => (
            "entry outside a directory",
            format!("entry {name:?} (inode {child}) is filed under inode {dir}, which is missing or not a directory"),
        ),
        P::ExtraDirName { dir, name, child } => {
            ("extra directory name", format!("directory {child} has a second name {name:?} in directory {dir}"))
        }
        P::WrongParent { ino, stored, dir } => {
            ("wrong parent", format!("directory {ino} records parent {stored}, but its name is in directory {dir}"))
        }
        P::WrongNlink { ino, kind, stored, counted } => {
            ("wrong link count", format!("{} {ino} has link count {stored}, should be {counted}", kind_name(*kind)))
        }
        P::Detached { ino, kind } => ("detached inode", format!("{} {ino} has no name", kind_name(*kind))),
        P::DirCycle { ino, dir, name } => (
            "directory loop",
            format!("directory {ino} ({name:?} in directory {dir}) is in a loop of directories cut off from the root"),
        ),
        P::LinkedOrphan { ino } => ("orphan with names", format!("inode {ino} is in the orphan table but has names")),
        P::StaleOrphan { ino } => ("stale orphan", format!("the orphan table lists inode {ino}, which does not exist")),
        P::ChunkPastEof { ino, index, chunk, end, size } => (
            "chunk past end of file",
            format!("chunk {chunk} (index {index}) of file {ino} ends at byte {end}, past the file size {size}"),
        ),
        P::ChunkTooLong { ino, index, chunk, length, chunk_size } => (
            "chunk too long",
            format!(
                "chunk {chunk} (index {index}) of file {ino} holds {length} bytes, over the chunk size {chunk_size}"
            ),
        ),
        P::ChunkWithoutFile { ino, index, chunk, version } => (
            "chunk without file",
            format!("chunk {chunk} v{version} (index {index}) belongs to inode {ino}, missing or not a regular file"),
        ),
        P::SharedChunkId { chunk, ino, index, other_ino, other_index } => (
            "shared chunk id",
            format!("chunk id {chunk} is used by file {ino} index {index} and by file {other_ino} index {other_index}"),
        ),
        P::WrongAllocated { ino, stored, counted } => {
            ("wrong allocated size", format!("file {ino} records {stored} allocated bytes, its chunks hold {counted}"))
        }
        P::WrongInodeCount { stored, counted } => {
            ("wrong inode count", format!("the inode count is {stored}, there are {counted} inodes"))
        }
        P::NextInodeTooLow { next_inode, max_inode } => (
            "next inode too low",
            format!("the next inode number {next_inode} is not above the highest in use, {max_inode}"),
        ),
        P::Unreadable { table, key } => ("unreadable record", format!("{table} record {key} is unreadable or missing")),
        P::MissingChunk { ino, index, chunk, version } => (
            "missing chunk",
            format!("chunk {chunk} v{version} (index {index}) of file {ino} has no live, good replica"),
        ),
        P::UnderReplicated { ino, index, chunk, version, live, want } => (
            "under-replicated",
            format!("chunk {chunk} v{version} (index {index}) of file {ino} has {live} of {want} replicas live"),
        ),
        P::StaleReplica { node, chunk, version, current, ino, index } => (
            "stale replica",
            format!(
                "node {node} holds chunk {chunk} v{version}, not the current v{current} (file {ino}, index {index})"
            ),
        ),
        P::UnreferencedReplica { node, chunk, version } => {
            ("unreferenced replica", format!("node {node} holds chunk {chunk} v{version}, which no file uses"))
        }
        P::CorruptReplica { node, ino, index, chunk, version } => (
            "corrupt replica",
            format!("node {node}'s replica of chunk {chunk} v{version} (file {ino}, index {index}) is corrupt"),
        ),
        P::LostScratchFile { ino, node } => {
            ("lost scratch file", format!("scratch file {ino} lives on node {node} only, which is down"))
        }
        P::CorruptScratchFile { ino, node } => {
            ("corrupt scratch file", format!("scratch file {ino} on node {node} fails its checksums (no other copy)"))
        }
    }
}

/// What `--repair` would do about a problem found by a check-only run.
fn remedy(k: &FsckProblemKind) -> &'static str {
    use FsckProblemKind as P;
    match k {
        P::DanglingEntry { .. } | P::EntryOutsideDir { .. } | P::ExtraDirName { .. } => "--repair removes the entry",
        P::WrongParent { .. }
        | P::WrongNlink { .. }
        | P::WrongAllocated { .. }
        | P::WrongInodeCount { .. }
        | P::NextInodeTooLow { .. } => "--repair corrects it",
        P::Detached { .. } | P::DirCycle { .. } => "--repair moves it to /lost+found",
        P::LinkedOrphan { .. } | P::StaleOrphan { .. } => "--repair removes the orphan record",
        P::ChunkPastEof { .. } => "--repair extends the file to cover it",
        P::ChunkWithoutFile { .. } => "--repair drops the chunk and deletes its replicas",
        P::ChunkTooLong { .. } | P::SharedChunkId { .. } | P::Unreadable { .. } => "cannot be repaired",
        P::MissingChunk { .. } => "data lost unless a node holding it comes back",
        P::UnderReplicated { .. } => "the master re-replicates it by itself",
        P::StaleReplica { version, current, .. } if version < current => "--repair deletes it",
        P::StaleReplica { .. } | P::UnreferencedReplica { .. } => {
            "left to garbage collection (may be an upload in progress)"
        }
        P::CorruptReplica { .. } => "--repair drops it so that re-replication replaces it",
        P::LostScratchFile { .. } => {
            "data lost unless its node comes back; remove the file (a scratch class with --remove-lost does)"
        }
        P::CorruptScratchFile { .. } => "its damaged blocks read as EIO; write the file again or remove it",
    }
}

fn outcome_text(p: &FsckProblem) -> String {
    use FsckProblemKind as P;
    match (p.outcome, &p.kind) {
        (FsckOutcome::Found, k) => remedy(k).to_string(),
        (FsckOutcome::Repaired, P::Detached { ino, .. } | P::DirCycle { ino, .. }) => {
            format!("repaired: moved to /lost+found/#{ino}")
        }
        (FsckOutcome::Repaired, _) => "repaired".into(),
        (FsckOutcome::Queued, P::UnderReplicated { .. }) => "queued for automatic re-replication".into(),
        (FsckOutcome::Queued, _) => "being repaired by the master".into(),
        (FsckOutcome::NotRepairable, P::MissingChunk { .. }) => {
            "NOT REPAIRABLE: data lost unless a node holding it comes back".into()
        }
        (FsckOutcome::NotRepairable, P::LostScratchFile { .. }) => {
            "NOT REPAIRABLE: data lost unless its node comes back".into()
        }
        (FsckOutcome::NotRepairable, P::CorruptScratchFile { .. }) => {
            "NOT REPAIRABLE: write the file again or remove it".into()
        }
        (FsckOutcome::NotRepairable, _) => "NOT REPAIRABLE".into(),
        (FsckOutcome::Kept, _) => "left alone: may be an upload in progress; garbage collection removes it".into(),
        (FsckOutcome::Changed, _) => "not repaired: changed since the scan; run fsck again".into(),
        (FsckOutcome::Failed(e), _) => format!("REPAIR FAILED: {e}"),
    }
}

fn outcome_name(o: FsckOutcome) -> &'static str {
    match o {
        FsckOutcome::Found => "found",
        FsckOutcome::Repaired => "repaired",
        FsckOutcome::Queued => "queued",
        FsckOutcome::NotRepairable => "not_repairable",
        FsckOutcome::Kept => "kept",
        FsckOutcome::Changed => "changed",
        FsckOutcome::Failed(_) => "failed",
    }
}

/// `UnderReplicated` → `under_replicated`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// One problem as a flat JSON object: `kind`, its fields, `outcome`.
fn problem_json(p: &FsckProblem) -> serde_json::Value {
    let mut v = kind_json(&p.kind);
    v["outcome"] = outcome_name(p.outcome).into();
    if let FsckOutcome::Failed(e) = p.outcome {
        v["error"] = e.to_string().into();
    }
    v
}

/// A problem kind as a flat JSON object: `kind`, its fields, `message`.
fn kind_json(kind: &FsckProblemKind) -> serde_json::Value {
    let mut obj = serde_json::Map::new();
    // Externally tagged: {"Variant": {fields}}. A field named `kind` (the
    // inode's file kind) becomes `file_kind`: `kind` names the problem.
    if let Ok(serde_json::Value::Object(tagged)) = serde_json::to_value(kind) {
        for (variant, fields) in tagged {
            if let serde_json::Value::Object(fields) = fields {
                for (k, v) in fields {
                    let k = if k == "kind" { "file_kind".to_string() } else { k };
                    obj.insert(k, v);
                }
            }
            obj.insert("kind".into(), snake(&variant).into());
        }
    }
    match kind {
        FsckProblemKind::WrongNlink { kind, .. } | FsckProblemKind::Detached { kind, .. } => {
            obj.insert("file_kind".into(), kind_name(*kind).into());
        }
        _ => {}
    }
    obj.insert("message".into(), describe(kind).1.into());
    serde_json::Value::Object(obj)
}

fn to_json(r: &FsckReport, source: &Source, code: i32) -> serde_json::Value {
    let mut v = serde_json::json!({
        "mode": if r.online { "online" } else { "offline" },
        "repair": r.repair,
        "clean": r.is_clean(),
        "exit_code": code,
        "counts": r.counts,
        "problem_count": r.problem_count,
        "corrected": r.corrected,
        "uncorrected": r.uncorrected,
        "problems": r.problems.iter().map(problem_json).collect::<Vec<_>>(),
        "garbage_count": r.garbage_count,
        "garbage": r.garbage.iter().map(kind_json).collect::<Vec<_>>(),
        "notes": r.notes,
    });
    match source {
        Source::Master(m) => v["master"] = m.clone().into(),
        Source::Db(p) => v["db"] = p.display().to_string().into(),
    }
    v
}

/// The human report.
fn render(r: &FsckReport, source: &Source) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let what = match source {
        Source::Master(m) => format!("master {m}"),
        Source::Db(p) => format!("database {} (offline, read-only)", p.display()),
    };
    let mode = if r.repair { "check and repair" } else { "check only" };
    let _ = writeln!(out, "stripefs fsck: {what}, {mode}");
    let c = &r.counts;
    let _ = write!(
        out,
        "scanned {} inodes ({} directories, {} files, {}), {} entries, {} chunks with {} replicas",
        c.inodes,
        c.directories,
        c.files,
        human(c.file_bytes),
        c.entries,
        c.chunks,
        c.replicas
    );
    if c.scratch_files > 0 {
        let _ = write!(out, ", {} scratch files", c.scratch_files);
    }
    if r.online {
        let _ = write!(out, "; {} nodes, {} alive, {} inventories", c.nodes, c.nodes_alive, c.inventories);
    }
    out.push('\n');
    if r.problems.is_empty() {
        let _ = writeln!(out, "no problems found");
    } else {
        let width = r.problems.iter().map(|p| describe(&p.kind).0.len()).max().unwrap_or(0);
        for p in r.problems.iter().take(MAX_PRINTED) {
            let (label, text) = describe(&p.kind);
            let _ = writeln!(out, "  {label:<width$}  {text}: {}", outcome_text(p));
        }
        if r.problem_count > MAX_PRINTED as u64 {
            let _ = writeln!(out, "  ... and {} more (--json lists them)", r.problem_count - MAX_PRINTED as u64);
        }
        let _ = writeln!(
            out,
            "{} problem{}: {} corrected, {} left uncorrected",
            r.problem_count,
            if r.problem_count == 1 { "" } else { "s" },
            r.corrected,
            r.uncorrected
        );
        let lost = r.problems.iter().filter(|p| matches!(p.kind, FsckProblemKind::MissingChunk { .. })).count();
        if lost > 0 {
            let _ = writeln!(out, "{lost} chunk(s) have no live replica: their data is unavailable");
        }
    }
    if r.garbage_count > 0 {
        let _ = writeln!(out, "awaiting garbage collection (not problems):");
        for g in r.garbage.iter().take(MAX_GARBAGE_PRINTED) {
            let _ = writeln!(out, "  {}", describe(g).1);
        }
        if r.garbage_count > MAX_GARBAGE_PRINTED as u64 {
            let _ = writeln!(out, "  ... and {} more", r.garbage_count - MAX_GARBAGE_PRINTED as u64);
        }
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stripefs_proto::types::FsckCounts;
    use stripefs_proto::{ChunkId, FsError, InodeId, Version};

    fn report(problems: Vec<FsckProblem>) -> FsckReport {
        let corrected = problems.iter().filter(|p| p.outcome.is_corrected()).count() as u64;
        FsckReport {
            online: true,
            repair: true,
            counts: FsckCounts::default(),
            problem_count: problems.len() as u64,
            corrected,
            uncorrected: problems.len() as u64 - corrected,
            problems,
            notes: vec![],
            garbage: vec![],
            garbage_count: 0,
        }
    }

    fn under(outcome: FsckOutcome) -> FsckProblem {
        let kind = FsckProblemKind::UnderReplicated {
            ino: InodeId(5),
            index: 2,
            chunk: ChunkId(7),
            version: Version(9),
            live: 1,
            want: 2,
        };
        FsckProblem { kind, outcome }
    }

    #[test]
    fn exit_codes_follow_fsck8() {
        assert_eq!(exit_code(&report(vec![])), 0);
        assert_eq!(exit_code(&report(vec![under(FsckOutcome::Repaired)])), 1);
        assert_eq!(exit_code(&report(vec![under(FsckOutcome::Found)])), 4);
        assert_eq!(exit_code(&report(vec![under(FsckOutcome::Repaired), under(FsckOutcome::Queued)])), 5);
    }

    #[test]
    fn json_problems_are_flat() {
        let v = problem_json(&under(FsckOutcome::Failed(FsError::Internal)));
        assert_eq!(v["kind"], "under_replicated");
        assert_eq!(v["ino"], 5);
        assert_eq!(v["chunk"], 7);
        assert_eq!(v["live"], 1);
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["error"], "internal error");
    }

    #[test]
    fn a_file_kind_field_does_not_hide_the_problem_kind() {
        let p = FsckProblem {
            kind: FsckProblemKind::Detached { ino: InodeId(3), kind: FileKind::Dir },
            outcome: FsckOutcome::Found,
        };
        let v = problem_json(&p);
        assert_eq!(
            (v["kind"].as_str(), v["file_kind"].as_str(), v["ino"].as_u64()),
            (Some("detached"), Some("directory"), Some(3))
        );
    }

    #[test]
    fn the_human_report_says_what_was_done() {
        let text = render(&report(vec![under(FsckOutcome::Queued)]), &Source::Master("m:1".into()));
        assert!(text.contains("under-replicated"), "{text}");
        assert!(text.contains("has 1 of 2 replicas live: queued for automatic re-replication"), "{text}");
        assert!(text.contains("1 problem: 0 corrected, 1 left uncorrected"), "{text}");
    }

    #[test]
    fn garbage_is_listed_apart_and_does_not_change_the_exit_code() {
        let mut r = report(vec![]);
        r.garbage = vec![FsckProblemKind::UnreferencedReplica {
            node: stripefs_proto::NodeId(2),
            chunk: ChunkId(9),
            version: Version(4),
        }];
        r.garbage_count = 1;
        assert_eq!(exit_code(&r), EXIT_CLEAN);
        let text = render(&r, &Source::Master("m:1".into()));
        assert!(text.contains("no problems found"), "{text}");
        assert!(text.contains("awaiting garbage collection (not problems):"), "{text}");
        let v = to_json(&r, &Source::Master("m:1".into()), 0);
        assert_eq!(v["garbage_count"], 1);
        assert_eq!(v["garbage"][0]["kind"], "unreferenced_replica");
        assert_eq!(v["problems"].as_array().map(Vec::len), Some(0));
    }
}
