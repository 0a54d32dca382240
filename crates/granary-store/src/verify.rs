//! Checking every entry of a cache directory, and removing the damaged ones.
//!
//! Checking is split in two so that a caller can show progress: list the
//! entry files of one subdirectory ([`Store::entry_files_in`]), then check
//! them one by one ([`Store::check`]).

use std::fmt;
use std::io::{self, ErrorKind};

use crate::store::{executable_in, read_entry, sha256_of};
use crate::walk::remove_entry_file;
use granary_id::Id;

use crate::{EntryError, EntryFile, EntryKind, MissReason, Store};

/// What is wrong with a damaged entry file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The action record is garbled or belongs to another action.
    BadActionRecord(EntryError),
    /// The object's SHA-256 is not its name: a flipped byte, a truncation.
    WrongHash { actual: Id },
    /// An executable entry directory that does not hold exactly one file.
    BadExecutableEntry,
    /// The file cannot be read.
    Unreadable(ErrorKind),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::BadActionRecord(e) => write!(f, "{e}"),
            Problem::WrongHash { actual } => {
                write!(f, "its SHA-256 is {actual}, not the ID it is named by")
            }
            Problem::BadExecutableEntry => {
                f.write_str("an executable entry directory that does not hold exactly one file")
            }
            Problem::Unreadable(kind) => write!(f, "cannot be read: {kind}"),
        }
    }
}

impl Store {
    /// Checks one entry file: an action record's format and name, an
    /// object's hash. `Ok(())` also when the file has vanished meanwhile.
    pub fn check(&self, file: &EntryFile) -> Result<(), Problem> {
        match file.kind {
            EntryKind::Action(action) => match read_entry(&file.path, &action) {
                Ok(_) | Err(MissReason::NoEntry) => Ok(()),
                Err(MissReason::CorruptEntry(e)) => Err(Problem::BadActionRecord(e)),
                Err(MissReason::Unreadable(kind)) => Err(Problem::Unreadable(kind)),
                // The object is checked on its own, under its own name.
                Err(
                    MissReason::NoObject
                    | MissReason::ObjectSize { .. }
                    | MissReason::BadExecutableEntry,
                ) => Ok(()),
            },
            EntryKind::Object(output) => {
                let path = if file.path.is_dir() {
                    executable_in(&file.path)
                        .ok_or(Problem::BadExecutableEntry)?
                        .0
                } else {
                    file.path.clone()
                };
                match sha256_of(&path) {
                    Ok(actual) if actual == output => Ok(()),
                    Ok(actual) => Err(Problem::WrongHash { actual }),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(Problem::Unreadable(e.kind())),
                }
            }
        }
    }

    /// Removes a damaged entry file, after checking it once more: another
    /// process may have replaced it with a good one since. Returns whether
    /// it was removed.
    pub fn remove_damaged(&self, file: &EntryFile) -> io::Result<bool> {
        if self.check(file).is_ok() {
            return Ok(false);
        }
        match self.restat(file) {
            Some(now) => remove_entry_file(&now),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::*;

    impl Store {
        fn entry_files(&self) -> io::Result<Vec<EntryFile>> {
            let mut all = Vec::new();
            for prefix in 0..=255 {
                all.extend(self.entry_files_in(prefix)?);
            }
            Ok(all)
        }
    }

    fn damaged(store: &Store) -> Vec<(PathBuf, Problem)> {
        store
            .entry_files()
            .unwrap()
            .into_iter()
            .filter_map(|f| store.check(&f).err().map(|p| (f.path, p)))
            .collect()
    }

    #[test]
    fn finds_flipped_truncated_and_garbled_entries_and_removes_exactly_those() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bodies: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        let stored: Vec<_> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| store.put_bytes(&Id([i as u8; 32]), b).unwrap())
            .collect();
        fs::write(dir.path().join("README"), b"cmd/go's own file").unwrap();
        assert_eq!(store.entry_files().unwrap().len(), 12);
        assert!(damaged(&store).is_empty());

        let mut flipped = fs::read(&stored[0].object).unwrap();
        flipped[500] ^= 1;
        fs::write(&stored[0].object, flipped).unwrap();
        fs::File::options()
            .write(true)
            .open(&stored[1].object)
            .unwrap()
            .set_len(10)
            .unwrap();
        let garbled = store.action_path(&Id([2; 32]));
        let mut record = fs::read(&garbled).unwrap();
        record[3] = b'z';
        fs::write(&garbled, record).unwrap();

        let found = damaged(&store);
        let paths: Vec<_> = found.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(paths.contains(&stored[0].object) && paths.contains(&stored[1].object));
        assert!(paths.contains(&garbled));
        assert!(matches!(
            found.iter().find(|(p, _)| *p == garbled).unwrap().1,
            Problem::BadActionRecord(EntryError::BadHex)
        ));

        for file in store.entry_files().unwrap() {
            if store.check(&file).is_err() {
                assert!(store.remove_damaged(&file).unwrap());
            }
        }
        assert!(damaged(&store).is_empty());
        assert_eq!(store.entry_files().unwrap().len(), 9);
        assert!(stored[2].object.exists() && !garbled.exists());
    }

    #[test]
    fn a_repaired_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let stored = store.put_bytes(&Id([1; 32]), b"good").unwrap();
        fs::write(&stored.object, b"bad!").unwrap();
        let file = store
            .entry_files()
            .unwrap()
            .into_iter()
            .find(|f| f.path == stored.object)
            .unwrap();
        assert!(store.check(&file).is_err());
        // Another process puts the same output again before the removal.
        store.put_bytes(&Id([2; 32]), b"good").unwrap();
        assert!(!store.remove_damaged(&file).unwrap());
        assert_eq!(fs::read(&stored.object).unwrap(), b"good");
    }
}
