//! A latency histogram recorded with atomics: one relaxed `fetch_add` per bucket, count and
//! sum, where prometheus-client's `Histogram` takes a mutex on every observation (every
//! request on every worker thread contends for it). It encodes as the same classic
//! Prometheus histogram (`_bucket{le}`, `_sum`, `_count`).
//!
//! Written here because prometheus-client has no lock-free histogram; the encoding is its own
//! (`MetricEncoder::encode_histogram`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Observations in seconds; the sum is kept in nanoseconds, so it is exact to 1 ns and adds
/// with one `fetch_add`.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Finite upper bounds, ascending; the last bucket (`+Inf`) is implied.
    bounds: Box<[f64]>,
    /// One per bound, then `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Buckets with these upper bounds (seconds; non-finite ones are dropped, the rest sorted)
    /// and `+Inf`.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let mut bounds: Vec<f64> = bounds.into_iter().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            inner: Arc::new(Inner {
                bounds: bounds.into_boxed_slice(),
                counts,
                sum_nanos: AtomicU64::new(0),
                count: AtomicU64::new(0),
            }),
        }
    }

    /// Records one observation of `secs` (negative and NaN count as 0).
    pub fn observe(&self, secs: f64) {
        let secs = if secs.is_nan() { 0.0 } else { secs.max(0.0) };
        let inner = &*self.inner;
        // The first bucket whose upper bound is ≥ secs (Prometheus buckets are `le`).
        let i = inner.bounds.partition_point(|b| *b < secs);
        if let Some(c) = inner.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        // Saturating at u64::MAX ns (584 years) by the cast.
        inner.sum_nanos.fetch_add((secs * 1e9) as u64, Relaxed);
        inner.count.fetch_add(1, Relaxed);
    }

    /// Observations so far, and their sum in seconds.
    pub fn get(&self) -> (u64, f64) {
        (
            self.inner.count.load(Relaxed),
            self.inner.sum_nanos.load(Relaxed) as f64 / 1e9,
        )
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.inner;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(inner.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        // Read independently of the buckets: a scrape racing an observation may see the
        // count one off the buckets' total, as with any lock-free exporter.
        let (count, sum) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    fn text(
        name: &str,
        metric: impl EncodeMetric + Send + Sync + std::fmt::Debug + 'static,
    ) -> String {
        let mut registry = Registry::default();
        registry.register(name, "help", metric);
        let mut out = String::new();
        encode(&mut out, &registry).expect("encode");
        out
    }

    #[test]
    fn encodes_as_prometheus_clients_histogram_does() {
        let bounds = [0.001, 0.01, 0.1];
        let ours = LatencyHistogram::new(bounds);
        let theirs = Histogram::new(bounds);
        for v in [0.0005, 0.001, 0.002, 0.05, 0.5, 7.0, -1.0] {
            ours.observe(v);
            theirs.observe(v.max(0.0));
        }
        assert_eq!(text("lat", ours), text("lat", theirs));
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let h = LatencyHistogram::new([0.5]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    (0..10_000).for_each(|i| h.observe(if i % 2 == 0 { 0.25 } else { 1.0 }))
                });
            }
        });
        assert_eq!(h.get().0, 40_000);
        assert_eq!(h.inner.counts[0].load(Relaxed), 20_000);
        assert_eq!(h.inner.counts[1].load(Relaxed), 20_000);
        assert!((h.get().1 - 25_000.0).abs() < 1e-6);
    }
}
