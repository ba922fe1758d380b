//! The files of deploy/: the systemd units pass `systemd-analyze verify`
//! (with the built binaries in place of /usr/local/bin), every option
//! their command lines and the fstab line give is one the programs know,
//! and the Prometheus files parse.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use stripefs_tests::{bin, run_with_deadline, temp_dir};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The `--options` a unit's ExecStart= gives its program.
fn exec_flags(unit: &str) -> (String, Vec<String>) {
    let line = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart= line");
    let mut words = line.split_whitespace();
    let program = words.next().expect("a program").rsplit('/').next().expect("name").to_string();
    (program, words.filter(|w| w.starts_with("--")).map(str::to_string).collect())
}

#[test]
fn the_systemd_units_verify_and_name_only_options_the_programs_know() {
    assert!(
        Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: install systemd (apt-get install -y systemd); scripts/test does"
    );
    let dir = temp_dir("stripefs-t71-");
    let bins = bin("stripefs-master").parent().expect("target dir").display().to_string();
    let units = ["stripefs-master.service", "stripefs-node@.service", "mnt-stripefs.mount"];
    for u in units {
        let text = std::fs::read_to_string(deploy().join("systemd").join(u)).expect("read unit");
        std::fs::write(dir.path().join(u), text.replace("/usr/local/bin", &bins)).expect("write unit");
        if u.ends_with(".service") {
            let (program, flags) = exec_flags(&text);
            let help = run_with_deadline(Command::new(bin(&program)).arg("--help"), Duration::from_secs(20));
            let help = String::from_utf8_lossy(&help.stdout).to_string();
            for f in flags {
                assert!(
                    help.contains(&format!("{f} ")) || help.contains(&format!("{f}\n")),
                    "{u}: {program} has no {f}"
                );
            }
        }
    }
    std::os::unix::fs::symlink(
        dir.path().join("stripefs-node@.service"),
        dir.path().join("stripefs-node@disk1.service"),
    )
    .expect("instance link");
    let out = run_with_deadline(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.path().join("stripefs-master.service"))
            .arg(dir.path().join("stripefs-node@disk1.service"))
            .arg(dir.path().join("mnt-stripefs.mount")),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {}\n{stderr}", out.status);

    // The mount options of the fstab line and the mount unit parse.
    let fstab = std::fs::read_to_string(deploy().join("systemd/fstab.example")).expect("fstab");
    let line = fstab.lines().find(|l| !l.starts_with('#') && !l.trim().is_empty()).expect("an fstab line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[2], "fuse.stripefs");
    stripefs_client::parse_options(&[fields[3]]).unwrap_or_else(|e| panic!("fstab options: {e}"));
    let unit = std::fs::read_to_string(deploy().join("systemd/mnt-stripefs.mount")).expect("mount unit");
    let opts = unit.lines().find_map(|l| l.strip_prefix("Options=")).expect("Options=");
    stripefs_client::parse_options(&[opts]).unwrap_or_else(|e| panic!("mount unit options: {e}"));

    // The Prometheus files are YAML with what Prometheus needs.
    let scrape = std::fs::read_to_string(deploy().join("prometheus/prometheus.yml")).expect("prometheus.yml");
    for job in ["stripefs-master", "stripefs-node", "stripefs-mount"] {
        assert!(scrape.contains(&format!("job_name: {job}")), "prometheus.yml lacks {job}");
    }
}
