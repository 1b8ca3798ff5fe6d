//! CPU time of threads and processes, read from `/proc`: what a relay *costs* per forwarded
//! datagram, which a shared, oversubscribed machine does not distort the way it distorts
//! packets per second.
//!
//! Source: `/proc/<pid>/task/<tid>/schedstat`, first field — the scheduler's
//! `sum_exec_runtime`, user + system time in nanoseconds (exact, not tick-sampled). Where the
//! kernel has no schedstat (no `CONFIG_SCHED_INFO`), `utime + stime` from `stat` in clock
//! ticks (10 ms resolution at USER_HZ = 100).
//!
//! Time the kernel spends on a datagram in softirq context is charged to whichever task was
//! running when it ran; on loopback that is normally the sending task itself (the send path
//! delivers into the receiving socket in the same system call). Softirq work deferred to
//! `ksoftirqd/N` is charged to nobody here, which is why the bench also reports ksoftirqd's
//! time per phase.

use std::fs;

/// Where a CPU time comes from.
#[derive(Debug, Clone)]
pub enum CpuProbe {
    /// Fixed tasks (`/proc/<pid>/task/<tid>` directories), summed.
    Tasks(Vec<String>),
    /// Every thread of a process, enumerated at each read, summed.
    Process(u32),
}

impl CpuProbe {
    /// The calling thread.
    pub fn this_thread() -> CpuProbe {
        CpuProbe::thread(gettid())
    }

    /// One thread of this process.
    pub fn thread(tid: u32) -> CpuProbe {
        CpuProbe::Tasks(vec![format!("/proc/self/task/{tid}")])
    }

    /// The threads of this process whose name (`comm`, at most 15 bytes) starts with `prefix`.
    pub fn threads_named(prefix: &str) -> CpuProbe {
        CpuProbe::Tasks(tasks_where("/proc/self/task", |c| c.starts_with(prefix)))
    }

    /// The kernel's `ksoftirqd/N` threads (deferred network softirq work).
    pub fn ksoftirqd() -> CpuProbe {
        let mut dirs = vec![];
        for pid in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = pid.file_name();
            let Some(name) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
                continue;
            };
            let dir = format!("/proc/{name}");
            if fs::read_to_string(format!("{dir}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/")) {
                dirs.push(dir);
            }
        }
        CpuProbe::Tasks(dirs)
    }

    /// Whether there is anything to read.
    pub fn is_empty(&self) -> bool {
        matches!(self, CpuProbe::Tasks(t) if t.is_empty())
    }

    fn dirs(&self) -> Vec<String> {
        match self {
            CpuProbe::Tasks(t) => t.clone(),
            CpuProbe::Process(pid) => tasks_where(&format!("/proc/{pid}/task"), |_| true),
        }
    }

    /// Total CPU time in nanoseconds, `None` when no task could be read.
    pub fn read_ns(&self) -> Option<u64> {
        let mut sum = None;
        for d in &self.dirs() {
            if let Some(ns) = task_cpu_ns(d) {
                *sum.get_or_insert(0) += ns;
            }
        }
        sum
    }

    /// User and system time in nanoseconds from `stat` (tick-sampled: 10 ms resolution at
    /// USER_HZ = 100; good for the split, not for the total).
    pub fn read_user_sys_ns(&self) -> Option<(u64, u64)> {
        let mut sum = None;
        for d in &self.dirs() {
            if let Some((u, s)) = task_user_sys_ns(d) {
                let t = sum.get_or_insert((0, 0));
                t.0 += u;
                t.1 += s;
            }
        }
        sum
    }
}

/// Machine-wide CPU jiffies from the `cpu` line of `/proc/stat`: (busy, idle + iowait, steal).
pub fn machine_jiffies() -> Option<(u64, u64, u64)> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    let idle = get(3) + get(4);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    Some((busy, idle, get(7)))
}

/// The calling thread's id.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

fn tasks_where(task_root: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = vec![];
    for t in fs::read_dir(task_root).into_iter().flatten().flatten() {
        let dir = format!("{task_root}/{}", t.file_name().to_string_lossy());
        if fs::read_to_string(format!("{dir}/comm")).is_ok_and(|c| keep(c.trim_end())) {
            out.push(dir);
        }
    }
    out
}

/// CPU time of one task directory, nanoseconds.
fn task_cpu_ns(dir: &str) -> Option<u64> {
    if let Some(ns) = fs::read_to_string(format!("{dir}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
    {
        return Some(ns);
    }
    task_user_sys_ns(dir).map(|(u, s)| u + s)
}

/// `utime`, `stime` of one task directory, nanoseconds (tick resolution).
fn task_user_sys_ns(dir: &str) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after "(comm) ": state is field 3, utime 14, stime 15.
    let f: Vec<&str> = s.get(s.rfind(')')? + 2..)?.split_whitespace().collect();
    let (u, st) = (f.get(11)?.parse::<u64>().ok()?, f.get(12)?.parse::<u64>().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((u * 1_000_000_000 / hz, st * 1_000_000_000 / hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_cpu_time_grows() {
        let p = CpuProbe::this_thread();
        let a = p.read_ns().expect("readable");
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let b = p.read_ns().expect("readable");
        assert!(b > a, "{a} → {b} ({x})");
        assert!(CpuProbe::Process(std::process::id()).read_ns().expect("readable") >= b);
    }
}
