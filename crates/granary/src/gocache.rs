//! Finding the directory that the go command uses as its build cache, the
//! way cmd/go finds it: the `GOCACHE` variable, else `GOCACHE` in the file
//! that `go env -w` writes, else `go-build` in the user's cache directory.
//! Sources: `cmd/go/internal/cache/default.go` (`DefaultDir`),
//! `cmd/go/internal/cfg/cfg.go` (`EnvFile`, `readEnvFile`) and Go's
//! `os.UserCacheDir` / `os.UserConfigDir`.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// Where a value came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Environment,
    GoEnvFile,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Environment => "the GOCACHE environment variable",
            Source::GoEnvFile => "`go env -w GOCACHE`",
        })
    }
}

/// The go command's cache directory, for this process's environment.
pub fn go_cache_dir() -> anyhow::Result<PathBuf> {
    resolve(&|name| std::env::var_os(name), &|path| {
        std::fs::read(path).ok()
    })
}

/// [`go_cache_dir`] with the environment and file system passed in.
fn resolve(
    getenv: &dyn Fn(&str) -> Option<OsString>,
    read_file: &dyn Fn(&PathBuf) -> Option<Vec<u8>>,
) -> anyhow::Result<PathBuf> {
    let set = |name: &str| getenv(name).filter(|v| !v.is_empty());
    let (value, source) = match set("GOCACHE") {
        Some(value) => (value, Source::Environment),
        None => match go_env_file(getenv).and_then(|file| read_file(&file)) {
            Some(data) => match env_file_value(&data, "GOCACHE") {
                Some(value) => (value, Source::GoEnvFile),
                None => return default_dir(getenv),
            },
            None => return default_dir(getenv),
        },
    };
    if value == "off" {
        bail!(
            "{source} is \"off\", which disables Go's build cache; \
             give granary a directory with --dir or GRANARY_DIR"
        );
    }
    let dir = PathBuf::from(value);
    if !dir.is_absolute() {
        bail!(
            "{source} is {}, which is not an absolute path (the go command refuses it too); \
             set it to an absolute path, or give granary one with --dir or GRANARY_DIR",
            dir.display()
        );
    }
    Ok(dir)
}

/// The file `go env -w` writes: `$GOENV`, else `<user config dir>/go/env`.
fn go_env_file(getenv: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    match getenv("GOENV").filter(|v| !v.is_empty()) {
        Some(file) if file == "off" => None,
        Some(file) => Some(PathBuf::from(file)),
        None => user_dir(getenv, UserDir::Config)
            .ok()
            .map(|dir| dir.join("go").join("env")),
    }
}

/// The value of `key` in a go env file: `KEY=VALUE` lines, the last one
/// winning, as `readEnvFile` reads them.
fn env_file_value(data: &[u8], key: &str) -> Option<OsString> {
    let mut found = None;
    for line in data.split(|&b| b == b'\n') {
        if let Some(value) = line
            .strip_prefix(key.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
        {
            found = Some(value);
        }
    }
    let value = found.filter(|v| !v.is_empty())?;
    Some(OsString::from(String::from_utf8_lossy(value).into_owned()))
}

fn default_dir(getenv: &dyn Fn(&str) -> Option<OsString>) -> anyhow::Result<PathBuf> {
    let dir = user_dir(getenv, UserDir::Cache).context(
        "cannot find the go command's cache directory: GOCACHE is not set and there is no \
         user cache directory; set GOCACHE, or give granary a directory with --dir or GRANARY_DIR",
    )?;
    Ok(dir.join("go-build"))
}

#[derive(Debug, Clone, Copy)]
enum UserDir {
    Cache,
    Config,
}

/// Go's `os.UserCacheDir` and `os.UserConfigDir`.
fn user_dir(getenv: &dyn Fn(&str) -> Option<OsString>, which: UserDir) -> anyhow::Result<PathBuf> {
    let var = |name: &str| getenv(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if cfg!(windows) {
        let name = match which {
            UserDir::Cache => "LocalAppData",
            UserDir::Config => "AppData",
        };
        return var(name).with_context(|| format!("%{name}% is not defined"));
    }
    let home = || var("HOME").context("$HOME is not defined");
    if cfg!(target_os = "macos") {
        return Ok(home()?.join(match which {
            UserDir::Cache => "Library/Caches",
            UserDir::Config => "Library/Application Support",
        }));
    }
    let (xdg, fallback) = match which {
        UserDir::Cache => ("XDG_CACHE_HOME", ".cache"),
        UserDir::Config => ("XDG_CONFIG_HOME", ".config"),
    };
    match var(xdg) {
        Some(dir) if dir.is_absolute() => Ok(dir),
        Some(_) => bail!("the path in ${xdg} is relative"),
        None => Ok(home()?.join(fallback)),
    }
}

#[cfg(all(test, unix, not(target_os = "macos")))]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve_with(vars: &[(&str, &str)], files: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        let files: HashMap<PathBuf, Vec<u8>> = files
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.as_bytes().to_vec()))
            .collect();
        resolve(&|name| vars.get(name).cloned(), &|path| {
            files.get(path).cloned()
        })
    }

    #[test]
    fn environment_wins() {
        let dir = resolve_with(
            &[("GOCACHE", "/env/cache"), ("HOME", "/home/u")],
            &[("/home/u/.config/go/env", "GOCACHE=/file/cache\n")],
        );
        assert_eq!(dir.unwrap(), PathBuf::from("/env/cache"));
    }

    #[test]
    fn go_env_w_file_is_read() {
        let dir = resolve_with(
            &[("HOME", "/home/u")],
            &[(
                "/home/u/.config/go/env",
                "GOPROXY=off\nGOCACHE=/old\nGOCACHE=/file/cache\n",
            )],
        );
        assert_eq!(dir.unwrap(), PathBuf::from("/file/cache"));
        let dir = resolve_with(
            &[("HOME", "/home/u"), ("GOENV", "/etc/goenv")],
            &[("/etc/goenv", "GOCACHE=/custom\n")],
        );
        assert_eq!(dir.unwrap(), PathBuf::from("/custom"));
        let dir = resolve_with(
            &[("HOME", "/home/u"), ("XDG_CONFIG_HOME", "/xdg")],
            &[("/xdg/go/env", "GOCACHE=/from/xdg\n")],
        );
        assert_eq!(dir.unwrap(), PathBuf::from("/from/xdg"));
    }

    #[test]
    fn defaults_to_the_user_cache_dir() {
        let dir = resolve_with(&[("HOME", "/home/u")], &[]);
        assert_eq!(dir.unwrap(), PathBuf::from("/home/u/.cache/go-build"));
        let dir = resolve_with(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xc")], &[]);
        assert_eq!(dir.unwrap(), PathBuf::from("/xc/go-build"));
        let dir = resolve_with(&[("HOME", "/home/u"), ("GOENV", "off")], &[]);
        assert_eq!(dir.unwrap(), PathBuf::from("/home/u/.cache/go-build"));
    }

    #[test]
    fn off_and_relative_are_clear_errors() {
        let err = resolve_with(&[("GOCACHE", "off")], &[]).unwrap_err();
        assert!(err.to_string().contains("--dir"), "{err}");
        let err = resolve_with(&[("GOCACHE", "rel/dir")], &[]).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        let err = resolve_with(&[], &[]).unwrap_err();
        assert!(format!("{err:#}").contains("HOME"), "{err:#}");
    }
}
