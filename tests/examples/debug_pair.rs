use p2pmodel_tests::{NatKind, World};
use std::time::Duration;
fn main() {
    let mut w = World::new(1);
    let mut sa = w.site(NatKind::Open);
    let mut sb = w.site(NatKind::Open);
    let ha = w.client(&mut sa);
    let hb = w.client(&mut sb);
    w.discover(&[ha, hb]);
    let link = w.introduce(ha, hb);
    w.client_mut(ha).set_stream(Some(Duration::from_millis(50)));
    w.sim.record_trace(true);
    w.run(Duration::from_millis(400));
    let start = w.client_ref(ha).links[&link].intro_at.unwrap();
    for h in [ha, hb] {
        for (t, e) in &w.client_ref(h).links[&link].events {
            println!("{h} {:?} {e:?}", *t - start);
        }
        println!(
            "{h} recv {:?}",
            w.client_ref(h).links[&link]
                .received
                .iter()
                .take(3)
                .map(|a| (a.seq, a.at - start))
                .collect::<Vec<_>>()
        );
    }
    for e in w.sim.trace().iter().filter(|e| format!("{:?}", e.kind).contains("Deliver")).take(60) {
        println!("{e:?}");
    }
}
