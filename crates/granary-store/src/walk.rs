//! Listing the entry files of a cache directory, one subdirectory at a time.
//!
//! Every whole-cache operation (verify, usage, trim) walks the 256
//! subdirectories one by one, so that memory stays bounded by one
//! subdirectory whatever the size of the cache, and so that callers can
//! show progress.

use std::fs::{self, Metadata};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::store::executable_in;
use granary_id::{ID_SIZE, Id};

use crate::Store;

/// One entry file of the cache, as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFile {
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Length in bytes; for an executable entry, its file's length.
    pub size: u64,
    /// Space taken on disk: whole blocks, as `du` counts.
    pub disk_size: u64,
    /// The mtime, which cmd/go and granary bump when they use the file; for
    /// an executable entry, the later of the directory's and its file's.
    pub last_used: SystemTime,
    /// An executable entry: a directory holding one file.
    pub is_dir: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Action(Id),
    Object(Id),
}

impl Store {
    /// The action and object files in the subdirectory for IDs starting
    /// with `prefix`. Other files (cmd/go's own, granary's temporary files)
    /// are not listed, nor files that vanish while the directory is read.
    ///
    /// Symbolic links are never followed out of the cache: a subdirectory
    /// that is a link lists nothing, and an entry that is a link is not an
    /// entry. A cache directory may be shared or writable by others, and
    /// maintenance deletes what it lists.
    pub fn entry_files_in(&self, prefix: u8) -> io::Result<Vec<EntryFile>> {
        let Some(subdir) = self.subdir(prefix)? else {
            return Ok(Vec::new());
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(&subdir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(kind) = name.to_str().and_then(parse_name) else {
                continue;
            };
            let path = entry.path();
            // Not followed: the entry itself, link or not.
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_symlink() {
                continue;
            }
            files.push(entry_file(path, kind, &meta));
        }
        Ok(files)
    }

    /// The subdirectory for IDs starting with `prefix`, if it is a real
    /// directory (not a link to one elsewhere).
    pub(crate) fn subdir(&self, prefix: u8) -> io::Result<Option<PathBuf>> {
        let subdir = self.dir().join(format!("{prefix:02x}"));
        match fs::symlink_metadata(&subdir) {
            Ok(meta) if meta.is_dir() => Ok(Some(subdir)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `file` as it is on disk now, or `None` if it has gone.
    pub(crate) fn restat(&self, file: &EntryFile) -> Option<EntryFile> {
        let meta = fs::symlink_metadata(&file.path).ok()?;
        Some(entry_file(file.path.clone(), file.kind, &meta))
    }
}

fn entry_file(path: PathBuf, kind: EntryKind, meta: &Metadata) -> EntryFile {
    let mut file = EntryFile {
        size: meta.len(),
        disk_size: disk_size(meta),
        last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        is_dir: meta.is_dir(),
        kind,
        path,
    };
    if meta.is_dir() {
        let inner = executable_in(&file.path);
        let inner = inner.as_ref().map(|(_, meta)| meta);
        file.size = inner.map_or(0, Metadata::len);
        file.disk_size += inner.map_or(0, disk_size);
        if let Some(modified) = inner.and_then(|m| m.modified().ok()) {
            file.last_used = file.last_used.max(modified);
        }
    }
    file
}

/// Space a file takes on disk. Caches are mostly small files, for which
/// whole blocks are much more than their lengths (a 175-byte action record
/// takes 4 KiB), so limits count blocks where the platform says.
fn disk_size(meta: &Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.blocks() * 512
    }
    #[cfg(not(unix))]
    {
        meta.len()
    }
}

/// Removes an entry file, or an executable entry's directory, as `file`
/// was found a moment ago. Returns whether this call removed it: `false`
/// when it had already gone.
pub(crate) fn remove_entry_file(file: &EntryFile) -> io::Result<bool> {
    match remove_in_place(&file.path, file.is_dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the file (or the directory of files) at `path`, which names an
/// entry in a subdirectory of the cache, without following a link: if
/// the subdirectory or the entry was swapped for a link since it was
/// listed, nothing outside the cache is touched. The subdirectory is
/// opened without following links and the entry removed relative to it,
/// so no check can be raced.
#[cfg(unix)]
pub(crate) fn remove_in_place(path: &Path, is_dir: bool) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, unlinkat};
    let (Some(subdir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(ErrorKind::InvalidInput, "not an entry path"));
    };
    let subdir = rustix::fs::openat(CWD, subdir, NO_FOLLOW_DIR, rustix::fs::Mode::empty())?;
    match is_dir {
        true => remove_tree_at(&subdir, name)?,
        false => unlinkat(&subdir, name, AtFlags::empty())?,
    }
    Ok(())
}

#[cfg(unix)]
const NO_FOLLOW_DIR: rustix::fs::OFlags = rustix::fs::OFlags::RDONLY
    .union(rustix::fs::OFlags::DIRECTORY)
    .union(rustix::fs::OFlags::NOFOLLOW)
    .union(rustix::fs::OFlags::CLOEXEC);

/// Removes the directory `name` in `parent` and all it holds, opening
/// each directory without following links (a link inside is removed,
/// never followed): what a damaged executable entry may hold.
#[cfg(unix)]
fn remove_tree_at<P: rustix::path::Arg + Copy>(
    parent: &std::os::fd::OwnedFd,
    name: P,
) -> io::Result<()> {
    use rustix::fs::{AtFlags, Dir, Mode, openat, unlinkat};
    let dir = openat(parent, name, NO_FOLLOW_DIR, Mode::empty())?;
    for inner in Dir::read_from(&dir)? {
        let inner = inner?;
        let inner = inner.file_name();
        if inner.to_bytes() == b"." || inner.to_bytes() == b".." {
            continue;
        }
        match unlinkat(&dir, inner, AtFlags::empty()) {
            Err(rustix::io::Errno::ISDIR) => remove_tree_at(&dir, inner)?,
            other => other?,
        }
    }
    unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Elsewhere, the subdirectory and the entry are checked not to be links
/// just before removal (a link could still be swapped in between).
#[cfg(not(unix))]
pub(crate) fn remove_in_place(path: &Path, is_dir: bool) -> io::Result<()> {
    let is_link = |path: &Path| fs::symlink_metadata(path).map(|m| m.is_symlink());
    let subdir = path.parent().unwrap_or(path);
    if is_link(subdir)? || is_link(path)? {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{} leads out of the cache through a link", path.display()),
        ));
    }
    match is_dir {
        true => fs::remove_dir_all(path),
        false => fs::remove_file(path),
    }
}

/// `<64 hex>-a` or `<64 hex>-d`.
fn parse_name(name: &str) -> Option<EntryKind> {
    let (hex_id, suffix) = name.split_at_checked(ID_SIZE * 2)?;
    let id = Id::from_hex(hex_id)?;
    match suffix {
        "-a" => Some(EntryKind::Action(id)),
        "-d" => Some(EntryKind::Object(id)),
        _ => None,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A damaged executable entry may hold folders and links: it goes
    /// whole, and a link inside is removed, never followed.
    #[test]
    fn a_damaged_executable_entry_goes_whole_without_following_links() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), b"precious").unwrap();
        let entry = tmp
            .path()
            .join("cache/ab")
            .join(format!("{}-d", "ab".repeat(32)));
        fs::create_dir_all(entry.join("nested/deeper")).unwrap();
        fs::write(entry.join("tool"), b"x").unwrap();
        fs::write(entry.join("nested/deeper/file"), b"y").unwrap();
        std::os::unix::fs::symlink(&outside, entry.join("nested/link")).unwrap();
        remove_in_place(&entry, true).unwrap();
        assert!(!entry.exists());
        assert!(outside.join("keep").exists());
    }
}
