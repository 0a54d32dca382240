//! Progress of whole-cache commands: a bar on stderr when it is a terminal,
//! nothing when it is piped.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting the 256 subdirectories, `passes` times over.
pub fn subdirectories(verb: &str, passes: u64) -> ProgressBar {
    let template = format!("{verb} {{bar:40}} {{percent}}% {{eta}}");
    ProgressBar::with_draw_target(Some(256 * passes), ProgressDrawTarget::stderr())
        .with_style(ProgressStyle::with_template(&template).expect("a valid progress template"))
}
