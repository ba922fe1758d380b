//! The benchmark's results and their two forms: a table and JSON.

use super::suite::{Config, IO_BYTES, RANDOM_READ_BYTES, SMALL_FILE_BYTES};
use super::system::Machine;
use super::units::{rate, ratio, ratio_text};
use crate::inspect::human;
use std::fmt::Write as _;
use std::path::PathBuf;

/// What a figure counts per second. Every unit is higher-is-better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Mebibytes of file data per second.
    Mib,
    /// Operations (system calls or open+close pairs) per second.
    Ops,
    /// Directory entries listed per second.
    Entries,
}

impl Unit {
    /// The unit as printed.
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::Mib => "MiB/s",
            Unit::Ops => "ops/s",
            Unit::Entries => "entries/s",
        }
    }
}

/// One figure measured in one directory.
#[derive(Clone, Debug)]
pub struct Measure {
    /// Stable name for JSON (`seq_write`, `stat`, ...).
    pub key: &'static str,
    /// What was measured, for people.
    pub test: String,
    /// What `amount` counts.
    pub unit: Unit,
    /// MiB moved or operations done.
    pub amount: f64,
    /// Time taken, in seconds.
    pub seconds: f64,
}

impl Measure {
    /// The figure: `amount` per second.
    pub fn rate(&self) -> f64 {
        self.amount / self.seconds.max(1e-9)
    }
}

/// The suite's results in one directory.
#[derive(Clone, Debug)]
pub struct SideResult {
    /// The figures, in suite order.
    pub measures: Vec<Measure>,
    /// Set when cold phases could not drop the whole page cache: why, and what was done instead.
    pub cache_note: Option<String>,
}

/// One line of the table: a test in DIR and in the baseline.
#[derive(Clone, Debug)]
pub struct Row {
    /// Stable name for JSON.
    pub key: &'static str,
    /// What was measured.
    pub test: String,
    /// Unit of both figures.
    pub unit: Unit,
    /// The figure in DIR.
    pub dir: f64,
    /// The figure in the baseline.
    pub baseline: f64,
    /// Seconds the test took in DIR.
    pub dir_seconds: f64,
    /// Seconds the test took in the baseline.
    pub baseline_seconds: f64,
}

impl Row {
    /// `dir / baseline`: above 1 means DIR was faster.
    pub fn ratio(&self) -> Option<f64> {
        ratio(self.dir, self.baseline)
    }
}

/// What the suite measured, in both directories.
#[derive(Clone, Debug)]
pub struct Report {
    /// The configuration run.
    pub config: Config,
    /// One row per test, in suite order.
    pub rows: Vec<Row>,
    /// Cache-dropping trouble in DIR, if any.
    pub dir_cache_note: Option<String>,
    /// Cache-dropping trouble in the baseline, if any.
    pub baseline_cache_note: Option<String>,
}

impl Report {
    /// Pairs the two directories' figures, which come in the same order.
    pub fn new(config: Config, dir: SideResult, baseline: SideResult) -> Report {
        assert_eq!(dir.measures.len(), baseline.measures.len(), "both directories run the same suite");
        let rows = dir
            .measures
            .iter()
            .zip(&baseline.measures)
            .map(|(d, b)| {
                assert_eq!(d.key, b.key, "both directories run the same suite");
                Row {
                    key: d.key,
                    test: d.test.clone(),
                    unit: d.unit,
                    dir: d.rate(),
                    baseline: b.rate(),
                    dir_seconds: d.seconds,
                    baseline_seconds: b.seconds,
                }
            })
            .collect();
        Report { config, rows, dir_cache_note: dir.cache_note, baseline_cache_note: baseline.cache_note }
    }
}

/// Where one side of the comparison ran.
#[derive(Clone, Debug)]
pub struct Place {
    /// The directory given.
    pub path: PathBuf,
    /// Its filesystem type, when known.
    pub fstype: Option<String>,
}

impl Place {
    fn describe(&self) -> String {
        match &self.fstype {
            Some(t) => format!("{} ({t})", self.path.display()),
            None => self.path.display().to_string(),
        }
    }
}

/// The stripefs client's memory.
#[derive(Clone, Debug)]
pub enum ClientRss {
    /// DIR is not in a stripefs mount.
    NotStripefs,
    /// DIR is in a stripefs mount but its client could not be read.
    Unknown(String),
    /// `VmHWM` of the client process.
    Peak {
        /// The client's process id, from the mount record.
        pid: u32,
        /// Its peak RSS before the suite ran, in bytes.
        before_bytes: Option<u64>,
        /// Its peak RSS after the suite ran, in bytes.
        after_bytes: u64,
    },
}

/// Everything printed besides the figures.
#[derive(Clone, Debug)]
pub struct Context {
    /// DIR.
    pub dir: Place,
    /// The baseline directory.
    pub baseline: Place,
    /// The scratch directory's stripefs policy, when DIR is in a stripefs mount.
    pub policy: Option<String>,
    /// The stripefs client's peak memory.
    pub rss: ClientRss,
    /// The machine.
    pub machine: Machine,
    /// The command line run.
    pub command: String,
    /// Remarks about how the figures were taken.
    pub notes: Vec<String>,
}

impl Context {
    /// Every note: the context's, then each side's cache trouble.
    fn all_notes(&self, r: &Report) -> Vec<String> {
        let mut notes = self.notes.clone();
        if let Some(n) = &r.dir_cache_note {
            notes.push(format!("{}: {n}", r.config.label));
        }
        if let Some(n) = &r.baseline_cache_note {
            notes.push(format!("baseline: {n}"));
        }
        notes
    }
}

/// The report as a table for people.
pub fn render_table(r: &Report, ctx: &Context) -> String {
    let mut out = String::new();
    let dir_head = r.config.label.to_uppercase();
    let mut dir_line = ctx.dir.describe();
    if let Some(p) = &ctx.policy {
        let _ = write!(dir_line, ", scratch policy {p}");
    }
    let _ = writeln!(out, "{:>9}: {dir_line}", r.config.label);
    let _ = writeln!(out, "{:>9}: {}", "baseline", ctx.baseline.describe());
    out.push('\n');
    let cells: Vec<[String; 4]> = r
        .rows
        .iter()
        .map(|row| {
            let unit = row.unit.suffix();
            [
                row.test.clone(),
                format!("{} {unit}", rate(row.dir)),
                format!("{} {unit}", rate(row.baseline)),
                ratio_text(row.ratio()),
            ]
        })
        .collect();
    let head = ["TEST".to_string(), dir_head, "BASELINE".to_string(), "RATIO".to_string()];
    let width = |i: usize| cells.iter().map(|c| c[i].len()).chain([head[i].len()]).max().unwrap_or(0);
    let w = [width(0), width(1), width(2), width(3)];
    for c in std::iter::once(&head).chain(&cells) {
        let _ = writeln!(
            out,
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}",
            c[0],
            c[1],
            c[2],
            c[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
    }
    out.push('\n');
    let rss = match &ctx.rss {
        ClientRss::NotStripefs => "n/a (DIR is not in a stripefs mount)".to_string(),
        ClientRss::Unknown(why) => format!("n/a ({why})"),
        ClientRss::Peak { pid, before_bytes, after_bytes } => {
            let before = before_bytes.map(|b| format!(", {} before the run", human(b))).unwrap_or_default();
            format!("{} (VmHWM of pid {pid}{before})", human(*after_bytes))
        }
    };
    let _ = writeln!(out, "stripefs client peak RSS: {rss}");
    let m = &ctx.machine;
    let ram = m.mem_total_bytes.map(human).unwrap_or_else(|| "? RAM".into());
    let _ = writeln!(out, "machine: {} cores, {ram} RAM, {}", m.cores, m.kernel);
    let _ = writeln!(out, "command: {}", ctx.command);
    for n in ctx.all_notes(r) {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// The report as JSON.
pub fn to_json(r: &Report, ctx: &Context) -> serde_json::Value {
    let finite = |v: f64| if v.is_finite() { serde_json::json!(v) } else { serde_json::Value::Null };
    let figures: Vec<serde_json::Value> = r
        .rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "key": row.key, "test": row.test, "unit": row.unit.suffix(),
                "dir": finite(row.dir), "baseline": finite(row.baseline),
                "ratio": row.ratio(),
                "dir_seconds": row.dir_seconds, "baseline_seconds": row.baseline_seconds,
            })
        })
        .collect();
    let rss = match &ctx.rss {
        ClientRss::NotStripefs => serde_json::json!({"available": false, "reason": "not a stripefs mount"}),
        ClientRss::Unknown(why) => serde_json::json!({"available": false, "reason": why}),
        ClientRss::Peak { pid, before_bytes, after_bytes } => serde_json::json!({
            "available": true, "pid": pid, "peak_bytes": after_bytes, "peak_bytes_before": before_bytes,
        }),
    };
    let c = &r.config;
    serde_json::json!({
        "dir": {
            "path": ctx.dir.path.display().to_string(), "fstype": ctx.dir.fstype,
            "label": c.label, "policy": ctx.policy, "cache_note": r.dir_cache_note,
        },
        "baseline": {
            "path": ctx.baseline.path.display().to_string(), "fstype": ctx.baseline.fstype,
            "cache_note": r.baseline_cache_note,
        },
        "config": {
            "size_bytes": c.size_bytes, "io_bytes": IO_BYTES, "files": c.files,
            "small_files": c.small_files, "small_file_bytes": SMALL_FILE_BYTES,
            "random_reads": c.random_reads, "random_read_bytes": RANDOM_READ_BYTES,
            "threads": c.threads, "meta_threads": c.meta_threads, "drop_caches": c.drop_caches,
        },
        "figures": figures,
        "client_rss": rss,
        "machine": {
            "cores": ctx.machine.cores, "mem_total_bytes": ctx.machine.mem_total_bytes,
            "kernel": ctx.machine.kernel,
        },
        "command": ctx.command,
        "notes": ctx.all_notes(r),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            dir: "/mnt/stripefs".into(),
            label: "stripefs".into(),
            baseline: "/var/tmp".into(),
            size_bytes: 1 << 30,
            files: 10_000,
            small_files: 2_000,
            random_reads: 20_000,
            threads: 4,
            meta_threads: 8,
            drop_caches: true,
        }
    }

    fn side(write_seconds: f64, stat_seconds: f64, note: Option<&str>) -> SideResult {
        SideResult {
            measures: vec![
                Measure {
                    key: "seq_write",
                    test: "seq write 1 GiB".into(),
                    unit: Unit::Mib,
                    amount: 1024.0,
                    seconds: write_seconds,
                },
                Measure {
                    key: "stat",
                    test: "stat 10,000 files (cold)".into(),
                    unit: Unit::Ops,
                    amount: 10_000.0,
                    seconds: stat_seconds,
                },
            ],
            cache_note: note.map(String::from),
        }
    }

    fn context(rss: ClientRss) -> Context {
        Context {
            dir: Place { path: "/mnt/stripefs".into(), fstype: Some("fuse.stripefs".into()) },
            baseline: Place { path: "/var/tmp".into(), fstype: Some("ext4".into()) },
            policy: Some("replication=2 compression=zstd:1".into()),
            rss,
            machine: Machine { cores: 2, mem_total_bytes: Some(24 << 30), kernel: "Linux 6.18.0 x86_64".into() },
            command: "stripefs bench /mnt/stripefs".into(),
            notes: vec![],
        }
    }

    #[test]
    fn rows_pair_figures_and_ratios() {
        let r = Report::new(config(), side(8.0, 0.5, None), side(2.0, 1.0, None));
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[0].dir, 128.0);
        assert_eq!(r.rows[0].baseline, 512.0);
        assert_eq!(r.rows[0].ratio(), Some(0.25));
        assert_eq!(r.rows[1].ratio(), Some(2.0));
    }

    #[test]
    fn table_has_columns_and_context() {
        let r = Report::new(config(), side(8.0, 0.5, None), side(2.0, 1.0, Some("page cache not dropped (not root)")));
        let rss = ClientRss::Peak { pid: 42, before_bytes: Some(10 << 20), after_bytes: 300 << 20 };
        let t = render_table(&r, &context(rss));
        let lines: Vec<&str> = t.lines().collect();
        let head = lines.iter().position(|l| l.starts_with("TEST")).expect("header line");
        let header: Vec<&str> = lines[head].split_whitespace().collect();
        assert_eq!(header, ["TEST", "STRIPEFS", "BASELINE", "RATIO"]);
        let cells =
            |l: &str| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect::<Vec<_>>();
        assert_eq!(cells(lines[head + 1]), ["seq write 1 GiB", "128.0 MiB/s", "512.0 MiB/s", "0.25x"], "{t}");
        assert_eq!(
            cells(lines[head + 2]),
            ["stat 10,000 files (cold)", "20,000 ops/s", "10,000 ops/s", "2.00x"],
            "{t}"
        );
        // Columns line up: every row is as long as the header.
        assert_eq!(lines[head].len(), lines[head + 1].len());
        assert_eq!(lines[head].len(), lines[head + 2].len());
        assert!(t.contains("stripefs client peak RSS: 300.0 MiB (VmHWM of pid 42, 10.0 MiB before the run)"), "{t}");
        assert!(t.contains("machine: 2 cores, 24.0 GiB RAM, Linux 6.18.0 x86_64"), "{t}");
        assert!(t.contains("command: stripefs bench /mnt/stripefs"), "{t}");
        assert!(t.contains("note: baseline: page cache not dropped (not root)"), "{t}");
        assert!(t.contains("scratch policy replication=2 compression=zstd:1"), "{t}");
    }

    #[test]
    fn rss_is_na_outside_stripefs() {
        let r = Report::new(config(), side(1.0, 1.0, None), side(1.0, 1.0, None));
        let t = render_table(&r, &context(ClientRss::NotStripefs));
        assert!(t.contains("stripefs client peak RSS: n/a"), "{t}");
        let j = to_json(&r, &context(ClientRss::NotStripefs));
        assert_eq!(j["client_rss"]["available"], false);
    }

    #[test]
    fn json_has_figures_and_ratios() {
        let r = Report::new(config(), side(8.0, 0.5, None), side(2.0, 1.0, None));
        let rss = ClientRss::Peak { pid: 42, before_bytes: None, after_bytes: 1 << 20 };
        let j = to_json(&r, &context(rss));
        let figs = j["figures"].as_array().expect("figures");
        assert_eq!(figs.len(), 2);
        assert_eq!(figs[0]["key"], "seq_write");
        assert_eq!(figs[0]["unit"], "MiB/s");
        assert_eq!(figs[0]["dir"], 128.0);
        assert_eq!(figs[0]["ratio"], 0.25);
        assert_eq!(j["client_rss"]["pid"], 42);
        assert_eq!(j["machine"]["cores"], 2);
        assert_eq!(j["config"]["size_bytes"], 1u64 << 30);
    }
}
