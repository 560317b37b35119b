//! Registrars that know no peer find each other through the ENRP
//! multicast group. Runs in a network namespace of its own (loopback with
//! multicast on and a route for 239.0.0.0/8), so it needs root and `ip`;
//! without them it says SKIPPED, unless HAPOOL_REQUIRE_TOOLS=1.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A network namespace, deleted on drop.
struct Namespace(String);

impl Namespace {
    fn create() -> Option<Self> {
        let name = format!("hapool-mc-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let ns = Self(name);
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "set", "lo", "multicast", "on"],
            &["route", "add", "239.0.0.0/8", "dev", "lo"],
        ] {
            let status = ns.command("ip").args(args).status().unwrap();
            assert!(status.success(), "ip {args:?} in {}", ns.0);
        }
        Some(ns)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn skip(why: &str) {
    assert!(
        std::env::var("HAPOOL_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "HAPOOL_REQUIRE_TOOLS=1 but {why}"
    );
    eprintln!("SKIPPED: {why}");
}

#[test]
fn registrars_find_each_other_by_multicast() {
    let Some(ns) = Namespace::create() else {
        skip("cannot create a network namespace (needs root and iproute2)");
        return;
    };
    let hapool = env!("CARGO_BIN_EXE_hapool");
    let mut children = Children(Vec::new());
    for n in 1..=3 {
        let child = ns
            .command(hapool)
            .args([
                "registrar",
                "--id",
                &format!("{n:08x}"),
                "--listen",
                &format!("127.0.0.1:1386{n}"),
                "--enrp-listen",
                &format!("127.0.0.1:1990{n}"),
                "--enrp-multicast",
                "239.0.0.51:9901",
                "--enrp-heartbeat",
                "100ms",
                "--admin",
                &format!("127.0.0.1:1388{n}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        children.0.push(child);
    }
    let peers = |n: u32| -> Option<Vec<String>> {
        let out = ns
            .command(hapool)
            .args(["status", "--json", "--admin", &format!("127.0.0.1:1388{n}")])
            .output()
            .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let mut ids: Vec<String> = status["peers"]
            .as_array()?
            .iter()
            .filter_map(|p| p["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        Some(ids)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let expected = |n: u32| -> Vec<String> {
        (1..=3u32)
            .filter(|&m| m != n)
            .map(|m| format!("{m:08x}"))
            .collect()
    };
    loop {
        let seen: Vec<Option<Vec<String>>> = (1..=3).map(peers).collect();
        if (1..=3).all(|n| seen[n as usize - 1].as_ref() == Some(&expected(n))) {
            break;
        }
        assert!(Instant::now() < deadline, "peers seen: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(children);
    drop(ns);
}

/// Processes this test started, killed on drop (also when it fails).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
