//! The inputs of a test result, from its test log, and how any input line
//! splits into what it is about (its key) and its value.
//!
//! go keys a test result on the test binary, its flags, and what the last
//! run of the test read: the test log (`# test log` then `getenv NAME`,
//! `open PATH`, `stat PATH`, `chdir PATH` lines), which go stores in the
//! cache under the test ID. For each file and variable named there, go
//! hashes its size, mode and modification time (a directory's entries
//! too) and a variable's value. Here each gets a value that a person can
//! be told about: whether the content changed, or only the time (a fresh
//! checkout, which `granary mtimes` fixes), or the variable. A variable's
//! value is never kept, only its hash: variables hold secrets.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

/// What begins every test log (`testing/internal/testdeps`).
const TEST_LOG_MAGIC: &str = "# test log\n";
/// Files larger than this are told apart by size and time only.
const HASHED_AT_MOST: u64 = 64 << 20;
/// Test log lines read at most: a bound on the work for a hostile cache.
const MAX_LOG_LINES: usize = 100_000;

/// The inputs of a test result: its flags, its binary, and the files and
/// variables its last run read, as listed in `test_log`. Relative paths
/// are in `package_dir`, as the test ran there. `getenv` gives the value
/// of a variable as the go command saw it.
pub fn test_inputs(
    test_log: &[u8],
    package_dir: Option<&Path>,
    args: Option<&str>,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> BTreeSet<String> {
    let mut inputs = BTreeSet::new();
    if let Some(args) = args {
        inputs.insert(format!("flags\t{args}"));
    }
    let Some(log) = std::str::from_utf8(test_log)
        .ok()
        .and_then(|log| log.strip_prefix(TEST_LOG_MAGIC))
    else {
        return inputs;
    };
    let mut pwd: Option<PathBuf> = package_dir.map(Path::to_owned);
    for line in log.lines().take(MAX_LOG_LINES) {
        let Some((op, name)) = line.split_once(' ') else {
            continue;
        };
        let path = || {
            let path = Path::new(name);
            match &pwd {
                _ if path.is_absolute() => Some(path.to_owned()),
                Some(pwd) => Some(pwd.join(path)),
                None => None,
            }
        };
        let input = match op {
            "getenv" => format!("env\t{name}\t{}", variable(getenv(name).as_deref())),
            "open" => match path() {
                Some(path) => format!("open\t{}\t{}", path.display(), opened(&path)),
                None => continue,
            },
            "stat" => match path() {
                Some(path) => format!("stat\t{}\t{}", path.display(), stat(&path)),
                None => continue,
            },
            "chdir" => {
                pwd = Some(PathBuf::from(name));
                continue;
            }
            _ => continue,
        };
        inputs.insert(input);
    }
    inputs
}

/// A variable's value as a record keeps it: whether it is set, and a hash.
fn variable(value: Option<&str>) -> String {
    match value {
        None => "unset".to_owned(),
        Some(value) => format!("set {}", short_hash(value.as_bytes())),
    }
}

/// A file's or folder's value: its content and its time, apart.
fn opened(path: &Path) -> String {
    let Ok(meta) = fs::metadata(path) else {
        return "missing".to_owned();
    };
    if meta.is_dir() {
        let mut names = Vec::new();
        let mut times = vec![nanos(&meta).to_string()];
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                names.push(format!(
                    "{} {} {}",
                    entry.file_name().to_string_lossy(),
                    meta.len(),
                    meta.is_dir()
                ));
                times.push(format!(
                    "{} {}",
                    entry.file_name().to_string_lossy(),
                    nanos(&meta)
                ));
            }
        }
        names.sort();
        times.sort();
        return format!(
            "folder {} time {}",
            short_hash(names.join("\n").as_bytes()),
            short_hash(times.join("\n").as_bytes())
        );
    }
    let content = match meta.len() <= HASHED_AT_MOST {
        true => file_hash(path).unwrap_or_else(|| "unreadable".to_owned()),
        false => format!("{} bytes", meta.len()),
    };
    format!("content {content} time {}", nanos(&meta))
}

/// A stat's value: size, kind and time.
fn stat(path: &Path) -> String {
    match fs::metadata(path) {
        Err(_) => "missing".to_owned(),
        Ok(meta) => format!(
            "content {} bytes{} time {}",
            meta.len(),
            if meta.is_dir() { " folder" } else { "" },
            nanos(&meta)
        ),
    }
}

fn nanos(meta: &fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_nanos())
}

fn file_hash(path: &Path) -> Option<String> {
    let mut file = fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        match file.read(&mut buffer).ok()? {
            0 => break,
            n => hasher.update(&buffer[..n]),
        }
    }
    Some(hex::encode(&hasher.finalize()[..6]))
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..6])
}

/// An input line split into what it is about and its value, so that two
/// runs' lines about one thing can be compared: `file a.go ID` is about
/// `file a.go`, `packagefile os=ID` about `packagefile os`, `GOAMD64=v1`
/// about `GOAMD64`, `open\tPATH\tVALUE` (a test's) about `open\tPATH`,
/// and otherwise the first word (`compile`, `dir`, `vetflags`) or, for
/// go's version line, `go version`.
pub fn split(line: &str) -> (&str, &str) {
    if let Some((key, value)) = line.rsplit_once('\t') {
        return (key, value);
    }
    if line.starts_with("go1.") || line.starts_with("devel ") {
        return ("go version", line);
    }
    let words: Vec<&str> = line.split(' ').collect();
    let last = words.last().copied().unwrap_or_default();
    if words.len() == 2
        && let Some((name, id)) = last.split_once('=')
        && is_short_id(id)
        && !name.contains('"')
    {
        // `packagefile os=ID`: about the package.
        let cut = line.len() - last.len() + name.len();
        return (&line[..cut], &line[cut + 1..]);
    }
    if words.len() >= 3 && is_short_id(last) {
        let cut = line.len() - last.len() - 1;
        return (&line[..cut], last);
    }
    if let Some((name, _)) = words[0].split_once('=') {
        return (name, &line[name.len() + 1..]);
    }
    match line.split_once(' ') {
        Some((key, value)) => (key, value),
        None => (line, ""),
    }
}

/// An ID as a record keeps it (see `shorten_ids`).
fn is_short_id(word: &str) -> bool {
    word.len() >= 8
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_into_what_they_are_about_and_a_value() {
        for (line, key, value) in [
            ("file a.go PEfE7o35oB", "file a.go", "PEfE7o35oB"),
            ("import os zPOy37qVyI", "import os", "zPOy37qVyI"),
            ("packagefile os=zPOy37qVyI", "packagefile os", "zPOy37qVyI"),
            ("GOAMD64=v1", "GOAMD64", "v1"),
            ("go1.26.8", "go version", "go1.26.8"),
            ("dir /tmp/m/a", "dir", "/tmp/m/a"),
            (
                "import \"example.com/m/a\"",
                "import",
                "\"example.com/m/a\"",
            ),
            (
                "open\t/tmp/m/a/testdata/x y\tcontent ab time 1",
                "open\t/tmp/m/a/testdata/x y",
                "content ab time 1",
            ),
            ("vetflags [\"-atomic\"]", "vetflags", "[\"-atomic\"]"),
        ] {
            assert_eq!(split(line), (key, value), "{line}");
        }
    }

    #[test]
    fn a_test_log_gives_contents_times_and_variable_hashes() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("testdata")).unwrap();
        fs::write(dir.path().join("testdata/x"), "hi\n").unwrap();
        let log = "# test log\ngetenv FOO\ngetenv BAR\nopen testdata/x\nopen testdata\n\
                   stat /nonexistent/file\nbogus\n";
        let getenv = |name: &str| (name == "FOO").then(|| "secret".to_owned());
        let inputs = test_inputs(
            log.as_bytes(),
            Some(dir.path()),
            Some("[] execcmd []"),
            &getenv,
        );
        let lines: Vec<&str> = inputs.iter().map(String::as_str).collect();
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(lines.contains(&"env\tBAR\tunset"));
        let foo = lines.iter().find(|l| l.starts_with("env\tFOO")).unwrap();
        assert!(
            foo.starts_with("env\tFOO\tset ") && !foo.contains("secret"),
            "{foo}"
        );
        let x = format!("open\t{}\t", dir.path().join("testdata/x").display());
        let x = lines.iter().find(|l| l.starts_with(&x)).unwrap();
        assert!(
            x.contains(&format!(
                "content {} time",
                &hex::encode(Sha256::digest(b"hi\n"))[..12]
            )),
            "{x}"
        );
        assert!(lines.iter().any(|l| l.contains("\tfolder ")));
        assert!(lines.contains(&"stat\t/nonexistent/file\tmissing"));
        assert!(lines.contains(&"flags\t[] execcmd []"));
        assert!(test_inputs(b"not a test log", None, None, &getenv).is_empty());
    }
}
