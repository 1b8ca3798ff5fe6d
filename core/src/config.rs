//! Every timing constant and limit of a link, in one place, with the reason for its default.
//!
//! See `docs/ARCHITECTURE.md` ("Timing") for the field data behind these numbers.

use std::time::Duration;

/// Timing and limits of one link. `LinkConfig::default()` suits a real-time game on the
/// public internet; tests shorten nothing — they run the defaults in virtual time.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Pause between probe rounds while punching (each round probes every candidate once).
    /// 50 ms is RFC 8445's pacing `Ta`; a round per `Ta` opens both NATs' filters within
    /// one RTT of each other, which simultaneous open needs.
    pub probe_interval: Duration,
    /// Stop punching if no direct pair validated in this long, and stay on the relay. 5 s
    /// covers ~100 rounds; field data (Tailscale, WebRTC) shows pairs that punch at all do so
    /// within 2 s.
    pub punch_timeout: Duration,
    /// While relayed, try punching again this often: NAT state and peers' addresses change.
    pub repunch_interval: Duration,
    /// Ping an idle path this often so NAT bindings stay open. RFC 4787 REQ-5 asks NATs for
    /// ≥ 2 min, but measured home routers and carrier NATs drop idle UDP after 30 s or less;
    /// 10 s stays under all but the most aggressive ones (RFC 8445 suggests `Tr` ≥ 15 s for
    /// idle ICE; we trade a few bytes for fewer dead sessions).
    pub keepalive_interval: Duration,
    /// Floor of the suspicion timeout: a direct path whose oldest unanswered datagram is
    /// `max(path_suspect_after, 1.5 × smoothed RTT + ack_delay)` old is suspected, and the
    /// link sends on the relay
    /// at once while it keeps pinging the direct path; the first answer to a ping brings it
    /// back. Under a 20 Hz stream acks arrive every ~50 ms, so 150 ms of silence is about
    /// three missed acks; a spurious suspicion (a late answer on a jittery path) costs a relay
    /// detour of about one RTT and no re-punch, which is why it can be this eager. With the
    /// send cycle in front of it this puts both ends on the relay within 300 ms of a path's
    /// death on paths up to ~100 ms RTT (Steam's relay network times out after 750 ms,
    /// Tailscale trusts a silent path for 6.5 s).
    pub path_suspect_after: Duration,
    /// A direct path whose oldest unanswered datagram (or suspicion) is this old is declared
    /// dead: `LinkEvent::DirectPathFailed`, re-bind and re-punch. By then the link has been on
    /// the relay since the suspicion. The effective value is `max(path_timeout, 4 × RTT)`.
    pub path_timeout: Duration,
    /// Ask the direct path for an answer (a keepalive) this long into the silence after an
    /// unanswered send, or after we acked the peer's messages and heard nothing more (how
    /// the receiving end of a one-way stream notices the stream's path died; one extra ping
    /// when the stream merely stops), and this often while the path is suspect.
    pub path_ping_after: Duration,
    /// The link is declared lost when the peer has not answered anything for this long.
    pub link_timeout: Duration,
    /// Re-bind at the relay this often (refreshes the relay's binding and the NAT mapping
    /// toward it, and keeps the relay warm while a direct path is in use).
    pub relay_refresh_interval: Duration,
    /// First retransmission timeout of a relay bind (doubles per try).
    pub relay_bind_rto: Duration,
    /// Give up one bind attempt after this many tries (the next refresh tries again).
    pub relay_bind_tries: u32,
    /// How many predicted ports to probe beyond a sequential allocator's last known mapping.
    pub prediction_span: u16,
    /// Start birthday-paradox punching this long into a punch that found no direct path
    /// (only between a random-port symmetric NAT and an endpoint-independent one). Normal
    /// probing succeeds within a few RTTs wherever it can, so 500 ms costs nothing there.
    pub birthday_after: Duration,
    /// Extra local sockets the symmetric side opens (0 disables). With `birthday_probes`
    /// guesses over the 64,512 ports a NAT hands out, the chance that one guess hits one of
    /// these mappings is 1 − e^(−sockets·probes/64512): 256 × 1024 → 98 %.
    pub birthday_sockets: u16,
    /// Random-port probes the endpoint-independent side sends per attempt (0 disables).
    pub birthday_probes: u32,
    /// Spray probes per `probe_interval` (16 per 50 ms = 320/s, ~20 kB/s of 62-byte probes).
    pub birthday_batch: u32,
    /// At most this many remote candidates (probes per round are bounded by it).
    pub max_candidates: usize,
    /// Resend time of renet's reliable channels. Below renet's 300 ms default because the
    /// link measures its own RTT and games want fast recovery on a fresh path.
    pub reliable_resend: Duration,
    /// Longest wait before acknowledging a message-bearing packet when we have nothing to send
    /// (acks ride along with our own messages when we do). 20 ms is under QUIC's 25 ms
    /// `max_ack_delay` and well under `path_ping_after`, so a one-way stream is never mistaken
    /// for a dead path.
    pub ack_delay: Duration,
    /// Send keepalives and relay refreshes at all. Off only to demonstrate NAT timeouts (TC-05).
    pub keepalive: bool,
    /// Privacy mode: every byte goes through the relay. The link never tells the peer our
    /// candidates, never probes, and ignores (does not answer) anything that does not come
    /// from the relay, so the peer never learns our IP address (Steam's and Epic's relay-only
    /// option). Costs the relay's detour in latency and the relay's bandwidth.
    pub relay_only: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(50),
            punch_timeout: Duration::from_secs(5),
            repunch_interval: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            path_suspect_after: Duration::from_millis(150),
            path_timeout: Duration::from_millis(400),
            path_ping_after: Duration::from_millis(150),
            link_timeout: Duration::from_secs(10),
            relay_refresh_interval: Duration::from_secs(15),
            relay_bind_rto: Duration::from_millis(250),
            relay_bind_tries: 6,
            prediction_span: 8,
            birthday_after: Duration::from_millis(500),
            birthday_sockets: 256,
            birthday_probes: 1024,
            birthday_batch: 16,
            max_candidates: 24,
            reliable_resend: Duration::from_millis(200),
            ack_delay: Duration::from_millis(20),
            keepalive: true,
            relay_only: false,
        }
    }
}

/// Settings of the mesh (one socket, many links) beyond the per-link [`LinkConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    /// Per-link timing.
    pub link: LinkConfig,
    /// Re-learn the public address from the STUN server this often, to notice a new NAT
    /// mapping (a NAT reboot or a network switch) even on an idle mesh.
    pub stun_refresh_interval: Duration,
    /// Retransmissions of each NAT discovery test. Default 100 ms doubling, 4 transmissions,
    /// then 8 RTOs: a test gives up after 1.5 s. A filtering NAT makes silence the expected
    /// answer to two tests, so this bounds discovery; the client waits for the report before
    /// it enters a zone (its NAT hint decides port prediction and birthday punching), and
    /// `netcheck`'s 5.75 s would make every player wait that long behind a filtering NAT.
    pub nat_retransmit: crate::stun::RetransmitConfig,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            link: LinkConfig::default(),
            stun_refresh_interval: Duration::from_secs(20),
            nat_retransmit: crate::stun::RetransmitConfig {
                rto: Duration::from_millis(100),
                max_transmits: 4,
                final_wait_rtos: 8,
            },
        }
    }
}
