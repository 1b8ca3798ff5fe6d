//! The Prometheus endpoint: a minimal HTTP/1.0 responder on its own thread.
//!
//! `GET /metrics` → text exposition format 0.0.4; `GET /health` → `ok` while the data
//! plane runs (503 otherwise); anything else → 404. One request per connection, read with a
//! 2 s timeout, so a slow client cannot hold the listener for long.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use p2pmodel_core::relay::DropReason;

use super::histogram::{BOUNDS_NS, BUCKETS};
use super::stats::{MetricsSource, StatsSnapshot};

/// The metrics listener thread.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub(crate) fn start(addr: SocketAddr, source: MetricsSource) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("relay-metrics".into()).spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(c) = conn
                    && let Err(e) = serve(c, &source)
                {
                    tracing::debug!("metrics request failed: {e}");
                }
            }
        })?;
        Ok(MetricsServer { addr, stop, thread: Some(thread) })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut c: TcpStream, source: &MetricsSource) -> io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = [0u8; 2048];
    let mut n = 0;
    while n < req.len() {
        let r = c.read(&mut req[n..])?;
        if r == 0 {
            break;
        }
        n += r;
        if req[..n].windows(4).any(|w| w == b"\r\n\r\n") || req[..n].windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    let line = std::str::from_utf8(&req[..n]).unwrap_or("").lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            let (snap, p50, p99) = source();
            let mut body = render(&snap, p50, p99);
            // `shard all`: the Agent's always-on counters and the login service ride on this
            // endpoint.
            crate::shard::metrics::render_prometheus(&mut body);
            body += &crate::shard::login::render_metrics();
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        ("GET", "/health") | ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics or /health\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_string()),
    };
    write!(
        c,
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    c.flush()
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// Render every counter in the Prometheus text format.
pub fn render(s: &StatsSnapshot, p50_ns: Option<u64>, p99_ns: Option<u64>) -> String {
    let mut o = String::with_capacity(8192);
    let c = "counter";
    metric(
        &mut o,
        "p2pmodel_relay_received_packets_total",
        c,
        "Datagrams handed to the relay.",
        s.received_packets,
    );
    metric(&mut o, "p2pmodel_relay_received_bytes_total", c, "Bytes of those datagrams.", s.received_bytes);
    metric(
        &mut o,
        "p2pmodel_relay_forwarded_packets_total",
        c,
        "Peer datagrams forwarded.",
        s.forwarded_packets,
    );
    metric(&mut o, "p2pmodel_relay_forwarded_bytes_total", c, "Bytes forwarded.", s.forwarded_bytes);
    metric(&mut o, "p2pmodel_relay_binds_accepted_total", c, "Binds accepted.", s.binds_accepted);
    metric(&mut o, "p2pmodel_relay_bind_acks_sent_total", c, "BindAcks sent.", s.bind_acks_sent);
    metric(
        &mut o,
        "p2pmodel_relay_peer_notifications_sent_total",
        c,
        "Unsolicited peer-bound BindAcks sent.",
        s.peer_notifications_sent,
    );
    metric(
        &mut o,
        "p2pmodel_relay_peer_notifications_suppressed_total",
        c,
        "Peer-bound notifications skipped by the amplification budget.",
        s.peer_notifications_suppressed,
    );
    metric(
        &mut o,
        "p2pmodel_relay_bindings_moved_total",
        c,
        "Bindings moved to a new address.",
        s.bindings_moved,
    );
    metric(&mut o, "p2pmodel_relay_bindings_expired_total", c, "Bindings expired.", s.bindings_expired);
    metric(
        &mut o,
        "p2pmodel_relay_addresses_validated_total",
        c,
        "Addresses that returned a cookie.",
        s.addresses_validated,
    );
    metric(
        &mut o,
        "p2pmodel_relay_stale_cookies_total",
        c,
        "Binds with a stale or foreign cookie.",
        s.stale_cookies,
    );
    metric(
        &mut o,
        "p2pmodel_relay_bind_data_forwarded_total",
        c,
        "Peer datagrams carried by a BindData and forwarded at once (zero-round-trip relay).",
        s.bind_data_forwarded,
    );
    metric(
        &mut o,
        "p2pmodel_relay_early_held_total",
        c,
        "BindData datagrams held until the other side bound.",
        s.early_held,
    );
    metric(
        &mut o,
        "p2pmodel_relay_early_delivered_total",
        c,
        "Held datagrams delivered when the other side bound.",
        s.early_delivered,
    );
    metric(
        &mut o,
        "p2pmodel_relay_early_dropped_total",
        c,
        "BindData datagrams that went nowhere (quota, budget, hold full or expired).",
        s.early_dropped,
    );
    metric(&mut o, "p2pmodel_relay_stun_answered_total", c, "STUN requests answered.", s.plane.stun_answered);
    metric(&mut o, "p2pmodel_relay_active_bindings", "gauge", "Live bindings.", s.active_bindings);
    metric(
        &mut o,
        "p2pmodel_relay_table_entries",
        "gauge",
        "Binding table entries (live or replay floor).",
        s.table_entries,
    );
    metric(
        &mut o,
        "p2pmodel_relay_token_key_id",
        "gauge",
        "Key id of the current token key.",
        s.current_key_id,
    );

    metric(
        &mut o,
        "p2pmodel_relay_data_plane_threads",
        "gauge",
        "Data-plane threads (one socket and one relay state each, steered by link id).",
        s.thread_forwarded.len(),
    );
    metric(
        &mut o,
        "p2pmodel_relay_handed_off_packets_total",
        "counter",
        "Relay datagrams the kernel gave to another thread than their link id's (a GSO/GRO burst mixing links), handed over to theirs.",
        s.plane.misrouted,
    );
    let name = "p2pmodel_relay_thread_forwarded_packets_total";
    let _ =
        writeln!(o, "# HELP {name} Peer datagrams forwarded, by data-plane thread.\n# TYPE {name} counter");
    for (i, v) in s.thread_forwarded.iter().enumerate() {
        let _ = writeln!(o, "{name}{{thread=\"{i}\"}} {v}");
    }

    let name = "p2pmodel_relay_dropped_packets_total";
    let _ = writeln!(o, "# HELP {name} Datagrams dropped, by reason.\n# TYPE {name} counter");
    for r in DropReason::ALL {
        let _ = writeln!(o, "{name}{{reason=\"{}\"}} {}", r.label(), s.dropped(r));
    }
    for (label, v) in [
        ("stun_unanswered", s.plane.stun_unanswered),
        ("not_relay_port", s.plane.not_relay_port),
        ("bad_source", s.plane.bad_source),
        ("send_error", s.plane.send_errors),
        ("batch_overflow", s.plane.batch_overflow),
        ("truncated", s.plane.truncated),
        ("handoff_full", s.plane.handoff_dropped),
    ] {
        let _ = writeln!(o, "{name}{{reason=\"{label}\"}} {v}");
    }

    let name = "p2pmodel_relay_forward_latency_seconds";
    let _ = writeln!(
        o,
        "# HELP {name} Time from recvmmsg to sendmmsg inside the relay, per forwarded datagram.\n# TYPE {name} histogram"
    );
    let mut cum = 0;
    for (i, &count) in s.latency.iter().enumerate().take(BUCKETS) {
        cum += count;
        match BOUNDS_NS.get(i) {
            Some(b) => {
                let _ = writeln!(o, "{name}_bucket{{le=\"{}\"}} {cum}", *b as f64 / 1e9);
            }
            None => {
                let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {cum}");
            }
        }
    }
    let _ = writeln!(o, "{name}_sum {}\n{name}_count {cum}", s.latency_sum_ns as f64 / 1e9);
    let secs = |v: Option<u64>| v.map_or(f64::NAN, |ns| ns as f64 / 1e9);
    metric(
        &mut o,
        "p2pmodel_relay_forward_latency_p50_seconds",
        "gauge",
        "Median forwarding latency over the last 10 s (NaN: nothing forwarded).",
        secs(p50_ns),
    );
    metric(
        &mut o,
        "p2pmodel_relay_forward_latency_p99_seconds",
        "gauge",
        "99th percentile forwarding latency over the last 10 s (NaN: nothing forwarded).",
        secs(p99_ns),
    );
    o
}
