//! The demo binary end to end, headless: bots on the embedded shard (loopback only), and the
//! ways a run is refused.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn demo() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_p2pmodel-demo"));
    c.env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Run with a hard time limit (a hung demo fails the test instead of hanging it).
fn run(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.spawn().expect("the demo binary starts");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
            child.stderr.take().unwrap().read_to_end(&mut stderr).unwrap();
            return Output { status, stdout, stderr };
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the demo did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_bots_on_the_embedded_shard_connect_meet_and_lose_nothing() {
    let mut cmd = demo();
    cmd.args(["--headless", "--bot", "--bots", "2", "--json", "--exit-after", "6"]);
    let out = run(cmd, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!("status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(out.status.success(), "{ctx}");

    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line {l:?} is not JSON: {e}\n{ctx}"))
        })
        .collect();
    let mut by_bot: HashMap<String, Vec<&Value>> = HashMap::new();
    for l in &lines {
        let bot = l["bot"].as_str().unwrap_or_else(|| panic!("line without a bot name: {l}\n{ctx}"));
        by_bot.entry(bot.to_string()).or_default().push(l);
    }
    assert_eq!(by_bot.len(), 2, "two bots report: {:?}\n{ctx}", by_bot.keys());
    let ids: HashMap<&str, u64> = by_bot
        .iter()
        .map(|(bot, ls)| {
            let c = ls
                .iter()
                .find(|l| l["event"] == "connected")
                .unwrap_or_else(|| panic!("{bot} connected\n{ctx}"));
            (bot.as_str(), c["client"].as_u64().unwrap())
        })
        .collect();
    for (bot, ls) in &by_bot {
        let other = ids.iter().find(|(b, _)| *b != bot).map(|(_, id)| *id).unwrap();
        assert!(
            ls.iter().any(|l| l["event"] == "path" && l["peer"] == other && l["path"] != "lost"),
            "{bot} has a path event for its peer {other}\n{ctx}"
        );
        assert!(
            ls.iter().any(|l| l["event"] == "first_message" && l["peer"] == other),
            "{bot} reports the first message from {other}\n{ctx}"
        );
        let stats: Vec<&&Value> = ls.iter().filter(|l| l["event"] == "stats").collect();
        assert!(stats.len() >= 4, "{bot}: a stats line every second\n{ctx}");
        let last = stats.last().unwrap();
        let peer = last["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer"] == other)
            .unwrap_or_else(|| panic!("{bot}'s stats list {other}\n{ctx}"));
        assert!(peer["received"].as_u64().unwrap() > 20, "{bot} received from {other}: {peer}\n{ctx}");
        assert!(peer["sent"].as_u64().unwrap() > 20, "{peer}");
        assert_eq!(
            (peer["gaps"].as_u64(), peer["dups"].as_u64()),
            (Some(0), Some(0)),
            "{bot}: {peer}\n{ctx}"
        );
        assert!(last["p2p_bytes_in"].as_u64().unwrap() > 0 && last["server_bytes_in"].as_u64().unwrap() > 0);
        let exit = ls.last().unwrap();
        assert_eq!(exit["event"], "exit", "{bot}'s last line is exit\n{ctx}");
        assert_eq!(exit["ok"], true, "{bot}\n{ctx}");
    }
}

#[test]
fn an_unreachable_shard_is_a_clear_error_within_the_timeout() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    // A well-formed pinned key: nothing listens, so the login times out.
    let server = format!("{}@{addr}", "ab".repeat(32));
    let mut cmd = demo();
    cmd.args(["--headless", "--bot", "--json", "--server", &server, "--exit-after", "60"]);
    let t0 = Instant::now();
    let out = run(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&addr), "the error names the address: {stderr}");
    assert!(t0.elapsed() < Duration::from_secs(20), "gave up in {:?}", t0.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: Value = serde_json::from_str(stdout.lines().last().expect("an exit line")).unwrap();
    assert_eq!(last, serde_json::json!({"event": "exit", "ok": false}));
}

#[test]
fn bad_arguments_and_no_display_exit_with_2_and_say_why() {
    let mut cmd = demo();
    cmd.args(["--json"]);
    let out = run(cmd, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--json needs --headless"));

    // A shard address without its login key: the key is what makes the login safe.
    let mut cmd = demo();
    cmd.args(["--headless", "--bot", "--server", "127.0.0.1:7001"]);
    let out = run(cmd, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("KEY@HOST:PORT") && stderr.contains("secret --show-public"), "{stderr}");

    let mut cmd = demo();
    cmd.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY");
    let out = run(cmd, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--headless"), "suggests --headless: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
