//! `granary serve` and `granary serve-token`: the binary's side of the
//! cache server (settings, runtime, signals); the server is
//! `granary-server`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use bytesize::ByteSize;
use granary_server::{Access, Server};

use crate::cli::{ServeArgs, ServeTokenArgs};
use crate::config;

pub fn run(dir: &Path, config: Option<&Path>, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let (settings, backing) = config::serve(dir, config, args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("granary-serve")
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(async {
        let backing = backing.map(|object| object.client()).transpose()?;
        let backing_name = backing.as_ref().map(ToString::to_string);
        let limits = settings.limits;
        let tls = settings.tls.is_some();
        let server = Server::bind(settings, backing).await?;
        let rebuilt = server.rebuilt();
        let grpc = server
            .grpc_local_addr()
            .map(|address| format!(" and {}://{address}", if tls { "grpcs" } else { "grpc" }))
            .unwrap_or_default();
        eprintln!(
            "granary serve: listening on {}://{}{grpc}; {}: {} blobs, {} (index rebuilt in {:.2?}); \
             evicting above {}, writes refused above {}; auth: {}{}",
            if tls { "https" } else { "http" },
            server.local_addr(),
            dir.display(),
            rebuilt.blobs,
            ByteSize(rebuilt.bytes),
            rebuilt.took,
            ByteSize(limits.max_size),
            ByteSize(limits.hard_limit),
            server.auth(),
            backing_name
                .map(|name| format!("; backed by {name}"))
                .unwrap_or_default(),
        );
        server.run(shutdown_signal()).await;
        eprintln!("granary serve: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// SIGTERM or SIGINT; on Windows, Ctrl+C or the console window closing.
async fn shutdown_signal() {
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a runtime with signals enabled can watch SIGTERM");
    #[cfg(windows)]
    let mut terminate =
        tokio::signal::windows::ctrl_close().expect("a console process can watch its closing");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("granary serve: shutting down, finishing requests in flight");
}

pub fn token(args: &ServeTokenArgs) -> anyhow::Result<ExitCode> {
    let scope = match args.scope.as_str() {
        "write" => Access::Write,
        _ => Access::Read,
    };
    let (token, line) = granary_server::new_token(scope, &args.name, &args.namespaces)
        .context("cannot read random bytes from /dev/urandom")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "token: {token}")?;
    writeln!(out, "tokens file line: {line}")?;
    Ok(ExitCode::SUCCESS)
}
