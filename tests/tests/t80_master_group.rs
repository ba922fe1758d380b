//! A group of three real master processes: failover when the leader is
//! killed or paused, two masters down, all masters down, a master whose
//! disk was wiped rejoining from a snapshot, leadership handed over, and
//! the CLI that shows and changes the group.
//!
//! Clients run in this process ([`stripefs_tests::TestClient`]); masters
//! and nodes are processes, killed with SIGKILL and restarted by their own
//! command line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stripefs_proto::InodeId;
use stripefs_tests::group::Group;
use stripefs_tests::{random_bytes, sha256, TestClient};

/// What one client saw acknowledged: name → sha256 of its content (None:
/// removed).
type Acked = BTreeMap<String, Option<String>>;

/// A client's loop of creates (with data), renames and unlinks in its own
/// directory, until `stop`. Returns what was acknowledged and the time of
/// each successful operation.
fn work(c: &TestClient, k: usize, stop: &AtomicBool) -> (Acked, Vec<Instant>) {
    let dir = c.run(c.core().mkdir(InodeId::ROOT, &format!("c{k}"), 0o755, stripefs_tests::TEST_OWNER));
    let dir = dir.unwrap_or_else(|e| panic!("client {k}: mkdir: {e}")).ino;
    let mut acked = Acked::new();
    let mut done = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("f{i}");
        let data = random_bytes(4096 + (i as usize % 7) * 1000);
        c.write_file(dir, &name, &data).unwrap_or_else(|e| panic!("client {k}: create {name}: {e}"));
        acked.insert(name.clone(), Some(sha256(&data)));
        done.push(Instant::now());
        if i.is_multiple_of(3) {
            let to = format!("r{i}");
            c.run(c.core().rename(dir, &name, dir, &to, 0))
                .unwrap_or_else(|e| panic!("client {k}: rename {name}: {e}"));
            let v = acked.remove(&name).flatten();
            acked.insert(name.clone(), None);
            acked.insert(to, v);
            done.push(Instant::now());
        }
        if i.is_multiple_of(5) && i > 0 {
            let gone = format!("f{}", i - 1);
            if acked.get(&gone).is_some_and(|v| v.is_some()) {
                c.run(c.core().unlink(dir, &gone)).unwrap_or_else(|e| panic!("client {k}: unlink {gone}: {e}"));
                acked.insert(gone, None);
                done.push(Instant::now());
            }
        }
        i += 1;
    }
    (acked, done)
}

/// Checks with a fresh client that everything acknowledged holds.
fn verify(g: &Group, k: usize, acked: &Acked) {
    let c = g.client("checker");
    let dir = c.resolve(&format!("c{k}")).unwrap_or_else(|e| panic!("c{k}: {e}"));
    let names = c.list(dir).expect("list");
    for (name, want) in acked {
        match want {
            Some(sum) => {
                assert!(names.contains(name), "client {k}: acknowledged {name} is missing");
                let ino = c.resolve(&format!("c{k}/{name}")).expect("resolve");
                let got = sha256(&c.read_file(ino).expect("read"));
                assert_eq!(&got, sum, "client {k}: {name} has other content");
            }
            None => assert!(!names.contains(name), "client {k}: {name} was removed, yet it is there"),
        }
    }
}

/// The first operation of each client after `at`: how long each waited.
fn recovery(done: &[Vec<Instant>], at: Instant) -> Vec<Duration> {
    done.iter().map(|d| d.iter().find(|t| **t > at).map(|t| *t - at).unwrap_or(Duration::MAX)).collect()
}

/// Runs 4 clients, calls `fault` once they have worked a while, lets them
/// go on, then returns what they acknowledged and when.
fn drill(g: &mut Group, fault: impl FnOnce(&mut Group) -> Instant) -> (Vec<Acked>, Vec<Vec<Instant>>, Instant) {
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<TestClient> = (0..4).map(|k| g.client(&format!("client{k}"))).collect();
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, c)| {
            let (stop, results) = (stop.clone(), results.clone());
            std::thread::spawn(move || {
                let r = work(&c, k, &stop);
                results.lock().expect("lock").push((k, r));
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let at = fault(g);
    // Bounded: the clients work on for 8 s after the fault.
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        if let Err(e) = t.join() {
            std::panic::resume_unwind(e);
        }
    }
    let mut r = std::mem::take(&mut *results.lock().expect("lock"));
    r.sort_by_key(|(k, _)| *k);
    let (acked, done): (Vec<Acked>, Vec<Vec<Instant>>) = r.into_iter().map(|(_, x)| x).unzip();
    (acked, done, at)
}

#[test]
fn the_leader_killed_while_four_clients_work_loses_nothing() {
    let mut g = Group::start(3, 2, 1000);
    let old = g.leader(Duration::from_secs(20));
    let (acked, done, at) = drill(&mut g, |g| {
        g.kill(old);
        Instant::now()
    });
    let waits = recovery(&done, at);
    println!("recovery after kill -9 of the leader, per client: {waits:?}");
    assert!(waits.iter().all(|w| *w < Duration::from_secs(8)), "a client did not carry on: {waits:?}");
    let new = g.leader(Duration::from_secs(10));
    assert_ne!(new, old);
    for (k, a) in acked.iter().enumerate() {
        assert!(a.len() > 10, "client {k} did little: {}", a.len());
        verify(&g, k, a);
    }
    // The killed master, restarted by its own command line, catches up.
    g.restart(old);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = g.status(new).expect("leader status");
        let m = st.members.iter().find(|m| m.addr == g.masters[old].addr).expect("member");
        if m.lag == Some(0) && m.millis_since_contact.is_some_and(|ms| ms < 2000) {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted master does not catch up: {st:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let list = g.cli(&["masters", "--master", &g.addrs()]).expect("stripefs masters");
    assert!(list.contains("all in contact"), "{list}");
    assert_eq!(list.matches("follower").count(), 2, "{list}");
    assert_eq!(list.matches("leader").count(), 2, "one leader line and one member line:\n{list}");
}

#[test]
fn a_paused_leader_steps_down_and_its_clients_move_on() {
    let mut g = Group::start(3, 2, 1000);
    let old = g.leader(Duration::from_secs(20));
    let (acked, done, at) = drill(&mut g, |g| {
        g.signal(old, nix::sys::signal::SIGSTOP);
        let at = Instant::now();
        // Paused well past the election timeout, then woken.
        std::thread::sleep(Duration::from_secs(4));
        g.signal(old, nix::sys::signal::SIGCONT);
        at
    });
    let waits = recovery(&done, at);
    println!("recovery after SIGSTOP of the leader, per client: {waits:?}");
    let new = g.leader(Duration::from_secs(10));
    assert_ne!(new, old, "the paused leader still leads");
    let st = g.status(old).expect("the woken master answers");
    assert_ne!(st.leader, Some(st.this), "the woken master believes it leads: {st:?}");
    for (k, a) in acked.iter().enumerate() {
        verify(&g, k, a);
    }
}

#[test]
fn with_two_of_three_masters_down_clients_wait_and_carry_on() {
    let mut g = Group::start(3, 2, 1000);
    let c = g.client("client");
    c.write_file(InodeId::ROOT, "before", b"before").expect("write");
    let leader = g.leader(Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    g.kill(leader);
    g.kill(follower);
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let r = c.write_file(InodeId::ROOT, "during", b"during");
        (r.map_err(|e| e.to_string()), c)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(!writer.is_finished(), "the write did not wait for a quorum");
    g.restart(follower);
    let (r, c) = writer.join().expect("writer");
    r.expect("the write carried on once a quorum was back");
    println!("a write waited {:?} for two masters of three", started.elapsed());
    for name in ["before", "during"] {
        let ino = c.resolve(name).expect("resolve");
        assert_eq!(c.read_file(ino).expect("read"), name.as_bytes());
    }
}

#[test]
fn all_masters_killed_and_restarted_keep_every_acknowledged_change() {
    let mut g = Group::start(3, 2, 1000);
    let c = g.client("client");
    let mut sums = BTreeMap::new();
    for i in 0..40 {
        let data = random_bytes(3000 + i);
        c.write_file(InodeId::ROOT, &format!("f{i}"), &data).expect("write");
        sums.insert(format!("f{i}"), sha256(&data));
    }
    c.run(c.core().rename(InodeId::ROOT, "f0", InodeId::ROOT, "g0", 0)).expect("rename");
    c.run(c.core().unlink(InodeId::ROOT, "f1")).expect("unlink");
    drop(c);
    for i in 0..3 {
        g.kill(i);
    }
    for i in 0..3 {
        g.restart(i);
    }
    g.leader(Duration::from_secs(20));
    let c = g.client("client");
    let names = c.list(InodeId::ROOT).expect("list");
    assert!(names.contains(&"g0".to_string()) && !names.contains(&"f0".to_string()), "{names:?}");
    assert!(!names.contains(&"f1".to_string()), "{names:?}");
    for (name, sum) in sums.iter().skip(2) {
        let ino = c.resolve(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&sha256(&c.read_file(ino).expect("read")), sum, "{name}");
    }
}

#[test]
fn a_master_whose_disk_was_wiped_rejoins_from_a_snapshot() {
    // A snapshot every 40 entries: the log of 200 creates is compacted.
    let mut g = Group::start(3, 2, 40);
    let c = g.client("client");
    for i in 0..120 {
        c.write_file(InodeId::ROOT, &format!("f{i}"), b"x").expect("write");
    }
    let leader = g.leader(Duration::from_secs(20));
    let lost = (leader + 1) % 3;
    let lost_id = g.status(lost).expect("status").this;
    // The host dies with its disk: remove it, then add a blank one.
    g.kill(lost);
    g.cli(&["masters", "--master", &g.addrs(), "remove", &lost_id.to_string()]).expect("remove");
    for i in 120..200 {
        c.write_file(InodeId::ROOT, &format!("f{i}"), b"x").expect("write while a master is missing");
    }
    g.start_blank(lost, 40);
    let added = g.cli(&["masters", "--master", &g.masters[leader].addr.clone(), "add", &g.masters[lost].addr.clone()]);
    let added = added.expect("add the blank master");
    assert_eq!(added.matches("follower").count(), 2, "{added}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.log_text(lost).contains("installed the leader's snapshot") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = g.log_text(lost);
    assert!(
        log.contains("installed the leader's snapshot"),
        "it did not catch up from a snapshot:\n{log}\nthe leader's log:\n{}",
        g.log_text(leader)
    );
    // It holds the whole namespace: it can lead.
    g.kill(leader);
    let new = g.leader(Duration::from_secs(20));
    assert_ne!(new, leader);
    let c = g.client("client2");
    assert_eq!(c.list(InodeId::ROOT).expect("list").len(), 200);
    // The log on disk stays bounded: old segments go with snapshots.
    for i in 0..3 {
        let segs = std::fs::read_dir(g.masters[i].dir.join("raft"))
            .map(|d| {
                d.filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("log-"))).count()
            })
            .unwrap_or(0);
        assert!(segs <= 2, "master {i} keeps {segs} log segments");
    }
}

#[test]
fn step_down_hands_the_leadership_to_another_master() {
    let g = Group::start(3, 1, 1000);
    let c = g.client("client");
    c.write_file(InodeId::ROOT, "a", b"a").expect("write");
    let old = g.leader(Duration::from_secs(20));
    let out = g.cli(&["masters", "--master", &g.addrs(), "step-down"]).expect("step-down");
    let new = g.leader(Duration::from_secs(20));
    assert_ne!(new, old, "{out}");
    c.write_file(InodeId::ROOT, "b", b"b").expect("write after the handover");
    let status = g.cli(&["status", "--master", &g.addrs()]).expect("status");
    assert!(
        status.contains(&format!("leader {} at {}", g.status(new).expect("st").this, g.masters[new].addr)),
        "{status}"
    );
    // Bad input is refused with a reason.
    let e = g.cli(&["masters", "--master", &g.addrs(), "remove", "12345"]).expect_err("unknown id");
    assert!(e.contains("not a member"), "{e}");
    let e = g.cli(&["masters", "--master", &g.addrs(), "add", &g.masters[old].addr]).expect_err("a member");
    assert!(e.contains("already a member"), "{e}");
}

/// Two clients at work in their own directories, `fault` called once they
/// have worked a while; returns what they acknowledged.
fn two_clients(g: &mut Group, fault: impl FnOnce(&mut Group)) -> Vec<Acked> {
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<TestClient> = (0..2).map(|k| g.client(&format!("client{k}"))).collect();
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, c)| {
            let stop = stop.clone();
            std::thread::spawn(move || work(&c, k, &stop).0)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    fault(g);
    // Bounded: the clients work on for 5 s after the fault.
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
}

/// A master alone in its group answers changes before they are on its
/// disk. Killed with `kill -9` under two clients and restarted by its own
/// command line, it waits for both client sessions to replay what they
/// hold, then serves: every change either client saw acknowledged is
/// there, and none was applied twice (a second rename or unlink would
/// have failed the client's loop).
#[test]
fn a_master_alone_killed_under_two_clients_keeps_every_acknowledged_change() {
    let mut g = Group::start(1, 1, 100_000);
    let acked = two_clients(&mut g, |g| {
        g.kill(0);
        std::thread::sleep(Duration::from_millis(300));
        g.restart(0);
    });
    for (k, a) in acked.iter().enumerate() {
        assert!(a.len() > 10, "client {k} did little: {}", a.len());
        verify(&g, k, a);
    }
    let log = g.log_text(0);
    assert!(log.contains("waiting for 2 client session(s) to replay"), "no replay phase after the crash:\n{log}");
    assert!(log.contains("every client session replayed"), "the sessions did not all replay:\n{log}");
}

/// The same with one client gone for good before the master comes back
/// (its process died with the master's host): the master serves the other
/// once its replay window ends, says which session it gave up on, and
/// everything both clients saw acknowledged is there (the gone client's
/// changes that were not yet durable may be lost; here the master's page
/// cache kept them, as a process crash does).
#[test]
fn a_client_that_died_with_the_master_does_not_hold_the_others_back_for_long() {
    let mut g = Group::start_with(1, 1, 100_000, &["--replay-window-secs", "3"]);
    let dead = g.client("dead");
    let dir = dead.run(dead.core().mkdir(InodeId::ROOT, "dead", 0o755, stripefs_tests::TEST_OWNER)).expect("mkdir");
    let data = random_bytes(5000);
    dead.write_file(dir.ino, "synced", &data).expect("write");
    dead.run(dead.core().sync_metadata()).expect("fsync the directory");
    assert_eq!(dead.core().held_changes(), 0, "after fsync the client holds nothing to replay");
    dead.write_file(dir.ino, "late", &data).expect("write");
    // Gone without closing its session.
    drop(dead);
    let acked = two_clients(&mut g, |g| {
        g.kill(0);
        g.restart(0);
    });
    for (k, a) in acked.iter().enumerate() {
        verify(&g, k, a);
    }
    let c = g.client("checker");
    let synced = c.resolve("dead/synced").expect("what the dead client fsync'd is there");
    assert_eq!(sha256(&c.read_file(synced).expect("read")), sha256(&data));
    let log = g.log_text(0);
    assert!(log.contains("did not come back within the replay window"), "the dead session was not given up on:\n{log}");
}

/// A client keeps the changes a master alone answered before they were on
/// its disk only briefly, even when it goes idle: its background tick asks
/// for them to be made durable (an idle client must not hold a change
/// until its answer is forgotten, 10 minutes later).
#[test]
fn an_idle_client_holds_no_change_for_long() {
    let g = Group::start(1, 1, 100_000);
    let c = g.client("idle");
    let dir = c.run(c.core().mkdir(InodeId::ROOT, "idle", 0o755, stripefs_tests::TEST_OWNER)).expect("mkdir");
    for i in 0..20 {
        c.run(c.core().mkdir(dir.ino, &format!("d{i}"), 0o755, stripefs_tests::TEST_OWNER)).expect("mkdir");
    }
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(c.core().held_changes(), 0, "changes still held 600 ms after the last one");
}

/// Two clients on two hosts take turns in one directory: each creates a
/// name, the other looks it up at once, a few thousand times. A name is
/// visible to the other client as soon as the create returned (a master
/// alone answers before its disk has the change; the other client's
/// change on the same directory is then answered only once durable), and
/// after a `kill -9` of the master in the middle every name is there.
#[test]
fn two_clients_taking_turns_in_one_directory_see_each_others_names_at_once() {
    let mut g = Group::start(1, 1, 100_000);
    let a = g.client("host-a");
    let b = g.client("host-b");
    let owner = stripefs_tests::TEST_OWNER;
    let dir = a.run(a.core().mkdir(InodeId::ROOT, "shared", 0o755, owner)).expect("mkdir").ino;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut made = Vec::new();
    for i in 0..3000 {
        if i == 1500 {
            g.kill(0);
            g.restart(0);
        }
        let (maker, seer) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let name = format!("n{i}");
        let (_, fh) = maker.run(maker.core().create(dir, &name, 0o644, owner, true)).expect("create");
        maker.run(maker.core().release(fh)).expect("close");
        let seen = seer.run(seer.core().lookup(dir, &name)).unwrap_or_else(|e| panic!("{name} not seen at once: {e}"));
        assert!(seen.attr.ino.0 > 1);
        made.push(name);
        assert!(Instant::now() < deadline, "3000 turns took over 60 s");
    }
    let c = g.client("checker");
    let mut names = c.list(dir).expect("list");
    names.sort();
    made.sort();
    assert_eq!(names, made, "every acknowledged name is there once after the kill");
}
