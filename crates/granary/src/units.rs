//! How ages and sizes are written, on the command line and in the config
//! file alike: `90s`, `4h`, `5d`; `500MiB`, `20GiB`; `none` where a limit
//! may be lifted.

use std::time::Duration;

use bytesize::ByteSize;

/// A duration such as `90s`, `4h`, `5d` or `1w 2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration such as 30m, 4h or 5d: {e}"))
}

/// A size such as `500MB`, `20GiB` or `1073741824` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("`{text}` is not a size such as 500MiB or 20GiB: {e}"))
}

fn is_none(text: &str) -> bool {
    text.trim().eq_ignore_ascii_case("none")
}

/// `--max-age`: a duration, or `none` for no age limit.
pub fn parse_age_limit(text: &str) -> Result<Duration, String> {
    if is_none(text) {
        return Ok(Duration::MAX);
    }
    parse_duration(text)
}

/// `--max-size`: a size, or `none` for no ceiling.
pub fn parse_ceiling(text: &str) -> Result<u64, String> {
    if is_none(text) {
        return Ok(u64::MAX);
    }
    parse_size(text)
}

/// `--min-free`: a size, or `none` (or 0) for no floor.
pub fn parse_floor(text: &str) -> Result<u64, String> {
    if is_none(text) {
        return Ok(0);
    }
    parse_size(text)
}

/// `--trim-interval`: a duration, or `none` to never trim from `prog`.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    if is_none(text) {
        return Ok(Duration::MAX);
    }
    parse_duration(text)
}
