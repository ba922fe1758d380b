//! A model test of the client core, as mountpoint-s3's reference-model
//! tests do: random sequences of namespace operations, each possibly under
//! a fault between the client and the master (a reply dropped, delayed,
//! duplicated or swapped, a connection cut before or after the request
//! reached the master), run on [`stripefs_client::FsCore`] and on a plain
//! in-memory model of a POSIX tree. Both must agree after every operation,
//! and the whole tree must agree at the end: a fault, and the retries it
//! causes, must never be seen.
//!
//! What it found (fixed since, see docs/SEMANTICS.md): a mutation whose
//! answer was lost when the connection broke was applied twice, so its
//! retry failed (`mkdir`/`create` with EEXIST, `unlink`/`rmdir`/`rename`
//! with ENOENT), and a lost answer failed the call with EIO.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::BTreeMap;
use std::time::Duration;
use stripefs_client::{ClientConfig, ClientError};
use stripefs_proto::InodeId;
use stripefs_tests::faults::{Fault, FaultProxy};
use stripefs_tests::{TestClient, TestCluster, TEST_OWNER};

/// Directories the operations work in, relative to the case's own root.
const DIRS: [&str; 3] = ["", "a", "a/b"];
/// Names they use (few, so that operations collide).
const NAMES: [&str; 4] = ["a", "b", "f", "g"];

#[derive(Debug, Clone)]
enum Op {
    Mkdir { dir: usize, name: usize },
    Write { dir: usize, name: usize, len: usize, fill: u8 },
    Unlink { dir: usize, name: usize },
    Rmdir { dir: usize, name: usize },
    Rename { dir: usize, name: usize, to_dir: usize, to_name: usize },
    Read { dir: usize, name: usize },
    List { dir: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let d = 0..DIRS.len();
    let n = 0..NAMES.len();
    prop_oneof![
        3 => (d.clone(), n.clone()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        3 => (d.clone(), n.clone(), 0usize..5000, any::<u8>()).prop_map(|(dir, name, len, fill)| Op::Write { dir, name, len, fill }),
        2 => (d.clone(), n.clone()).prop_map(|(dir, name)| Op::Unlink { dir, name }),
        2 => (d.clone(), n.clone()).prop_map(|(dir, name)| Op::Rmdir { dir, name }),
        3 => (d.clone(), n.clone(), d.clone(), n.clone())
            .prop_map(|(dir, name, to_dir, to_name)| Op::Rename { dir, name, to_dir, to_name }),
        1 => (d.clone(), n.clone()).prop_map(|(dir, name)| Op::Read { dir, name }),
        1 => d.prop_map(|dir| Op::List { dir }),
    ]
}

fn fault() -> impl Strategy<Value = Option<Fault>> {
    prop_oneof![
        8 => Just(None),
        1 => Just(Some(Fault::CutAfterRequest)),
        1 => Just(Some(Fault::CutBeforeRequest)),
        1 => Just(Some(Fault::DropReply)),
        1 => Just(Some(Fault::DelayReply(Duration::from_millis(100)))),
        1 => Just(Some(Fault::DuplicateReply)),
        1 => Just(Some(Fault::SwapReplies)),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

/// What an operation should give: a value, an errno, or some error (when
/// the directory it works in does not resolve: which errno the lookup of
/// a missing or non-directory component gives is not what is tested).
#[derive(Debug, PartialEq)]
enum Outcome {
    Done(Option<Vec<u8>>),
    Names(Vec<String>),
    Errno(i32),
    AnyError,
    /// Not checked (reading a directory as a file: the kernel never asks).
    Anything,
}

/// The reference: a tree of paths relative to the case's root ("").
#[derive(Debug)]
struct Model {
    nodes: BTreeMap<String, Node>,
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

impl Model {
    fn new() -> Model {
        Model { nodes: BTreeMap::from([(String::new(), Node::Dir)]) }
    }

    fn is_dir(&self, p: &str) -> bool {
        self.nodes.get(p) == Some(&Node::Dir)
    }

    fn children(&self, dir: &str) -> Vec<String> {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        self.nodes
            .keys()
            .filter(|k| !k.is_empty() && k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
            .map(|k| k[prefix.len()..].to_string())
            .collect()
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        use Outcome::*;
        match *op {
            Op::Mkdir { dir, name } => {
                if !self.is_dir(DIRS[dir]) {
                    return AnyError;
                }
                let p = join(DIRS[dir], NAMES[name]);
                if self.nodes.contains_key(&p) {
                    return Errno(libc::EEXIST);
                }
                self.nodes.insert(p, Node::Dir);
                Done(None)
            }
            Op::Write { dir, name, len, fill } => {
                if !self.is_dir(DIRS[dir]) {
                    return AnyError;
                }
                let p = join(DIRS[dir], NAMES[name]);
                if self.is_dir(&p) {
                    return Errno(libc::EISDIR);
                }
                self.nodes.insert(p, Node::File(vec![fill; len]));
                Done(None)
            }
            Op::Unlink { dir, name } => {
                if !self.is_dir(DIRS[dir]) {
                    return AnyError;
                }
                let p = join(DIRS[dir], NAMES[name]);
                match self.nodes.get(&p) {
                    None => Errno(libc::ENOENT),
                    Some(Node::Dir) => Errno(libc::EISDIR),
                    Some(Node::File(_)) => {
                        self.nodes.remove(&p);
                        Done(None)
                    }
                }
            }
            Op::Rmdir { dir, name } => {
                if !self.is_dir(DIRS[dir]) {
                    return AnyError;
                }
                let p = join(DIRS[dir], NAMES[name]);
                match self.nodes.get(&p) {
                    None => Errno(libc::ENOENT),
                    Some(Node::File(_)) => Errno(libc::ENOTDIR),
                    Some(Node::Dir) if !self.children(&p).is_empty() => Errno(libc::ENOTEMPTY),
                    Some(Node::Dir) => {
                        self.nodes.remove(&p);
                        Done(None)
                    }
                }
            }
            Op::Rename { dir, name, to_dir, to_name } => {
                if !self.is_dir(DIRS[dir]) || !self.is_dir(DIRS[to_dir]) {
                    return AnyError;
                }
                let (src, dst) = (join(DIRS[dir], NAMES[name]), join(DIRS[to_dir], NAMES[to_name]));
                let Some(s) = self.nodes.get(&src).cloned() else { return Errno(libc::ENOENT) };
                if src == dst {
                    return Done(None);
                }
                if s == Node::Dir && dst.starts_with(&format!("{src}/")) {
                    return Errno(libc::EINVAL);
                }
                match (&s, self.nodes.get(&dst)) {
                    (Node::Dir, Some(Node::File(_))) => return Errno(libc::ENOTDIR),
                    (Node::File(_), Some(Node::Dir)) => return Errno(libc::EISDIR),
                    (Node::Dir, Some(Node::Dir)) if !self.children(&dst).is_empty() => return Errno(libc::ENOTEMPTY),
                    _ => {}
                }
                self.nodes.remove(&dst);
                let moved: Vec<(String, Node)> = self
                    .nodes
                    .iter()
                    .filter(|(k, _)| **k == src || k.starts_with(&format!("{src}/")))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (k, v) in moved {
                    self.nodes.remove(&k);
                    self.nodes.insert(format!("{dst}{}", &k[src.len()..]), v);
                }
                Done(None)
            }
            Op::Read { dir, name } => {
                if !self.is_dir(DIRS[dir]) {
                    return AnyError;
                }
                match self.nodes.get(&join(DIRS[dir], NAMES[name])) {
                    None => Errno(libc::ENOENT),
                    Some(Node::Dir) => Anything,
                    Some(Node::File(d)) => Done(Some(d.clone())),
                }
            }
            Op::List { dir } => {
                if !self.is_dir(DIRS[dir]) {
                    return AnyError;
                }
                Names(self.children(DIRS[dir]))
            }
        }
    }
}

/// The client side of one case: paths under the case's own directory.
struct Real<'a> {
    cl: &'a TestClient,
    root: String,
}

impl Real<'_> {
    fn dir(&self, d: usize) -> Result<InodeId, ClientError> {
        self.cl.resolve(&join(&self.root, DIRS[d]))
    }

    fn apply(&self, op: &Op) -> Outcome {
        let core = self.cl.core().clone();
        let r: Result<Outcome, ClientError> = (|| match *op {
            Op::Mkdir { dir, name } => {
                let d = self.dir(dir)?;
                self.cl.run(core.mkdir(d, NAMES[name], 0o755, TEST_OWNER)).map(|_| Outcome::Done(None))
            }
            Op::Write { dir, name, len, fill } => {
                let d = self.dir(dir)?;
                self.cl.write_file(d, NAMES[name], &vec![fill; len]).map(|_| Outcome::Done(None))
            }
            Op::Unlink { dir, name } => {
                let d = self.dir(dir)?;
                self.cl.run(core.unlink(d, NAMES[name])).map(|_| Outcome::Done(None))
            }
            Op::Rmdir { dir, name } => {
                let d = self.dir(dir)?;
                self.cl.run(core.rmdir(d, NAMES[name])).map(|_| Outcome::Done(None))
            }
            Op::Rename { dir, name, to_dir, to_name } => {
                let (d, t) = (self.dir(dir)?, self.dir(to_dir)?);
                self.cl.run(core.rename(d, NAMES[name], t, NAMES[to_name], 0)).map(|_| Outcome::Done(None))
            }
            Op::Read { dir, name } => {
                let d = self.dir(dir)?;
                let ino = self.cl.run(core.lookup(d, NAMES[name]))?.attr.ino;
                self.cl.read_file(ino).map(|data| Outcome::Done(Some(data)))
            }
            Op::List { dir } => {
                let d = self.dir(dir)?;
                self.cl.list(d).map(Outcome::Names)
            }
        })();
        r.unwrap_or_else(|e| Outcome::Errno(e.errno()))
    }

    /// Every path under the case's root with what it holds.
    fn tree(&self) -> Result<BTreeMap<String, Node>, ClientError> {
        let mut out = BTreeMap::from([(String::new(), Node::Dir)]);
        let mut todo = vec![String::new()];
        while let Some(dir) = todo.pop() {
            let ino = self.cl.resolve(&join(&self.root, &dir))?;
            for name in self.cl.list(ino)? {
                let p = join(&dir, &name);
                let child = self.cl.run(self.cl.core().lookup(ino, &name))?.attr;
                if child.kind == stripefs_proto::types::FileKind::Dir {
                    out.insert(p.clone(), Node::Dir);
                    todo.push(p);
                } else {
                    out.insert(p, Node::File(self.cl.read_file(child.ino)?));
                }
            }
        }
        Ok(out)
    }
}

fn agree(expected: &Outcome, got: &Outcome) -> bool {
    match (expected, got) {
        (Outcome::AnyError, Outcome::Errno(_)) | (Outcome::Anything, _) => true,
        (e, g) => e == g,
    }
}

#[test]
fn the_client_core_agrees_with_a_model_under_faults() {
    let c = TestCluster::builder().nodes(2).start();
    let proxy = FaultProxy::start(&c.master_addr);
    let cfg = ClientConfig {
        call_timeout: Duration::from_millis(300),
        master_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    let cl = TestClient::connect(proxy.addr(), cfg);
    let cases: u32 = std::env::var("STRIPEFS_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let mut runner =
        TestRunner::new(Config { cases, max_shrink_iters: 256, failure_persistence: None, ..Config::default() });
    let case = std::sync::atomic::AtomicU64::new(0);
    let strategy = proptest::collection::vec((op(), fault()), 1..40);
    let result = runner.run(&strategy, |steps| {
        let root = format!("case{}", case.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
        cl.run(cl.core().mkdir(InodeId::ROOT, &root, 0o755, TEST_OWNER))
            .map_err(|e| TestCaseError::fail(format!("mkdir {root}: {e}")))?;
        let real = Real { cl: &cl, root };
        let mut model = Model::new();
        for (i, (op, fault)) in steps.iter().enumerate() {
            if let Some(f) = fault {
                proxy.inject(*f);
            }
            let expected = model.apply(op);
            let got = real.apply(op);
            proxy.clear();
            prop_assert!(
                agree(&expected, &got),
                "step {i}: {op:?} under {fault:?}: the model says {expected:?}, the client {got:?}"
            );
        }
        let tree = real.tree().map_err(|e| TestCaseError::fail(format!("walking the tree: {e}")))?;
        prop_assert_eq!(&tree, &model.nodes, "the trees differ at the end");
        Ok(())
    });
    let applied = proxy.applied();
    eprintln!("{} cases run, {} faults applied: {applied:?}", case.into_inner(), applied.len());
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(applied.len() >= 10, "too few faults were applied for the test to mean much: {applied:?}");
}
