//! Why a go command missed the cache.
//!
//! The cache sees only keys: when a fresh runner rebuilds a package that
//! the main branch built yesterday, nothing tells why. The go command
//! knows: with `GODEBUG=gocachehash=1` it prints every input it hashes
//! into a key (files, flags, variables, the toolchain, each dependency's
//! ID), and with `gocachetest=1` how it looked up each test result. This
//! crate turns that output into a [`Record`] of each action's inputs
//! ([`observe`], [`inputs`]), keeps records compact and bounded
//! ([`record`]), and compares an action that missed with the last
//! recorded run of the same action, wherever it ran ([`compare`]):
//!
//! ```text
//! build example.com/m/a: against the run of 3 h ago (namespace main):
//!     source file a.go: changed
//! test example.com/m/a: against the run of 3 h ago (namespace main):
//!     /src/m/a/testdata/x, read by the test: same content, new modification time: …
//!     variable FOO, read by the test: changed value
//! ```
//!
//! Architecture invariant: this crate knows nothing of the cache, the
//! network or the command line. It reads the go command's lines and the
//! files a test log names, and hands back values; the binary runs the go
//! command, finds test logs in the cache, and stores records in it.

pub mod compare;
pub mod inputs;
pub mod observe;
pub mod record;

pub use compare::{Base, Difference, Explained, Source, explain};
pub use inputs::test_inputs;
pub use observe::{Line, Observed, ObservedAction, ObservedTest};
pub use record::{Record, RecordError, Recorded};
