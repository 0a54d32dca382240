//! Prometheus metrics, served at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::disk::{Disk, Usage};
use crate::frames::Frames;
use crate::key::Kind;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// `ac`, `cas`, or the endpoint's name.
    pub kind: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub method: &'static str,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `unauthorized`, `forbidden`, `too_large`, `full`, `hash_mismatch`,
    /// `invalid`, `incomplete`.
    pub reason: &'static str,
}

/// Where the metrics of `kind` are in the arrays by kind.
fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Ac => 0,
        Kind::Cas => 1,
    }
}

/// The metrics of HTTP GETs of one kind of blob.
#[derive(Debug)]
struct BlobGets {
    latency: Histogram,
    found: Counter,
    not_found: Counter,
}

/// Every metric the server keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    /// The counters and histograms of the most frequent requests, looked
    /// up once: a family hashes the labels and takes a lock each time,
    /// which was 3% of a 1 KB GET. Hits and misses are counted here only
    /// (their families hold these counters).
    found: [Counter; 2],
    not_found: [Counter; 2],
    blob_gets: [BlobGets; 2],
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    /// Of those, sent from their file by the kernel (see `sendfile.rs`;
    /// Linux only).
    #[cfg(target_os = "linux")]
    pub bytes_sent_by_kernel: Counter,
    pub rejected_writes: Family<ReasonLabels, Counter>,
    refused_credentials: Family<ReasonLabels, Counter>,
    pub backing_fetches: Counter,
    pub backing_misses: Counter,
    pub backing_lookups: Counter,
    pub backing_uploads: Counter,
    pub backing_dropped: Counter,
    pub backing_errors: Counter,
    disk_bytes: Gauge<u64, AtomicU64>,
    blobs: Family<KindLabels, Gauge<u64, AtomicU64>>,
    compressed_cache_bytes: Gauge<u64, AtomicU64>,
    memory_cache_bytes: Gauge<u64, AtomicU64>,
}

impl Metrics {
    pub fn new(disk: &Disk, frames: &Frames) -> Metrics {
        let mut registry = Registry::with_prefix("granary");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "HTTP requests answered", requests.clone());
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            // 50 µs to ~26 s.
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        registry.register(
            "request_duration_seconds",
            "Time to the response's headers",
            latency.clone(),
        );
        let hits = Family::<KindLabels, Counter>::default();
        registry.register(
            "hits",
            "GET and HEAD requests that found the blob",
            hits.clone(),
        );
        let misses = Family::<KindLabels, Counter>::default();
        registry.register(
            "misses",
            "GET and HEAD requests that did not",
            misses.clone(),
        );
        let bytes_received = Counter::default();
        registry.register(
            "received_bytes",
            "Body bytes received",
            bytes_received.clone(),
        );
        let bytes_sent = Counter::default();
        registry.register("sent_bytes", "Body bytes sent", bytes_sent.clone());
        #[cfg(target_os = "linux")]
        let bytes_sent_by_kernel = Counter::default();
        #[cfg(target_os = "linux")]
        registry.register(
            "sent_by_kernel_bytes",
            "Of the body bytes sent, those the kernel sent from their file (sendfile)",
            bytes_sent_by_kernel.clone(),
        );
        let refused_credentials = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refused_credentials",
            "Requests whose token or OIDC ID token was refused, by reason",
            refused_credentials.clone(),
        );
        let rejected_writes = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejected_writes",
            "PUT requests refused",
            rejected_writes.clone(),
        );
        let backing_fetches = Counter::default();
        registry.register(
            "backing_fetches",
            "Blobs fetched from the backing store",
            backing_fetches.clone(),
        );
        // With fetches and uploads, every request the server makes of the
        // backing store is counted: what a fleet's bucket bills.
        let backing_misses = Counter::default();
        registry.register(
            "backing_misses",
            "Blobs asked of the backing store that it did not have",
            backing_misses.clone(),
        );
        let backing_lookups = Counter::default();
        registry.register(
            "backing_lookups",
            "Blobs looked up in the backing store without reading them",
            backing_lookups.clone(),
        );
        let backing_uploads = Counter::default();
        registry.register(
            "backing_uploads",
            "Blobs written behind to the backing store",
            backing_uploads.clone(),
        );
        let backing_dropped = Counter::default();
        registry.register(
            "backing_dropped",
            "Blobs not written behind because the queue was full",
            backing_dropped.clone(),
        );
        let backing_errors = Counter::default();
        registry.register(
            "backing_errors",
            "Failed requests to the backing store",
            backing_errors.clone(),
        );
        let disk_bytes = Gauge::<u64, AtomicU64>::default();
        registry.register("disk_bytes", "Bytes of stored blobs", disk_bytes.clone());
        let blobs = Family::<KindLabels, Gauge<u64, AtomicU64>>::default();
        registry.register("blobs", "Stored blobs", blobs.clone());
        registry.register("evictions", "Blobs evicted", disk.evictions.clone());
        registry.register("evicted_bytes", "Bytes evicted", disk.evicted_bytes.clone());
        registry.register(
            "batch_frames_compressed",
            "CAS blobs compressed for batch answers",
            frames.compressed.clone(),
        );
        registry.register(
            "batch_frames_reused",
            "CAS blobs of batch answers sent as kept compressed",
            frames.reused.clone(),
        );
        let compressed_cache_bytes = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "compressed_cache_bytes",
            "Bytes of compressed blobs kept for batch answers",
            compressed_cache_bytes.clone(),
        );
        let memory_cache_bytes = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "memory_cache_bytes",
            "Bytes of small CAS blobs kept in memory",
            memory_cache_bytes.clone(),
        );
        registry.register(
            "memory_cache_reads",
            "Blob reads answered from memory",
            disk.kept_reads.clone(),
        );
        let kinds = [Kind::Ac, Kind::Cas];
        let by_kind = |family: &Family<KindLabels, Counter>| {
            kinds.map(|kind| {
                family
                    .get_or_create(&KindLabels { kind: kind.name() })
                    .clone()
            })
        };
        let (found, not_found) = (by_kind(&hits), by_kind(&misses));
        let blob_gets = kinds.map(|kind| {
            let (method, kind) = ("GET", kind.name());
            let answered = |status| {
                requests
                    .get_or_create(&RequestLabels {
                        method,
                        kind,
                        status,
                    })
                    .clone()
            };
            BlobGets {
                latency: latency
                    .get_or_create(&LatencyLabels { method, kind })
                    .clone(),
                found: answered(200),
                not_found: answered(404),
            }
        });
        Metrics {
            registry,
            requests,
            latency,
            found,
            not_found,
            blob_gets,
            bytes_received,
            bytes_sent,
            #[cfg(target_os = "linux")]
            bytes_sent_by_kernel,
            rejected_writes,
            refused_credentials,
            backing_fetches,
            backing_misses,
            backing_lookups,
            backing_uploads,
            backing_dropped,
            backing_errors,
            disk_bytes,
            blobs,
            compressed_cache_bytes,
            memory_cache_bytes,
        }
    }

    /// Counts a request answered with `status` after `took` seconds.
    pub fn answered(&self, method: &'static str, kind: &'static str, status: u16, took: f64) {
        let gets = match method {
            "GET" => Kind::parse(kind).map(|kind| &self.blob_gets[slot(kind)]),
            _ => None,
        };
        if let Some(gets) = gets
            && let Some(counter) = match status {
                200 => Some(&gets.found),
                404 => Some(&gets.not_found),
                _ => None,
            }
        {
            gets.latency.observe(took);
            counter.inc();
            return;
        }
        self.latency
            .get_or_create(&LatencyLabels { method, kind })
            .observe(took);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                kind,
                status,
            })
            .inc();
    }

    /// Lookups that found their blob, of either kind.
    pub fn hits(&self) -> u64 {
        self.found.iter().map(Counter::get).sum()
    }

    /// Lookups that did not.
    pub fn misses(&self) -> u64 {
        self.not_found.iter().map(Counter::get).sum()
    }

    /// Counts a lookup of a blob of `kind` that found it or not.
    pub fn looked_up(&self, kind: Kind, found: bool) {
        let counters = match found {
            true => &self.found,
            false => &self.not_found,
        };
        counters[slot(kind)].inc();
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected_writes
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a credential refused for `reason` (`unknown_token`, or an ID
    /// token's `expired`, `audience`, `issuer`, `unknown_key`, ...).
    pub fn refuse_credential(&self, reason: &'static str) {
        self.refused_credentials
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The text exposition, with the gauges as of now.
    pub fn render(&self, usage: &Usage, frames: &Frames) -> String {
        self.disk_bytes.set(usage.bytes);
        self.compressed_cache_bytes.set(frames.kept());
        self.memory_cache_bytes.set(usage.kept);
        self.blobs
            .get_or_create(&KindLabels { kind: "ac" })
            .set(usage.ac_blobs);
        self.blobs
            .get_or_create(&KindLabels { kind: "cas" })
            .set(usage.cas_blobs);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}
