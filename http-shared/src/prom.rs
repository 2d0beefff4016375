//! A small writer of the Prometheus text exposition format (version 0.0.4): enough for
//! counters, gauges and histograms without a metrics registry on the hot path.

use std::fmt::Write;

/// Builds one `/metrics` answer.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// Escapes a label value as the format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    /// Starts a metric family with its help text and type (`counter`, `gauge`, `histogram`).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample with labels.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// The connection counters of every server in this process (`rebeam_tls::limits`):
    /// open, accepted, refused at the cap and closed idle, by server; and the client
    /// requests refused at the per-token cap on requests in flight.
    pub fn connections(&mut self, labels: &[(&str, &str)]) -> &mut Self {
        let stats = rebeam_tls::limits::stats();
        type Pick = fn(&rebeam_tls::limits::ConnStats) -> u64;
        let families: [(&str, &str, &str, Pick); 4] = [
            (
                "rebeam_connections_open",
                "gauge",
                "Connections open now, by server.",
                |s| s.open,
            ),
            (
                "rebeam_connections_accepted_total",
                "counter",
                "Connections accepted, by server.",
                |s| s.accepted,
            ),
            (
                "rebeam_connections_refused_total",
                "counter",
                "Connections closed at accept because --max-connections was reached, by server.",
                |s| s.refused,
            ),
            (
                "rebeam_connections_idle_closed_total",
                "counter",
                "Connections closed after --idle-timeout-ms with no request in flight, by server.",
                |s| s.idle_closed,
            ),
        ];
        for (name, kind, help, pick) in families {
            self.family(name, kind, help);
            for s in &stats {
                let mut l = labels.to_vec();
                l.push(("server", s.server));
                self.sample(name, &l, pick(s) as f64);
            }
        }
        let name = "rebeam_streams_refused_total";
        self.family(
            name,
            "counter",
            "Client requests refused because their token held --max-streams-per-token \
             requests in flight, on every server of this process.",
        );
        self.sample(name, labels, rebeam_auth::streams::refused_total() as f64)
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// A histogram from cumulative bucket counts (`le` upper bounds in seconds), sum and count.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> &mut Self {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, n) in buckets {
            let le = le.to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, *n as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, count as f64);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count as f64)
    }

    /// The text, with the content type Prometheus expects.
    pub fn into_response(self) -> axum::response::Response {
        use axum::response::IntoResponse;
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            self.out,
        )
            .into_response()
    }
}

/// A latency histogram of relaxed atomics: recording is a few uncontended adds, no lock.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<std::sync::atomic::AtomicU64>,
    sum_us: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
}

/// Bucket upper bounds in seconds for request and call latencies.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Histogram {
    /// An empty histogram over `bounds` (seconds, increasing).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds
                .iter()
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            sum_us: std::sync::atomic::AtomicU64::new(0),
            count: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Writes it into `e` as a cumulative histogram.
    pub fn write(&self, e: &mut Exposition, name: &str, help: &str, labels: &[(&str, &str)]) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut acc = 0;
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                acc += c.load(Relaxed);
                (*b, acc)
            })
            .collect();
        let count = self.count.load(Relaxed).max(acc);
        e.histogram(
            name,
            help,
            labels,
            &buckets,
            self.sum_us.load(Relaxed) as f64 / 1e6,
            count,
        );
    }
}
