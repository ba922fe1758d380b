//! Small filesystem helpers: atomic file replacement, directory fsync,
//! temp-file cleanup and disk space figures.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Suffix of every temporary file this crate creates; such files left by a
/// crash are removed when the chunk store opens.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// A temporary file name next to `path`: `<name>.<random hex>.tmp`.
pub(crate) fn temp_path_for(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{:016x}{TMP_SUFFIX}", rand::random::<u64>()));
    path.with_file_name(name)
}

/// Removes a temporary file when dropped, unless disarmed once the file
/// has been renamed into place.
pub(crate) struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    /// Guards `path`.
    pub(crate) fn new(path: PathBuf) -> TempGuard {
        TempGuard { path: Some(path) }
    }

    /// The file is in place: keep it.
    pub(crate) fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove temporary file {}: {e}", path.display());
                }
            }
        }
    }
}

/// Flushes a directory's entries (new, renamed or removed names) to disk.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Starts writing `file`'s dirty pages to disk without waiting for them
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). A later fsync then only
/// waits for what is still in flight, so disk writes overlap the upload
/// instead of all happening at the writer's fsync. Best effort: failure
/// only loses that overlap, so it is logged and otherwise ignored.
#[allow(unsafe_code)]
pub(crate) fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for as long as `file` is borrowed;
    // sync_file_range reads no memory of ours.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        tracing::debug!("sync_file_range: {}", io::Error::last_os_error());
    }
}

/// Replaces `path` with `contents` atomically: writes a temporary file in
/// the same directory, fsyncs it, renames it over `path` and fsyncs the
/// directory. Readers see either the old or the new contents, never a mix.
pub fn write_file_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = temp_path_for(path);
    let mut guard = TempGuard::new(tmp.clone());
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    guard.disarm();
    fsync_dir(dir)
}

/// Size and free space of a filesystem, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// Total size of the filesystem.
    pub capacity_bytes: u64,
    /// Space available to unprivileged users.
    pub free_bytes: u64,
}

/// The size and free space of the filesystem holding `path`.
pub fn disk_space(path: &Path) -> io::Result<DiskSpace> {
    let st = statvfs(path)?;
    // The field types differ between platforms (u32/u64): widen them all.
    #[allow(clippy::useless_conversion)]
    let (frsize, blocks, bavail) = (u64::from(st.f_frsize), u64::from(st.f_blocks), u64::from(st.f_bavail));
    Ok(DiskSpace { capacity_bytes: blocks.saturating_mul(frsize), free_bytes: bavail.saturating_mul(frsize) })
}

/// Which filesystem holds `path`, as a text equal for every process on this
/// running machine that names the same filesystem and different
/// otherwise: the kernel's boot id (random at every boot, so two machines
/// never share it) and the filesystem's device number. Nodes on one disk
/// report the same identity, so the master counts that disk once in statfs.
pub fn disk_identity(path: &Path) -> io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let dev = fs::metadata(path)?.dev();
    Ok(format!("{}:{dev:x}", boot.trim()))
}

/// `statvfs(2)` on `path`.
#[allow(unsafe_code)]
fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call and
    // `st` points to writable memory large enough for a `struct statvfs`.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled in the whole struct.
    Ok(unsafe { st.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        write_file_atomic(&path, b"one").expect("write");
        write_file_atomic(&path, b"two").expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    }

    #[test]
    fn temp_guard_removes_unless_disarmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.tmp");
        let b = dir.path().join("b.tmp");
        fs::write(&a, b"x").expect("write");
        fs::write(&b, b"x").expect("write");
        drop(TempGuard::new(a.clone()));
        let mut g = TempGuard::new(b.clone());
        g.disarm();
        drop(g);
        assert!(!a.exists());
        assert!(b.exists());
    }

    #[test]
    fn disk_identity_tells_filesystems_apart() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let id = disk_identity(a.path()).expect("identity");
        assert_eq!(id, disk_identity(b.path()).expect("identity"), "two dirs of one filesystem");
        assert_ne!(id, disk_identity(Path::new("/proc")).expect("identity of /proc"), "another filesystem");
        assert!(!id.starts_with(':') && !id.ends_with(':'), "{id}");
    }

    #[test]
    fn disk_space_of_a_temp_dir_is_plausible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let space = disk_space(dir.path()).expect("statvfs");
        assert!(space.capacity_bytes > 0);
        assert!(space.free_bytes <= space.capacity_bytes);
    }
}
