//! The thin fuser adapter: kernel requests → [`FsCore`] calls.
//!
//! Each request runs on a fuser session thread, which blocks on the
//! client's tokio runtime for the one async call it needs (one hop per
//! request; see docs/ARCHITECTURE.md).

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, OpenAccMode,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;
use stripefs_client::core::{is_unsupported_xattr, FsCore};
use stripefs_client::error::{ClientError, Result};
use stripefs_proto::types::{Attr, FileKind, Owner, SetAttr, TimeSet, Timestamp};
use stripefs_proto::InodeId;

/// Largest write the kernel may send (1 MiB).
const MAX_WRITE_BYTES: u32 = 1 << 20;
/// `st_blksize`: the I/O size programs use for buffers.
const PREFERRED_IO_BYTES: u32 = 128 * 1024;
/// Most entries one readdirplus reply can hold (a reply is at most a page
/// or so; entries beyond what fits are sent again in the next call).
const READDIRPLUS_BATCH: usize = 512;
/// Free inodes reported by statfs.
const FREE_INODES: u64 = 1 << 32;
/// Block size reported by statfs.
const STATFS_BLOCK_BYTES: u64 = 4096;

/// A mounted stripefs, as fuser sees it.
pub struct StripeFs {
    core: Arc<FsCore>,
    rt: tokio::runtime::Handle,
    /// Set once the session exists: tells the kernel to drop cached
    /// attributes.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// The mount's metrics (`metrics=ADDR`), if served.
    metrics: Option<Arc<crate::metrics::MountMetrics>>,
    /// Scratch files served by the kernel from their plain files.
    passthrough: Passthrough,
}

/// FUSE passthrough of scratch files whose plain file is on this host
/// (see `stripefs_client::scratch`). The kernel wants one backing id per
/// inode for all its open handles at a time: a weak map by inode finds the
/// id of an inode already open, each handle keeps it alive until released.
#[derive(Default)]
struct Passthrough {
    /// Why the mount does not use passthrough (None: it does).
    off: std::sync::Mutex<Option<String>>,
    by_ino: std::sync::Mutex<std::collections::HashMap<u64, std::sync::Weak<fuser::BackingId>>>,
    by_handle: std::sync::Mutex<std::collections::HashMap<u64, Arc<fuser::BackingId>>>,
}

impl Passthrough {
    /// The backing id to open handle `fh` of scratch file `ino` with, if
    /// the kernel takes its plain file: an inode's first open registers
    /// the file (`register`), later ones share its id. A refusal turns
    /// passthrough off for the whole mount: the kernel wants every open
    /// of an inode to be passthrough or none to be.
    fn open(
        &self,
        core: &FsCore,
        ino: u64,
        fh: u64,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<fuser::BackingId>,
    ) -> Option<Arc<fuser::BackingId>> {
        let sc = core.scratch_file(fh)?;
        let file = sc.local.clone()?;
        if let Some(why) = lock(&self.off).clone() {
            sc.set_passthrough(Err(why));
            return None;
        }
        let id = {
            let mut by_ino = lock(&self.by_ino);
            match by_ino.get(&ino).and_then(std::sync::Weak::upgrade) {
                Some(id) => id,
                None => match register(&file) {
                    Ok(id) => {
                        let id = Arc::new(id);
                        by_ino.retain(|_, w| w.strong_count() > 0);
                        by_ino.insert(ino, Arc::downgrade(&id));
                        id
                    }
                    Err(e) => {
                        let why = format!("the kernel refused passthrough: {e}");
                        tracing::warn!("scratch files are read and written through this process: {why}");
                        *lock(&self.off) = Some(why.clone());
                        sc.set_passthrough(Err(why));
                        return None;
                    }
                },
            }
        };
        lock(&self.by_handle).insert(fh, id.clone());
        sc.set_passthrough(Ok(()));
        Some(id)
    }

    fn release(&self, fh: u64) {
        lock(&self.by_handle).remove(&fh);
    }
}

use stripefs_daemon::lock;

/// One kernel request: its span (entered) and its timer.
struct InRequest {
    _timer: Option<crate::metrics::RequestTimer>,
    _span: tracing::span::EnteredSpan,
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// fuser's view of an inode's attributes.
pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.allocated_bytes.div_ceil(512),
        atime: a.atime.into(),
        mtime: a.mtime.into(),
        ctime: a.ctime.into(),
        crtime: a.crtime.into(),
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: PREFERRED_IO_BYTES,
        flags: 0,
    }
}

fn name_of(name: &OsStr) -> std::result::Result<&str, Errno> {
    // Names cross the wire as UTF-8; others are refused rather than mangled.
    name.to_str().ok_or(Errno::EINVAL)
}

fn owner(req: &Request) -> Owner {
    Owner { uid: req.uid(), gid: req.gid() }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timestamp::from(t)),
    }
}

fn errno(op: &str, e: &ClientError) -> Errno {
    if e.is_noteworthy() {
        tracing::warn!("{op}: {e}");
    } else {
        tracing::debug!("{op}: {e}");
    }
    Errno::from_i32(e.errno())
}

/// The span of one kernel request: its operation, inode and file handle.
/// Everything the request does on this thread (master and node calls,
/// cache hits, errors) is logged inside it; at `debug` its end is logged
/// with the time it took (see `stripefs_daemon::logs`).
fn request_span(op: &'static str, ino: u64, fh: Option<u64>) -> tracing::span::EnteredSpan {
    match fh {
        Some(fh) => tracing::debug_span!("fuse", op, ino, fh).entered(),
        None => tracing::debug_span!("fuse", op, ino).entered(),
    }
}

impl StripeFs {
    /// An adapter running `core`'s calls on `rt`.
    pub fn new(core: Arc<FsCore>, rt: tokio::runtime::Handle) -> StripeFs {
        StripeFs {
            core,
            rt,
            notifier: Arc::new(std::sync::OnceLock::new()),
            metrics: None,
            passthrough: Passthrough::default(),
        }
    }

    /// With `false`, scratch files are never served through FUSE
    /// passthrough (mount option `passthrough=off`).
    pub fn with_passthrough(self, on: bool) -> StripeFs {
        if !on {
            *lock(&self.passthrough.off) = Some("passthrough=off".to_string());
        }
        self
    }

    /// Counts every request in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::MountMetrics>) -> StripeFs {
        self.metrics = Some(metrics);
        self
    }

    /// Starts serving one kernel request: its span, and its timer when
    /// metrics are served.
    fn request(&self, op: &'static str, ino: u64, fh: Option<u64>) -> InRequest {
        InRequest { _timer: self.metrics.as_ref().map(|m| m.start(op)), _span: request_span(op, ino, fh) }
    }

    /// Where the session's notifier goes once the session exists.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// Close-to-open: the kernel may hold this file's size from before
    /// another client changed it, and would stop reading at the old end.
    /// Dropping its cached attributes (not its pages: an open without
    /// KEEP_CACHE, given whenever the file changed, already does that)
    /// makes the next stat or read past the cached end ask us.
    fn forget_cached_attrs(&self, ino: INodeNo) {
        if let Some(n) = self.notifier.get() {
            // Offset -1: attributes only. It takes no lock the open holds.
            if let Err(e) = n.inval_inode(ino, -1, 0) {
                tracing::debug!("invalidating attributes of {ino:?}: {e}");
            }
        }
    }

    fn run<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        // Session threads block on each request: their master calls can
        // use connections of their own (see `conn`).
        stripefs_client::conn::use_own_connections();
        self.rt.block_on(f)
    }

    fn reply_entry(&self, op: &str, r: Result<Attr>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry_with_ttls(
                &self.core.config().entry_ttl,
                &self.core.config().attr_ttl,
                &file_attr(&a),
                Generation(0),
            ),
            Err(e) => reply.error(errno(op, &e)),
        }
    }

    fn reply_empty(&self, op: &str, r: Result<()>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(op, &e)),
        }
    }

    fn reply_xattr(&self, op: &str, r: Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
        match r {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(op, &e)),
        }
    }

    fn readdir_entries(
        &self,
        ino: INodeNo,
        fh: FileHandle,
    ) -> Result<(Attr, Arc<Vec<stripefs_proto::types::DirEntry>>)> {
        let entries = self.core.dir_entries(fh.0)?;
        let dir = self.run(self.core.getattr(InodeId(ino.0)))?;
        Ok((dir, entries))
    }
}

impl Filesystem for StripeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE_BYTES);
        let wanted = fuser::InitFlags::FUSE_PARALLEL_DIROPS
            | fuser::InitFlags::FUSE_ASYNC_DIO
            | fuser::InitFlags::FUSE_DO_READDIRPLUS
            | fuser::InitFlags::FUSE_READDIRPLUS_AUTO
            | fuser::InitFlags::FUSE_ASYNC_READ
            // This process drops setuid/setgid bits where the kernel would
            // (see `setattr` and `write`), so the kernel marks inodes
            // without them S_NOSEC and stops asking for
            // security.capability before every write: one request per
            // write saved, the whole cost of a write through passthrough.
            | fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let available = config.capabilities() & wanted;
        if let Err(missing) = config.add_capabilities(available) {
            tracing::info!("kernel lacks FUSE capabilities {missing:?}");
        }
        if lock(&self.passthrough.off).is_none() {
            let can = config.capabilities().contains(fuser::InitFlags::FUSE_PASSTHROUGH)
                && config.add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH).is_ok()
                // Backing files on a plain filesystem (depth 0); the mount
                // itself may then be stacked under one more (overlayfs).
                && config.set_max_stack_depth(1).is_ok();
            if !can {
                let why = "the kernel offers no FUSE passthrough (Linux 6.9 or later has it)";
                tracing::info!("scratch files are read and written through this process: {why}");
                *lock(&self.passthrough.off) = Some(why.to_string());
            }
        }
        Ok(())
    }

    /// Unmounted: the session ends, its changes durable first (a master
    /// that crashes later does not wait for this client's replay).
    fn destroy(&mut self) {
        let closed = self.rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), self.core.close_session()).await
        });
        match closed {
            Ok(Ok(())) => tracing::debug!("session closed with the master"),
            Ok(Err(e)) => tracing::warn!("closing the session with the master at unmount: {e}"),
            Err(_) => tracing::warn!("closing the session with the master at unmount: no answer within 5 s"),
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = self.request("lookup", parent.0, None);
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.run(self.core.lookup(InodeId(parent.0), name)) {
            Ok(l) => reply.entry_with_ttls(&l.entry_ttl, &l.attr_ttl, &file_attr(&l.attr), Generation(0)),
            Err(e) => reply.error(errno("lookup", &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = self.request("getattr", ino.0, _fh.map(|f| f.0));
        match self.run(self.core.getattr(InodeId(ino.0))) {
            Ok(a) => reply.attr(&self.core.config().attr_ttl, &file_attr(&a)),
            Err(e) => reply.error(errno("getattr", &e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _span = self.request("setattr", ino.0, _fh.map(|f| f.0));
        let set = SetAttr { mode, uid, gid, size, atime: atime.map(time_set), mtime: mtime.map(time_set) };
        // What the kernel asks with FATTR_KILL_SUIDGID under
        // HANDLE_KILLPRIV_V2 (fuser does not pass that flag on): a chown
        // of a non-directory, and a truncate by a caller without
        // CAP_FSETID (taken as: not root), drop setuid and setgid.
        let kill = uid.is_some() || gid.is_some() || (size.is_some() && _req.uid() != 0);
        let core = &self.core;
        let r = self.run(async {
            let a = core.setattr(InodeId(ino.0), set).await?;
            if kill && mode.is_none() && a.kind != FileKind::Dir {
                return core.kill_suidgid(a).await;
            }
            Ok(a)
        });
        match r {
            Ok(a) => reply.attr(&self.core.config().attr_ttl, &file_attr(&a)),
            Err(e) => reply.error(errno("setattr", &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = self.request("readlink", ino.0, None);
        match self.run(self.core.readlink(InodeId(ino.0))) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(errno("readlink", &e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let _span = self.request("mknod", parent.0, None);
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let Some(k) = FileKind::from_mode(mode) else { return reply.error(Errno::EINVAL) };
        let r = self.run(self.core.mknod(InodeId(parent.0), name, k, mode & !umask, owner(req), rdev));
        self.reply_entry("mknod", r, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _span = self.request("mkdir", parent.0, None);
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let r = self.run(self.core.mkdir(InodeId(parent.0), name, mode & !umask, owner(req)));
        self.reply_entry("mkdir", r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = self.request("unlink", parent.0, None);
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.reply_empty("unlink", self.run(self.core.unlink(InodeId(parent.0), name)), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = self.request("rmdir", parent.0, None);
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.reply_empty("rmdir", self.run(self.core.rmdir(InodeId(parent.0), name)), reply);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _span = self.request("symlink", parent.0, None);
        let (name, target) = match (name_of(link_name), name_of(target.as_os_str())) {
            (Ok(n), Ok(t)) => (n, t),
            _ => return reply.error(Errno::EINVAL),
        };
        let r = self.run(self.core.symlink(InodeId(parent.0), name, target, owner(req)));
        self.reply_entry("symlink", r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _span = self.request("rename", parent.0, None);
        let (name, newname) = match (name_of(name), name_of(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return reply.error(Errno::EINVAL),
        };
        let r = self.run(self.core.rename(InodeId(parent.0), name, InodeId(newparent.0), newname, flags.bits()));
        self.reply_empty("rename", r, reply);
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _span = self.request("link", ino.0, None);
        let name = match name_of(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.reply_entry("link", self.run(self.core.link(InodeId(ino.0), InodeId(newparent.0), name)), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = self.request("open", ino.0, None);
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        match self.run(self.core.open(InodeId(ino.0), write)) {
            Ok((fh, keep_pages)) => {
                self.forget_cached_attrs(ino);
                if let Some(id) = self.passthrough.open(&self.core, ino.0, fh, |f| reply.open_backing(f)) {
                    return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                }
                let flags = if keep_pages { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                reply.opened(FileHandle(fh), flags)
            }
            Err(e) => reply.error(errno("open", &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let _span = self.request("read", _ino.0, Some(fh.0));
        match self.run(self.core.read(fh.0, offset, size)) {
            Ok(d) => {
                if let Some(m) = &self.metrics {
                    m.read_bytes.inc_by(d.len() as u64);
                }
                reply.data(&d)
            }
            Err(e) => reply.error(errno("read", &e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let _span = self.request("write", _ino.0, Some(fh.0));
        // HANDLE_KILLPRIV_V2: a write by someone without CAP_FSETID to a
        // setuid or setgid file drops the bits (the kernel's view of the
        // mode says so; rare, so the master is asked).
        if _write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            let core = &self.core;
            let killed = self.run(async { core.kill_suidgid(core.getattr(InodeId(_ino.0)).await?).await });
            if let Err(e) = killed {
                return reply.error(errno("write", &e));
            }
        }
        match self.run(self.core.write(fh.0, offset, data)) {
            Ok(n) => {
                if let Some(m) = &self.metrics {
                    m.written_bytes.inc_by(u64::from(n));
                }
                reply.written(n)
            }
            Err(e) => reply.error(errno("write", &e)),
        }
    }

    /// No ioctl applies to stripefs files. The common one is a terminal
    /// check (isatty, which Python and C stdio run at every open): answered
    /// as a local file would, without fuser's "not implemented" warning per
    /// call.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _span = self.request("ioctl", _ino.0, Some(_fh.0));
        reply.error(Errno::ENOTTY);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        let _span = self.request("flush", _ino.0, Some(fh.0));
        self.reply_empty("flush", self.run(self.core.flush(fh.0)), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _span = self.request("release", _ino.0, Some(fh.0));
        let r = self.run(self.core.release(fh.0));
        self.passthrough.release(fh.0);
        self.reply_empty("release", r, reply);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _span = self.request("fsync", _ino.0, Some(fh.0));
        self.reply_empty("fsync", self.run(self.core.fsync(fh.0)), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = self.request("opendir", ino.0, None);
        match self.run(self.core.opendir(InodeId(ino.0))) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", &e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _span = self.request("readdir", ino.0, Some(fh.0));
        let entries = match self.core.dir_entries(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno("readdir", &e)),
        };
        let dots = [(ino, FileType::Directory, "."), (ino, FileType::Directory, "..")];
        let all =
            dots.into_iter().chain(entries.iter().map(|e| (INodeNo(e.attr.ino.0), kind(e.attr.kind), e.name.as_str())));
        for (i, (ino, k, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(ino, i as u64 + 1, k, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _span = self.request("readdirplus", ino.0, Some(fh.0));
        let (dir, entries) = match self.readdir_entries(ino, fh) {
            Ok(x) => x,
            Err(e) => return reply.error(errno("readdirplus", &e)),
        };
        let ttl = self.core.config().entry_ttl;
        let skip = (offset as usize).saturating_sub(2);
        // Only the entries of this reply, with this client's unwritten sizes.
        let attrs = self.run(async {
            Ok(self
                .core
                .with_local_sizes(entries.iter().skip(skip).take(READDIRPLUS_BATCH).map(|e| e.attr.clone()))
                .await)
        });
        let attrs = match attrs {
            Ok(a) => a,
            Err(e) => return reply.error(errno("readdirplus", &e)),
        };
        let dots = [(".", &dir), ("..", &dir)];
        let listed = entries.iter().skip(skip).zip(attrs.iter()).map(|(e, a)| (e.name.as_str(), a));
        let all = dots.into_iter().skip(offset as usize).chain(listed);
        for (i, (name, attr)) in all.enumerate() {
            let off = offset + i as u64 + 1;
            if reply.add(INodeNo(attr.ino.0), off, name, &ttl, &file_attr(attr), Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let _span = self.request("releasedir", _ino.0, Some(fh.0));
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _span = self.request("fsyncdir", _ino.0, Some(_fh.0));
        // This client's changes the master answered before they were on
        // its disk are there when this returns.
        self.reply_empty("fsyncdir", self.run(self.core.sync_metadata()), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _span = self.request("statfs", _ino.0, None);
        match self.run(self.core.statfs()) {
            Ok(s) => {
                let blocks = s.total_bytes / STATFS_BLOCK_BYTES;
                let free = s.free_bytes / STATFS_BLOCK_BYTES;
                // Inodes are not a limited resource: report plenty free,
                // with f_files - f_ffree = inodes in use (as `df -i` shows).
                reply.statfs(
                    blocks,
                    free,
                    free,
                    s.files + FREE_INODES,
                    FREE_INODES,
                    STATFS_BLOCK_BYTES as u32,
                    stripefs_proto::MAX_NAME_BYTES as u32,
                    STATFS_BLOCK_BYTES as u32,
                )
            }
            Err(e) => reply.error(errno("statfs", &e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _span = self.request("setxattr", ino.0, None);
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let r = self.run(self.core.setxattr(InodeId(ino.0), name, value, flags as u32));
        self.reply_empty("setxattr", r, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _span = self.request("getxattr", ino.0, None);
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        // The kernel asks for security.capability before every write (to
        // drop it): answered right here, not through the runtime, since a
        // writer waits for it each time (1 MiB writes to a passthrough file
        // were 30 % slower with the longer way).
        if is_unsupported_xattr(name) {
            return reply.error(Errno::ENODATA);
        }
        self.reply_xattr("getxattr", self.run(self.core.getxattr(InodeId(ino.0), name)), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = self.request("listxattr", ino.0, None);
        let r = self.run(self.core.listxattr(InodeId(ino.0))).map(|names| {
            let mut out = Vec::new();
            for n in names {
                out.extend_from_slice(n.as_bytes());
                out.push(0);
            }
            out
        });
        self.reply_xattr("listxattr", r, size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = self.request("removexattr", ino.0, None);
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.reply_empty("removexattr", self.run(self.core.removexattr(InodeId(ino.0), name)), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _span = self.request("create", parent.0, None);
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let exclusive = flags & libc::O_EXCL != 0;
        let core = &self.core;
        let r = self.run(async {
            match core.create(InodeId(parent.0), name, mode & !umask, owner(req), write).await {
                Ok(created) => Ok(created),
                // Created by someone else since the kernel's lookup: open it, as open(2) would.
                Err(ClientError::Fs(stripefs_proto::FsError::Exists)) if !exclusive => {
                    let a = core.lookup(InodeId(parent.0), name).await?.attr;
                    let a = if flags & libc::O_TRUNC != 0 && a.kind == FileKind::File {
                        core.setattr(a.ino, SetAttr { size: Some(0), ..Default::default() }).await?
                    } else {
                        a
                    };
                    let (fh, _) = core.open(a.ino, write).await?;
                    Ok((a, fh))
                }
                Err(e) => Err(e),
            }
        });
        match r {
            Ok((a, fh)) => match self.passthrough.open(&self.core, a.ino.0, fh, |f| reply.open_backing(f)) {
                Some(id) => reply.created_passthrough(
                    &self.core.config().entry_ttl,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                    &id,
                ),
                None => reply.created(
                    &self.core.config().entry_ttl,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
            },
            Err(e) => reply.error(errno("create", &e)),
        }
    }
}
