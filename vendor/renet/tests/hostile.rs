// P2PModel patch: hostile packets, built by hand, against the public API. Each one used to
// panic (or corrupt the memory accounting) in renet 2.0.1; now the sender is disconnected with
// a reason, or the packet is dropped, and nothing panics. See PATCHES.md.

use renet::{ChannelError, ClientId, ConnectionConfig, DefaultChannel, DisconnectReason, RenetClient, RenetServer};

const SLICE_SIZE: usize = 1200;
const UNRELIABLE: u8 = 0;
const RELIABLE_UNORDERED: u8 = 1;
const RELIABLE_ORDERED: u8 = 2;

/// QUIC variable-length integer, as renet's packets use.
fn varint(v: u64, out: &mut Vec<u8>) {
    if v < 1 << 6 {
        out.push(v as u8);
    } else if v < 1 << 14 {
        out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes());
    }
}

/// A slice packet: type 2 (reliable) or 3 (unreliable).
fn slice(reliable: bool, seq: u64, channel: u8, message_id: u64, index: u64, num: u64, payload_len: usize) -> Vec<u8> {
    let mut p = vec![if reliable { 2 } else { 3 }];
    varint(seq, &mut p);
    p.push(channel);
    varint(message_id, &mut p);
    varint(index, &mut p);
    varint(num, &mut p);
    varint(payload_len as u64, &mut p);
    p.extend(std::iter::repeat_n(0xAB, payload_len));
    p
}

/// A small reliable packet (type 0) carrying `(message_id, payload)` pairs.
fn small_reliable(seq: u64, channel: u8, messages: &[(u64, &[u8])]) -> Vec<u8> {
    let mut p = vec![0];
    varint(seq, &mut p);
    p.push(channel);
    p.extend_from_slice(&(messages.len() as u16).to_be_bytes());
    for (id, m) in messages {
        varint(*id, &mut p);
        varint(m.len() as u64, &mut p);
        p.extend_from_slice(m);
    }
    p
}

/// A small unreliable packet (type 1) carrying `messages`.
fn small_unreliable(seq: u64, channel: u8, messages: &[&[u8]]) -> Vec<u8> {
    let mut p = vec![1];
    varint(seq, &mut p);
    p.push(channel);
    p.extend_from_slice(&(messages.len() as u16).to_be_bytes());
    for m in messages {
        varint(m.len() as u64, &mut p);
        p.extend_from_slice(m);
    }
    p
}

fn server_with_client() -> (RenetServer, ClientId) {
    let mut server = RenetServer::new(ConnectionConfig::default());
    server.add_connection(7);
    (server, 7)
}

/// Feeds `packets` to a fresh server connection and to a fresh client; returns both
/// disconnect reasons (None: still connected).
fn feed(packets: &[Vec<u8>]) -> (Option<DisconnectReason>, Option<DisconnectReason>) {
    let (mut server, id) = server_with_client();
    let mut client = RenetClient::new(ConnectionConfig::default());
    client.set_connected();
    for p in packets {
        server.process_packet_from(p, id).unwrap();
        client.process_packet(p);
    }
    (server.disconnect_reason(id), client.disconnect_reason())
}

fn both(reason: DisconnectReason, got: (Option<DisconnectReason>, Option<DisconnectReason>)) {
    assert_eq!(got, (Some(reason), Some(reason)));
}

fn channel_error(channel_id: u8, error: ChannelError) -> DisconnectReason {
    DisconnectReason::ReceiveChannelError { channel_id, error }
}

#[test]
fn slice_index_beyond_num_slices_is_refused_at_decode() {
    for reliable in [true, false] {
        let channel = if reliable { RELIABLE_ORDERED } else { UNRELIABLE };
        let got = feed(&[slice(reliable, 0, channel, 0, 5, 2, SLICE_SIZE)]);
        use renet::DisconnectReason::PacketDeserialization;
        assert!(
            matches!(got, (Some(PacketDeserialization(_)), Some(PacketDeserialization(_)))),
            "{got:?}"
        );
    }
}

#[test]
fn slice_announcing_more_slices_than_its_message_is_an_error_not_a_panic() {
    // The original crash: message 0 starts as 2 slices; a later slice claims 10 slices and
    // index 5, which passes the decoder and indexed `received[5]` of a 2-long Vec.
    for (reliable, channel) in [(true, RELIABLE_ORDERED), (true, RELIABLE_UNORDERED), (false, UNRELIABLE)] {
        let got = feed(&[
            slice(reliable, 0, channel, 0, 0, 2, SLICE_SIZE),
            slice(reliable, 1, channel, 0, 5, 10, SLICE_SIZE),
        ]);
        both(channel_error(channel, ChannelError::InvalidSliceMessage), got);
    }
}

#[test]
fn slice_completing_a_message_with_another_count_cannot_underflow_the_accounting() {
    // Message 0 reserved 2 slices; its last slice claims 5: the completion released 5 * 1200
    // bytes from 2 * 1200 (an underflow: a panic in debug, no memory cap afterwards in release).
    for (reliable, channel) in [(true, RELIABLE_ORDERED), (true, RELIABLE_UNORDERED), (false, UNRELIABLE)] {
        let got = feed(&[
            slice(reliable, 0, channel, 0, 0, 2, SLICE_SIZE),
            slice(reliable, 1, channel, 0, 1, 5, 10),
        ]);
        both(channel_error(channel, ChannelError::InvalidSliceMessage), got);
    }
}

/// The decode error's message, if `reason` is a deserialization error.
fn decode_error(reason: Option<DisconnectReason>) -> Option<String> {
    match reason {
        Some(DisconnectReason::PacketDeserialization(e)) => Some(e.to_string()),
        _ => None,
    }
}

fn both_decode_errors(got: (Option<DisconnectReason>, Option<DisconnectReason>), text: &str) {
    assert_eq!(decode_error(got.0).as_deref(), Some(text), "{got:?}");
    assert_eq!(decode_error(got.1).as_deref(), Some(text), "{got:?}");
}

#[test]
fn num_slices_zero_or_huge_is_refused_at_decode() {
    for reliable in [true, false] {
        let channel = if reliable { RELIABLE_ORDERED } else { UNRELIABLE };
        both_decode_errors(feed(&[slice(reliable, 0, channel, 0, 0, 0, 10)]), "invalid number of slices");
        both_decode_errors(feed(&[slice(reliable, 0, channel, 0, 0, 1 << 40, 10)]), "invalid number of slices");
    }
}

#[test]
fn huge_sliced_message_is_refused_before_allocating() {
    // 1,000,000 slices = 1.2 GB: over the 5 MiB channel budget, so nothing is reserved.
    let got = feed(&[slice(true, 0, RELIABLE_ORDERED, 0, 0, 1_000_000, SLICE_SIZE)]);
    both(channel_error(RELIABLE_ORDERED, ChannelError::ReliableChannelMaxMemoryReached), got);
    // Unreliable: dropped, the connection stays.
    assert_eq!(feed(&[slice(false, 0, UNRELIABLE, 0, 0, 1_000_000, SLICE_SIZE)]), (None, None));
}

#[test]
fn garbage_after_a_valid_header_is_a_decode_error() {
    // A small reliable packet announcing 65535 messages, then 3 bytes.
    let mut p = small_reliable(0, RELIABLE_ORDERED, &[]);
    let n = p.len();
    p[n - 2..].copy_from_slice(&[0xff, 0xff]);
    p.extend_from_slice(&[0x01, 0x7f, 0x00]);
    both_decode_errors(feed(&[p]), "buffer too short");
    // Unknown packet type.
    both_decode_errors(feed(&[vec![9, 0, 0]]), "invalid packet type");
    // A message length far beyond the packet.
    let mut p = small_unreliable(0, UNRELIABLE, &[]);
    let n = p.len();
    p[n - 2..].copy_from_slice(&[0, 1]);
    varint(1 << 60, &mut p);
    both_decode_errors(feed(&[p]), "buffer too short");
    // Empty packet.
    both_decode_errors(feed(&[vec![]]), "buffer too short");
}

#[test]
fn unknown_channel_id_disconnects() {
    let got = feed(&[small_reliable(0, 9, &[(0, b"hi")])]);
    both(DisconnectReason::ReceivedInvalidChannelId(9), got);
    let got = feed(&[slice(false, 0, 200, 0, 0, 1, 10)]);
    both(DisconnectReason::ReceivedInvalidChannelId(200), got);
}

#[test]
fn reliable_message_id_far_in_the_future_disconnects() {
    for channel in [RELIABLE_ORDERED, RELIABLE_UNORDERED] {
        let got = feed(&[small_reliable(0, channel, &[(1 << 40, b"x")])]);
        both(channel_error(channel, ChannelError::MessageIdOutOfWindow), got);
        let got = feed(&[slice(true, 0, channel, 1 << 40, 0, 2, SLICE_SIZE)]);
        both(channel_error(channel, ChannelError::MessageIdOutOfWindow), got);
        // Inside the window: kept, nothing delivered until message 0 arrives.
        assert_eq!(feed(&[small_reliable(0, channel, &[(1000, b"x")])]), (None, None));
    }
}

#[test]
fn empty_reliable_messages_cannot_pile_up_without_bound() {
    // Message 0 never comes; empty messages 1, 2, ... cost memory now (and the id window
    // bounds them), so the peer is disconnected instead of growing our maps forever.
    let (mut server, id) = server_with_client();
    let mut seq = 0;
    let mut next_id = 1u64;
    while server.disconnect_reason(id).is_none() && next_id < 1 << 20 {
        let batch: Vec<(u64, &[u8])> = (next_id..next_id + 200).map(|i| (i, &b""[..])).collect();
        next_id += 200;
        server
            .process_packet_from(&small_reliable(seq, RELIABLE_ORDERED, &batch), id)
            .unwrap();
        seq += 1;
    }
    let reason = server.disconnect_reason(id);
    assert!(
        matches!(
            reason,
            Some(DisconnectReason::ReceiveChannelError {
                error: ChannelError::MessageIdOutOfWindow | ChannelError::ReliableChannelMaxMemoryReached,
                ..
            })
        ),
        "{reason:?} after {next_id} ids"
    );
}

#[test]
fn decreasing_packet_sequences_keep_the_ack_packet_bounded() {
    // Sequences 100000, 99998, ...: every one opened a new ack range to the left, which was
    // not capped: the Ack packet grew past the 1400-byte buffer and we disconnected ourselves.
    let (mut server, id) = server_with_client();
    for i in 0..2000u64 {
        server
            .process_packet_from(&small_unreliable(100_000 - 2 * i, UNRELIABLE, &[b"x"]), id)
            .unwrap();
    }
    let packets = server.get_packets_to_send(id).unwrap();
    assert_eq!(server.disconnect_reason(id), None);
    assert!(!packets.is_empty() && packets.iter().all(|p| p.len() <= 1400));
}

#[test]
fn hostile_acks_do_not_panic() {
    // An ack packet acking everything, many ranges, after we sent some reliable messages.
    let (mut server, id) = server_with_client();
    for _ in 0..10 {
        server.send_message(id, DefaultChannel::ReliableOrdered, vec![1u8; 3000]);
        server.send_message(id, DefaultChannel::ReliableOrdered, vec![1u8; 10]);
    }
    let _ = server.get_packets_to_send(id).unwrap();
    let mut p = vec![4];
    varint(0, &mut p); // sequence
    varint(1 << 61, &mut p); // end of the last range
    varint(1 << 61, &mut p); // its size: everything down to 0
    varint(0, &mut p);
    server.process_packet_from(&p, id).unwrap();
    let mut p = vec![4];
    varint(1, &mut p);
    varint(10_000, &mut p);
    varint(0, &mut p);
    varint(400, &mut p); // 400 ranges, gaps and sizes of 0..
    for _ in 0..400 {
        varint(0, &mut p);
        varint(0, &mut p);
    }
    server.process_packet_from(&p, id).unwrap();
    assert_eq!(server.disconnect_reason(id), None);
    // Ranges going below zero: refused.
    let mut p = vec![4];
    varint(2, &mut p);
    varint(5, &mut p);
    varint(10, &mut p);
    varint(0, &mut p);
    both_decode_errors(feed(&[p]), "invalid ack range");
}

#[test]
fn a_legit_sliced_message_still_arrives_after_hostile_slices_on_other_connections() {
    let mut server = RenetServer::new(ConnectionConfig::default());
    server.add_connection(1);
    let mut client = RenetClient::new(ConnectionConfig::default());
    client.set_connected();
    let message = vec![42u8; 5000];
    client.send_message(DefaultChannel::ReliableOrdered, message.clone());
    client.send_message(DefaultChannel::Unreliable, message.clone());
    for p in client.get_packets_to_send() {
        server.process_packet_from(&p, 1).unwrap();
    }
    assert_eq!(
        server.receive_message(1, DefaultChannel::ReliableOrdered).as_deref(),
        Some(&message[..])
    );
    assert_eq!(server.receive_message(1, DefaultChannel::Unreliable).as_deref(), Some(&message[..]));
    assert_eq!(server.disconnect_reason(1), None);
}
