//! The dashboard at `/`: one page for the people who run the server, and
//! the figures it shows at `/dashboard.json`.
//!
//! The page is one self-contained document, its style and script inline,
//! served under a Content-Security-Policy that allows exactly those two (by
//! their SHA-256) and requests to this server: no external asset, no CDN,
//! and it works offline. It asks for `/dashboard.json` every few seconds,
//! giving the time of the last sample it has, so that each answer holds
//! only what is new.
//!
//! The server keeps a sample of its counters every [`INTERVAL`] for the
//! last hour ([`KEPT`] samples, a few dozen KiB), and counts requests by
//! face (HTTP, gRPC) and action-cache requests by namespace, for at most
//! [`NAMESPACES`] names (the rest are counted together): a client cannot
//! grow the dashboard's memory by inventing names.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::disk::{Disk, Limits};
use crate::metrics::Metrics;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: an hour.
pub const KEPT: usize = 360;
/// Namespaces counted apart, at most; the others share one count.
pub const NAMESPACES: usize = 32;
/// The name under which namespaces beyond [`NAMESPACES`] are counted.
const OTHERS: &str = "(others)";

const TEMPLATE: &str = include_str!("page.html");
const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// The server's counters at one moment. Counters only grow: the page turns
/// two samples into rates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub t: u64,
    /// Requests answered over HTTP and over gRPC.
    pub http: u64,
    pub grpc: u64,
    /// GET and HEAD requests (and gRPC reads) that found their blob, and
    /// those that did not.
    pub hits: u64,
    pub misses: u64,
    /// Body bytes received and sent.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Disk in use, in whole blocks, and the blobs held.
    pub disk_bytes: u64,
    pub ac_blobs: u64,
    pub cas_blobs: u64,
    pub evictions: u64,
    /// Uploads in flight now.
    pub uploads: u64,
    /// The backing store's fetches, uploads and failed requests.
    pub backing_fetches: u64,
    pub backing_uploads: u64,
    pub backing_errors: u64,
    /// Action-cache requests of each namespace in [`Answer::names`], in
    /// that order (names seen later are missing from earlier samples).
    pub namespaces: Vec<u64>,
}

/// What `/dashboard.json` answers.
#[derive(Debug, Serialize)]
pub struct Answer {
    pub version: &'static str,
    pub uptime_s: u64,
    pub interval_s: u64,
    /// Whether a backing store is set.
    pub backing: bool,
    pub max_size: u64,
    /// Where eviction stops, in bytes.
    pub low_watermark: u64,
    pub hard_limit: u64,
    /// Namespace names, the default one as "".
    pub names: Vec<String>,
    /// The counters now.
    pub now: Sample,
    /// The samples taken after the `since` asked for, oldest first.
    pub samples: Vec<Sample>,
}

/// The page, its policy, and the counters only the dashboard needs.
#[derive(Debug)]
pub struct Dashboard {
    http: AtomicU64,
    grpc: AtomicU64,
    /// Action-cache requests by namespace name, in the order first seen.
    /// Read-locked on a request's path; written only for a new name.
    namespaces: RwLock<Vec<(String, AtomicU64)>>,
    history: Mutex<VecDeque<Sample>>,
    page: Bytes,
    policy: HeaderValue,
}

/// Which face a request came in by.
#[derive(Debug, Clone, Copy)]
pub enum Face {
    Http,
    Grpc,
}

impl Default for Dashboard {
    fn default() -> Dashboard {
        let html = TEMPLATE
            .replace("<!--style-->", &format!("<style>{STYLE}</style>"))
            .replace("<!--script-->", &format!("<script>{SCRIPT}</script>"));
        let hash = |text: &str| base64_simd::STANDARD.encode_to_string(Sha256::digest(text));
        let policy = format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
             connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            hash(SCRIPT),
            hash(STYLE)
        );
        Dashboard {
            http: AtomicU64::new(0),
            grpc: AtomicU64::new(0),
            namespaces: RwLock::default(),
            history: Mutex::new(VecDeque::with_capacity(KEPT)),
            page: Bytes::from(html),
            policy: HeaderValue::from_str(&policy).expect("a policy is a header value"),
        }
    }
}

impl Dashboard {
    /// The page, and the Content-Security-Policy to serve it with.
    pub fn page(&self) -> (Bytes, HeaderValue) {
        (self.page.clone(), self.policy.clone())
    }

    /// Counts a request answered on `face`.
    pub fn count(&self, face: Face) {
        match face {
            Face::Http => &self.http,
            Face::Grpc => &self.grpc,
        }
        .fetch_add(1, Relaxed);
    }

    /// Counts an action-cache request of namespace `name` ("" for the
    /// default one).
    pub fn count_namespace(&self, name: &str) {
        let count = |names: &[(String, AtomicU64)], name: &str| {
            let found = names.iter().find(|(n, _)| n == name);
            found
                .map(|(_, count)| count.fetch_add(1, Relaxed))
                .is_some()
        };
        if count(
            &self
                .namespaces
                .read()
                .unwrap_or_else(PoisonError::into_inner),
            name,
        ) {
            return;
        }
        let mut names = self
            .namespaces
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Past the bound, the rest share one name.
        let name = match names.len() + 1 < NAMESPACES {
            true => name,
            false => OTHERS,
        };
        if !count(&names, name) {
            names.push((name.to_owned(), AtomicU64::new(1)));
        }
    }

    /// The namespaces' names and counts, in the order first seen.
    fn namespace_counts(&self) -> (Vec<String>, Vec<u64>) {
        let names = self
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        names
            .iter()
            .map(|(name, count)| (name.clone(), count.load(Relaxed)))
            .unzip()
    }

    /// The counters now.
    pub fn sample(&self, disk: &Disk, metrics: &Metrics) -> Sample {
        let usage = disk.usage();
        let (_, namespaces) = self.namespace_counts();
        Sample {
            t: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            http: self.http.load(Relaxed),
            grpc: self.grpc.load(Relaxed),
            hits: metrics.hits(),
            misses: metrics.misses(),
            bytes_in: metrics.bytes_received.get(),
            bytes_out: metrics.bytes_sent.get(),
            disk_bytes: usage.bytes,
            ac_blobs: usage.ac_blobs,
            cas_blobs: usage.cas_blobs,
            evictions: usage.evicted,
            uploads: usage.uploads,
            backing_fetches: metrics.backing_fetches.get(),
            backing_uploads: metrics.backing_uploads.get(),
            backing_errors: metrics.backing_errors.get(),
            namespaces,
        }
    }

    /// Keeps `sample`, dropping the oldest beyond an hour.
    pub fn keep(&self, sample: Sample) {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        if history.len() == KEPT {
            history.pop_front();
        }
        history.push_back(sample);
    }

    /// The answer to `/dashboard.json?since=T`: the samples after `since`.
    pub fn answer(
        &self,
        since: u64,
        now: Sample,
        limits: Limits,
        uptime: Duration,
        backing: bool,
    ) -> Answer {
        let samples = self
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| s.t > since)
            .cloned()
            .collect();
        let (names, _) = self.namespace_counts();
        Answer {
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: uptime.as_secs(),
            interval_s: INTERVAL.as_secs(),
            backing,
            max_size: limits.max_size,
            low_watermark: limits.low_watermark,
            hard_limit: limits.hard_limit,
            names,
            now,
            samples,
        }
    }
}

/// Takes a sample every [`INTERVAL`] until aborted.
pub async fn sample_forever(dashboard: Arc<Dashboard>, disk: Arc<Disk>, metrics: Arc<Metrics>) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        dashboard.keep(dashboard.sample(&disk, &metrics));
    }
}

/// `since` of a query string such as `since=1700000000`; 0 without one.
pub fn since(query: Option<&str>) -> u64 {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("since="))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_beyond_the_bound_share_one_count() {
        let dashboard = Dashboard::default();
        for i in 0..100 {
            dashboard.count_namespace(&format!("ns-{i}"));
        }
        dashboard.count_namespace("ns-0");
        dashboard.count_namespace("");
        let (names, counts) = dashboard.namespace_counts();
        assert_eq!(names.len(), NAMESPACES);
        assert_eq!(names.last().unwrap(), OTHERS);
        assert_eq!(counts[0], 2, "ns-0 counted twice");
        let others = NAMESPACES - 1;
        assert_eq!(counts[others], 100 - (NAMESPACES as u64 - 1) + 1);
        assert_eq!(counts.iter().sum::<u64>(), 102);
    }

    #[test]
    fn an_hour_of_samples_is_kept_and_answered_from_since() {
        let dashboard = Dashboard::default();
        for t in 1..=KEPT as u64 + 10 {
            dashboard.keep(Sample {
                t,
                ..Sample::default()
            });
        }
        let limits = Limits {
            max_size: 100,
            low_watermark: 90,
            hard_limit: 110,
            max_blob: 10,
            memory: 1 << 20,
        };
        let all = dashboard.answer(0, Sample::default(), limits, Duration::ZERO, false);
        assert_eq!(all.samples.len(), KEPT);
        assert_eq!(all.samples[0].t, 11);
        let new = dashboard.answer(365, Sample::default(), limits, Duration::ZERO, false);
        assert_eq!(
            new.samples.iter().map(|s| s.t).collect::<Vec<_>>(),
            [366, 367, 368, 369, 370]
        );
        assert_eq!(since(Some("x=1&since=365")), 365);
        assert_eq!(since(Some("since=-1")), 0);
        assert_eq!(since(None), 0);
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_style_and_script() {
        let (page, policy) = Dashboard::default().page();
        let page = std::str::from_utf8(&page).unwrap();
        let policy = policy.to_str().unwrap();
        assert!(policy.starts_with("default-src 'none';"), "{policy}");
        assert_eq!(page.matches("<script>").count(), 1);
        assert_eq!(page.matches("<style>").count(), 1);
        let hash = base64_simd::STANDARD.encode_to_string(Sha256::digest(SCRIPT));
        assert!(
            policy.contains(&format!("script-src 'sha256-{hash}'")),
            "{policy}"
        );
        // Nothing from elsewhere: no link, source or import, and no URL but
        // the name of SVG's namespace.
        for loading in ["src=", "href=", "url(", "@import", "https://"] {
            assert!(!page.contains(loading), "{loading}");
        }
        assert_eq!(page.matches("://").count(), 1);
        assert!(page.contains("\"http://www.w3.org/2000/svg\""));
        // No inline handler or style attribute, which the policy forbids.
        let attributes = page.split(|c: char| c.is_whitespace()).filter(|word| {
            let name = word.split('=').next().unwrap_or_default();
            word.contains("=\"") && (name == "style" || name.starts_with("on"))
        });
        assert_eq!(attributes.count(), 0);
    }
}
