//! STUN / NAT-discovery interop with third-party implementations on loopback.
//!
//! - our client and [`NatDiscovery`] against coturn's `turnserver` (RFC 5389/5780) and the
//!   Vovida `stund` (RFC 3489);
//! - coturn's `turnutils_natdiscovery` and the Vovida `stun` client against our
//!   [`StunServer`] driven by the real-socket [`UdpDriver`].
//!
//! 127.0.0.1 and 127.0.0.2 are both loopback on Linux, so a two-IP RFC 5780 server runs
//! on one machine and every test expects "no NAT": mapped address == socket address.
//!
//! Debian packages: `coturn` (turnserver, turnutils_natdiscovery), `stun-client` (stun),
//! `stun-server` (stund). A missing binary fails the test when `CI` is set, and skips it
//! with a note otherwise.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use p2pmodel_core::nat::{Filtering, Mapping, NatClass, NatDiscovery, NatDiscoveryConfig, NatReport};
use p2pmodel_core::stun::{
    BindingRequest, ChangeRequest, RetransmitConfig, StunDrops, StunServer, StunServerConfig, TransactionId,
};
use p2pmodel_servers::udp_driver::UdpDriver;
use rand::SeedableRng;

const IP1: &str = "127.0.0.1";
const IP2: &str = "127.0.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Find `bin` on PATH (plus the sbin dirs, where Debian puts `stund`), or decide to skip.
fn need(bin: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|d| PathBuf::from(d).join(bin))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!(
            "`{bin}` not found: install the Debian package `{package}` (apt-get install -y {package})"
        );
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// Kills (and reaps) a child process when dropped, so no test leaves a server behind.
struct ProcGuard(Child);

impl Drop for ProcGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run a client to completion with a hard timeout; returns stdout + stderr.
fn run_client(cmd: &mut Command, timeout: Duration) -> String {
    let child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn client");
    let mut guard = ProcGuard(child);
    let mut out = guard.0.stdout.take().unwrap();
    let mut err = guard.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        s + &e
    });
    let deadline = Instant::now() + timeout;
    loop {
        if guard.0.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = guard.0.kill();
            let text = reader.join().unwrap();
            panic!("client timed out after {timeout:?}; output so far:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(guard);
    reader.join().unwrap()
}

/// Two ports free on both loopback IPs (for servers listening on ip{1,2}:port{1,2}).
fn free_port_pair() -> (u16, u16) {
    for _ in 0..100 {
        let socks: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind((IP1, 0)).unwrap()).collect();
        let (p1, p2) = (socks[0].local_addr().unwrap().port(), socks[1].local_addr().unwrap().port());
        drop(socks);
        let ok = [(IP1, p1), (IP1, p2), (IP2, p1), (IP2, p2)].iter().all(|a| UdpSocket::bind(a).is_ok());
        if ok && p2 != p1 + 1 && p1 != p2 + 1 {
            return (p1, p2);
        }
    }
    panic!("no free port pair on {IP1} and {IP2}");
}

/// A port free on both IPs whose successor is free too (stund and the Vovida client use
/// `port` and `port + 1`).
fn free_port_with_next() -> u16 {
    for _ in 0..100 {
        let s = UdpSocket::bind((IP1, 0)).unwrap();
        let p = s.local_addr().unwrap().port();
        drop(s);
        if p < 65000
            && [(IP1, p), (IP1, p + 1), (IP2, p), (IP2, p + 1)].iter().all(|a| UdpSocket::bind(a).is_ok())
        {
            return p;
        }
    }
    panic!("no free port");
}

/// Wait until a STUN server answers a Binding request at `addr` (bounded).
fn wait_ready(addr: SocketAddr, guard: &mut ProcGuard) {
    let any: IpAddr = if addr.is_ipv4() { ip(IP1) } else { ip("::1") };
    let sock = UdpSocket::bind((any, 0)).unwrap();
    let mut d = UdpDriver::new(
        Binding::new(
            addr,
            RetransmitConfig { rto: Duration::from_millis(100), max_transmits: 30, final_wait_rtos: 1 },
        ),
        vec![sock],
    )
    .unwrap();
    let ok = d.run_until(|b| b.tx.outcome().is_some(), Instant::now() + Duration::from_secs(5)).unwrap();
    if !ok || !matches!(d.endpoint().tx.outcome(), Some(Ok(_))) {
        let status = guard.0.try_wait().unwrap();
        panic!("server at {addr} never answered (exit status {status:?})");
    }
}

/// One [`BindingRequest`] as an endpoint, to run it through the real-socket driver.
struct Binding {
    tx: BindingRequest,
}

impl Binding {
    fn new(server: SocketAddr, cfg: RetransmitConfig) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let tx = BindingRequest::new(
            Instant::now(),
            server,
            TransactionId::random(&mut rng),
            ChangeRequest::NONE,
            cfg,
        );
        Binding { tx }
    }
}

impl p2pmodel_core::endpoint::Endpoint for Binding {
    fn handle_datagram(&mut self, now: Instant, _local: SocketAddr, from: SocketAddr, data: &[u8]) {
        self.tx.handle_datagram(now, from, data);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
    }
    fn poll_transmit(&mut self) -> Option<p2pmodel_core::endpoint::Transmit> {
        self.tx.poll_transmit()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.tx.poll_timeout()
    }
}

/// Run our NAT discovery from a fresh 127.0.0.1 socket against `server`.
fn discover(server: SocketAddr) -> NatReport {
    let sock = UdpSocket::bind((IP1, 0)).unwrap();
    let local = sock.local_addr().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let d = NatDiscovery::new(Instant::now(), server, None, local, NatDiscoveryConfig::default(), &mut rng);
    let mut driver = UdpDriver::new(d, vec![sock]).unwrap();
    let done = driver.run_until(NatDiscovery::is_done, Instant::now() + Duration::from_secs(20)).unwrap();
    assert!(done, "discovery did not finish: {:?}", driver.endpoint().observations());
    let r = driver.endpoint().report();
    eprintln!("our discovery against {server}: {r:?}");
    r
}

/// Our [`StunServer`] on real sockets in a thread; stopped and joined on drop.
struct OurServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<StunDrops>>,
}

impl OurServer {
    fn start(config: StunServerConfig) -> OurServer {
        let server = StunServer::new(config);
        let addrs = server.local_addrs();
        let mut driver = UdpDriver::bind(server, &addrs).expect("bind our STUN server");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let far = Instant::now() + Duration::from_secs(120);
            driver.run_until(|_| s.load(Ordering::Relaxed), far).unwrap();
            let drops = driver.endpoint().drops();
            eprintln!("our server: answered {}, drops {drops:?}", driver.endpoint().answered());
            drops
        });
        OurServer { stop, thread: Some(thread) }
    }

    /// Stop the server and return what it dropped.
    fn stop(mut self) -> StunDrops {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("server thread panicked")
    }
}

impl Drop for OurServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Third-party classifiers send bare 20-byte requests: answer them (`p2pmodel stun
/// --allow-small-requests`).
fn classic(config: StunServerConfig) -> StunServerConfig {
    StunServerConfig { no_amplification: false, ..config }
}

fn line_value<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    out.lines().filter_map(|l| l.split_once(key).map(|(_, v)| v.trim())).collect()
}

#[test]
fn our_discovery_against_coturn_turnserver() {
    let Some(turnserver) = need("turnserver", "coturn") else {
        return;
    };
    let (p1, p2) = free_port_pair();
    let pid = std::env::temp_dir().join(format!("p2pmodel-turnserver-{p1}.pid"));
    let child = Command::new(turnserver)
        .args(["-n", "--listening-ip", IP1, "--listening-ip", IP2])
        .args(["--listening-port", &p1.to_string(), "--alt-listening-port", &p2.to_string()])
        .args(["--no-tcp", "--no-tls", "--no-dtls", "--no-tcp-relay", "--no-cli", "--log-file", "stdout"])
        .arg("--pidfile")
        .arg(&pid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnserver");
    let mut guard = ProcGuard(child);
    let primary = SocketAddr::new(ip(IP1), p1);
    wait_ready(primary, &mut guard);

    // A plain Binding: XOR-MAPPED-ADDRESS is our socket, RESPONSE-ORIGIN and OTHER-ADDRESS
    // are coturn's RFC 5780 addresses.
    let sock = UdpSocket::bind((IP1, 0)).unwrap();
    let local = sock.local_addr().unwrap();
    let mut d = UdpDriver::new(Binding::new(primary, RetransmitConfig::default()), vec![sock]).unwrap();
    assert!(d.run_until(|b| b.tx.outcome().is_some(), Instant::now() + Duration::from_secs(5)).unwrap());
    let resp = d.endpoint().tx.outcome().unwrap().clone().expect("coturn answered");
    assert_eq!(resp.mapped, local);
    assert_eq!(resp.response_origin, Some(primary));
    assert_eq!(resp.other_address, Some(SocketAddr::new(ip(IP2), p2)));

    let r = discover(primary);
    assert_eq!(r.public, Some(r.local));
    assert_eq!(r.class, NatClass::Open);
    assert_eq!(r.mapping, Mapping::NoNat);
    assert_eq!(r.filtering, Filtering::EndpointIndependent, "coturn honoured CHANGE-REQUEST");
    let _ = std::fs::remove_file(pid);
}

#[test]
fn our_discovery_against_vovida_stund() {
    let Some(stund) = need("stund", "stun-server") else {
        return;
    };
    let (p1, p2) = free_port_pair();
    let child = Command::new(stund)
        .args(["-h", IP1, "-a", IP2, "-p", &p1.to_string(), "-o", &p2.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start stund");
    let mut guard = ProcGuard(child);
    let primary = SocketAddr::new(ip(IP1), p1);
    wait_ready(primary, &mut guard);

    let r = discover(primary);
    assert_eq!(r.public, Some(r.local));
    assert_eq!(r.other, Some(SocketAddr::new(ip(IP2), p2)), "learnt from RFC 3489 CHANGED-ADDRESS");
    assert_eq!(r.class, NatClass::Open);
    assert_eq!(r.filtering, Filtering::EndpointIndependent, "stund honoured CHANGE-REQUEST");
}

#[test]
fn coturn_natdiscovery_against_our_server() {
    let Some(natdiscovery) = need("turnutils_natdiscovery", "coturn") else {
        return;
    };
    let (p1, p2) = free_port_pair();
    let _server =
        OurServer::start(classic(StunServerConfig::rfc5780(SocketAddr::new(ip(IP1), p1), p2, ip(IP2))));
    let out = run_client(
        Command::new(natdiscovery).args(["-m", "-f", "-L", IP1, "-p", &p1.to_string(), IP1]),
        Duration::from_secs(30),
    );
    eprintln!("turnutils_natdiscovery output:\n{out}");
    // Every response reports our socket as the reflexive address: no NAT on loopback.
    let reflexive = line_value(&out, "UDP reflexive addr:");
    let local = line_value(&out, "Local addr: :");
    assert!(!reflexive.is_empty(), "no reflexive address in output");
    for (refl, loc) in reflexive.iter().zip(&local) {
        assert_eq!(refl, loc, "mapped address differs from the local address");
        assert!(refl.starts_with("127.0.0.1:"));
    }
    // It saw our RFC 5780 attributes …
    assert!(out.contains(&format!("Other addr: : {IP2}:{p2}")), "OTHER-ADDRESS missing");
    assert!(out.contains(&format!("Response origin: : {IP2}:{p2}")), "change IP+port not honoured");
    // … and both verdicts are the loopback truth.
    assert!(out.contains("No NAT! (Endpoint Independent Mapping)"));
    assert!(out.contains("NAT with Endpoint Independent Filtering!"));
}

#[test]
fn vovida_stun_client_against_our_server() {
    let Some(stun) = need("stun", "stun-client") else {
        return;
    };
    let (p1, p2) = free_port_pair();
    let server =
        OurServer::start(classic(StunServerConfig::rfc5780(SocketAddr::new(ip(IP1), p1), p2, ip(IP2))));
    let src = free_port_with_next();
    let out = run_client(
        Command::new(stun).args([&format!("{IP1}:{p1}"), "-v", "-p", &src.to_string()]),
        Duration::from_secs(30),
    );
    eprintln!("stun output:\n{out}");
    let mapped = line_value(&out, "MappedAddress =");
    assert!(mapped.contains(&format!("{IP1}:{src}").as_str()), "mapped address of test I wrong: {mapped:?}");
    for m in &mapped {
        // Tests use the source port and its successor; every mapping must be one of them.
        assert!(
            *m == format!("{IP1}:{src}") || *m == format!("{IP1}:{}", src + 1),
            "unexpected mapped address {m}"
        );
    }
    assert!(line_value(&out, "ChangedAddress =").contains(&format!("{IP2}:{p2}").as_str()));
    for t in
        ["test I = 1", "test II = 1", "test III = 1", "test I(2) = 1", "is nat  = 0", "preserver port = 1"]
    {
        assert!(out.contains(t), "missing `{t}`");
    }
    assert!(out.contains("Primary: Open"), "Vovida did not classify loopback as Open");
    assert_eq!(server.stop(), StunDrops::default(), "every classic request was answered");
}

/// A server with an alternate port but no alternate IP cannot answer "change IP". It omits
/// OTHER-ADDRESS/CHANGED-ADDRESS, and stays silent to classic change-IP requests: the
/// Vovida client counts *any* reply (even an error) as "test II passed" without checking
/// its source, so an answer would make it report a full cone it never measured.
#[test]
fn third_party_clients_against_a_server_without_alternate_ip() {
    let Some(natdiscovery) = need("turnutils_natdiscovery", "coturn") else {
        return;
    };
    let Some(stun) = need("stun", "stun-client") else {
        return;
    };
    let (p1, p2) = free_port_pair();
    let server = OurServer::start(StunServerConfig {
        alt_port: Some(p2),
        no_amplification: false,
        ..StunServerConfig::single(SocketAddr::new(ip(IP1), p1))
    });
    let out = run_client(
        Command::new(natdiscovery).args(["-m", "-f", "-L", IP1, "-p", &p1.to_string(), IP1]),
        Duration::from_secs(30),
    );
    eprintln!("turnutils_natdiscovery output:\n{out}");
    assert!(!out.contains("Other addr"), "OTHER-ADDRESS advertised without an alternate IP");
    assert!(out.contains("No NAT! (Endpoint Independent Mapping)"));
    assert!(!out.contains("Filtering!"), "natdiscovery claimed a filtering verdict it cannot have measured");

    let src = free_port_with_next();
    let out = run_client(
        Command::new(stun).args([&format!("{IP1}:{p1}"), "-v", "-p", &src.to_string()]),
        Duration::from_secs(30),
    );
    eprintln!("stun output:\n{out}");
    assert!(out.contains("test I = 1"));
    assert!(out.contains("test II = 0"), "change-IP request must go unanswered");
    assert!(out.contains("test III = 1"), "change-port request must be answered");
    assert!(
        line_value(&out, "SourceAddress =").contains(&format!("{IP1}:{p2}").as_str()),
        "change-port reply must come from the alternate port"
    );
    assert!(!out.contains("Primary: Open") && !out.contains("Full Cone"), "Vovida was told a lie");
    let drops = server.stop();
    assert!(drops.change_unavailable >= 1, "{drops:?}");
}

/// IPv6: our Binding client against coturn on ::1, and coturn's client against our server.
#[test]
fn ipv6_binding_both_directions() {
    let Some(turnserver) = need("turnserver", "coturn") else {
        return;
    };
    let Some(natdiscovery) = need("turnutils_natdiscovery", "coturn") else {
        return;
    };
    let v6 = ip("::1");
    let port = || UdpSocket::bind((v6, 0)).unwrap().local_addr().unwrap().port();
    let p = port();
    let pid = std::env::temp_dir().join(format!("p2pmodel-turnserver-v6-{p}.pid"));
    let child = Command::new(turnserver)
        .args(["-n", "--listening-ip", "::1", "--listening-port", &p.to_string()])
        .args(["--no-tcp", "--no-tls", "--no-dtls", "--no-tcp-relay", "--no-cli", "--log-file", "stdout"])
        .arg("--pidfile")
        .arg(&pid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnserver");
    let mut guard = ProcGuard(child);
    let server = SocketAddr::new(v6, p);
    wait_ready(server, &mut guard);
    let sock = UdpSocket::bind((v6, 0)).unwrap();
    let local = sock.local_addr().unwrap();
    let mut d = UdpDriver::new(Binding::new(server, RetransmitConfig::default()), vec![sock]).unwrap();
    assert!(d.run_until(|b| b.tx.outcome().is_some(), Instant::now() + Duration::from_secs(5)).unwrap());
    assert_eq!(d.endpoint().tx.outcome().unwrap().clone().unwrap().mapped, local);
    drop(guard);
    let _ = std::fs::remove_file(pid);

    let p = port();
    let _ours = OurServer::start(classic(StunServerConfig::single(SocketAddr::new(v6, p))));
    let out = run_client(
        Command::new(natdiscovery).args(["-m", "-L", "::1", "-p", &p.to_string(), "::1"]),
        Duration::from_secs(30),
    );
    eprintln!("turnutils_natdiscovery output:\n{out}");
    let reflexive = line_value(&out, "UDP reflexive addr:");
    let local = line_value(&out, "Local addr: :");
    assert!(!reflexive.is_empty(), "no reflexive address in output");
    assert_eq!(reflexive[0], local[0]);
    assert!(out.contains("No NAT!"));
}
