//! The Agent (DMZ gateway): the only endpoint clients reach.
//!
//! bevy_renet + renet_netcode in secure mode: a client needs a connect token minted with the
//! shard's key (see [`super::login`]). The Agent tracks each session, routes lobby-phase
//! messages to the Lobby and game-phase messages to the client's Game server, and back;
//! applies a per-client message budget; never tells clients an internal address.
//!
//! ## Past netcode's 1,024 clients
//! One netcode server holds at most 1,024 clients. The Agent runs one renetcode
//! [`NetcodeServer`] per UDP socket ([`AgentTransport`]: `ceil(agent.max_clients / 1024)`
//! sockets, the first on `agent.port`, the next ones on the following ports, skipping
//! `agent.login_port`), all feeding one [`RenetServer`] (client ids are unique shard-wide:
//! they derive from the name). The login service writes every socket's address into each
//! connect token, **least-loaded first** ([`AgentLoad`]: connected clients plus tokens minted
//! in the last 10 s per socket); a netcode client connects to the first address and moves on
//! to the next one only if that one times out.
//!
//! ## Off the frame (issue #16)
//! ```text
//! agent.io_threads I/O threads (p2pm-agent-io-N), each owning some sockets (round-robin),
//! their NetcodeServers and one RenetServer for their clients:
//! loop {
//!     commands from the frame (messages for clients, kicks)  ← outbox (Mutex<Vec>), eventfd wake
//!     recv ≤ 256 datagrams per socket → netcode decrypt → renet → messages → batch
//!     every 50 ms: sweep (netcode keepalives/timeouts, renet update, closed connections)
//!     send: every client after a sweep, else the clients with new messages (encrypt, sendto)
//!     batch → inbox (bounded: per client its budget, 131,072 in all; drops counted)
//!     nothing to do → poll(sockets + eventfd, ≤ 20 ms)
//! }
//! the frame (Update): take the inbox in order — Connected (name, per-IP cap) / Message
//! (AgentRouter::from_client) / Disconnected (its last words first, then the router's
//! disconnect) — then route the roles' answers to the outbox and wake the threads.
//! ```
//! The Game tick shares the frame only with routing; a stalled frame does not stop
//! keepalives. `io_threads = 0` runs the same [`AgentIo`] in the frame (PreUpdate/PostUpdate).

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bytes::Bytes;
use renet::{ConnectionConfig, DefaultChannel, DisconnectReason, RenetServer};
use renet_netcode::{NETCODE_KEY_BYTES, NETCODE_USER_DATA_BYTES, ServerAuthentication, ServerConfig};
use renetcode::{NetcodeServer, ServerResult};

use super::bus::ShardBus;
use super::keys::name_from_user_data;
pub use super::load::AgentLoad;
use super::login::OnlineNames;
use super::metrics::{self, ClientDropReason, ClientDrops};
use crate::relay::batch::RecvBatch;
use p2pmodel_core::guard::catch_panic;

/// SO_RCVBUF / SO_SNDBUF of the Agent's sockets: at 2,000 clients the Agent takes
/// ~1.5 MB/s, so the kernel default (208 KiB) overflows when a frame is late by ~150 ms.
const AGENT_SOCKET_BUFFER: usize = 4 << 20;

/// renet's packet type byte of an ack-only packet (`Packet::Ack`).
const RENET_ACK: u8 = 4;

/// Clients one netcode server (one socket) holds at most.
pub const CLIENTS_PER_SOCKET: usize = 1024;
/// Netcode sockets at most (a connect token lists at most 32 server addresses).
pub const MAX_SOCKETS: usize = 32;
/// Ack-only packets to one client at most this often. renet repeats its pending ack ranges
/// in an Ack packet on *every* send until the client acknowledges that Ack, i.e. once per
/// Agent frame (60 Hz) for a client that sends at 20 Hz — ~1.5 kB/s per client of pure acks,
/// as much as all the game traffic left on the server with P2P on. Ranges are cumulative, so
/// a skipped Ack loses nothing; 50 ms (one game tick) keeps reliable resends (≥ 200 ms) and
/// RTT estimates sound.
pub const ACK_INTERVAL: Duration = Duration::from_millis(50);
/// How often an I/O thread runs its per-client sweep (netcode keepalives and timeouts, renet
/// resends and acks, every client's pending packets): once per [`ACK_INTERVAL`], i.e. as
/// often as acks may go out anyway. Packets are decrypted and handed on as they arrive, and
/// messages from the roles are sent as soon as the frame hands them over, in between. (At
/// 60 Hz, as in the frame, the sweep was ~25 % of the thread's CPU at 1,000 clients: renet's
/// `get_packets_to_send` and `update` for every connection.)
pub const SWEEP_INTERVAL: Duration = ACK_INTERVAL;
/// An ack-only packet may go this much before [`ACK_INTERVAL`] has passed (sweeps and frames
/// are not exactly [`ACK_INTERVAL`] apart).
const ACK_SLACK: Duration = Duration::from_millis(5);
/// Datagrams an I/O thread reads from one socket before it turns to the next socket, its
/// queue of outgoing messages and its sweep.
const RECV_BUDGET: usize = 256;
/// Datagrams one `recvmmsg` takes at most.
const RECV_BATCH: usize = 32;
/// Client messages waiting for the Bevy frame at most (all clients); more are dropped and
/// counted ([`AgentTransport::inbox_dropped`]). Connections, disconnections and a client's
/// last words are never dropped (there are at most as many as clients).
pub const INBOX_CAP: usize = 1 << 17;
/// Messages from the roles waiting for an I/O thread at most; more are dropped and counted.
pub const OUTBOX_CAP: usize = 1 << 18;

/// What an Agent I/O thread hands to the Bevy frame, in the order it happened.
#[derive(Debug)]
pub enum Inbound {
    /// A client connected (netcode handshake done).
    Connected {
        /// netcode client id.
        client: u64,
        /// The address its packets come from.
        addr: SocketAddr,
        /// The connect token's user data (the name).
        user_data: Box<[u8; NETCODE_USER_DATA_BYTES]>,
        /// The I/O thread that owns its socket.
        worker: usize,
    },
    /// One message from a connected client.
    Message {
        /// netcode client id.
        client: u64,
        /// The message (renet's payload).
        bytes: Bytes,
    },
    /// A client's connection closed.
    Disconnected {
        /// netcode client id.
        client: u64,
        /// renet's reason (`Transport` for a netcode timeout or disconnect).
        reason: DisconnectReason,
        /// What it sent in its last packets, in order (a client that quits sends `Leave`
        /// right before its disconnect); empty for a client renet panicked on.
        last_words: Vec<Bytes>,
    },
}

/// What the Bevy frame hands to an Agent I/O thread.
#[derive(Debug)]
enum Command {
    Send { client: u64, reliable: bool, bytes: Vec<u8> },
    Kick(u64),
}

#[derive(Default)]
struct Inbox {
    events: Vec<Inbound>,
    messages: usize,
    per_client: HashMap<u64, u32>,
    /// Messages dropped since the last take because their client had its whole budget waiting.
    over_budget: u64,
}

/// State shared by the Bevy side and the I/O threads.
struct AgentShared {
    load: AgentLoad,
    /// Client ids connected through any socket (a second connection is refused).
    claimed: Mutex<HashSet<u64>>,
    inbox: Mutex<Inbox>,
    outboxes: Vec<Mutex<Vec<Command>>>,
    wakes: Vec<OwnedFd>,
    /// A client's messages waiting in the inbox at most (its whole budget of a second: the
    /// router, which sees them all at one `now`, would take no more).
    per_client_cap: u32,
    dropped: ClientDrops,
    netcode_panics: AtomicU64,
    acks_deferred: AtomicU64,
    inbox_dropped: AtomicU64,
    outbox_dropped: AtomicU64,
    shutdown: AtomicBool,
}

impl AgentShared {
    fn count_drop(&self, reason: ClientDropReason) {
        self.dropped.add(reason);
        metrics::agent_dropped_client(reason);
    }
}

struct NetcodePort {
    /// Socket index (shard-wide, the order of the token's addresses).
    index: usize,
    socket: UdpSocket,
    server: NetcodeServer,
}

/// What [`handle`] works on besides the port (disjoint from the receive buffer).
struct Cx {
    renet: RenetServer,
    /// Client → position of its port in this worker's list.
    owner: HashMap<u64, usize>,
    /// Position in this worker's list → socket index (shard-wide).
    port_index: Vec<usize>,
    shared: Arc<AgentShared>,
    worker: usize,
    /// Clients whose packet made renet panic since the last sweep (their renet state is
    /// discarded).
    panicked: HashMap<u64, ClientDropReason>,
    /// The same client id connected through a second socket: (port position, client).
    refuse: Vec<(usize, u64)>,
    /// What this iteration hands to the Bevy frame.
    batch: Vec<Inbound>,
}

/// One Agent I/O worker: some of the netcode sockets, their netcode servers and the renet
/// connections of their clients. Runs on its own thread ([`AgentTransport`] with
/// `io_threads` ≥ 1) or in the Bevy frame (`io_threads = 0`).
pub struct AgentIo {
    ports: Vec<NetcodePort>,
    cx: Cx,
    recv: RecvBatch,
    last_ack: HashMap<u64, Instant>,
    /// Clients with messages queued since their last send.
    dirty: Vec<u64>,
    spare: Vec<Command>,
}

impl AgentIo {
    /// Receive what waits on this worker's sockets, at most `budget` datagrams per socket
    /// (so a busy socket cannot starve the others or the sweep): decrypt, feed renet, hand
    /// the messages on. True when something was read.
    fn receive(&mut self, budget: usize) -> bool {
        let mut got = false;
        for k in 0..self.ports.len() {
            let NetcodePort { index, socket, server } = &mut self.ports[k];
            let mut taken = 0;
            while taken < budget {
                // recvmmsg: up to a batch per system call.
                let n = match self.recv.recv(socket.as_raw_fd(), true) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        taken += 1;
                        continue;
                    }
                    Err(e) => {
                        warn!("agent socket {index}: receive failed: {e}");
                        break;
                    }
                };
                taken += n;
                got = true;
                for i in 0..n {
                    let Some(addr) = self.recv.get(i).1.filter(|_| !self.recv.truncated(i)) else { continue };
                    let buf = self.recv.get_mut(i);
                    metrics::agent_in(buf.len());
                    // netcode decodes a datagram's header before authenticating it: a panic in
                    // there (renetcode 2.0.0 had two, patched in vendor/renetcode) drops the
                    // datagram, is counted and logged, and the Agent goes on.
                    let srv = &mut *server;
                    let r = match catch_panic(move || srv.process_packet(addr, buf)) {
                        Ok(r) => r,
                        Err(panic) => {
                            self.cx.shared.netcode_panics.fetch_add(1, Ordering::Relaxed);
                            metrics::agent_netcode_panic();
                            warn!(%addr, %panic, "netcode panicked on a datagram; dropped");
                            continue;
                        }
                    };
                    handle(r, k, socket, &mut self.cx);
                }
            }
        }
        got
    }

    /// The per-client sweep: netcode timeouts and keepalives, renet's clock, refused and
    /// closed connections.
    fn sweep(&mut self, dt: Duration) {
        self.cx.renet.update(dt);
        for k in 0..self.ports.len() {
            let NetcodePort { socket, server, .. } = &mut self.ports[k];
            server.update(dt);
            for id in server.clients_id() {
                let r = server.update_client(id);
                handle(r, k, socket, &mut self.cx);
            }
        }
        for (k, id) in std::mem::take(&mut self.cx.refuse) {
            // The same client id already connected through another socket: refuse this one.
            warn!(
                client_id = id,
                socket = self.ports[k].index,
                "client connected twice (two sockets); dropping the second"
            );
            let NetcodePort { socket, server, .. } = &mut self.ports[k];
            if let ServerResult::ClientDisconnected { addr, payload: Some(p), .. } = server.disconnect(id) {
                let _ = socket.send_to(p, addr);
            }
        }
        // Connections renet closed (it refused a client's packet, or we kicked the client) and
        // those whose packet made renet panic: drop them at the netcode layer too, count why.
        for id in self.cx.renet.disconnections_id() {
            let reason = self
                .cx
                .panicked
                .remove(&id)
                .or_else(|| self.cx.renet.disconnect_reason(id).and_then(ClientDropReason::from_renet));
            if let Some(reason) = reason {
                self.cx.shared.count_drop(reason);
                if reason != ClientDropReason::Kicked {
                    warn!(client_id = id, reason = reason.label(), renet = ?self.cx.renet.disconnect_reason(id), "dropping client");
                }
            }
            let Some(&k) = self.cx.owner.get(&id) else {
                forget(&mut self.cx, id, Vec::new());
                continue;
            };
            let NetcodePort { socket, server, .. } = &mut self.ports[k];
            let r = server.disconnect(id);
            handle(r, k, socket, &mut self.cx);
            if self.cx.owner.get(&id) == Some(&k) {
                // netcode no longer knew the client: finish the drop here, so it is not
                // listed (and counted) again next sweep.
                forget(&mut self.cx, id, Vec::new());
            }
        }
        self.cx.panicked.clear();
        // renet's own event queue is not used (the events are ours): keep it empty.
        while self.cx.renet.get_event().is_some() {}
    }

    /// Apply what the Bevy frame handed over: messages to send, kicks. True when any.
    fn commands(&mut self) -> bool {
        let mut cmds = std::mem::take(&mut self.spare);
        if let Ok(mut q) = self.cx.shared.outboxes[self.cx.worker].lock() {
            std::mem::swap(&mut *q, &mut cmds);
        }
        let any = !cmds.is_empty();
        for c in cmds.drain(..) {
            match c {
                Command::Send { client, reliable, bytes } => {
                    if self.cx.renet.is_connected(client) {
                        let ch = if reliable {
                            DefaultChannel::ReliableOrdered
                        } else {
                            DefaultChannel::Unreliable
                        };
                        self.cx.renet.send_message(client, ch, bytes);
                        self.dirty.push(client);
                    }
                }
                Command::Kick(client) => self.cx.renet.disconnect(client),
            }
        }
        self.spare = cmds;
        any
    }

    /// Send what renet has queued for every client (`all`) or for the clients messages were
    /// queued for since (ack-only packets at most every [`ACK_INTERVAL`] per client).
    fn send(&mut self, all: bool) {
        let now = Instant::now();
        let ids = if all {
            self.dirty.clear();
            self.last_ack.retain(|id, _| self.cx.owner.contains_key(id));
            self.cx.renet.clients_id()
        } else {
            self.dirty.sort_unstable();
            self.dirty.dedup();
            std::mem::take(&mut self.dirty)
        };
        for id in ids {
            self.send_to(id, now);
        }
    }

    fn send_to(&mut self, id: u64, now: Instant) {
        let Some(&k) = self.cx.owner.get(&id) else { return };
        // renet's send side acts on the client's acks: guarded like `feed_renet`. A client
        // it panics on is dropped at once (its connection is not touched again).
        let packets = match catch_panic(|| self.cx.renet.get_packets_to_send(id)) {
            Ok(Ok(packets)) => packets,
            Ok(Err(_)) => return,
            Err(panic) => {
                warn!(client_id = id, %panic, reason = "renet_panic", "renet panicked sending; dropping client");
                self.cx.shared.count_drop(ClientDropReason::RenetPanic);
                self.cx.panicked.insert(id, ClientDropReason::RenetPanic);
                let NetcodePort { socket, server, .. } = &mut self.ports[k];
                let r = server.disconnect(id);
                handle(r, k, socket, &mut self.cx);
                self.cx.panicked.remove(&id);
                if self.cx.owner.get(&id) == Some(&k) {
                    forget(&mut self.cx, id, Vec::new());
                }
                return;
            }
        };
        let NetcodePort { socket, server, .. } = &mut self.ports[k];
        for packet in packets {
            if packet.first() == Some(&RENET_ACK) {
                let last = self.last_ack.entry(id).or_insert(now - ACK_INTERVAL);
                if now.duration_since(*last) + ACK_SLACK < ACK_INTERVAL {
                    self.cx.shared.acks_deferred.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                *last = now;
            }
            match server.generate_payload_packet(id, &packet) {
                Ok((addr, payload)) => {
                    metrics::agent_out(payload.len());
                    if let Err(e) = socket.send_to(payload, addr) {
                        debug!(client_id = id, "agent send failed: {e}");
                    }
                }
                Err(e) => {
                    debug!(client_id = id, "cannot encrypt a packet: {e}");
                    break;
                }
            }
        }
    }

    /// Hand this iteration's events and messages to the Bevy frame. A full inbox (or a client
    /// over its share) drops messages, counted; connections and disconnections always pass.
    fn flush(&mut self) {
        if self.cx.batch.is_empty() {
            return;
        }
        let shared = &self.cx.shared;
        let Ok(mut inbox) = shared.inbox.lock() else { return };
        let inbox = &mut *inbox;
        let mut dropped = 0;
        for ev in self.cx.batch.drain(..) {
            if let Inbound::Message { client, .. } = &ev {
                let n = inbox.per_client.entry(*client).or_default();
                if *n >= shared.per_client_cap {
                    // The router, which takes the whole inbox at one `now`, would refuse it:
                    // counted as its `rate_limited` (see `take_inbound`).
                    inbox.over_budget += 1;
                    continue;
                }
                if inbox.messages >= INBOX_CAP {
                    dropped += 1;
                    continue;
                }
                *n += 1;
                inbox.messages += 1;
            }
            inbox.events.push(ev);
        }
        if dropped > 0 {
            shared.inbox_dropped.fetch_add(dropped, Ordering::Relaxed);
            metrics::registry().agent_inbox_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Tell every client we are going (at exit).
    fn disconnect_all(&mut self) {
        for k in 0..self.ports.len() {
            let NetcodePort { socket, server, .. } = &mut self.ports[k];
            for id in server.clients_id() {
                let r = server.disconnect(id);
                handle(r, k, socket, &mut self.cx);
            }
        }
    }

    /// The I/O thread: receive as datagrams arrive, send as the Bevy frame hands messages
    /// over, sweep every [`SWEEP_INTERVAL`]; sleep in `poll` when there is nothing to do.
    fn run(mut self, wake: RawFd) {
        let mut fds: Vec<libc::pollfd> = self
            .ports
            .iter()
            .map(|p| libc::pollfd { fd: p.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        fds.push(libc::pollfd { fd: wake, events: libc::POLLIN, revents: 0 });
        let mut last_sweep = Instant::now();
        loop {
            if self.cx.shared.shutdown.load(Ordering::Relaxed) {
                self.commands();
                self.send(false);
                self.disconnect_all();
                self.flush();
                break;
            }
            let mut busy = self.commands();
            busy |= self.receive(RECV_BUDGET);
            let now = Instant::now();
            let due = now.duration_since(last_sweep) >= SWEEP_INTERVAL;
            if due {
                self.sweep(now.duration_since(last_sweep));
                last_sweep = now;
            }
            self.send(due);
            self.flush();
            if !busy {
                let left = SWEEP_INTERVAL.saturating_sub(Instant::now().duration_since(last_sweep));
                let ms = left.as_micros().div_ceil(1000).clamp(1, 20) as i32;
                for f in fds.iter_mut() {
                    f.revents = 0;
                }
                // SAFETY: `fds` are valid pollfd entries of descriptors we hold.
                let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
                if r > 0 && fds.last().is_some_and(|f| f.revents != 0) {
                    let mut v = [0u8; 8];
                    // SAFETY: reads 8 bytes into a live buffer from our eventfd.
                    unsafe { libc::read(wake, v.as_mut_ptr().cast(), v.len()) };
                }
            }
        }
    }
}

/// The Agent's options besides its sockets.
#[derive(Debug, Clone, Copy)]
pub struct AgentOptions {
    /// Clients at most (split over the sockets).
    pub max_clients: usize,
    /// netcode protocol id.
    pub protocol_id: u64,
    /// The connect-token key.
    pub private_key: [u8; NETCODE_KEY_BYTES],
    /// I/O threads (`agent.io_threads`; 0: in the Bevy frame).
    pub io_threads: usize,
    /// The per-client budget (`agent.max_messages_per_sec`): a client's messages waiting for
    /// the frame at most.
    pub max_messages_per_sec: u32,
}

/// The Agent's netcode endpoints: one renetcode [`NetcodeServer`] per UDP socket, their renet
/// connections, on `io_threads` I/O threads (or in the frame); the Bevy side exchanges
/// [`Inbound`] events and outgoing messages with them (see the module docs).
#[derive(Resource)]
pub struct AgentTransport {
    shared: Arc<AgentShared>,
    /// `io_threads = 0`: the one worker, run by the frame's systems (in a `Mutex` only to be
    /// `Sync`; reached through `get_mut`).
    inline: Option<Mutex<AgentIo>>,
    threads: Vec<JoinHandle<()>>,
    /// Client → worker (from `Connected`, for routing outgoing messages).
    worker_of: HashMap<u64, usize>,
    pending: Vec<bool>,
    last_inline_sweep: Option<Instant>,
}

impl AgentTransport {
    /// Netcode servers (secure mode) on `sockets` (bound), reachable by clients at `public`
    /// (same order), on `options.io_threads` I/O threads (sockets dealt round-robin).
    pub fn new(
        sockets: Vec<UdpSocket>,
        public: Vec<SocketAddr>,
        options: AgentOptions,
    ) -> std::io::Result<Self> {
        let n = sockets.len().max(1);
        let workers = options.io_threads.clamp(1, n);
        metrics::registry().agent_running.store(true, Ordering::Relaxed);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut wakes = Vec::new();
        for _ in 0..workers {
            wakes.push(eventfd()?);
        }
        let shared = Arc::new(AgentShared {
            load: AgentLoad::new(public.clone()),
            claimed: Mutex::new(HashSet::new()),
            inbox: Mutex::new(Inbox::default()),
            outboxes: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
            wakes,
            per_client_cap: options.max_messages_per_sec.max(1),
            dropped: ClientDrops::default(),
            netcode_panics: AtomicU64::new(0),
            acks_deferred: AtomicU64::new(0),
            inbox_dropped: AtomicU64::new(0),
            outbox_dropped: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
        });
        let mut ios: Vec<AgentIo> = (0..workers)
            .map(|worker| AgentIo {
                ports: Vec::new(),
                cx: Cx {
                    renet: RenetServer::new(ConnectionConfig::default()),
                    owner: HashMap::new(),
                    port_index: Vec::new(),
                    shared: shared.clone(),
                    worker,
                    panicked: HashMap::new(),
                    refuse: Vec::new(),
                    batch: Vec::new(),
                },
                recv: RecvBatch::new(RECV_BATCH),
                last_ack: HashMap::new(),
                dirty: Vec::new(),
                spare: Vec::new(),
            })
            .collect();
        let max_clients = options.max_clients;
        for (i, (socket, addr)) in sockets.into_iter().zip(public.iter()).enumerate() {
            socket.set_nonblocking(true)?;
            let share = (max_clients / n + usize::from(i < max_clients % n)).clamp(1, CLIENTS_PER_SOCKET);
            let server = NetcodeServer::new(ServerConfig {
                current_time: now,
                max_clients: share,
                protocol_id: options.protocol_id,
                public_addresses: vec![*addr],
                authentication: ServerAuthentication::Secure { private_key: options.private_key },
            });
            let io = &mut ios[i % workers];
            io.ports.push(NetcodePort { index: i, socket, server });
            io.cx.port_index.push(i);
        }
        let mut t = AgentTransport {
            shared,
            inline: None,
            threads: Vec::new(),
            worker_of: HashMap::new(),
            pending: vec![false; workers],
            last_inline_sweep: None,
        };
        if options.io_threads == 0 {
            t.inline = ios.pop().map(Mutex::new);
            return Ok(t);
        }
        for io in ios {
            let w = io.cx.worker;
            let wake = t.shared.wakes[w].as_raw_fd();
            let handle =
                std::thread::Builder::new().name(format!("p2pm-agent-io-{w}")).spawn(move || io.run(wake))?;
            t.threads.push(handle);
        }
        Ok(t)
    }

    /// Sockets needed for `max_clients`.
    pub fn sockets_for(max_clients: usize) -> usize {
        max_clients.div_ceil(CLIENTS_PER_SOCKET).clamp(1, MAX_SOCKETS)
    }

    /// The load tracker (hand it to the login service's minter).
    pub fn load(&self) -> AgentLoad {
        self.shared.load.clone()
    }

    /// The sockets' public addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        self.shared.load.addrs()
    }

    /// Connected clients per socket.
    pub fn connected(&self) -> Vec<usize> {
        self.shared.load.connected()
    }

    /// I/O threads running (0: the I/O runs in the frame).
    pub fn io_threads(&self) -> usize {
        self.threads.len()
    }

    /// Clients this transport dropped for `reason` so far.
    pub fn dropped(&self, reason: ClientDropReason) -> u64 {
        self.shared.dropped.get(reason)
    }

    /// Datagrams dropped because netcode panicked decoding them (caught).
    pub fn netcode_panics(&self) -> u64 {
        self.shared.netcode_panics.load(Ordering::Relaxed)
    }

    /// Ack-only packets not sent because one went to that client less than [`ACK_INTERVAL`]
    /// ago.
    pub fn acks_deferred(&self) -> u64 {
        self.shared.acks_deferred.load(Ordering::Relaxed)
    }

    /// Client messages dropped because the frame did not take them in time (the inbox was
    /// full).
    pub fn inbox_dropped(&self) -> u64 {
        self.shared.inbox_dropped.load(Ordering::Relaxed)
    }

    /// Messages for clients dropped because the I/O threads did not take them in time.
    pub fn outbox_dropped(&self) -> u64 {
        self.shared.outbox_dropped.load(Ordering::Relaxed)
    }

    /// Everything the I/O threads handed over since the last call, in order, and how many
    /// client messages were dropped meanwhile because their client already had its whole
    /// per-second budget waiting (the router would have refused them: it counts them).
    pub fn take_inbound(&mut self) -> (Vec<Inbound>, u64) {
        let Ok(mut inbox) = self.shared.inbox.lock() else { return (Vec::new(), 0) };
        inbox.messages = 0;
        inbox.per_client.clear();
        let over_budget = std::mem::take(&mut inbox.over_budget);
        let events = std::mem::take(&mut inbox.events);
        drop(inbox);
        for ev in &events {
            match ev {
                Inbound::Connected { client, worker, .. } => {
                    self.worker_of.insert(*client, *worker);
                }
                Inbound::Disconnected { client, .. } => {
                    self.worker_of.remove(client);
                }
                Inbound::Message { .. } => {}
            }
        }
        (events, over_budget)
    }

    fn command(&mut self, client: u64, c: Command) {
        let w = self.worker_of.get(&client).copied().unwrap_or(0);
        let Some(q) = self.shared.outboxes.get(w) else { return };
        let Ok(mut q) = q.lock() else { return };
        if q.len() >= OUTBOX_CAP && matches!(c, Command::Send { .. }) {
            self.shared.outbox_dropped.fetch_add(1, Ordering::Relaxed);
            metrics::registry().agent_outbox_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push(c);
        self.pending[w] = true;
    }

    /// Queue a message for `client` (sent when its I/O thread is woken by [`Self::wake`]).
    pub fn send(&mut self, client: u64, reliable: bool, bytes: Vec<u8>) {
        self.command(client, Command::Send { client, reliable, bytes });
    }

    /// Disconnect `client` (counted as `kicked`).
    pub fn kick(&mut self, client: u64) {
        self.command(client, Command::Kick(client));
    }

    /// Wake the I/O threads that have something queued.
    pub fn wake(&mut self) {
        for (w, p) in self.pending.iter_mut().enumerate() {
            if std::mem::take(p) && self.inline.is_none() {
                let one = 1u64.to_ne_bytes();
                // SAFETY: writes 8 bytes from a live buffer to our eventfd.
                unsafe { libc::write(self.shared.wakes[w].as_raw_fd(), one.as_ptr().cast(), one.len()) };
            }
        }
    }

    /// The in-frame worker (`io_threads = 0`).
    fn inline_io(&mut self) -> Option<&mut AgentIo> {
        self.inline.as_mut().and_then(|m| m.get_mut().ok())
    }

    /// `io_threads = 0`: receive and sweep, in the frame.
    fn inline_receive(&mut self) {
        let now = Instant::now();
        let dt = self.last_inline_sweep.map_or(Duration::ZERO, |t| now.duration_since(t));
        self.last_inline_sweep = Some(now);
        if let Some(io) = self.inline_io() {
            io.receive(usize::MAX);
            io.sweep(dt);
            io.flush();
        }
    }

    /// `io_threads = 0`: send, in the frame.
    fn inline_send(&mut self) {
        if let Some(io) = self.inline_io() {
            io.commands();
            io.send(true);
            io.flush();
        }
    }

    /// Tell every client we are going and stop the I/O threads (at exit; also on drop).
    pub fn shutdown(&mut self) {
        if let Some(io) = self.inline_io() {
            io.commands();
            io.send(true);
            io.disconnect_all();
        }
        self.shared.shutdown.store(true, Ordering::Relaxed);
        for p in self.pending.iter_mut() {
            *p = true;
        }
        self.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for AgentTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain system call; on success we own the new descriptor.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Bind the Agent's netcode sockets for `config`: `ceil(agent.max_clients / 1024)` of them,
/// the first at `agent.port`, the next ones on the following ports (skipping
/// `agent.login_port`; all ephemeral when `agent.port` is 0), on `agent.io_threads` threads.
pub fn bind_transport(config: &crate::config::ShardConfig) -> Result<AgentTransport, super::ShardError> {
    let n = AgentTransport::sockets_for(config.agent.max_clients);
    let first = config.agent.addr;
    let login_port = config.agent.login.map(|a| a.port());
    let mut port = first.port();
    let (mut sockets, mut public) = (Vec::new(), Vec::new());
    for i in 0..n {
        if i > 0 && first.port() != 0 {
            port = port.wrapping_add(1);
            if Some(port) == login_port {
                port = port.wrapping_add(1);
            }
        }
        let addr = SocketAddr::new(first.ip(), port);
        let err = |source| super::ShardError::Bind { what: "agent", addr, source };
        let socket = UdpSocket::bind(addr).map_err(err)?;
        // Room for a few frames of a few thousand clients (capped by net.core.rmem_max).
        let sock = socket2::SockRef::from(&socket);
        let _ = sock.set_recv_buffer_size(AGENT_SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(AGENT_SOCKET_BUFFER);
        public.push(super::public_addr(config, socket.local_addr().map_err(err)?));
        sockets.push(socket);
    }
    let options = AgentOptions {
        max_clients: config.agent.max_clients,
        protocol_id: config.agent.protocol_id,
        private_key: super::keys::netcode_key(&config.shard.secret),
        io_threads: config.agent.io_threads,
        max_messages_per_sec: config.agent.max_messages_per_sec,
    };
    AgentTransport::new(sockets, public, options).map_err(|source| super::ShardError::Bind {
        what: "agent",
        addr: first,
        source,
    })
}

/// Forget a client netcode no longer knows (its socket's load, its claim) and close its renet
/// connection, handing `last_words` and its disconnection to the frame.
fn forget(cx: &mut Cx, id: u64, last_words: Vec<Bytes>) {
    if let Some(k) = cx.owner.remove(&id) {
        cx.shared.load.add(cx.port_index[k], -1);
        if let Ok(mut c) = cx.shared.claimed.lock() {
            c.remove(&id);
        }
    }
    let reason = cx.renet.disconnect_reason(id);
    if cx.renet.is_connected(id) || reason.is_some() {
        cx.renet.remove_connection(id);
        let reason = reason.unwrap_or(DisconnectReason::Transport);
        cx.batch.push(Inbound::Disconnected { client: id, reason, last_words });
    }
}

fn handle(r: ServerResult<'_, '_>, k: usize, socket: &UdpSocket, cx: &mut Cx) {
    let send = |p: &[u8], addr: SocketAddr| {
        metrics::agent_out(p.len());
        let _ = socket.send_to(p, addr);
    };
    match r {
        ServerResult::None => {}
        ServerResult::PacketToSend { payload, addr } => send(payload, addr),
        ServerResult::Payload { client_id, payload } => {
            if cx.owner.get(&client_id) == Some(&k) {
                feed_renet(&mut cx.renet, payload, client_id, &mut cx.panicked);
                if !cx.panicked.contains_key(&client_id) {
                    for ch in [2u8, 1, 0] {
                        while let Some(bytes) = cx.renet.receive_message(client_id, ch) {
                            cx.batch.push(Inbound::Message { client: client_id, bytes });
                        }
                    }
                }
            }
        }
        ServerResult::ClientConnected { client_id, addr, payload, user_data } => {
            send(payload, addr);
            let fresh = !cx.owner.contains_key(&client_id)
                && cx.shared.claimed.lock().map(|mut c| c.insert(client_id)).unwrap_or(false);
            if !fresh {
                cx.refuse.push((k, client_id));
                return;
            }
            cx.owner.insert(client_id, k);
            cx.shared.load.add(cx.port_index[k], 1);
            cx.renet.add_connection(client_id);
            cx.batch.push(Inbound::Connected { client: client_id, addr, user_data, worker: cx.worker });
        }
        ServerResult::ClientDisconnected { client_id, addr, payload } => {
            if let Some(p) = payload {
                send(p, addr);
            }
            if cx.owner.get(&client_id) == Some(&k) {
                // What it sent in its last packets (a client that quits sends `Leave` right
                // before its disconnect) goes to the frame with its disconnection; a client
                // renet panicked on is not touched again.
                let mut last_words = Vec::new();
                if !cx.panicked.contains_key(&client_id) {
                    for ch in [2u8, 1, 0] {
                        while let Some(bytes) = cx.renet.receive_message(client_id, ch) {
                            last_words.push(bytes);
                        }
                    }
                }
                forget(cx, client_id, last_words);
            }
        }
    }
}

/// Hand one client's decrypted payload to renet. A packet renet refuses closes that client's
/// renet connection (renet does it; the next sweep then drops the client). A panic
/// inside renet is caught: the client's connection is closed at once and recorded in
/// `panicked`, so it is dropped and discarded in the same frame — nothing touches its
/// half-updated state again — and every other session goes on.
pub fn feed_renet(
    renet: &mut RenetServer,
    payload: &[u8],
    client_id: u64,
    panicked: &mut HashMap<u64, ClientDropReason>,
) {
    guarded(renet, client_id, panicked, |renet| {
        let _ = renet.process_packet_from(payload, client_id);
    });
}

/// [`feed_renet`]'s guard around any renet call made for `client_id`.
fn guarded(
    renet: &mut RenetServer,
    client_id: u64,
    panicked: &mut HashMap<u64, ClientDropReason>,
    f: impl FnOnce(&mut RenetServer),
) {
    if let Err(panic) = catch_panic(|| f(renet)) {
        warn!(client_id, %panic, "renet panicked on a client's packet; dropping the client");
        renet.disconnect(client_id);
        panicked.insert(client_id, ClientDropReason::RenetPanic);
    }
}

/// Runs the [`AgentTransport`] in the frame where it has no I/O thread (`io_threads = 0`:
/// receive in `PreUpdate`, send in `PostUpdate`), and stops it at exit.
pub struct AgentTransportPlugin;

impl Plugin for AgentTransportPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(PreUpdate, transport_receive)
            .add_systems(PostUpdate, transport_send)
            .add_systems(Last, transport_disconnect_on_exit);
    }
}

fn transport_receive(mut t: ResMut<AgentTransport>) {
    t.inline_receive();
}

fn transport_send(mut t: ResMut<AgentTransport>) {
    t.inline_send();
}

fn transport_disconnect_on_exit(exit: MessageReader<AppExit>, mut t: ResMut<AgentTransport>) {
    if !exit.is_empty() {
        t.shutdown();
    }
}

pub use p2pmodel_core::shard::agent::{AgentRouter, Outgoing, Session};

/// The Agent's state: the core's [`AgentRouter`] (sessions, budget, routing) and the names
/// online, shared with the login service.
#[derive(Resource, Debug, Deref, DerefMut)]
pub struct AgentState {
    /// Sessions, counters and routing.
    #[deref]
    pub router: AgentRouter,
    /// Names online (shared with the login service).
    pub online: OnlineNames,
}

impl AgentState {
    /// A fresh Agent state.
    pub fn new(online: OnlineNames, max_messages_per_sec: u32, heartbeat: Duration) -> AgentState {
        AgentState { router: AgentRouter::new(max_messages_per_sec, heartbeat), online }
    }
}

/// The Agent role. Needs [`AgentTransport`], [`AgentState`] and [`ShardBus`] resources and
/// [`AgentTransportPlugin`].
pub struct AgentPlugin;

impl Plugin for AgentPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Update, (client_to_roles, roles_to_clients).chain());
    }
}

fn client_to_roles(
    mut transport: ResMut<AgentTransport>,
    mut agent: ResMut<AgentState>,
    mut bus: ResMut<ShardBus>,
) {
    let now = Instant::now();
    let (events, over_budget) = transport.take_inbound();
    agent.router.rate_limited += over_budget;
    for ev in events {
        match ev {
            Inbound::Connected { client, addr, user_data, .. } => {
                let Some(name) = name_from_user_data(&user_data) else {
                    warn!(client_id = client, "connect token without a valid name; disconnecting");
                    transport.kick(client);
                    continue;
                };
                let ip = addr.ip().to_canonical();
                if !agent.online.connect(&name, ip) {
                    warn!(client_id = client, %name, %ip, "too many sessions from this IP (agent.max_clients_per_ip); disconnecting");
                    transport.kick(client);
                    continue;
                }
                info!(client_id = client, %name, "client connected");
                agent.router.connect(now, &mut bus, client, name, Some(ip));
            }
            Inbound::Message { client, bytes } => agent.router.from_client(now, &mut bus, client, &bytes),
            Inbound::Disconnected { client, reason, last_words } => {
                // Its last messages first: a `Leave` among them ends the session at once,
                // without one the session is held for a resume.
                for bytes in last_words {
                    agent.router.from_client(now, &mut bus, client, &bytes);
                }
                if let Some(s) = agent.router.disconnect(&mut bus, client) {
                    info!(client_id = client, name = %s.name, ?reason, "client disconnected");
                    agent.online.disconnect(&s.name);
                }
            }
        }
    }
    agent.router.tick(now, &mut bus);
}

fn roles_to_clients(
    mut transport: ResMut<AgentTransport>,
    mut agent: ResMut<AgentState>,
    mut bus: ResMut<ShardBus>,
) {
    for o in agent.router.to_clients(&mut bus) {
        transport.send(o.client, o.reliable, o.bytes);
    }
    transport.wake();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(io_threads: usize) -> AgentTransport {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let options = AgentOptions {
            max_clients: 8,
            protocol_id: 1,
            private_key: [7; NETCODE_KEY_BYTES],
            io_threads,
            max_messages_per_sec: 100,
        };
        AgentTransport::new(vec![socket], vec![addr], options).unwrap()
    }

    #[test]
    fn a_panic_inside_renet_drops_only_that_client_and_is_counted() {
        let mut t = transport(0);
        let dt = Duration::from_millis(16);
        let io = t.inline_io().unwrap();
        io.cx.renet.add_connection(1);
        io.cx.renet.add_connection(2);
        // renet panics half-way through client 1's packet (injected: the patched renet does
        // not panic on any packet we know of).
        guarded(&mut io.cx.renet, 1, &mut io.cx.panicked, |r| {
            r.send_message(1, DefaultChannel::ReliableOrdered, vec![1u8; 10]);
            panic!("injected");
        });
        io.sweep(dt);
        assert_eq!(t.dropped(ClientDropReason::RenetPanic), 1);
        let io = t.inline_io().unwrap();
        let renet = &mut io.cx.renet;
        assert!(!renet.clients_id().contains(&1) && renet.disconnect_reason(1).is_none(), "discarded");
        assert!(renet.is_connected(2));
        // A packet renet refuses (unknown channel 9) drops client 2, counted as such.
        feed_renet(renet, &[0, 0, 9, 0, 0], 2, &mut io.cx.panicked);
        io.sweep(dt);
        assert_eq!(t.dropped(ClientDropReason::RenetChannelId), 1);
        let io = t.inline_io().unwrap();
        assert!(!io.cx.renet.has_connections());
        // Both went to the frame as disconnections, without last words from the panicked one.
        io.flush();
        let (events, _) = t.take_inbound();
        assert!(
            matches!(&events[..], [
                Inbound::Disconnected { client: 1, last_words: a, .. },
                Inbound::Disconnected { client: 2, .. }
            ] if a.is_empty()),
            "{events:?}"
        );
        // Nothing is counted twice on later sweeps.
        t.inline_io().unwrap().sweep(dt);
        assert_eq!(t.dropped(ClientDropReason::RenetPanic) + t.dropped(ClientDropReason::RenetChannelId), 2);
        assert!(metrics::registry().agent_drops.get(ClientDropReason::RenetPanic) >= 1);
        let mut text = String::new();
        metrics::render_prometheus(&mut text);
        assert!(text.contains("p2pmodel_agent_dropped_clients_total{reason=\"renet_panic\"}"), "{text}");
    }

    #[test]
    fn messages_over_a_clients_budget_are_dropped_before_the_frame_but_never_its_last_words() {
        let mut t = transport(0);
        let io = t.inline_io().unwrap();
        for _ in 0..150 {
            io.cx.batch.push(Inbound::Message { client: 5, bytes: Bytes::from_static(b"m") });
        }
        io.cx.batch.push(Inbound::Disconnected {
            client: 5,
            reason: DisconnectReason::Transport,
            last_words: vec![Bytes::from_static(b"leave")],
        });
        io.flush();
        let (events, over_budget) = t.take_inbound();
        assert_eq!(over_budget, 50, "over the client's budget of 100 per frame");
        assert_eq!(t.inbox_dropped(), 0);
        assert_eq!(events.len(), 101);
        assert!(
            matches!(events.last(), Some(Inbound::Disconnected { client: 5, last_words, .. }) if last_words.len() == 1)
        );
        // The next frame's share starts afresh.
        let io = t.inline_io().unwrap();
        io.cx.batch.push(Inbound::Message { client: 5, bytes: Bytes::from_static(b"m") });
        io.flush();
        assert_eq!(t.take_inbound().0.len(), 1);
    }

    #[test]
    fn io_threads_stop_when_the_transport_is_dropped() {
        let t = transport(1);
        assert_eq!(t.io_threads(), 1);
        let addr = t.addrs()[0];
        drop(t);
        // The socket was closed with its thread: the port can be bound again.
        UdpSocket::bind(addr).expect("the I/O thread released the socket");
    }
}
