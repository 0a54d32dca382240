//! What one go command printed about its cache keys, read line by line.
//!
//! With `GODEBUG=gocachehash=1`, cmd/go prints every input it hashes into
//! a cache key, on stderr:
//!
//! ```text
//! HASH[build example.com/m/a]                          a hash begins
//! HASH[build example.com/m/a]: "file a.go PEfE7o35oBBYT6OYXyAO\n"
//! HASH[build example.com/m/a]: 64815b1267…              the key it made
//! HASH subkey 64815b1267… "srcfiles" = 2e177e0c3c…     a key derived from it
//! ```
//!
//! and with `gocachetest=1`, how each test result was looked up
//! (`testcache: PKG: test ID … => …`). Hashes run on many goroutines at
//! once, so the lines of two hashes interleave; each line names its hash,
//! though, and two hashes of one name (a package built with and without
//! its tests) only add up to the union of their inputs, which is what is
//! compared. Test results are the exception: every package's share one
//! name, so their inputs come from the test log instead (see `inputs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Hashes whose inputs are not an action's: the module index (keyed on
/// directory times, not a build output), and the pieces of a test result's
/// key, which every package's test shares (see the test log instead).
const NOT_ACTIONS: &[&str] = &[
    "moduleIndex",
    "testResult",
    "testInputs",
    "getenv",
    "open",
    "stat",
];

/// The name of the module index's keys (see [`Observed::action_of`]).
pub const MODULE_INDEX: &str = "module index";

/// What one go command's cache keys were made of.
#[derive(Debug, Default)]
pub struct Observed {
    /// The actions of each name (`build PKG`, `vet PKG`, `link PKG`): one
    /// for each time go hashed that name, as a package built with its
    /// tests and without them.
    pub actions: BTreeMap<String, Vec<ObservedAction>>,
    /// The hashes of each name begun and not yet ended, oldest first.
    open: HashMap<String, Vec<usize>>,
    /// The action that each cache key (hex) belongs to: its name, and the
    /// key of the hash it came from.
    keys: HashMap<String, (String, String)>,
    /// Derived keys whose parent was not yet known.
    pending_subkeys: Vec<(String, String)>,
    /// Test results, by package.
    pub tests: BTreeMap<String, ObservedTest>,
    /// `test binary ID args ARGS execcmd CMD`, by the test binary's ID.
    test_args: HashMap<String, String>,
    /// Lines read that were go's own output, not its debug output.
    pub passed_on: u64,
}

/// One hash of an action's key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ObservedAction {
    /// The key it made (hex).
    pub id: Option<String>,
    /// What went into it, IDs shortened (see [`shorten_ids`]). Where two
    /// hashes of one name were under way at once, a line goes to both.
    pub inputs: BTreeSet<String>,
}

/// How a package's test result was looked up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ObservedTest {
    /// The test IDs (hex): the key of the test log, from which go reads
    /// which files and variables the last run read.
    pub test_ids: Vec<String>,
    /// The test binary's build ID.
    pub binary: Option<String>,
    /// The flags the test ran with, as go keys them.
    pub args: Option<String>,
    /// Whether go found no result to reuse and ran the test.
    pub missed: bool,
}

/// What a line of go's stderr was.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Debug output, taken in.
    Taken,
    /// go's own output: the caller passes it on to the user.
    PassOn,
}

impl Observed {
    /// Takes in one line of the go command's stderr (without its newline).
    pub fn line(&mut self, line: &str) -> Line {
        if let Some(rest) = line.strip_prefix("HASH[") {
            self.hash_line(rest);
            Line::Taken
        } else if let Some(rest) = line.strip_prefix("HASH subkey ") {
            self.subkey(rest);
            Line::Taken
        } else if line.starts_with("HASH ") {
            // A file's content hash (`HASH PATH: SUM`): the action's own
            // line names the file and its content ID.
            Line::Taken
        } else if let Some(rest) = line.strip_prefix("testcache: ") {
            self.testcache(rest);
            Line::Taken
        } else {
            self.passed_on += 1;
            Line::PassOn
        }
    }

    fn hash_line(&mut self, rest: &str) {
        let Some((name, content)) = rest.split_once(']') else {
            return;
        };
        let content = content.strip_prefix(": ");
        if name == "testResult" {
            // `test binary ID args ARGS execcmd CMD`, tied to its package
            // by the binary's ID (see `testcache`).
            if let Some(text) = content.and_then(unquote)
                && let Some(binary) = text
                    .strip_prefix("test binary ")
                    .map(|r| r.split(' ').next())
            {
                let binary = binary.unwrap_or_default().to_owned();
                self.test_args.insert(binary, text);
            }
            return;
        }
        if NOT_ACTIONS.contains(&name) {
            if name == "moduleIndex"
                && let Some(key) = content.filter(|c| is_hex_key(c))
            {
                self.keys
                    .insert(key.to_owned(), (MODULE_INDEX.to_owned(), String::new()));
            }
            return;
        }
        let actions = self.actions.entry(name.to_owned()).or_default();
        let open = self.open.entry(name.to_owned()).or_default();
        match content {
            None => {
                // The line that begins a hash.
                actions.push(ObservedAction::default());
                open.push(actions.len() - 1);
            }
            Some(quoted) if quoted.starts_with('"') => {
                let Some(text) = unquote(quoted) else { return };
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = match text.contains(|c: char| c.is_control() && c != '\t')
                    || text.contains("\\x")
                {
                    // `pkg "<raw ID bytes>"` (vet): kept as a short hash.
                    true => binary_input(text),
                    false => shorten_ids(text),
                };
                for &index in open.iter() {
                    actions[index].inputs.insert(text.clone());
                }
            }
            Some(key) if is_hex_key(key) && !open.is_empty() => {
                let index = open.remove(0);
                actions[index].id = Some(key.to_owned());
                self.keys
                    .insert(key.to_owned(), (name.to_owned(), key.to_owned()));
            }
            Some(_) => {}
        }
    }

    /// `PARENT "NAME" = CHILD`
    fn subkey(&mut self, rest: &str) {
        let mut words = rest.split(' ');
        let (Some(parent), Some(child)) = (words.next(), words.next_back()) else {
            return;
        };
        if !is_hex_key(parent) || !is_hex_key(child) {
            return;
        }
        match self.keys.get(parent) {
            Some(action) => {
                let action = action.clone();
                self.keys.insert(child.to_owned(), action);
            }
            None => self
                .pending_subkeys
                .push((parent.to_owned(), child.to_owned())),
        }
    }

    /// `PKG: test ID BINARY => TESTID`, `PKG: test ID TESTID => input ID
    /// INPUTS => KEY`, `PKG: save test ID …`, or a reason for a miss.
    fn testcache(&mut self, rest: &str) {
        let Some((package, what)) = rest.split_once(": ") else {
            return;
        };
        let name = format!("test {package}");
        let test = self.tests.entry(package.to_owned()).or_default();
        let ids: Vec<&str> = what.split(' ').filter(|w| is_hex_key(w)).collect();
        if what.starts_with("save test ID ") {
            test.missed = true;
        } else if let Some(binary_hex) = what
            .strip_prefix("test ID ")
            .and_then(|ids| ids.split_once(" => "))
            .filter(|(_, rest)| !rest.contains(" => "))
            .map(|(binary, _)| binary)
        {
            // The binary's build ID, printed as the hex of its text.
            test.binary = hex::decode(binary_hex)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            if let Some(test_id) = ids.last() {
                test.test_ids.push((*test_id).to_owned());
            }
        } else if !what.starts_with("test ID ") {
            // Not found, malformed, expired, or an input it could not hash.
            test.missed = true;
        }
        for id in ids {
            self.keys
                .insert(id.to_owned(), (name.clone(), String::new()));
        }
    }

    /// Ties up what arrived out of order; call once the go command is done.
    pub fn finish(&mut self) {
        for (parent, child) in std::mem::take(&mut self.pending_subkeys) {
            if let Some(action) = self.keys.get(&parent).cloned() {
                self.keys.insert(child, action);
            }
        }
        for test in self.tests.values_mut() {
            test.args = test
                .binary
                .as_ref()
                .and_then(|binary| self.test_args.get(binary))
                .map(|line| line.split_once(" args ").map_or("", |(_, a)| a).to_owned());
        }
    }

    /// The action a cache key belongs to: its name, and the key of its
    /// hash (empty for a test result, which has one a package).
    pub fn action_of(&self, key: &str) -> Option<(&str, &str)> {
        self.keys
            .get(key)
            .map(|(name, id)| (name.as_str(), id.as_str()))
    }
}

/// A cache key as go prints it: 64 lower-case hex digits.
fn is_hex_key(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Characters an ID keeps in a record: enough to tell two apart.
const SHORT_ID: usize = 10;

/// `text` with every ID-like word (20 or more letters, digits, `-` and `_`,
/// as go's base64 action and content IDs are, or hex) cut to its first
/// [`SHORT_ID`] characters: what a record keeps of an ID, since a person
/// reads only whether it changed, and random IDs do not compress.
pub fn shorten_ids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.len() >= 20 {
            out.push_str(&word[..SHORT_ID]);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A line holding raw bytes, as its first word and a short hash of the rest.
fn binary_input(text: &str) -> String {
    use sha2::Digest as _;
    let (word, rest) = text.split_once(' ').unwrap_or(("", text));
    let hash = sha2::Sha256::digest(rest.as_bytes());
    format!("{word} {}", &hex::encode(hash)[..SHORT_ID])
}

/// The text of a Go double-quoted string literal, as `%q` writes it.
fn unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut bytes = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let escaped = chars.next()?;
        let mut code = |digits: usize| {
            let hex: String = chars.by_ref().take(digits).collect();
            u32::from_str_radix(&hex, 16).ok()
        };
        match escaped {
            'n' => bytes.push(b'\n'),
            't' => bytes.push(b'\t'),
            'r' => bytes.push(b'\r'),
            'a' => bytes.push(7),
            'b' => bytes.push(8),
            'f' => bytes.push(12),
            'v' => bytes.push(11),
            '\\' | '"' | '\'' => bytes.push(escaped as u8),
            'x' => bytes.push(u8::try_from(code(2)?).ok()?),
            'u' | 'U' => {
                let c = char::from_u32(code(if escaped == 'u' { 4 } else { 8 })?)?;
                let mut buf = [0; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "64815b12672083028f84bbeebea69e8112cab75a219ec32ac7eaabb3aaa710da";
    const KEY_B: &str = "2e177e0c3c8cbf769497a1de7d4378583c91c31b98fb08471eea0fda16bcfd1b";

    #[test]
    fn interleaved_hashes_are_told_apart_by_name() {
        let mut seen = Observed::default();
        for line in [
            "HASH[build example.com/m/a]",
            "HASH[build example.com/m/b]",
            r#"HASH[build example.com/m/a]: "go1.26.8""#,
            r#"HASH[build example.com/m/b]: "file b.go PEfE7o35oBBYT6OYXyAO\n""#,
            r#"HASH[build example.com/m/a]: "file a.go am2QRulHIJ6JGPYfJPYA\n""#,
            "HASH /tmp/m/a/a.go: 4ba164d62956cbf38638637453837789c39761e739aeff267702b33bdf5908a9",
            &format!("HASH[build example.com/m/a]: {KEY_A}"),
            &format!("HASH subkey {KEY_A} \"srcfiles\" = {KEY_B}"),
            "a/a.go:3:1: syntax error",
        ] {
            seen.line(line);
        }
        seen.finish();
        let a = &seen.actions["build example.com/m/a"][0];
        assert_eq!(
            a.inputs.iter().collect::<Vec<_>>(),
            ["file a.go am2QRulHIJ", "go1.26.8"]
        );
        assert_eq!(a.id.as_deref(), Some(KEY_A));
        assert_eq!(
            seen.actions["build example.com/m/b"][0]
                .inputs
                .iter()
                .collect::<Vec<_>>(),
            ["file b.go PEfE7o35oB"]
        );
        assert_eq!(
            seen.action_of(KEY_B),
            Some(("build example.com/m/a", KEY_A))
        );
        assert_eq!(seen.passed_on, 1, "the compiler's error is go's own");
    }

    #[test]
    fn two_hashes_of_one_name_are_kept_apart_unless_they_overlap() {
        let mut seen = Observed::default();
        for line in [
            "HASH[build p]".to_owned(),
            r#"HASH[build p]: "file p.go AAAAAAAAAAAAAAAAAAAA\n""#.to_owned(),
            format!("HASH[build p]: {KEY_A}"),
            "HASH[build p]".to_owned(),
            r#"HASH[build p]: "file p_test.go BBBBBBBBBBBBBBBBBBBB\n""#.to_owned(),
            "HASH[build p]".to_owned(),
            r#"HASH[build p]: "go1.26.8""#.to_owned(),
            format!("HASH[build p]: {KEY_B}"),
            format!("HASH[build p]: {KEY_A}"),
        ] {
            seen.line(&line);
        }
        let p = &seen.actions["build p"];
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].inputs.len(), 1, "alone: only its own line");
        assert_eq!(p[1].inputs.len(), 2);
        assert_eq!(p[2].inputs.len(), 1, "begun after the test file's line");
        assert_eq!(p[1].id.as_deref(), Some(KEY_B));
    }

    #[test]
    fn test_results_are_tied_to_their_package_and_flags() {
        let binary = "smN7l4ioG99GazljhpV8";
        let mut seen = Observed::default();
        for line in [
            "HASH[testResult]".to_owned(),
            format!(
                r#"HASH[testResult]: "test binary {binary} args [\"-test.run=TestA\"] execcmd []""#
            ),
            format!(
                "testcache: example.com/m/a: test ID {} => {KEY_A}",
                hex::encode(binary)
            ),
            "testcache: example.com/m/a: input list not found: cache miss".to_owned(),
            format!(
                "testcache: example.com/m/a: save test ID {KEY_A} => input ID {KEY_B} => {KEY_B}"
            ),
        ] {
            seen.line(&line);
        }
        seen.finish();
        let test = &seen.tests["example.com/m/a"];
        assert_eq!(test.test_ids, [KEY_A]);
        assert_eq!(
            test.args.as_deref(),
            Some(r#"["-test.run=TestA"] execcmd []"#)
        );
        assert!(test.missed);
        assert_eq!(seen.action_of(KEY_B), Some(("test example.com/m/a", "")));
        assert!(
            seen.actions.is_empty(),
            "testResult is no action of its own"
        );
    }

    #[test]
    fn go_quoting_is_undone() {
        assert_eq!(
            unquote(r#""a\tb\n\"c\" \x41\u00e9\\""#).unwrap(),
            "a\tb\n\"c\" Aé\\"
        );
        assert_eq!(unquote(r#""\q""#), None);
        assert_eq!(unquote("no quotes"), None);
    }

    #[test]
    fn raw_bytes_become_a_short_hash() {
        let mut seen = Observed::default();
        seen.line("HASH[vet p]");
        seen.line(r#"HASH[vet p]: "pkg \"d\x81[\x12g \x83\"\n""#);
        let inputs = &seen.actions["vet p"][0].inputs;
        let line = inputs.iter().next().unwrap();
        assert!(
            line.starts_with("pkg ") && line.len() == 4 + SHORT_ID,
            "{line}"
        );
    }

    #[test]
    fn ids_are_shortened_and_paths_kept() {
        assert_eq!(
            shorten_ids("packagefile os=zPOy37qVyIIUS_BSsIpj /usr/local/go/src/internal_abi"),
            "packagefile os=zPOy37qVyI /usr/local/go/src/internal_abi"
        );
    }
}
