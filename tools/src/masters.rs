//! `stripefs masters`: the master group — list its members, make a new
//! group, add, remove and replace members, move the leadership away.

use crate::target::Target;
use clap::Subcommand;
use std::time::Duration;
use stripefs_proto::net::{context_with_timeout, master_addrs};
use stripefs_proto::types::{GroupChange, GroupStatus};

/// Membership changes may wait for a new member to catch up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(600);

/// What `stripefs masters` does.
#[derive(Subcommand, Debug)]
pub enum MastersCmd {
    /// List every master: id, address, role, term, last log index, lag
    /// behind the leader, and time since the leader last heard from it
    /// (the default).
    List,
    /// Make a new group of the masters at ADDRS (each started with --join
    /// on an empty data directory) and create its filesystem.
    Init {
        /// Every member, comma-separated: m1:9400,m2:9400,m3:9400.
        addrs: String,
        /// Chunk size of the new filesystem, in bytes (power of two, 64 KiB
        /// to 64 MiB; default 4 MiB).
        #[arg(long, value_name = "BYTES")]
        chunk_size: Option<u32>,
    },
    /// Add the master at ADDR (started with --join on an empty data
    /// directory): it catches up from a snapshot and the log, then votes.
    /// To replace a dead master, add the new one, then remove the dead one.
    Add {
        /// Its address, as the others reach it.
        addr: String,
    },
    /// Remove the master with this id (dead or alive) from the group.
    Remove {
        /// Its id (see `stripefs masters`).
        id: u64,
    },
    /// Hand the leadership to another member (before maintenance of the
    /// leader's host).
    StepDown,
}

fn or_dash(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The group's status from its leader, or from any master that answers.
async fn status_of(t: &Target) -> anyhow::Result<GroupStatus> {
    if let Ok(c) = t.connect().await {
        if let Ok(Ok(st)) = c.group(context_with_timeout(Duration::from_secs(10))).await {
            return Ok(st);
        }
    }
    let mut last = None;
    for addr in master_addrs(&t.master) {
        match t.connect_one(&addr).await {
            Ok(c) => match c.group(context_with_timeout(Duration::from_secs(10))).await {
                Ok(Ok(st)) => return Ok(st),
                Ok(Err(e)) => last = Some(anyhow::anyhow!("{addr}: {e}")),
                Err(e) => last = Some(anyhow::anyhow!("{addr}: {e}")),
            },
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no master address given")))
}

/// One line on the group's health, for `stripefs status`.
pub fn health_line(st: &GroupStatus) -> String {
    let voters = st.members.iter().filter(|m| m.voter).count();
    let Some(leader) = st.leader.and_then(|l| st.members.iter().find(|m| m.id == l)) else {
        return format!("masters: {voters} voting, NO LEADER (election under way, or too few masters up)");
    };
    let silent: Vec<String> = st
        .members
        .iter()
        .filter(|m| m.id != leader.id && m.millis_since_contact.is_none_or(|ms| ms > 2000))
        .map(|m| format!("{} ({})", m.id, m.addr))
        .collect();
    let lagging = st.members.iter().filter(|m| m.lag.is_some_and(|l| l > 1000)).count();
    let mut line = format!("masters: {voters} voting, leader {} at {} (term {})", leader.id, leader.addr, st.term);
    if silent.is_empty() && lagging == 0 {
        line.push_str(", all in contact");
    }
    if !silent.is_empty() {
        line.push_str(&format!(", NOT HEARD FROM: {}", silent.join(", ")));
    }
    if lagging > 0 {
        line.push_str(&format!(", {lagging} catching up"));
    }
    if voters > 1 && voters.is_multiple_of(2) {
        line.push_str(", an even number of voters (use 3 or 5)");
    }
    line
}

fn print(st: &GroupStatus, json: bool) -> anyhow::Result<()> {
    if json {
        let members: Vec<serde_json::Value> = st
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id, "addr": m.addr, "role": m.role, "voter": m.voter,
                    "last_log_index": m.last_log_index, "lag": m.lag,
                    "millis_since_contact": m.millis_since_contact,
                })
            })
            .collect();
        let out = serde_json::json!({
            "answered_by": st.this, "initialized": st.initialized, "term": st.term, "leader": st.leader,
            "applied": st.applied, "last_log_index": st.last_log_index, "snapshot": st.snapshot,
            "changing": st.changing, "members": members,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if !st.initialized {
        println!("master {} is not a member of any group yet (started with --join)", st.this);
        return Ok(());
    }
    println!("{}", health_line(st));
    println!(
        "{:>10}  {:<22} {:<10} {:>6} {:>12} {:>8} {:>10}",
        "ID", "ADDRESS", "ROLE", "TERM", "LAST LOG", "LAG", "CONTACT"
    );
    for m in &st.members {
        let contact = match m.millis_since_contact {
            Some(ms) if m.role == "leader" => {
                let _ = ms;
                "-".to_string()
            }
            Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
            None if st.leader == Some(st.this) => "never".into(),
            None => "?".into(),
        };
        println!(
            "{:>10}  {:<22} {:<10} {:>6} {:>12} {:>8} {:>10}",
            m.id,
            m.addr,
            m.role,
            st.term,
            or_dash(m.last_log_index),
            or_dash(m.lag),
            contact
        );
    }
    if st.changing {
        println!("a membership change is under way");
    }
    if st.leader != Some(st.this) {
        println!("(as master {} sees it: lag and contact are known to the leader only)", st.this);
    }
    Ok(())
}

/// Runs `stripefs masters`.
pub async fn run(t: &Target, cmd: Option<MastersCmd>, json: bool) -> anyhow::Result<()> {
    let change = match cmd.unwrap_or(MastersCmd::List) {
        MastersCmd::List => return print(&status_of(t).await?, json),
        MastersCmd::Init { addrs, chunk_size } => {
            if let Some(c) = chunk_size {
                if !c.is_power_of_two() || !(64 << 10..=64 << 20).contains(&c) {
                    anyhow::bail!("--chunk-size must be a power of two between 65536 and 67108864, not {c}");
                }
            }
            let members = master_addrs(&addrs);
            if members.is_empty() {
                anyhow::bail!("give the members' addresses: stripefs masters init m1:9400,m2:9400,m3:9400");
            }
            let first = members[0].clone();
            let c = t.connect_one(&first).await?;
            let r =
                c.group_change(context_with_timeout(CHANGE_TIMEOUT), GroupChange::Init { members, chunk_size }).await?;
            let st = r.map_err(|e| anyhow::anyhow!("{first}: {e}"))?;
            println!("a new master group of {} holds a new filesystem", st.members.len());
            return print(&status_of(&Target { master: addrs, secret: t.secret.clone() }).await?, json);
        }
        MastersCmd::Add { addr } => GroupChange::Add { addr },
        MastersCmd::Remove { id } => GroupChange::Remove { id },
        MastersCmd::StepDown => GroupChange::StepDown,
    };
    let c = t.connect().await?;
    let st = c
        .group_change(context_with_timeout(CHANGE_TIMEOUT), change)
        .await?
        .map_err(|e| anyhow::anyhow!("the leader refused: {e}"))?;
    print(&st, json)
}
