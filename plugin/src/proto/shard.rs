//! Messages between a client and its shard, carried on renet channels (serde + bincode 2).
