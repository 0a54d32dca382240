//! What a credential grants: read or write, and in which namespaces' action
//! caches. Tokens (`auth.rs`) and CI systems' ID tokens (`oidc.rs`) both
//! end in a [`Grant`]; neither knows the other.

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    None,
    Read,
    Write,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// What one credential may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub access: Access,
    /// Globs of the namespaces whose action cache it may write, and read;
    /// `None`: all.
    pub write: Option<Vec<String>>,
    pub read: Option<Vec<String>>,
}

/// Why a presented credential grants nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CredentialRefusal {
    /// The label of `granary_refused_credentials_total`.
    pub reason: &'static str,
    /// What the client is told.
    pub message: String,
}

/// Whether the whole of `name` matches `glob`, segment by segment: `*`
/// stands for any run of characters within one `/`-separated segment, and
/// everything else for itself. So `team/*` grants `team/main` but not
/// `team/main/x`, and `main` grants `main` alone.
pub(crate) fn glob_matches(glob: &str, name: &str) -> bool {
    let (globs, names) = (glob.split('/'), name.split('/'));
    globs.clone().count() == names.clone().count()
        && globs
            .zip(names)
            .all(|(glob, name)| segment_matches(glob, name))
}

fn segment_matches(glob: &str, name: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Where a credential's namespaces come from, for refusals.
pub const NAMESPACE_SOURCES: &str = "the namespaces= of its line in the tokens file, or the \
     server's [[serve.oidc.rule]] its claims match, say which it may";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names_segment_by_segment() {
        assert!(glob_matches("*", "") && glob_matches("a*b*c", "abxbc"));
        assert!(!glob_matches("a*b*c", "acb") && !glob_matches("ab", "abc"));
        // Whole names, one segment per `*`.
        assert!(glob_matches("team/*", "team/main") && glob_matches("*/main", "team/main"));
        for (glob, name) in [
            ("team/*", "team/main/x"),
            ("team/*", "team"),
            ("main", "main/x"),
            ("pr-*", "pr-1/main"),
            ("*", "team/main"),
            ("team", "teams"),
        ] {
            assert!(!glob_matches(glob, name), "{glob} grants {name}");
        }
    }
}
