//! Docs that cannot drift: every command, flag and variable of granary's
//! help and every metric of the server is in the reference, and every
//! relative link of the docs resolves.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn help(command: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_granary"))
        .args(command)
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success(), "granary {command:?} --help failed");
    String::from_utf8(output.stdout).unwrap()
}

/// The names listed under a help text's `Commands:` heading, without `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// What a command's help names: its long flags, its arguments (`<DIR>`)
/// and the variables of its flags.
fn names(help: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_arguments = false;
    for line in help.lines() {
        if !line.starts_with(' ') {
            in_arguments = line == "Arguments:";
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') {
            for token in trimmed.split([' ', ',']) {
                if token.starts_with("--") && token != "--help" && token != "--version" {
                    names.insert(format!("`{token}"));
                }
            }
        } else if in_arguments && trimmed.starts_with('<') {
            let argument = &trimmed[1..trimmed.find('>').unwrap()];
            // `<GO COMMAND>...` is written `GO COMMAND...` in the reference.
            names.insert(format!("`{argument}"));
        }
        let mut rest = line;
        while let Some(at) = rest.find("[env: ") {
            let variable = &rest[at + 6..];
            let end = variable.find('=').unwrap();
            names.insert(format!("`{}`", &variable[..end]));
            rest = &variable[end..];
        }
    }
    names
}

/// The reference's `## ` sections by their anchors.
fn sections(markdown: &str) -> BTreeMap<String, String> {
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut in_code = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && let Some(title) = line.strip_prefix("## ") {
            sections.extend(current.take());
            current = Some((anchor(title), String::new()));
        } else if let Some((_, text)) = &mut current {
            text.push_str(line);
            text.push('\n');
        }
    }
    sections.extend(current);
    sections
}

/// A heading's anchor, as GitHub makes it: lower case, punctuation
/// dropped, spaces made hyphens.
fn anchor(title: &str) -> String {
    title
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A section's own text and that of the sections it links to (the options
/// shared by several commands).
fn covered(sections: &BTreeMap<String, String>, anchor: &str) -> String {
    let own = &sections[anchor];
    let mut text = own.clone();
    for (target, _) in links(own) {
        if let Some(shared) = target.strip_prefix('#').and_then(|a| sections.get(a)) {
            text.push_str(shared);
        }
    }
    text
}

#[test]
fn every_command_flag_and_variable_is_in_the_reference() {
    let reference = fs::read_to_string(repo().join("docs/reference.md")).unwrap();
    let sections = sections(&reference);
    let top = help(&[]);
    let mut commands: Vec<Vec<String>> = vec![];
    for name in subcommands(&top) {
        let nested = subcommands(&help(&[&name]));
        if nested.is_empty() {
            commands.push(vec![name]);
        } else {
            commands.extend(nested.into_iter().map(|n| vec![name.clone(), n]));
        }
    }
    assert!(commands.len() >= 13, "too few commands found: {commands:?}");

    let mut missing = vec![];
    let global = covered(&sections, "global-options");
    for flag in names(&top) {
        if !global.contains(&flag) {
            missing.push(format!("granary {flag} (global options)"));
        }
    }
    for command in &commands {
        // `key generate` and `key public` share the section of `key`.
        let section = format!("granary-{}", command[0]);
        let Some(_) = sections.get(&section) else {
            missing.push(format!("a section `## granary {}`", command[0]));
            continue;
        };
        let text = covered(&sections, &section);
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        for name in names(&help(&args)) {
            if !text.contains(&name) {
                missing.push(format!("granary {}: {name}", command.join(" ")));
            }
        }
        if command.len() == 2 && !text.contains(&format!("key {}", command[1])) {
            missing.push(format!("granary {}", command.join(" ")));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/reference.md lacks what granary's help names (add them to the command's \
         section or to a section it links to):\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_metric_of_the_server_is_in_the_reference() {
    let reference = fs::read_to_string(repo().join("docs/reference.md")).unwrap();
    let metrics = &sections(&reference)["the-servers-metrics"];
    let server = common::server::Server::start(&[]);
    let (code, text) = common::server::request(server.addr, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200);
    let text = String::from_utf8(text).unwrap();
    let mut names = vec![];
    for line in text.lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = declared.split_once(' ').unwrap();
        names.push(match kind {
            "counter" => format!("`{name}_total`"),
            _ => format!("`{name}`"),
        });
    }
    assert!(names.len() > 10, "too few metrics found in:\n{text}");
    let missing: Vec<&String> = names.iter().filter(|n| !metrics.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md's metrics lack {missing:?}"
    );
}

/// The `[text](target)` links of a Markdown text, outside code.
fn links(markdown: &str) -> Vec<(String, usize)> {
    let mut found = vec![];
    let mut in_code = false;
    for (number, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Inline code may hold brackets and parentheses that are no link.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let target = &rest[at + 2..];
            let Some(end) = target.find(')') else { break };
            found.push((target[..end].to_owned(), number + 1));
            rest = &target[end..];
        }
    }
    found
}

/// The anchors of a Markdown file's headings.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    markdown
        .lines()
        .filter(|line| {
            if line.starts_with("```") {
                in_code = !in_code;
            }
            !in_code && line.starts_with('#')
        })
        .map(|line| anchor(line.trim_start_matches('#')))
        .collect()
}

/// Every file under `folder` whose name ends in `.{extension}`.
fn files_under(folder: PathBuf, extension: &str) -> Vec<PathBuf> {
    let mut files = vec![];
    let mut folders = vec![folder];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == extension) {
                files.push(path);
            }
        }
    }
    files
}

/// The front-page documents and everything in docs/.
fn markdown_files() -> Vec<PathBuf> {
    let root = repo();
    let mut files = ["README.md", "CHANGELOG.md", "ARCHITECTURE.md"]
        .map(|f| root.join(f))
        .to_vec();
    files.extend(files_under(root.join("docs"), "md"));
    files
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = vec![];
    let mut checked = 0;
    for file in markdown_files() {
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (target, line) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, fragment) = match target.split_once('#') {
                Some((path, fragment)) => (path, Some(fragment)),
                None => (target.as_str(), None),
            };
            let resolved = match path {
                "" => file.clone(),
                path => file.parent().unwrap().join(path),
            };
            let name = file.strip_prefix(repo()).unwrap_or(&file).display();
            let place = format!("{name}:{line}: {target}");
            if !resolved.exists() {
                broken.push(format!("{place}: no such file"));
            } else if let Some(fragment) = fragment {
                let heads = anchors(&fs::read_to_string(&resolved).unwrap_or_default());
                if !heads.contains(fragment) {
                    broken.push(format!("{place}: no such heading"));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_stays_short() {
    let size = fs::metadata(repo().join("README.md")).unwrap().len();
    assert!(
        size <= 16 * 1024,
        "README.md has {size} bytes: move detail into docs/ (16 KiB at most)"
    );
}

#[test]
fn the_checks_catch_what_they_look_for() {
    let help = "Usage: x\n\nArguments:\n  <DIR>  A folder\n\nOptions:\n  -f, --force  Do it [env: GRANARY_FORCE=]\n";
    let found = names(help);
    for name in ["`--force", "`DIR", "`GRANARY_FORCE`"] {
        assert!(found.contains(name), "{name} not in {found:?}");
    }
    assert_eq!(
        anchor("Why did it miss? `granary explain`"),
        "why-did-it-miss-granary-explain"
    );
    assert_eq!(anchor("The server's HTTP API"), "the-servers-http-api");
    let markdown = "[a](b.md#c) `[x](not-a-link)`\n```\n[y](nor-this)\n```\n";
    assert_eq!(links(markdown), vec![("b.md#c".to_owned(), 1)]);
}

#[test]
fn the_code_map_names_every_crate() {
    let architecture = fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let map = architecture
        .split("## Code map")
        .nth(1)
        .and_then(|rest| rest.split("```").nth(1))
        .expect("ARCHITECTURE.md has a code map in a block");
    let mapped: BTreeSet<&str> = map
        .lines()
        .filter_map(|line| line.strip_prefix("  "))
        .filter(|entry| !entry.starts_with(' '))
        .filter_map(|entry| entry.split_whitespace().next())
        .collect();
    let crates: BTreeSet<String> = fs::read_dir(repo().join("crates"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(crates.len() >= 10, "{crates:?}");
    let missing: Vec<&String> = crates
        .iter()
        .filter(|c| !mapped.contains(c.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map lacks {missing:?}"
    );
    let gone: Vec<&&str> = mapped.iter().filter(|m| !crates.contains(**m)).collect();
    assert!(
        gone.is_empty(),
        "ARCHITECTURE.md's code map names crates that are gone: {gone:?}"
    );
}

#[test]
fn the_invariants_are_numbered_in_order_and_cited_as_they_are() {
    let architecture = fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let list = architecture
        .split("## Architecture invariants")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("ARCHITECTURE.md has a section `## Architecture invariants`");
    let numbers: Vec<usize> = list
        .lines()
        .filter_map(|line| line.split_once(". **"))
        .filter_map(|(number, _)| number.parse().ok())
        .collect();
    let expected: Vec<usize> = (1..=numbers.len()).collect();
    assert!(numbers.len() >= 10, "invariants not found: {numbers:?}");
    assert_eq!(
        numbers, expected,
        "ARCHITECTURE.md's invariants out of order"
    );

    let mut wrong = vec![];
    let mut files = markdown_files();
    files.extend(files_under(repo().join("crates"), "rs"));
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        let name = file
            .strip_prefix(repo())
            .unwrap_or(&file)
            .display()
            .to_string();
        // Spelled in two pieces, so that this file does not cite it.
        let team_notes = concat!("DESIGN", ".md");
        if text.contains(team_notes) {
            wrong.push(format!(
                "{name}: cites {team_notes}, which is not in the repository"
            ));
        }
        for (at, _) in text.match_indices("invariant ") {
            let digits: String = text[at + 10..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(number) = digits.parse::<usize>()
                && !(1..=numbers.len()).contains(&number)
            {
                wrong.push(format!("{name}: invariant {number}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "citations that do not resolve:\n{}",
        wrong.join("\n")
    );
}
