//! Prints the NAT class matrix as Markdown (regenerates docs/NAT-MATRIX.md).
use std::time::Duration;

use p2pmodel_tests::{NatKind, run_pair};

fn main() {
    for a in NatKind::ALL {
        for b in NatKind::ALL {
            if b < a {
                continue;
            }
            let (w, ha, hb, link) = run_pair(1, a, b, 10);
            let o = w.outcome(ha, hb, link);
            let ra = w.client_ref(ha).mesh.nat_report().map(|r| r.class.to_string());
            let rb = w.client_ref(hb).mesh.nat_report().map(|r| r.class.to_string());
            println!(
                "{:>18} {:>18} {:8} first={:?} direct={:?} sent={} recv={} gaps={} dups={} order={} classes={:?}/{:?}",
                a.name(),
                b.name(),
                o.verdict(),
                o.first_message.map(|d| d.as_millis()),
                o.time_to_direct().map(|d| d.as_millis()),
                o.sent,
                o.received,
                o.gaps,
                o.dups,
                o.in_order,
                ra,
                rb
            );
            let _ = Duration::ZERO;
        }
    }
}
