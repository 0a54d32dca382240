//! granary's local tier: a cache directory in cmd/go's own format.
//!
//! The layout is exactly that of Go's `GOCACHE`
//! (`src/cmd/go/internal/cache/cache.go`), so that granary and the native
//! `go` command can share one directory, in both directions, and
//! `go clean -cache` keeps working:
//!
//! - `<dir>/<xx>/<hex action ID>-a` is an [action entry](ActionEntry): the
//!   175-byte line `v1 <action> <output> <%20d size> <%20d put time in unix ns>\n`;
//! - `<dir>/<xx>/<hex output ID>-d` holds the output bytes, whose SHA-256 is the
//!   output ID (`go run` may instead leave a directory there holding one
//!   executable, which is read the same way);
//! - `<xx>` is the first byte of the ID in hex;
//! - a file's mtime means "last used" and is bumped at most once an hour.
//!
//! What granary adds is atomicity: every file is written under a unique
//! temporary name beside its final one (`<dir>/<xx>/.put-*`, which cmd/go
//! ignores) and renamed into place once complete,
//! and an object is renamed into place only after its SHA-256 has been checked
//! against its output ID. Readers therefore never see a partial file written by
//! granary, and several granary processes and native `go` processes can share
//! the directory at once.
//!
//! Whole-cache operations walk the 256 subdirectories one at a time
//! ([`Store::entry_files_in`]), so their memory stays bounded:
//! [`Store::check`] verifies action records and object hashes, and
//! [`Store::scan_subdirectory`], [`Usage::plan`] and [`Store::remove_unused_in`] measure the cache and
//! trim it by age, size and free space, least recently used first, never
//! removing what was used within a grace window (see the `trim` module).
//!
//! Reading is forgiving: an entry that is missing, short, garbled or that
//! names an object of the wrong size is a [`Miss`](Lookup::Miss), never an
//! error; the [`MissReason`] says which.
//!
//! Architecture invariant: this crate knows nothing about JSON, the `go`
//! command, threads or the network. It is synchronous file-system code.

mod entry;
mod store;
mod trim;
mod verify;
mod walk;

pub use entry::{ActionEntry, ENTRY_SIZE, EntryError};
pub use store::{
    Clock, Hit, Lookup, MissReason, ObjectWriter, Store, StoreError, Stored, TMP_DIR_NAME,
};
pub use trim::{
    AGE_BRACKETS, DEFAULT_GRACE, DEFAULT_MAX_AGE, Plan, Policy, STALE_TEMPORARY_AGE, TRIM_MARKER,
    Tally, Usage,
};
pub use verify::Problem;
pub use walk::{EntryFile, EntryKind};
