//! `granary key`: the ed25519 keys that sign action records.
// A command's report goes to stdout; only `prog` must keep stdout for the protocol.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use granary_trust::SigningKey;

use crate::cli::KeyCommand;

pub fn run(command: &KeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::Generate { file } => {
            let (key, public_file) = SigningKey::create_files(file)?;
            println!(
                "secret key: {} (mode 600; give it only to trusted writers, as --signing-key)",
                file.display()
            );
            println!(
                "public key: {} (in {}; add it to the readers' --trusted-keys file)",
                key.public(),
                public_file.display()
            );
        }
        KeyCommand::Public { file } => println!("{}", SigningKey::read(file)?.public()),
    }
    Ok(ExitCode::SUCCESS)
}
