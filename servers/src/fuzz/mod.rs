//! `p2pmodel fuzz`: structure-aware mutation fuzzing of every decoder and network entry
//! point, on the stable toolchain with no extra tooling.
//!
//! Each target ([`targets::all`]) is a `fn(&[u8])` that must never panic. The engine seeds it
//! with valid inputs built by our own encoders (real peer datagrams, relay binds, STUN
//! messages, shard messages, renet packets from a real renet client, ...), then mutates them
//! (bit flips, interesting bytes, truncation, extension, splicing, length-field inflation,
//! repeated chunks) and mixes in purely random inputs. A seeded xorshift PRNG makes every run
//! reproducible from `--seed`. Every exec runs under `catch_unwind` with a silent panic hook:
//! a panic is a crash, its input is minimised (delta reduction), saved to
//! `<out>/<target>/<hash>.bin` and printed as hex. An exec that allocates more than
//! `--max-alloc-mb` in total is a crash too (when the binary installs [`CountingAlloc`]).
//!
//! Stateful entry points (a mesh with a link, the relay engine, a renet server with one
//! client) are built fresh for every exec and fed several datagrams framed inside the input
//! (see [`targets::frames`]), so a saved input alone reproduces its crash.

pub mod directory;
pub mod targets;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub use targets::{Target, all};

/// Arguments of `p2pmodel fuzz`.
/// The long `--help` text of `p2pmodel fuzz`.
pub const LONG_ABOUT: &str = "\
Fuzz every decoder and network entry point with structure-aware mutation, on the stable toolchain.

Each target is seeded with valid inputs from our own encoders (real peer datagrams, relay binds,
STUN messages, every shard message, renet and netcode packets from real clients), then mutated
(bit flips, interesting bytes, truncation, extension, splicing, length-field inflation, repeated
chunks) and mixed with random bytes. A panic, or an exec that allocates more than --max-alloc-mb,
is a crash: the input is minimised, saved under --out/<target>/<hash>.bin and printed as hex.
Runs are reproducible from --seed. One final line per target:

  fuzz target=<name> execs=<n> crashes=<n> secs=<s> execs_per_sec=<r> slowest_ms=<m>

(slowest_ms: the 8 slowest inputs re-timed, best of 3 reruns each; the worst of those.)

Exit status 1 if any target crashed. Debug builds also catch integer overflow.

Examples:
  p2pmodel fuzz --list
  p2pmodel fuzz --seconds 5                       (CI smoke of every target)
  p2pmodel fuzz stun relay_datagram --execs 10000000
  p2pmodel fuzz --replay fuzz/regressions          (replay saved inputs)";

/// Arguments of `p2pmodel fuzz`.
#[derive(clap::Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Targets to run (default: all). See --list.
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Run each target this long (default 10 s unless --execs is given).
    #[arg(long, value_name = "N")]
    pub seconds: Option<f64>,
    /// Stop each target after this many execs (with --seconds: whichever comes first).
    #[arg(long, value_name = "N")]
    pub execs: Option<u64>,
    /// PRNG seed; the same seed and binary replay the same inputs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// List the targets and what each covers, then exit.
    #[arg(long)]
    pub list: bool,
    /// Where crash inputs are saved (one folder per target).
    #[arg(long, value_name = "DIR", default_value = "fuzz/crashes")]
    pub out: PathBuf,
    /// Largest generated input in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub max_len: usize,
    /// An exec that allocates more than this in total (MiB) is a crash (needs the counting
    /// allocator of the `p2pmodel` binary; 0 disables).
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub max_alloc_mb: u64,
    /// Replay every file under this path (a file, or a folder of `<target>/*.bin`) instead of
    /// fuzzing; with TARGETs, files are replayed through those targets.
    #[arg(long, value_name = "PATH")]
    pub replay: Option<PathBuf>,
    /// Save up to this many distinct crashes per target (all are counted).
    #[arg(long, default_value_t = 8)]
    pub keep: usize,
    /// Write each target's seed inputs to `DIR/<target>/` and exit (e.g. a cargo-fuzz corpus:
    /// `--write-seeds fuzz/corpus`).
    #[arg(long, value_name = "DIR")]
    pub write_seeds: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------
// Allocation accounting

thread_local! {
    /// Count this thread's allocations (only during an exec).
    static ALLOC_ON: Cell<bool> = const { Cell::new(false) };
    /// Bytes this thread allocated since the exec started.
    static ALLOC_BYTES: Cell<u64> = const { Cell::new(0) };
}

/// Add `n` to this thread's count if an exec is running (no-op while the thread-local is being
/// torn down).
fn count(n: usize) {
    let _ = ALLOC_ON.try_with(|on| {
        if on.get() {
            let _ = ALLOC_BYTES.try_with(|b| b.set(b.get().saturating_add(n as u64)));
        }
    });
}

/// A global allocator that counts the bytes a fuzz exec allocates on its thread (one
/// thread-local read per allocation otherwise). Install it in a binary with `#[global_allocator]` to make
/// `--max-alloc-mb` effective.
pub struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect
// on the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

// ---------------------------------------------------------------------------------------
// PRNG and mutation

/// xorshift64* seeded through splitmix64: fast, reproducible, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 32).wrapping_mul(n as u64) >> 32) as usize
    }
    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }
}

const INTERESTING_8: [u8; 9] = [0, 1, 0x7f, 0x80, 0xff, 0xfb, 0xfc, 0xfd, 0x20];
const INTERESTING_32: [u32; 10] =
    [0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1200];

/// Apply 1–8 random mutations to `data` (another corpus entry `other` is used for splicing).
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8], max_len: usize) {
    let cap = if rng.one_in(3) { 8 } else { 2 };
    let n = 1 + rng.below(cap);
    for _ in 0..n {
        match rng.below(12) {
            // bit flip
            0 | 1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            // interesting byte
            2 | 3 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = INTERESTING_8[rng.below(INTERESTING_8.len())];
            }
            // random byte
            4 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.byte();
            }
            // truncate
            5 if !data.is_empty() => {
                let at = rng.below(data.len());
                data.truncate(at);
            }
            // extend with random or repeated bytes
            6 => {
                let cap = if rng.one_in(4) { 512 } else { 16 };
                let k = 1 + rng.below(cap);
                let b = rng.byte();
                let same = rng.one_in(2);
                for _ in 0..k {
                    data.push(if same { b } else { rng.byte() });
                }
            }
            // splice: our prefix, the other's suffix
            7 if !other.is_empty() => {
                let at = rng.below(data.len() + 1);
                let from = rng.below(other.len());
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            // length-field inflation: a big or off-by-some value, 1/2/4 bytes, either endian
            8 | 9 if !data.is_empty() => {
                let i = rng.below(data.len());
                let v = if rng.one_in(2) {
                    INTERESTING_32[rng.below(INTERESTING_32.len())]
                } else {
                    (data.len() as u32).wrapping_add(rng.below(64) as u32).wrapping_sub(32)
                };
                let bytes = match rng.below(5) {
                    0 => vec![v as u8],
                    1 => (v as u16).to_be_bytes().to_vec(),
                    2 => (v as u16).to_le_bytes().to_vec(),
                    3 => v.to_be_bytes().to_vec(),
                    _ => v.to_le_bytes().to_vec(),
                };
                for (k, b) in bytes.into_iter().enumerate() {
                    if let Some(slot) = data.get_mut(i + k) {
                        *slot = b;
                    }
                }
            }
            // repeat a chunk
            10 if !data.is_empty() => {
                let a = rng.below(data.len());
                let len = 1 + rng.below((data.len() - a).min(64));
                let chunk = data[a..a + len].to_vec();
                let cap = if rng.one_in(8) { 64 } else { 4 };
                let times = 1 + rng.below(cap);
                let at = rng.below(data.len() + 1);
                let tail = data.split_off(at);
                for _ in 0..times {
                    data.extend_from_slice(&chunk);
                }
                data.extend_from_slice(&tail);
            }
            // delete or insert a range
            _ if !data.is_empty() => {
                let a = rng.below(data.len());
                let len = 1 + rng.below((data.len() - a).min(32));
                if rng.one_in(2) {
                    data.drain(a..a + len);
                } else {
                    let ins: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                    data.splice(a..a, ins);
                }
            }
            _ => data.push(rng.byte()),
        }
    }
    data.truncate(max_len);
}

// ---------------------------------------------------------------------------------------
// Running one input

thread_local! {
    /// The last panic message of this thread, recorded by the silent hook.
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// How many [`SilentPanics`] guards this thread holds.
    static SILENT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Why an exec failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The target panicked (message and location).
    Panic(String),
    /// Something panicked inside the target and the target caught it (e.g. a
    /// `guard::catch_panic` around renet): the process survives, but a bug was hit.
    Contained(String),
    /// The exec allocated more than the limit (bytes allocated).
    Alloc(u64),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panic(m) => write!(f, "panic: {m}"),
            Failure::Contained(m) => write!(f, "panic caught inside the target: {m}"),
            Failure::Alloc(b) => write!(f, "allocated {} MiB in one exec", b >> 20),
        }
    }
}

/// While held, panics on this thread are recorded silently instead of printed (other threads
/// keep the previous hook's behaviour).
pub struct SilentPanics(());

impl SilentPanics {
    /// Silence this thread's panics until the guard drops.
    pub fn install() -> SilentPanics {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let old = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if SILENT.with(|s| s.get()) == 0 {
                    return old(info);
                }
                let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                    (*s).to_string()
                } else if let Some(s) = info.payload().downcast_ref::<String>() {
                    s.clone()
                } else {
                    "(non-string panic)".to_string()
                };
                let loc =
                    info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{loc}")));
            }));
        });
        SILENT.with(|s| s.set(s.get() + 1));
        SilentPanics(())
    }
}

impl Drop for SilentPanics {
    fn drop(&mut self) {
        SILENT.with(|s| s.set(s.get().saturating_sub(1)));
    }
}

/// Run one input through `target`; `Err` on a panic or an allocation blow-up. Install
/// [`SilentPanics`] around many calls to keep stderr quiet.
pub fn exec(target: &Target, data: &[u8], max_alloc: u64) -> Result<(), Failure> {
    LAST_PANIC.with(|p| p.borrow_mut().take());
    ALLOC_BYTES.with(|b| b.set(0));
    ALLOC_ON.with(|on| on.set(max_alloc > 0));
    let r = catch_unwind(AssertUnwindSafe(|| (target.run)(data)));
    ALLOC_ON.with(|on| on.set(false));
    match r {
        Ok(()) => {
            // Only seen under SilentPanics (the hook records); otherwise the hook printed it.
            if let Some(m) = LAST_PANIC.with(|p| p.borrow_mut().take()) {
                return Err(Failure::Contained(m));
            }
            let used = ALLOC_BYTES.with(|b| b.get());
            if max_alloc > 0 && used > max_alloc { Err(Failure::Alloc(used)) } else { Ok(()) }
        }
        Err(_) => {
            let msg = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_default();
            Err(Failure::Panic(msg))
        }
    }
}

/// The crash's "kind" for deduplication: the panic location, or the message.
fn signature(f: &Failure) -> String {
    match f {
        Failure::Panic(m) | Failure::Contained(m) => {
            m.rsplit_once(" at ").map(|(_, loc)| loc.to_string()).unwrap_or_else(|| m.clone())
        }
        Failure::Alloc(_) => "alloc".into(),
    }
}

/// Shrink `data` while it still fails with the same signature (delta reduction: drop chunks
/// of halving size, then simplify bytes to zero), within `budget` execs.
pub fn minimize(target: &Target, data: &[u8], failure: &Failure, max_alloc: u64, budget: usize) -> Vec<u8> {
    let sig = signature(failure);
    let mut best = data.to_vec();
    let mut tries = 0;
    let still_fails = |cand: &[u8], tries: &mut usize| {
        *tries += 1;
        exec(target, cand, max_alloc).err().is_some_and(|f| signature(&f) == sig)
    };
    let mut chunk = best.len().div_ceil(2).max(1);
    while chunk >= 1 && tries < budget {
        let mut i = 0;
        while i < best.len() && tries < budget {
            let mut cand = best.clone();
            cand.drain(i..(i + chunk).min(best.len()));
            if still_fails(&cand, &mut tries) {
                best = cand;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk /= 2;
    }
    for i in 0..best.len() {
        if tries >= budget {
            break;
        }
        if best[i] != 0 {
            let mut cand = best.clone();
            cand[i] = 0;
            if still_fails(&cand, &mut tries) {
                best = cand;
            }
        }
    }
    best
}

/// Lowercase hex.
pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a 64, for crash file names.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

// ---------------------------------------------------------------------------------------
// Fuzzing one target

/// The outcome of fuzzing one target.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Inputs run.
    pub execs: u64,
    /// Inputs that failed (all, not only the distinct ones).
    pub crashes: u64,
    /// Wall time.
    pub secs: f64,
    /// The slowest single exec, re-timed at the end: the 8 inputs that took longest during the
    /// run are rerun 3 times each and the worst of their best times is kept, so a scheduling
    /// hiccup does not count.
    pub slowest: Duration,
    /// The input of [`Report::slowest`].
    pub slowest_input: Vec<u8>,
    /// Distinct failures: (signature message, minimised input).
    pub distinct: Vec<(Failure, Vec<u8>)>,
}

/// Limits of one fuzzing run.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Stop after this long.
    pub time: Option<Duration>,
    /// Stop after this many execs.
    pub execs: Option<u64>,
    /// Largest generated input.
    pub max_len: usize,
    /// Allocation limit per exec in bytes (0: none).
    pub max_alloc: u64,
    /// PRNG seed.
    pub seed: u64,
    /// Distinct crashes to keep.
    pub keep: usize,
}

/// Fuzz `target` within `budget`; `progress` is called about every second with the report
/// so far. Crashes are kept (minimised) in the report, not saved.
pub fn fuzz_target(target: &Target, budget: &Budget, mut progress: impl FnMut(&Report)) -> Report {
    let _quiet = SilentPanics::install();
    let seeds = (target.seeds)();
    let mut rng = Rng::new(budget.seed ^ fnv(target.name.as_bytes()));
    let mut report = Report::default();
    let start = Instant::now();
    let mut last_progress = start;
    let mut seen: Vec<String> = Vec::new();
    let mut input = Vec::with_capacity(budget.max_len);
    let mut slow: Vec<(Duration, Vec<u8>)> = Vec::new();
    // Every seed once as-is first: a seed that fails is a bug too.
    let mut seed_iter = seeds.iter();
    loop {
        if budget.execs.is_some_and(|n| report.execs >= n) {
            break;
        }
        if report.execs.is_multiple_of(64) {
            let now = Instant::now();
            if budget.time.is_some_and(|t| now - start >= t) {
                break;
            }
            if now - last_progress >= Duration::from_secs(1) {
                last_progress = now;
                report.secs = (now - start).as_secs_f64();
                progress(&report);
            }
        }
        input.clear();
        if let Some(s) = seed_iter.next() {
            input.extend_from_slice(s);
        } else if seeds.is_empty() || rng.one_in(16) {
            let len = rng.below(budget.max_len.min(512) + 1);
            input.extend((0..len).map(|_| rng.byte()));
        } else {
            input.extend_from_slice(&seeds[rng.below(seeds.len())]);
            let other = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, &mut input, other, budget.max_len);
        }
        let t0 = Instant::now();
        let r = exec(target, &input, budget.max_alloc);
        let took = t0.elapsed();
        // Keep the 8 slowest inputs seen; one of them may only have been preempted.
        if slow.len() < 8 || took > slow[0].0 {
            if slow.len() == 8 {
                slow.remove(0);
            }
            let at = slow.partition_point(|(d, _)| *d < took);
            slow.insert(at, (took, input.clone()));
        }
        report.execs += 1;
        if let Err(f) = r {
            report.crashes += 1;
            let sig = signature(&f);
            if !seen.contains(&sig) && seen.len() < budget.keep {
                seen.push(sig);
                let min = minimize(target, &input, &f, budget.max_alloc, 4000);
                report.distinct.push((f, min));
            }
        }
    }
    report.secs = start.elapsed().as_secs_f64();
    for (_, candidate) in slow {
        let t = (0..3)
            .map(|_| {
                let t0 = Instant::now();
                let _ = exec(target, &candidate, budget.max_alloc);
                t0.elapsed()
            })
            .min()
            .unwrap_or_default();
        if t >= report.slowest {
            report.slowest = t;
            report.slowest_input = candidate;
        }
    }
    report
}

fn save(out: &Path, target: &str, data: &[u8]) -> std::io::Result<PathBuf> {
    let dir = out.join(target);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{:016x}.bin", fnv(data)));
    std::fs::write(&path, data)?;
    Ok(path)
}

fn select(args: &FuzzArgs) -> Result<Vec<Target>, String> {
    let every = all();
    if args.targets.is_empty() {
        return Ok(every);
    }
    args.targets
        .iter()
        .map(|n| {
            every
                .iter()
                .find(|t| t.name == n)
                .cloned()
                .ok_or_else(|| format!("unknown fuzz target {n:?} (see --list)"))
        })
        .collect()
}

/// Replay one file through `target`.
pub fn replay_file(target: &Target, path: &Path) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let _quiet = SilentPanics::install();
    exec(target, &data, 0).map_err(|f| format!("{}: {f}", path.display()))
}

/// Every `(target, file)` under `root`: `root/<target>/*.bin` (or a single file through the
/// given targets).
pub fn replay_set(root: &Path, only: &[Target]) -> Result<Vec<(Target, PathBuf)>, String> {
    let every = all();
    let mut out = Vec::new();
    if root.is_file() {
        for t in only {
            out.push((t.clone(), root.to_path_buf()));
        }
        return Ok(out);
    }
    let rd = std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let Some(t) = every.iter().find(|t| t.name == name) else {
            return Err(format!("{}: no fuzz target named {name:?}", dir.display()));
        };
        if !only.is_empty() && !only.iter().any(|o| o.name == t.name) {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "bin"))
            .collect();
        files.sort();
        for f in files {
            out.push((t.clone(), f));
        }
    }
    Ok(out)
}

/// `p2pmodel fuzz`.
pub fn main(args: &FuzzArgs) -> ExitCode {
    let targets = match select(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("p2pmodel: {e}");
            return ExitCode::from(2);
        }
    };
    if args.list {
        for t in &all() {
            println!("{:<24} {}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    if let Some(dir) = &args.write_seeds {
        for t in &targets {
            let seeds = (t.seeds)();
            for s in &seeds {
                if let Err(e) = save(dir, t.name, s) {
                    eprintln!("p2pmodel: {e}");
                    return ExitCode::FAILURE;
                }
            }
            println!("{} seeds for {}", seeds.len(), t.name);
        }
        return ExitCode::SUCCESS;
    }
    if let Some(root) = &args.replay {
        let only = if args.targets.is_empty() { Vec::new() } else { targets };
        let set = match replay_set(root, &only) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("p2pmodel: {e}");
                return ExitCode::from(2);
            }
        };
        let mut failed = 0;
        for (t, f) in &set {
            match replay_file(t, f) {
                Ok(()) => println!("ok   {} {}", t.name, f.display()),
                Err(e) => {
                    failed += 1;
                    println!("FAIL {} {e}", t.name);
                }
            }
        }
        println!("replay files={} failed={failed}", set.len());
        return if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let time = match (args.seconds, args.execs) {
        (Some(s), _) => Some(Duration::from_secs_f64(s.max(0.0))),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let budget = Budget {
        time,
        execs: args.execs,
        max_len: args.max_len.max(1),
        max_alloc: args.max_alloc_mb << 20,
        seed: args.seed,
        keep: args.keep,
    };
    let mut any_crash = false;
    for t in &targets {
        let r = fuzz_target(t, &budget, |r| {
            eprint!(
                "\r  {}: {} execs, {} crashes, {:.0}/s   ",
                t.name,
                r.execs,
                r.crashes,
                r.execs as f64 / r.secs.max(1e-9)
            );
            let _ = std::io::stderr().flush();
        });
        eprint!("\r{:78}\r", "");
        for (f, input) in &r.distinct {
            let saved = match save(&args.out, t.name, input) {
                Ok(p) => p.display().to_string(),
                Err(e) => format!("(not saved: {e})"),
            };
            println!("CRASH target={} {f}", t.name);
            println!("  input ({} bytes, minimised) saved to {saved}", input.len());
            println!("  hex {}", hex(input));
        }
        if r.slowest >= Duration::from_millis(50) {
            let saved = match save(&args.out.join("slow"), t.name, &r.slowest_input) {
                Ok(p) => p.display().to_string(),
                Err(e) => format!("(not saved: {e})"),
            };
            println!(
                "SLOW target={} one exec takes {:.1} ms; input ({} bytes) saved to {saved}",
                t.name,
                r.slowest.as_secs_f64() * 1000.0,
                r.slowest_input.len()
            );
        }
        any_crash |= r.crashes > 0;
        println!(
            "fuzz target={} execs={} crashes={} secs={:.1} execs_per_sec={:.0} slowest_ms={:.3}",
            t.name,
            r.execs,
            r.crashes,
            r.secs,
            r.execs as f64 / r.secs.max(1e-9),
            r.slowest.as_secs_f64() * 1000.0
        );
    }
    if any_crash { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
