//! Listing the entry files of a cache directory, one subdirectory at a time.
//!
//! Every whole-cache operation (verify, usage, trim) walks the 256
//! subdirectories one by one, so that memory stays bounded by one
//! subdirectory whatever the size of the cache, and so that callers can
//! show progress.

use std::fs::{self, Metadata};
use std::io::{self, ErrorKind};
use std::path::PathBuf;
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
    pub fn entry_files_in(&self, prefix: u8) -> io::Result<Vec<EntryFile>> {
        let subdir = self.dir().join(format!("{prefix:02x}"));
        let entries = match fs::read_dir(&subdir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(kind) = name.to_str().and_then(parse_name) else {
                continue;
            };
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            files.push(entry_file(path, kind, &meta));
        }
        Ok(files)
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
    let removed = if file.is_dir {
        fs::remove_dir_all(&file.path)
    } else {
        fs::remove_file(&file.path)
    };
    match removed {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
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
