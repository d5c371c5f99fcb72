//! fschain's metrics in the Prometheus/OpenMetrics text format
//! (`prometheus-client`), and a small HTTP endpoint that serves
//! `GET /metrics` on a thread of its own until shutdown.
//!
//! Names and units follow Prometheus conventions: `_total` counters,
//! `_seconds` and `_bytes` units, a `chain` label.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("serving metrics on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

impl MetricsError {
    /// A port in use may be free later; nothing else here is.
    pub fn is_transient(&self) -> bool {
        matches!(self, MetricsError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChainLabel {
    pub chain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Every metric fschain exports; a command sets those it has.
#[derive(Debug)]
pub struct Metrics {
    pub blocks_sealed: Family<ChainLabel, Counter>,
    pub blocks_verified: Family<ChainLabel, Counter>,
    pub operations_recorded: Family<ChainLabel, Counter>,
    pub height: Family<ChainLabel, Gauge>,
    pub published_height: Family<ChainLabel, Gauge>,
    pub last_verified_block_timestamp: Family<ChainLabel, Gauge>,
    pub lag_seconds: Family<ChainLabel, Gauge>,
    pub frames_rejected: Family<ReasonLabel, Counter>,
    pub operations_rejected: Family<ReasonLabel, Counter>,
    /// Blocks of a chain on the topic that this site has not verified yet.
    pub lag_blocks: Family<ChainLabel, Gauge>,
    pub watch_changes: Family<SourceLabel, Counter>,
    pub seal_duration: Family<ChainLabel, Histogram, fn() -> Histogram>,
    pub blocks_published: Family<ChainLabel, Counter>,
    pub published_bytes: Family<ChainLabel, Counter>,
    pub consumed_bytes: Counter,
    pub publish_duration: Family<ChainLabel, Histogram, fn() -> Histogram>,
    pub receive_duration: Family<ChainLabel, Histogram, fn() -> Histogram>,
    pub verify_duration: Family<ChainLabel, Histogram, fn() -> Histogram>,
    /// 1 for a chain this site stopped because its producer's key signed
    /// two histories.
    pub forked: Family<ChainLabel, Gauge>,
}

fn seal_buckets() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    /// The metrics, registered under `fschain_`.
    pub fn new() -> (Arc<Metrics>, Registry) {
        let metrics = Metrics {
            blocks_sealed: Family::default(),
            blocks_verified: Family::default(),
            operations_recorded: Family::default(),
            height: Family::default(),
            published_height: Family::default(),
            last_verified_block_timestamp: Family::default(),
            lag_seconds: Family::default(),
            frames_rejected: Family::default(),
            operations_rejected: Family::default(),
            lag_blocks: Family::default(),
            watch_changes: Family::default(),
            seal_duration: Family::new_with_constructor(seal_buckets),
            blocks_published: Family::default(),
            published_bytes: Family::default(),
            consumed_bytes: Counter::default(),
            publish_duration: Family::new_with_constructor(seal_buckets),
            receive_duration: Family::new_with_constructor(seal_buckets),
            verify_duration: Family::new_with_constructor(seal_buckets),
            forked: Family::default(),
        };
        let mut registry = Registry::with_prefix("fschain");
        registry.register(
            "blocks_sealed",
            "Blocks sealed by this process",
            metrics.blocks_sealed.clone(),
        );
        registry.register(
            "blocks_verified",
            "Blocks received and verified by this site",
            metrics.blocks_verified.clone(),
        );
        registry.register(
            "operations_recorded",
            "Operations in the blocks this process sealed",
            metrics.operations_recorded.clone(),
        );
        registry.register(
            "height",
            "The chain's newest block here",
            metrics.height.clone(),
        );
        registry.register(
            "published_height",
            "The newest block a producer has on the topic",
            metrics.published_height.clone(),
        );
        registry.register_with_unit(
            "last_verified_block_timestamp",
            "When the newest verified block was sealed (Unix time)",
            Unit::Seconds,
            metrics.last_verified_block_timestamp.clone(),
        );
        registry.register_with_unit(
            "lag",
            "How long ago the oldest block of the chain this site has not verified was sealed (0: caught up)",
            Unit::Seconds,
            metrics.lag_seconds.clone(),
        );
        registry.register(
            "forked",
            "1 for a chain this site stopped: its producer's key signed two histories (a fork)",
            metrics.forked.clone(),
        );
        registry.register(
            "watch_changes",
            "Changes a watch recorded, by source",
            metrics.watch_changes.clone(),
        );
        registry.register(
            "frames_rejected",
            "Frames refused by this site, by reason",
            metrics.frames_rejected.clone(),
        );
        registry.register(
            "operations_rejected",
            "Operations the agent read but did not apply, by reason",
            metrics.operations_rejected.clone(),
        );
        registry.register(
            "lag_blocks",
            "Blocks of the chain on the topic that this site has not verified yet",
            metrics.lag_blocks.clone(),
        );
        registry.register_with_unit(
            "seal_duration",
            "Time to seal a block",
            Unit::Seconds,
            metrics.seal_duration.clone(),
        );
        registry.register(
            "blocks_published",
            "Blocks this producer published (acknowledged by the brokers)",
            metrics.blocks_published.clone(),
        );
        registry.register_with_unit(
            "published",
            "Bytes of frames this producer published",
            Unit::Bytes,
            metrics.published_bytes.clone(),
        );
        registry.register_with_unit(
            "consumed",
            "Bytes of frames this site took in",
            Unit::Bytes,
            metrics.consumed_bytes.clone(),
        );
        for (name, help, family) in [
            (
                "publish_duration",
                "Time to publish the blocks pending after a seal",
                &metrics.publish_duration,
            ),
            (
                "receive_duration",
                "Time from a block's receive opening to its stream's end",
                &metrics.receive_duration,
            ),
            (
                "verify_duration",
                "Time to verify a received block and put it in place",
                &metrics.verify_duration,
            ),
        ] {
            registry.register_with_unit(name, help, Unit::Seconds, family.clone());
        }
        (Arc::new(metrics), registry)
    }
}

impl Metrics {
    /// A producer sealed block `height` of `chain`, with `events` events.
    pub fn sealed(&self, chain: &str, height: u64, events: u64) {
        let label = ChainLabel {
            chain: chain.to_owned(),
        };
        self.blocks_sealed.get_or_create(&label).inc();
        self.operations_recorded
            .get_or_create(&label)
            .inc_by(events);
        self.height
            .get_or_create(&label)
            .set(i64::try_from(height).unwrap_or(i64::MAX));
    }
}

/// Serves `GET /metrics` at `addr` until `shutdown` is set. Returns the
/// address bound (port 0 picks one).
pub fn serve(
    addr: &str,
    registry: Registry,
    shutdown: Arc<AtomicBool>,
) -> Result<SocketAddr, MetricsError> {
    let bind_error = |source| MetricsError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let registry = Mutex::new(registry);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !shutdown.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = answer(stream, &registry) {
                            tracing::debug!(error = %e, "a metrics request failed");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => tracing::warn!(error = %e, "accepting a metrics request"),
                }
            }
        })
        .map_err(bind_error)?;
    Ok(bound)
}

fn answer(stream: TcpStream, registry: &Mutex<Registry>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers, up to the blank line.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut out = &stream;
    let path = request.split_whitespace().nth(1).unwrap_or("");
    if !request.starts_with("GET ") || path != "/metrics" {
        return out.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 21\r\nConnection: close\r\n\r\nonly GET /metrics here",
        );
    }
    let mut body = String::new();
    if let Ok(registry) = registry.lock() {
        encode(&mut body, &registry).map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_scrape_sees_what_was_counted() {
        let (metrics, registry) = Metrics::new();
        let shutdown = Arc::new(AtomicBool::new(false));
        let addr = serve("127.0.0.1:0", registry, shutdown.clone()).unwrap();
        let chain = ChainLabel {
            chain: "host1".into(),
        };
        metrics.blocks_verified.get_or_create(&chain).inc_by(3);
        metrics.height.get_or_create(&chain).set(2);
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(
            reply.contains("fschain_blocks_verified_total{chain=\"host1\"} 3"),
            "{reply}"
        );
        assert!(
            reply.contains("fschain_height{chain=\"host1\"} 2"),
            "{reply}"
        );
        assert!(reply.trim_end().ends_with("# EOF"));
        shutdown.store(true, Ordering::SeqCst);
    }

    #[test]
    fn the_grafana_dashboard_queries_only_metrics_that_exist() {
        let (_, registry) = Metrics::new();
        let mut exposed = String::new();
        encode(&mut exposed, &registry).unwrap();
        let dashboard = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../contrib/grafana/fschain.json"
        ))
        .unwrap();
        let mut queried = 0;
        for (i, _) in dashboard.match_indices("fschain_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let family = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                exposed.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {name}, which fschain does not export"
            );
            queried += 1;
        }
        assert!(queried >= 6);
    }
}
