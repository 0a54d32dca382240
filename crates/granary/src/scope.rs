//! Scopes: the names under which runs publish and read manifests.
//!
//! A scope is what the user names (`--scope main`, a branch) or, by
//! default, the module being built; granary always adds the target platform
//! and the toolchain, which every action ID depends on, so that a matrix of
//! platforms or Go versions never shares, or overwrites, a manifest.

use std::path::Path;

/// The scope of a run: `name`, qualified with the platform and toolchain.
pub fn qualify(name: &str) -> String {
    format!("{name} {}", platform())
}

/// The default scope's name: the module at or above `dir`, or `default`.
pub fn default_name(dir: &Path) -> String {
    dir.ancestors()
        .find_map(|dir| module_path(&dir.join("go.mod")))
        .unwrap_or_else(|| "default".to_owned())
}

/// The module path a go.mod declares.
fn module_path(go_mod: &Path) -> Option<String> {
    let text = std::fs::read_to_string(go_mod).ok()?;
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("module")?;
        if !rest.starts_with(char::is_whitespace) {
            return None;
        }
        let path = rest.split_whitespace().next()?.trim_matches('"');
        (!path.is_empty()).then(|| path.to_owned())
    })
}

/// `GOOS/GOARCH toolchain`, as the go command that started us builds.
fn platform() -> String {
    let goos = std::env::var("GOOS")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| host_goos().to_owned());
    let goarch = std::env::var("GOARCH")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| host_goarch().to_owned());
    format!(
        "{goos}/{goarch} {}",
        toolchain().unwrap_or_else(|| "go".to_owned())
    )
}

/// The version of the Go toolchain that started this process: the go
/// command is our parent (its GOROOT is two levels above its binary), else
/// GOROOT says where it is, else the go command on PATH says.
fn toolchain() -> Option<String> {
    // The parent may be a tool that starts its own helper (staticcheck,
    // golangci-lint), a profiler or a shell: then GOROOT, else the go
    // command on PATH, whose `go list` such a tool uses.
    parent_goroot()
        .and_then(version_in)
        .or_else(|| version_in(std::env::var_os("GOROOT")?.into()))
        .or_else(go_on_path_version)
}

/// The GOROOT of our parent process's binary, if it is a go command.
#[cfg(target_os = "linux")]
fn parent_goroot() -> Option<std::path::PathBuf> {
    let parent = std::os::unix::process::parent_id();
    let go = std::fs::read_link(format!("/proc/{parent}/exe")).ok()?;
    Some(go.parent()?.parent()?.to_owned())
}

/// Only Linux names a process's binary in a file (`/proc`); elsewhere the
/// toolchain is GOROOT's or the one on PATH.
#[cfg(not(target_os = "linux"))]
fn parent_goroot() -> Option<std::path::PathBuf> {
    None
}

/// The version of the go command on PATH: its GOROOT's VERSION file, read
/// rather than asked (`go env` would cost a helper 50 ms at start-up).
fn go_on_path_version() -> Option<String> {
    let exe = if cfg!(windows) { "go.exe" } else { "go" };
    let go = std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(exe))
        .find(|go| go.is_file())?;
    let goroot = std::fs::canonicalize(go)
        .ok()?
        .parent()?
        .parent()?
        .to_owned();
    version_in(goroot)
}

/// The version a GOROOT's VERSION file names (`go1.26.8`).
fn version_in(goroot: std::path::PathBuf) -> Option<String> {
    let version = std::fs::read_to_string(goroot.join("VERSION")).ok()?;
    let first = version.lines().next()?.trim();
    first.starts_with("go").then(|| first.to_owned())
}

fn host_goos() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        os => os,
    }
}

fn host_goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        arch => arch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_is_the_module_above() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("cmd/tool");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(default_name(&deep), "default");
        std::fs::write(
            dir.path().join("go.mod"),
            "// comment\nmodule \"example.com/granary/test\" // trailing\n\ngo 1.24\n",
        )
        .unwrap();
        assert_eq!(default_name(&deep), "example.com/granary/test");
        std::fs::write(dir.path().join("go.mod"), "modulex y\n").unwrap();
        assert_eq!(default_name(&deep), "default");
    }

    #[test]
    fn scopes_carry_the_platform() {
        let scope = qualify("main");
        let mut words = scope.split(' ');
        assert_eq!(words.next(), Some("main"));
        let target = words.next().unwrap();
        assert!(
            target.contains('/') && !target.contains("x86_64"),
            "{scope}"
        );
        assert!(words.next().unwrap().starts_with("go"), "{scope}");
    }
}
