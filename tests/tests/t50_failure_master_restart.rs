//! The master restarts under a mounted client with files open: the client
//! waits for it and carries on, with no error reaching the application.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use stripefs_tests::{random_bytes, sha256, TestCluster};

#[test]
fn master_restart_is_invisible_to_open_files() {
    let mut c = TestCluster::builder().chunk_size(256 * 1024).start();
    let m = c.mount();

    // A file being written, a file being read, an unlinked file kept open.
    let first = random_bytes(700_000);
    let second = random_bytes(500_000);
    let mut writing = File::create(m.join("writing")).expect("create");
    writing.write_all(&first).expect("write before the restart");
    let readme = random_bytes(300_000);
    fs::write(m.join("reading"), &readme).expect("write");
    let reading = File::open(m.join("reading")).expect("open for reading");
    let ghost_data = random_bytes(200_000);
    fs::write(m.join("ghost"), &ghost_data).expect("write");
    let ghost = OpenOptions::new().read(true).write(true).open(m.join("ghost")).expect("open");
    fs::remove_file(m.join("ghost")).expect("unlink while open");

    // Keep the master down for 2 s while the application goes on: metadata
    // operations during the outage wait for the master.
    let outage_dir = m.join("made-during-outage");
    let (came_back, first_ok) = std::thread::scope(|s| {
        let app = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            fs::create_dir(&outage_dir).expect("mkdir while the master is down");
            Instant::now()
        });
        c.stop_master();
        std::thread::sleep(Duration::from_secs(2));
        c.start_master_again();
        let came_back = Instant::now();
        (came_back, app.join().expect("application thread"))
    });
    println!(
        "first successful client operation {:.3} s after the master was started again",
        first_ok.saturating_duration_since(came_back).as_secs_f64()
    );

    writing.write_all(&second).expect("write after the restart");
    drop(writing);
    let mut all = first.clone();
    all.extend_from_slice(&second);
    assert_eq!(sha256(&fs::read(m.join("writing")).expect("read back")), sha256(&all));

    let mut back = Vec::new();
    (&reading).read_to_end(&mut back).expect("read through a descriptor opened before the restart");
    assert_eq!(sha256(&back), sha256(&readme));

    let mut g = vec![0u8; ghost_data.len()];
    ghost.read_exact_at(&mut g, 0).expect("read the unlinked file after the restart");
    assert_eq!(sha256(&g), sha256(&ghost_data));
    assert!(m.join("made-during-outage").is_dir());
}
