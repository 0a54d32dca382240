//! The release artefacts of `scripts/package.sh`, built and used as a user
//! would: the manylinux2014 wheel installed into a fresh virtualenv serves
//! a real go build; the static x86_64 binary has no shared library and
//! serves one too; the Windows binary runs under Wine; the macOS binary is
//! an arm64 Mach-O that loads only what every Mac has; their wheels hold
//! the same binaries; the sums match.
//!
//! The script builds one artefact per platform (the other architectures
//! take as long again and cannot run here), with the release profile's optimisations
//! off: this checks the packaging, not the code generation, and the two
//! builds (glibc 2.17 and musl) share nothing with the suite's own. (The
//! dev profile would not help: maturin names the target, so its crates
//! are built apart anyway, and at the dev profile's opt-level 2.)

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sha2::{Digest, Sha256};

/// Runs package.sh once into `out`.
fn package(out: &Path) {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/package.sh"))
        .env("GRANARY_PACKAGE_OUT", out)
        .env(
            "GRANARY_PACKAGE_TARGETS",
            "x86_64-unknown-linux-musl aarch64-apple-darwin x86_64-pc-windows-gnu",
        )
        .env("CARGO_TARGET_DIR", repo_root().join("target/package-test"))
        .env("CARGO_PROFILE_RELEASE_LTO", "off")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "256")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_INCREMENTAL", "0");
    run_ok(&mut cmd);
}

fn only(out: &Path, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = fs::read_dir(out)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(found.len(), 1, "one {suffix} in {out:?}: {found:?}");
    found.into_iter().next().unwrap()
}

/// A go build served by `granary` twice, the second from its cache alone.
fn serves_a_go_build(sb: &Sandbox, granary: &Path, name: &str) {
    let module = sb.module(name, 3);
    let cache = sb.path(&format!("{name}-cache"));
    for round in 1..=2 {
        let stats_file = sb.path(&format!("{name}-{round}.json"));
        let mut cmd = sb.go(&cache, &module, &["build", "-x", "-o", "/dev/null", "."]);
        cmd.env(
            "GOCACHEPROG",
            format!(
                "{} prog --stats-file {}",
                granary.display(),
                stats_file.display()
            ),
        )
        .env("GRANARY_TRIM_INTERVAL", "none");
        let out = run_ok(&mut cmd);
        let compiled = compiled_packages(&out.stderr);
        let run = stats(&stats_file);
        match round {
            1 => assert!(run.puts > 10 && !compiled.is_empty(), "{run:?}"),
            _ => assert!(
                compiled.is_empty() && run.hits > 10,
                "{name}: the second build compiles nothing: {compiled:?} {run:?}"
            ),
        }
    }
}

#[test]
fn release_artefacts_install_and_serve_go_builds() {
    let sb = Sandbox::new();
    let out = sb.path("dist");
    package(&out);

    // Every artefact has its sum.
    let sums = fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    let listed: Vec<(&str, &str)> = sums
        .lines()
        .map(|line| line.split_once("  ").unwrap())
        .collect();
    assert_eq!(listed.len(), 6, "{sums}");
    for (sum, name) in &listed {
        let bytes = fs::read(out.join(name)).unwrap();
        assert_eq!(*sum, hex::encode(Sha256::digest(&bytes)), "{name}");
    }

    // The wheel: tagged manylinux2014 (glibc 2.17), binary alone.
    let wheel = only(&out, "x86_64.whl");
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("granary_cache-"), "{name}");
    let tag = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             print(z.read([n for n in z.namelist() if n.endswith('.dist-info/WHEEL')][0]).decode())",
        ])
        .arg(&wheel)
        .output()
        .unwrap();
    let metadata = String::from_utf8_lossy(&tag.stdout);
    assert!(
        metadata.contains("Tag: py3-none-manylinux_2_17_x86_64")
            || metadata.contains("Tag: py3-none-manylinux2014_x86_64"),
        "{metadata}"
    );
    let venv = sb.path("venv");
    run_ok(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    run_ok(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--no-index",
                "--disable-pip-version-check",
            ])
            .arg(&wheel),
    );
    let installed = venv.join("bin/granary");
    let glibc = newest_glibc(&fs::read(&installed).unwrap());
    assert!(glibc <= 17, "the wheel's granary needs GLIBC_2.{glibc}");
    serves_a_go_build(&sb, &installed, "wheel");

    // The static binary: no interpreter, no shared library.
    let tarball = only(&out, "-x86_64-linux-static.tar.gz");
    let binary = unpack(&sb, &tarball, "static").join("granary");
    let ldd = Command::new("ldd").arg(&binary).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd: {said}"
    );
    serves_a_go_build(&sb, &binary, "static");

    // macOS: an arm64 executable whose libraries every Mac has.
    let tarball = only(&out, "-aarch64-macos.tar.gz");
    let folder = unpack(&sb, &tarball, "macos");
    let binary = fs::read(folder.join("granary")).unwrap();
    assert_eq!(
        wheel_script(&only(&out, "macosx_11_0_arm64.whl"), "granary"),
        binary
    );
    let libraries = mach_o_arm64_libraries(&binary);
    assert!(
        libraries
            .iter()
            .any(|l| l.starts_with("/usr/lib/libSystem")),
        "{libraries:?}"
    );
    for library in &libraries {
        assert!(
            library.starts_with("/usr/lib/") || library.starts_with("/System/Library/Frameworks/"),
            "the macOS binary loads {library}, which macOS does not have"
        );
    }

    // Windows: an x86_64 executable that runs.
    let zip = only(&out, "-x86_64-windows.zip");
    let folder = unpack(&sb, &zip, "windows");
    let exe = folder.join("granary.exe");
    let binary = fs::read(&exe).unwrap();
    assert_eq!(
        wheel_script(&only(&out, "win_amd64.whl"), "granary.exe"),
        binary
    );
    assert_eq!(&binary[..2], b"MZ");
    let pe = u32::from_le_bytes(binary[0x3c..0x40].try_into().unwrap()) as usize;
    assert_eq!(&binary[pe..pe + 4], b"PE\0\0");
    let machine = u16::from_le_bytes([binary[pe + 4], binary[pe + 5]]);
    assert_eq!(machine, 0x8664, "an x86_64 (AMD64) executable");
    let mut wine = Command::new("wine");
    wine.arg(&exe).arg("--version");
    for (key, value) in wine_environment() {
        wine.env(key, value);
    }
    let said = run_ok(&mut wine);
    let version = String::from_utf8_lossy(&said.stdout);
    assert!(version.starts_with("granary "), "{version}");
}

/// The program `name` a wheel installs (from its `.data/scripts/`).
fn wheel_script(wheel: &Path, name: &str) -> Vec<u8> {
    let read = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             [path] = [n for n in z.namelist() if n.endswith('.data/scripts/' + sys.argv[2])]\n\
             sys.stdout.buffer.write(z.read(path))",
        ])
        .arg(wheel)
        .arg(name)
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "no {name} in {wheel:?}: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    read.stdout
}

/// Unpacks a release archive into the sandbox; returns its one folder,
/// which must hold the README and the licences.
fn unpack(sb: &Sandbox, archive: &Path, into: &str) -> PathBuf {
    let unpacked = sb.path(into);
    fs::create_dir_all(&unpacked).unwrap();
    match archive.extension().and_then(|e| e.to_str()) {
        Some("zip") => run_ok(
            Command::new("python3")
                .args(["-m", "zipfile", "-e"])
                .arg(archive)
                .arg(&unpacked),
        ),
        _ => run_ok(
            Command::new("tar")
                .arg("-xzf")
                .arg(archive)
                .arg("-C")
                .arg(&unpacked),
        ),
    };
    let folders: Vec<PathBuf> = fs::read_dir(&unpacked)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(folders.len(), 1, "one folder in {archive:?}: {folders:?}");
    let folder = folders.into_iter().next().unwrap();
    for file in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        assert!(folder.join(file).exists(), "{file} not in {archive:?}");
    }
    folder
}

/// The libraries a 64-bit arm64 Mach-O executable loads, from its load
/// commands; fails on any other file.
fn mach_o_arm64_libraries(binary: &[u8]) -> Vec<String> {
    let word = |at: usize| u32::from_le_bytes(binary[at..at + 4].try_into().unwrap());
    assert_eq!(word(0), 0xfeed_facf, "a 64-bit Mach-O file");
    assert_eq!(word(4), 0x0100_000c, "for arm64");
    assert_eq!(word(12), 2, "an executable");
    let (count, mut at) = (word(16), 32);
    let mut libraries = Vec::new();
    for _ in 0..count {
        let (command, size) = (word(at), word(at + 4) as usize);
        // LC_LOAD_DYLIB, LC_LOAD_WEAK_DYLIB, LC_REEXPORT_DYLIB
        if matches!(command, 0xc | 0x8000_0018 | 0x8000_001f) {
            let name = &binary[at + word(at + 8) as usize..at + size];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            libraries.push(String::from_utf8_lossy(&name[..end]).into_owned());
        }
        at += size;
    }
    libraries
}

/// The highest `GLIBC_2.N` version a binary names.
fn newest_glibc(binary: &[u8]) -> u32 {
    let needle = b"GLIBC_2.";
    binary
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .filter_map(|(at, _)| {
            let digits: String = binary[at + needle.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|&b| b as char)
                .collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}
