//! The fuzz harness as tests: every saved crash input (`fuzz/regressions/<target>/*.bin`)
//! replays without a panic, every target survives a short seeded smoke run, and the harness
//! itself catches panics and allocation blow-ups.

use std::path::PathBuf;

use p2pmodel_servers::fuzz::{self, Budget, CountingAlloc, Failure, Target};

// Makes `max_alloc` effective in this test binary, as in `p2pmodel`.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn regressions() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions")
}

/// `<target>/<file>` entries whose fix is on another branch (see the file's header).
fn pending() -> Vec<String> {
    std::fs::read_to_string(regressions().join("PENDING"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn every_saved_crash_input_replays_without_a_panic() {
    let set = fuzz::replay_set(&regressions(), &[]).expect("fuzz/regressions is readable");
    assert!(set.len() >= 8, "the corpus is there ({} inputs)", set.len());
    let pending = pending();
    let mut failed = Vec::new();
    for (t, file) in &set {
        let key = format!("{}/{}", t.name, file.file_name().unwrap().to_string_lossy());
        let r = fuzz::replay_file(t, file);
        if pending.contains(&key) {
            eprintln!(
                "pending (fix on another branch): {key}: {}",
                r.err().unwrap_or_else(|| "now passes".into())
            );
            continue;
        }
        if let Err(e) = r {
            failed.push(e);
        }
    }
    assert!(failed.is_empty(), "regressions:\n{}", failed.join("\n"));
}

#[test]
fn every_target_survives_a_seeded_smoke_run() {
    let pending = pending();
    let budget =
        Budget { time: None, execs: Some(2_000), max_len: 2048, max_alloc: 256 << 20, seed: 7, keep: 2 };
    let mut failed = Vec::new();
    for t in fuzz::all() {
        if pending.iter().any(|p| p.starts_with(&format!("{}/", t.name))) {
            eprintln!("skipped (known crash pending on another branch): {}", t.name);
            continue;
        }
        let r = fuzz::fuzz_target(&t, &budget, |_| {});
        assert_eq!(r.execs, 2_000, "{}", t.name);
        for (f, input) in &r.distinct {
            failed.push(format!("{}: {f}\n  hex {}", t.name, fuzz::hex(input)));
        }
    }
    assert!(failed.is_empty(), "crashes:\n{}", failed.join("\n"));
}

fn panics_on_ff(data: &[u8]) {
    if data.first() == Some(&0xff) && data.len() > 3 {
        panic!("boom");
    }
}

fn allocates(data: &[u8]) {
    if data.first() == Some(&0xaa) {
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(v);
    }
}

fn seeds() -> Vec<Vec<u8>> {
    vec![vec![0xfe, 0, 0, 0, 0, 0, 0, 0]]
}

#[test]
fn the_harness_finds_minimises_and_reports_a_crash_reproducibly() {
    let t = Target { name: "test_panics", about: "", seeds, run: panics_on_ff };
    let budget = Budget { time: None, execs: Some(20_000), max_len: 64, max_alloc: 0, seed: 3, keep: 4 };
    let a = fuzz::fuzz_target(&t, &budget, |_| {});
    let b = fuzz::fuzz_target(&t, &budget, |_| {});
    assert!(a.crashes > 0, "a one-byte condition is found by mutation");
    assert_eq!((a.crashes, a.execs), (b.crashes, b.execs), "same seed, same run");
    let (f, min) = &a.distinct[0];
    assert!(matches!(f, Failure::Panic(m) if m.contains("boom")), "{f}");
    assert_eq!(min, &vec![0xff, 0, 0, 0], "delta reduction keeps only what the crash needs");
    assert!(fuzz::exec(&t, &[0xff, 1, 1, 1], 0).is_err());
}

fn contains_a_panic(data: &[u8]) {
    if data.first() == Some(&0xcc) {
        let _ = std::panic::catch_unwind(|| panic!("inner"));
    }
}

#[test]
fn a_panic_the_target_catches_itself_still_counts() {
    let t = Target { name: "test_contained", about: "", seeds, run: contains_a_panic };
    let _quiet = fuzz::SilentPanics::install();
    assert_eq!(fuzz::exec(&t, &[0], 0), Ok(()));
    assert!(matches!(fuzz::exec(&t, &[0xcc], 0), Err(Failure::Contained(m)) if m.contains("inner")));
    assert_eq!(fuzz::exec(&t, &[0], 0), Ok(()), "the record does not leak into the next exec");
}

#[test]
fn an_exec_that_allocates_absurdly_is_a_failure() {
    let t = Target { name: "test_alloc", about: "", seeds, run: allocates };
    assert_eq!(fuzz::exec(&t, &[0], 16 << 20), Ok(()));
    assert!(matches!(fuzz::exec(&t, &[0xaa], 16 << 20), Err(Failure::Alloc(b)) if b >= 64 << 20));
    assert_eq!(fuzz::exec(&t, &[0xaa], 0), Ok(()), "0 disables the limit");
}
