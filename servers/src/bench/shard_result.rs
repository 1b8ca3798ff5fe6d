//! The figures `p2pmodel bench shard` measures ([`PhaseResult`], [`Row`]): written by the
//! bench, read by its plots.

/// The figures of one phase (one client count, one P2P mode).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PhaseResult {
    /// Clients asked for.
    pub clients: u32,
    /// P2P on (mesh) or off (through the Game server).
    pub p2p: bool,
    /// Clients connected to the Agent at the end of the window.
    pub connected: u32,
    /// Clients in the zone at the end of the window.
    pub in_zone: u32,
    /// Peer introductions received by all clients (both sides count).
    pub introductions: u64,
    /// Length of the measurement window, s.
    pub window_s: f64,
    /// Agent netcode sockets: bytes/s in and out.
    pub agent_in_bps: f64,
    /// See `agent_in_bps`.
    pub agent_out_bps: f64,
    /// Game servers (internal bus): bytes/s in and out.
    pub game_in_bps: f64,
    /// See `game_in_bps`.
    pub game_out_bps: f64,
    /// Relay: bytes/s received and forwarded.
    pub relay_in_bps: f64,
    /// See `relay_in_bps`.
    pub relay_out_bps: f64,
    /// What leaves the shard toward clients: Agent out + relay out, bytes/s.
    pub egress_bps: f64,
    /// What reaches the shard from clients: Agent in + relay in, bytes/s.
    pub ingress_bps: f64,
    /// Game tick wall time, ms.
    pub tick_p50_ms: Option<f64>,
    /// See `tick_p50_ms`.
    pub tick_p99_ms: Option<f64>,
    /// See `tick_p50_ms`.
    pub tick_max_ms: Option<f64>,
    /// Ticks timed in the window.
    pub ticks: u64,
    /// Bus wait client → Game (Agent routes a client message, the Game takes it), ms.
    pub route_in_p50_ms: Option<f64>,
    /// See `route_in_p50_ms`.
    pub route_in_p99_ms: Option<f64>,
    /// Bus wait role → Agent (a message for a client), ms.
    pub route_out_p50_ms: Option<f64>,
    /// See `route_out_p50_ms`.
    pub route_out_p99_ms: Option<f64>,
    /// Link ends (older than 3 s) on a direct path at the end of the window.
    pub links_direct: u64,
    /// … on the relay.
    pub links_relayed: u64,
    /// … with no path.
    pub links_failed: u64,
    /// Peer state messages due per second (introduced peers × ticks of the full clients).
    pub state_due_per_s: f64,
    /// Peer state messages sent / received per second (all clients).
    pub state_sent_per_s: f64,
    /// See `state_sent_per_s`.
    pub state_recv_per_s: f64,
    /// Client ticks run / expected in the window (< 1: the load generator fell behind).
    pub generator_tick_ratio: f64,
    /// Peer state messages sent / due in the window (< 1: mesh state skipped on late ticks,
    /// the load generator short of CPU).
    pub state_ratio: f64,
    /// Peer state messages received / due in the window: what the phase delivered of the
    /// work it was given (equal work in both phases is ≥ 0.99 in both).
    pub state_delivered_ratio: f64,
    /// CPU of the shard's threads (shard app, relay, login) in the window, in CPUs.
    pub shard_cpu: f64,
    /// Of it, the frame thread (`p2pm-shard`: Agent routing, Lobby, Game tick).
    pub frame_cpu: f64,
    /// Of it, the Agent's I/O threads (`p2pm-agent-io-*`; 0 with `--agent-io-threads 0`).
    pub agent_io_cpu: f64,
    /// CPU of the load generator's threads in the window, in CPUs.
    pub loadgen_cpu: f64,
    /// Machine-wide busy share in the window.
    pub machine_busy: Option<f64>,
    /// Largest RSS of the process (shard + load generator) sampled in the window, MiB.
    pub rss_peak_mib: f64,
    /// Clients connected through each of the Agent's netcode sockets (by socket address).
    pub agent_sockets: Vec<(String, u32)>,
    /// UDP datagrams the kernel dropped for a full receive buffer in the window
    /// (`RcvbufErrors`, machine-wide: this process and anything else on the box).
    pub udp_rcvbuf_drops: u64,
    /// The relay's drops in the window by reason (non-zero ones).
    pub relay_drops: Vec<(String, u64)>,
    /// Load-generator threads.
    pub gen_threads: u32,
}

impl PhaseResult {
    fn share(&self, n: u64) -> f64 {
        let all = self.links_direct + self.links_relayed + self.links_failed;
        if all == 0 { 0.0 } else { n as f64 / all as f64 }
    }
    /// Share of link ends that are direct.
    pub fn direct(&self) -> f64 {
        self.share(self.links_direct)
    }
    /// Share relayed.
    pub fn relayed(&self) -> f64 {
        self.share(self.links_relayed)
    }
    /// Share without a path.
    pub fn failed(&self) -> f64 {
        self.share(self.links_failed)
    }
    /// Game ticks per second achieved in the window.
    pub fn tick_hz(&self) -> f64 {
        self.ticks as f64 / self.window_s.max(1e-9)
    }
    /// Shard CPU per client, µs of CPU per second.
    pub fn cpu_us_per_client_s(&self) -> f64 {
        self.shard_cpu / f64::from(self.clients.max(1)) * 1e6
    }
    /// The larger of the two routing p99s.
    pub fn route_p99_ms(&self) -> Option<f64> {
        match (self.route_in_p99_ms, self.route_out_p99_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One client count's phases: `(off, on)`.
pub type Row = (Option<PhaseResult>, Option<PhaseResult>);
