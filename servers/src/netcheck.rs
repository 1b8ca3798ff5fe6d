//! Operator tools around STUN: `p2pmodel netcheck` (what NAT am I behind?) and
//! `p2pmodel stun` (run our RFC 5780 STUN server).
//!
//! Both are thin: [`p2pmodel_core::nat::NatDiscovery`] and
//! [`p2pmodel_core::stun::StunServer`] on real sockets through [`crate::udp_driver`].

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use p2pmodel_core::nat::{NatDiscovery, NatDiscoveryConfig, NatReport};
use p2pmodel_core::stun::{StunServer, StunServerConfig};
use thiserror::Error;

use crate::udp_driver::{DriverError, UdpDriver};

/// Arguments of `p2pmodel netcheck`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct NetcheckArgs {
    /// STUN server HOST:PORT; needs two IPs and two ports (RFC 5780) for the full report.
    #[arg(long, default_value = "127.0.0.1:3478")]
    pub stun: String,
    /// Local address to bind the test socket to.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub bind: SocketAddr,
    /// Give up after this many seconds and report what is known.
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
    /// Print one JSON line instead of the human report.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `p2pmodel stun`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct StunServeArgs {
    /// Primary IP. Use a concrete address for RFC 5780 (0.0.0.0 cannot report its origin).
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Primary port.
    #[arg(long, default_value_t = 3478)]
    pub port: u16,
    /// Alternate port for CHANGE-REQUEST (0 = none).
    #[arg(long, default_value_t = 3479)]
    pub alt_port: u16,
    /// Alternate IP for CHANGE-REQUEST; with it clients can measure filtering and mapping.
    #[arg(long)]
    pub alt_ip: Option<IpAddr>,
    /// Also answer bare (unpadded) Binding requests, as third-party NAT classifiers send
    /// them. Off by default: then no answer is larger than its request, so a spoofed
    /// source cannot use the server as an amplifier (our clients pad their requests).
    #[arg(long)]
    pub allow_small_requests: bool,
}

/// Why netcheck or the STUN server could not run.
#[derive(Debug, Error)]
pub enum NetcheckError {
    /// `--stun` did not resolve.
    #[error("cannot resolve STUN server {host}: {source}")]
    Resolve {
        /// What was given.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// `--stun` resolved to no address of the `--bind` family.
    #[error("STUN server {host} has no address of the same family as --bind {bind}")]
    NoAddress {
        /// What was given.
        host: String,
        /// The bind address.
        bind: SocketAddr,
    },
    /// Sockets could not be opened or driven.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// A plain socket call failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The STUN server arguments are contradictory.
    #[error("invalid STUN server arguments: {0}")]
    Config(&'static str),
    /// JSON encoding failed (should not happen).
    #[error("JSON encoding failed: {0}")]
    Json(#[from] serde_json::Error),
}

/// Run the discovery and print the report (human or `--json`).
pub fn run(args: &NetcheckArgs) -> Result<(), NetcheckError> {
    let report = check(args)?;
    if args.json {
        println!("{}", to_json(&report)?);
    } else {
        print!("{}", to_human(&report));
    }
    Ok(())
}

/// Run the discovery on a real socket and return the report (what `run` prints).
pub fn check(args: &NetcheckArgs) -> Result<NatReport, NetcheckError> {
    let server = resolve(&args.stun, args.bind)?;
    let sock = UdpSocket::bind(args.bind).map_err(|source| DriverError::Bind { addr: args.bind, source })?;
    let local = host_candidate(&sock, server)?;
    let now = Instant::now();
    let disc = NatDiscovery::new(now, server, None, local, NatDiscoveryConfig::default(), &mut rand::rng());
    let mut driver = UdpDriver::new(disc, vec![sock])?;
    driver.run_until(NatDiscovery::is_done, now + Duration::from_secs(args.timeout))?;
    Ok(driver.endpoint().report())
}

/// The report as one JSON line (the public interface: class uses the seed names).
pub fn to_json(report: &NatReport) -> Result<String, NetcheckError> {
    Ok(serde_json::to_string(report)?)
}

/// The report as aligned `key: value` lines for people.
pub fn to_human(r: &NatReport) -> String {
    let opt = |a: Option<SocketAddr>| a.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    format!(
        "public address: {}\nlocal address:  {}\nmapping:        {}\nfiltering:      {}\nallocation:     {}\nnat class:      {}\n",
        opt(r.public),
        r.local,
        r.mapping,
        r.filtering,
        r.allocation,
        r.class
    )
}

fn resolve(host: &str, bind: SocketAddr) -> Result<SocketAddr, NetcheckError> {
    let addrs =
        host.to_socket_addrs().map_err(|source| NetcheckError::Resolve { host: host.to_owned(), source })?;
    addrs
        .into_iter()
        .find(|a| a.is_ipv4() == bind.is_ipv4())
        .ok_or_else(|| NetcheckError::NoAddress { host: host.to_owned(), bind })
}

/// Our socket's address with a concrete IP: if bound to a wildcard, ask the routing table
/// (connect a throwaway UDP socket; nothing is sent) which source IP reaches `server`.
fn host_candidate(sock: &UdpSocket, server: SocketAddr) -> Result<SocketAddr, NetcheckError> {
    let local = sock.local_addr()?;
    if !local.ip().is_unspecified() {
        return Ok(local);
    }
    let probe = UdpSocket::bind(SocketAddr::new(local.ip(), 0))?;
    probe.connect(server)?;
    Ok(SocketAddr::new(probe.local_addr()?.ip(), local.port()))
}

/// The [`StunServerConfig`] these arguments describe.
pub fn stun_config(args: &StunServeArgs) -> Result<StunServerConfig, NetcheckError> {
    if args.alt_ip.is_some() && args.bind.is_unspecified() {
        return Err(NetcheckError::Config(
            "--alt-ip needs a concrete --bind address (OTHER-ADDRESS must be reachable)",
        ));
    }
    if args.alt_ip.is_some_and(|ip| ip.is_ipv4() != args.bind.is_ipv4()) {
        return Err(NetcheckError::Config("--bind and --alt-ip must be the same IP family"));
    }
    if args.port == 0 || args.alt_port == args.port {
        return Err(NetcheckError::Config("--port must be non-zero and differ from --alt-port"));
    }
    Ok(StunServerConfig {
        primary: SocketAddr::new(args.bind, args.port),
        alt_port: (args.alt_port != 0).then_some(args.alt_port),
        alt_ip: args.alt_ip,
        software: None,
        no_amplification: !args.allow_small_requests,
    })
}

/// Run our STUN server on real sockets until the process is killed.
pub fn serve_stun(args: &StunServeArgs) -> Result<(), NetcheckError> {
    serve_stun_until(args, &AtomicBool::new(false))
}

/// Run our STUN server until `stop` is set (checked at least every 100 ms).
pub fn serve_stun_until(args: &StunServeArgs, stop: &AtomicBool) -> Result<(), NetcheckError> {
    let server = StunServer::new(stun_config(args)?);
    let addrs = server.local_addrs();
    let mut driver = UdpDriver::bind(server, &addrs)?;
    let list: Vec<String> = driver.local_addrs().iter().map(|a| a.to_string()).collect();
    eprintln!("p2pmodel stun: listening on {}", list.join(", "));
    let mut last = (driver.stats(), driver.endpoint().drops());
    loop {
        let deadline = Instant::now() + Duration::from_secs(60);
        if driver.run_until(|_| stop.load(Ordering::Relaxed), deadline)? {
            return Ok(());
        }
        // Once a minute, if anything changed: what was answered and what was dropped (a
        // flood shows as `queue_full` in the driver or the server).
        let now = (driver.stats(), driver.endpoint().drops());
        if now != last {
            eprintln!(
                "p2pmodel stun: answered {}, driver {:?}, drops {:?}",
                driver.endpoint().answered(),
                now.0,
                now.1
            );
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn serve_args(port: u16, alt_port: u16) -> StunServeArgs {
        StunServeArgs {
            bind: "127.0.0.1".parse().unwrap(),
            port,
            alt_port,
            alt_ip: Some("127.0.0.2".parse().unwrap()),
            allow_small_requests: false,
        }
    }

    #[test]
    fn rejects_contradictory_server_arguments() {
        let mut a = serve_args(3478, 3479);
        a.bind = "0.0.0.0".parse().unwrap();
        assert!(matches!(stun_config(&a), Err(NetcheckError::Config(_))));
        let mut a = serve_args(3478, 3478);
        assert!(stun_config(&a).is_err());
        a.alt_port = 0;
        a.alt_ip = None;
        let c = stun_config(&a).unwrap();
        assert_eq!((c.alt_port, c.alt_ip), (None, None));
        a.alt_ip = Some("::1".parse().unwrap());
        assert!(stun_config(&a).is_err());
    }

    #[test]
    fn human_report_names_every_field_with_seed_names() {
        use p2pmodel_core::nat::{Observations, Probe, classify};
        let mut o = Observations::new(
            "10.0.0.2:5000".parse().unwrap(),
            "192.0.2.1:3478".parse().unwrap(),
            Some("192.0.2.2:3479".parse().unwrap()),
        );
        o.primary = Probe::Mapped("203.0.113.7:5000".parse().unwrap());
        o.alt_ip = o.primary;
        o.filter_ip_port = Probe::NoResponse;
        o.filter_port = Probe::NoResponse;
        let r = classify(&o);
        assert_eq!(
            to_human(&r),
            "public address: 203.0.113.7:5000\nlocal address:  10.0.0.2:5000\n\
             mapping:        endpoint-independent\nfiltering:      address-and-port-dependent\n\
             allocation:     preserving\nnat class:      port-restricted\n"
        );
        let v: serde_json::Value = serde_json::from_str(&to_json(&r).unwrap()).unwrap();
        assert_eq!(v["class"], "port-restricted");
        assert_eq!(v["public"], "203.0.113.7:5000");
        assert_eq!(v["allocation"], "preserving");
        assert_eq!(v["port_delta"], serde_json::Value::Null);
    }

    /// netcheck against `p2pmodel stun` on loopback (127.0.0.1 + 127.0.0.2): no NAT → open.
    #[test]
    fn netcheck_against_our_server_on_loopback_is_open() {
        // Find two free ports usable on both loopback IPs.
        let (p1, p2) = loop {
            let a = UdpSocket::bind("127.0.0.1:0").unwrap();
            let b = UdpSocket::bind("127.0.0.1:0").unwrap();
            let (p1, p2) = (a.local_addr().unwrap().port(), b.local_addr().unwrap().port());
            drop((a, b));
            if UdpSocket::bind(("127.0.0.2", p1)).is_ok() && UdpSocket::bind(("127.0.0.2", p2)).is_ok() {
                break (p1, p2);
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let args = serve_args(p1, p2);
        let s = stop.clone();
        let server = std::thread::spawn(move || serve_stun_until(&args, &s));
        std::thread::sleep(Duration::from_millis(100)); // let it bind
        let r = check(&NetcheckArgs {
            stun: format!("127.0.0.1:{p1}"),
            bind: "127.0.0.1:0".parse().unwrap(),
            timeout: 10,
            json: false,
        });
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap().unwrap();
        let r = r.unwrap();
        assert_eq!(r.public, Some(r.local));
        assert_eq!(r.class.to_string(), "open");
        assert_eq!(r.other, Some(SocketAddr::new("127.0.0.2".parse().unwrap(), p2)));
        assert_eq!(r.filtering.to_string(), "endpoint-independent");
    }

    #[test]
    fn netcheck_with_nothing_listening_reports_blocked() {
        let free = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let start = Instant::now();
        let r = check(&NetcheckArgs {
            stun: format!("127.0.0.1:{port}"),
            bind: "127.0.0.1:0".parse().unwrap(),
            timeout: 10,
            json: true,
        })
        .unwrap();
        assert_eq!(r.class.to_string(), "blocked");
        let took = start.elapsed();
        let expect = NatDiscoveryConfig::default().retransmit.give_up_after();
        assert!(took >= expect && took < expect + Duration::from_secs(2), "{took:?}");
    }
}
