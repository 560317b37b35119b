//! `hapool vip` on a real link: network namespaces of this test's own,
//! one per member and one for a client, joined by veth links to a bridge
//! in a "switch" namespace. Each member runs `hapool vip` and a small TCP
//! service that answers with the member's name; the client connects to the
//! virtual address and reads who answered. The master is killed (its
//! daemon with SIGKILL and its link cut, as when the machine dies),
//! restarted, cut off and healed; a nine-member group is among the cases.
//! Needs root and iproute2; without them it says SKIPPED, unless
//! HAPOOL_REQUIRE_TOOLS=1.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VIP: &str = "10.232.0.50";
/// The virtual address of the IPv6 cases.
const VIP6: &str = "fd00:232::50";

mod common;
use common::ip;

/// The namespaces and links, removed on drop.
struct Lab {
    prefix: String,
    members: usize,
    /// IPv6 virtual address (the members have IPv4 and IPv6 addresses).
    v6: bool,
    daemons: Vec<Option<Child>>,
    services: Vec<Child>,
    keepalived_dirs: Vec<std::path::PathBuf>,
}

/// Which VRRP daemon a member runs.
#[derive(Clone, Copy)]
enum Daemon {
    Hapool,
    Keepalived,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn member(i: usize) -> String {
        format!("r{}", i + 1)
    }

    fn address(i: usize) -> String {
        format!("10.232.0.{}", i + 2)
    }

    /// Where clients reach the service at the virtual address.
    fn target(&self) -> String {
        match self.vip().0 {
            v6 if self.v6 => format!("[{v6}]:8080"),
            v4 => format!("{v4}:8080"),
        }
    }

    /// The virtual address and its prefix length.
    fn vip(&self) -> (&'static str, u8) {
        if self.v6 { (VIP6, 64) } else { (VIP, 24) }
    }

    fn create(members: usize, v6: bool) -> Option<Self> {
        let prefix = format!(
            "hapool-vip-{}-{members}{}",
            std::process::id(),
            if v6 { "-6" } else { "" }
        );
        if !common::switch(&format!("{prefix}-sw")) {
            return None;
        }
        let mut lab = Self {
            prefix,
            members,
            v6,
            daemons: Vec::new(),
            services: Vec::new(),
            keepalived_dirs: Vec::new(),
        };
        let mut nodes: Vec<(String, String)> = (0..members)
            .map(|i| (Self::member(i), format!("{}/24", Self::address(i))))
            .collect();
        nodes.push(("c".into(), "10.232.0.200/24".into()));
        for (k, (name, address)) in nodes.iter().enumerate() {
            let host = address.split(['.', '/']).nth(3).unwrap();
            let tag = format!(
                "hv{}{members}{}{k}",
                std::process::id() % 100_000,
                if v6 { "6" } else { "" }
            );
            common::host(
                &lab.ns("sw"),
                &lab.ns(name),
                &tag,
                &[address, &format!("fd00:232::{host}/64")],
            );
        }
        common::accept_gratuitous_arp(&lab.ns("c"));
        for i in 0..members {
            let service = Command::new("ip")
                .args(["netns", "exec", &lab.ns(&Self::member(i))])
                .arg(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "service", "--nocapture"])
                .env("HAPOOL_VIP_NAME", Self::member(i))
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            lab.services.push(service);
            lab.daemons.push(None);
        }
        Some(lab)
    }

    /// Priority of member `i`: the first highest, then in steps of 10.
    fn priority(&self, i: usize) -> u8 {
        (200 - 10 * i) as u8
    }

    fn start(&mut self, i: usize) {
        let priority = self.priority(i);
        self.start_as(i, Daemon::Hapool, priority);
    }

    /// Starts `daemon` on member `i` with `priority`, advertising every
    /// 100 ms.
    fn start_as(&mut self, i: usize, daemon: Daemon, priority: u8) {
        self.start_with(i, daemon, priority, 100);
    }

    /// Starts `daemon` on member `i` with `priority`, advertising every
    /// `interval_ms`.
    fn start_with(&mut self, i: usize, daemon: Daemon, priority: u8, interval_ms: u64) {
        let ns = self.ns(&Self::member(i));
        // A machine that comes back has not kept the virtual address.
        let (vip, prefix) = self.vip();
        let _ = ip(&[
            "-n",
            &ns,
            "addr",
            "del",
            &format!("{vip}/{prefix}"),
            "dev",
            "eth0",
        ]);
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &ns]);
        match daemon {
            Daemon::Hapool => {
                command
                    .args([env!("CARGO_BIN_EXE_hapool"), "vip", "--interface", "eth0"])
                    .args(["--vrid", "7", "--priority", &priority.to_string()])
                    .args(["--vip", &format!("{vip}/{prefix}")])
                    .args(["--advert-interval", &format!("{interval_ms}ms")]);
                // Over IPv6 the advertisements leave from the link-local
                // address the interface has.
                if !self.v6 {
                    command.args(["--address", &Self::address(i)]);
                }
            }
            Daemon::Keepalived => {
                let dir = std::env::temp_dir().join(format!("{}-k{i}", self.prefix));
                std::fs::create_dir_all(&dir).unwrap();
                let conf = dir.join("keepalived.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "global_defs {{\n  vrrp_version 3\n}}\nvrrp_instance VI_7 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 7\n  priority {priority}\n  advert_int {}\n  virtual_ipaddress {{\n    {vip}/{prefix}\n  }}\n}}\n",
                        interval_ms as f64 / 1000.0
                    ),
                )
                .unwrap();
                let path = |f: &str| dir.join(f).to_str().unwrap().to_owned();
                command
                    .args(["keepalived", "--dont-fork", "--vrrp", "--log-console"])
                    .args(["-f", &path("keepalived.conf"), "-p", &path("main.pid")])
                    .args(["-r", &path("vrrp.pid"), "-c", &path("checkers.pid")]);
                self.keepalived_dirs.push(dir);
            }
        }
        let daemon = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.daemons[i] = Some(daemon);
    }

    /// Starts `hapool vip --config` on member `i` with the configuration
    /// `text` and the environment variables `vars`.
    fn start_config(&mut self, i: usize, text: &str, vars: &[(&str, &str)]) {
        let dir = std::env::temp_dir().join(format!("{}-c{i}", self.prefix));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vip.toml");
        std::fs::write(&path, text).unwrap();
        let daemon = Command::new("ip")
            .args(["netns", "exec", &self.ns(&Self::member(i))])
            .args([env!("CARGO_BIN_EXE_hapool"), "vip", "--config"])
            .arg(&path)
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.daemons[i] = Some(daemon);
        self.keepalived_dirs.push(dir);
    }

    /// Runs `hapool ARGS` in member `i`'s namespace: success, stdout, stderr.
    fn hapool_in(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(&Self::member(i))])
            .arg(env!("CARGO_BIN_EXE_hapool"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The machine of member `i` dies: every process of its daemon stops
    /// at once (SIGSTOP, so none can say goodbye) and is then killed.
    fn kill(&mut self, i: usize) {
        // keepalived runs a VRRP process besides the one we started.
        let vrrp = std::env::temp_dir()
            .join(format!("{}-k{i}", self.prefix))
            .join("vrrp.pid");
        let child = std::fs::read_to_string(&vrrp)
            .ok()
            .map(|pid| pid.trim().to_owned());
        let main = self.daemons[i].as_ref().map(|d| d.id().to_string());
        for signal in ["-STOP", "-KILL"] {
            for pid in child.iter().chain(main.iter()) {
                let _ = Command::new("kill").args([signal, pid]).status();
            }
        }
        if let Some(mut d) = self.daemons[i].take() {
            let _ = d.wait();
        }
        let _ = std::fs::remove_file(vrrp);
    }

    /// Sends member `i`'s daemon a signal (`kill` with `signal`).
    fn signal(&self, i: usize, signal: &str) {
        let d = self.daemons[i].as_ref().expect("running");
        assert!(
            Command::new("kill")
                .args([signal, &d.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    fn link(&self, i: usize, up: bool) {
        let ns = self.ns(&Self::member(i));
        assert!(ip(&[
            "-n",
            &ns,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" }
        ]));
    }

    /// Who answers at the virtual address, seen from the client.
    fn who_answers(&self) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("c")])
            .arg(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "client", "--nocapture"])
            .env("HAPOOL_VIP_TARGET", self.target())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("answered by ").map(str::to_owned))
    }

    /// Waits until `member` answers at the virtual address; how long.
    fn wait_for(&self, member: usize, limit: Duration) -> Duration {
        let start = Instant::now();
        let want = Self::member(member);
        loop {
            let got = self.who_answers();
            if got.as_deref() == Some(want.as_str()) {
                return start.elapsed();
            }
            if start.elapsed() >= limit {
                let neigh = Command::new("ip")
                    .args(["-n", &self.ns("c"), "neigh", "show"])
                    .output()
                    .unwrap();
                let macs: Vec<String> = (0..self.members)
                    .map(|i| {
                        self.show(i, "link")
                            .split_whitespace()
                            .skip_while(|w| *w != "link/ether")
                            .nth(1)
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .collect();
                panic!(
                    "{want} did not answer within {limit:?} (last answer {got:?}; holders {:?}; client neighbours {}; member MACs {macs:?})",
                    self.holders(),
                    String::from_utf8_lossy(&neigh.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running members (daemon up, link up) that have the virtual
    /// address on their interface. (A dead machine's stale address does
    /// not count: its link is down.)
    fn holders(&self) -> Vec<usize> {
        (0..self.members)
            .filter(|&i| self.daemons[i].is_some() && self.link_up(i))
            .filter(|&i| self.show(i, "addr").contains(&format!("{}/", self.vip().0)))
            .collect()
    }

    fn link_up(&self, i: usize) -> bool {
        !self.show(i, "link").contains("state DOWN")
    }

    /// `ip -o OBJECT show eth0` in member `i`'s namespace.
    fn show(&self, i: usize, object: &str) -> String {
        let ns = self.ns(&Self::member(i));
        let out = Command::new("ip")
            .args(["-n", &ns, "-o", object, "show", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn settle_on(&self, member: usize) {
        let start = Instant::now();
        while self.holders() != [member] {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "holders {:?}, expected only {member}",
                self.holders()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.daemons.len() {
            self.kill(i);
        }
        for s in &mut self.services {
            let _ = s.kill();
            let _ = s.wait();
        }
        let mut names: Vec<String> = (0..self.members).map(Self::member).collect();
        names.extend(["c".to_owned(), "sw".to_owned()]);
        for name in names {
            let _ = ip(&["netns", "del", &self.ns(&name)]);
        }
        for dir in &self.keepalived_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The namespace tests run one at a time: on a shared two-core machine,
/// several groups at once make their timings noise.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lab(members: usize) -> Option<(std::sync::MutexGuard<'static, ()>, Lab)> {
    lab_of(members, false)
}

/// A lab whose virtual address is IPv6.
fn lab_v6(members: usize) -> Option<(std::sync::MutexGuard<'static, ()>, Lab)> {
    lab_of(members, true)
}

fn lab_of(members: usize, v6: bool) -> Option<(std::sync::MutexGuard<'static, ()>, Lab)> {
    let guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = Lab::create(members, v6).map(|lab| (guard, lab));
    if lab.is_none() {
        common::skipped_without_namespaces();
    }
    lab
}

/// An IPv6 virtual address: advertisements from the link-local addresses
/// to ff02::12, the address taken over with an unsolicited neighbour
/// advertisement when the master dies, and taken back when it returns.
#[test]
fn ipv6_members_kill_and_restart() {
    let Some((_one, mut lab)) = lab_v6(3) else {
        return;
    };
    master_dies_and_returns(&mut lab);
}

/// Three members start; the master's machine dies and member 2 takes
/// over; it comes back with the highest priority and takes the address
/// back.
fn master_dies_and_returns(lab: &mut Lab) {
    for i in 0..3 {
        lab.start(i);
    }
    lab.wait_for(0, Duration::from_secs(10));
    lab.settle_on(0);
    lab.kill(0);
    lab.link(0, false);
    let took = lab.wait_for(1, TAKEOVER);
    eprintln!(
        "member 2 answers at {} {took:?} after the master died",
        lab.vip().0
    );
    lab.settle_on(1);
    lab.link(0, true);
    lab.start(0);
    lab.wait_for(0, TAKEOVER);
    lab.settle_on(0);
}

/// Master down interval at 100 ms adverts is at most 3 × 100 ms + 100 ms
/// skew. When two masters meet (a restart, a healed cut), the loser's last
/// announcement can reach the client after the winner's; the winner
/// announces again 0.5, 1.5 and 3 s later. The rest is slack for a loaded
/// machine.
const TAKEOVER: Duration = Duration::from_secs(6);

#[test]
fn three_members_kill_restart_and_cut() {
    let Some((_one, mut lab)) = lab(3) else {
        return;
    };
    master_dies_and_returns(&mut lab);
    // Its link is cut: member 2 takes over; healed: member 1 again, and
    // only member 1 holds the address.
    lab.link(0, false);
    lab.wait_for(1, TAKEOVER);
    lab.link(0, true);
    lab.wait_for(0, TAKEOVER);
    lab.settle_on(0);
}

/// The master stalls (SIGSTOP: a frozen process or virtual machine) until
/// member 2 has taken over, then goes on (SIGCONT): it takes the address
/// back, and then only it holds the address. (While it is stopped its
/// address stays on its interface: both hold it, as with any VRRP.)
#[test]
fn a_master_stopped_and_let_go_on_takes_the_address_back_alone() {
    let Some((_one, mut lab)) = lab(3) else {
        return;
    };
    for i in 0..3 {
        lab.start(i);
    }
    lab.wait_for(0, Duration::from_secs(10));
    lab.settle_on(0);
    lab.signal(0, "-STOP");
    let stopped = Instant::now();
    while !lab.holders().contains(&1) {
        assert!(
            stopped.elapsed() < TAKEOVER,
            "member 2 did not take over; holders {:?}",
            lab.holders()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "member 2 holds the address {:?} after the master stopped",
        stopped.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    lab.signal(0, "-CONT");
    let took = lab.wait_for(0, TAKEOVER);
    lab.settle_on(0);
    eprintln!("member 1 answers alone again {took:?} after SIGCONT");
    // And stays so.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.holders(), [0]);
}

#[test]
fn nine_members_hand_the_address_down_the_line() {
    let Some((_one, mut lab)) = lab(9) else {
        return;
    };
    for i in 0..9 {
        lab.start(i);
    }
    lab.wait_for(0, Duration::from_secs(10));
    lab.settle_on(0);
    // Kill the masters one after another: each time the next priority.
    for dead in 0..3 {
        lab.kill(dead);
        lab.link(dead, false);
        lab.wait_for(dead + 1, TAKEOVER);
    }
    lab.settle_on(3);
    // A clean stop of the master (SIGTERM): priority 0, the next takes
    // over after its skew time.
    if let Some(d) = lab.daemons[3].as_ref() {
        assert!(
            Command::new("kill")
                .arg(d.id().to_string())
                .status()
                .unwrap()
                .success()
        );
    }
    lab.wait_for(4, TAKEOVER);
    lab.settle_on(4);
}

fn eventually(what: &str, mut done: impl FnMut() -> Option<String>) -> String {
    let start = Instant::now();
    loop {
        if let Some(found) = done() {
            return found;
        }
        assert!(start.elapsed() < TAKEOVER, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A member configured from a file: a tracking command that fails lowers
/// its priority and hands the address over, and passing again takes it
/// back; the notify command hears each change; the admin port reports the
/// state and priority. A missing interface is a clear start-up error.
#[test]
fn a_configured_member_tracks_notifies_and_reports() {
    let Some((_one, mut lab)) = lab(2) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("{}-files", lab.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let notified = dir.join("notify.log");
    let down = dir.join("down");
    // Its service manager hears when it serves (a socket at a path: the
    // namespace has a network of its own, not files).
    let manager = common::NotifySocket::new(Some(&dir.join("service-manager")));
    lab.start_config(
        0,
        &format!(
            r#"[vip]
admin = "127.0.0.1:3890"
[[vip.router]]
interface = "eth0"
address = "{}"
vrid = 7
priority = "primary"
advert_interval = "100ms"
addresses = ["{VIP}/24"]
notify = "echo >> {}"
[[vip.router.track]]
command = "test ! -e {}"
weight = 100
interval = "100ms"
"#,
            Lab::address(0),
            notified.display(),
            down.display()
        ),
        &[("NOTIFY_SOCKET", &manager.name)],
    );
    assert_eq!(manager.heard(), "READY=1");
    lab.start(1);
    lab.wait_for(0, Duration::from_secs(10));
    lab.settle_on(0);
    let status = |lab: &Lab| {
        let (ok, out, err) = lab.hapool_in(0, &["status", "--admin", "127.0.0.1:3890", "--json"]);
        assert!(ok, "{err}");
        out
    };
    eventually("the notify command never heard MASTER", || {
        std::fs::read_to_string(&notified)
            .ok()
            .filter(|t| t.lines().any(|l| l == "MASTER 7"))
    });
    let doc = status(&lab);
    assert!(doc.contains("\"state\": \"master\""), "{doc}");
    assert!(doc.contains("\"priority\": 200"), "{doc}");
    // The check fails: priority 200 - 100 is below the other member's 190.
    std::fs::write(&down, "").unwrap();
    lab.wait_for(1, TAKEOVER);
    lab.settle_on(1);
    eventually("the notify command never heard BACKUP", || {
        std::fs::read_to_string(&notified)
            .ok()
            .filter(|t| t.lines().last() == Some("BACKUP 7"))
    });
    let doc = status(&lab);
    assert!(doc.contains("\"state\": \"backup\""), "{doc}");
    assert!(doc.contains("\"priority\": 100"), "{doc}");
    assert!(doc.contains("\"configured_priority\": 200"), "{doc}");
    // It passes again: the member takes the address back.
    std::fs::remove_file(&down).unwrap();
    lab.wait_for(0, TAKEOVER);
    lab.settle_on(0);
    // A missing interface stops the start with its name.
    let start = [
        "--address",
        "10.232.0.2",
        "--vrid",
        "9",
        "--vip",
        "10.232.0.99/24",
    ];
    let (ok, _, err) = lab.hapool_in(
        0,
        &[&["vip", "--interface", "nosuch0"][..], &start[..]].concat(),
    );
    assert!(!ok, "started without its interface");
    assert!(err.contains("nosuch0"), "{err}");
    // Without the capabilities for raw sockets and addresses, the start
    // stops and names the one that is missing.
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(&Lab::member(0)), "setpriv"])
        .args(["--bounding-set", "-net_raw,-net_admin", "--"])
        .args([env!("CARGO_BIN_EXE_hapool"), "vip", "--interface", "eth0"])
        .args(start)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without CAP_NET_RAW");
    assert!(err.contains("CAP_NET_RAW"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// hapool vip and keepalived (Debian's) in one group, each in both roles:
/// the higher priority holds the address, and each takes over when the
/// other's machine dies, and gives the address back when it returns;
/// over IPv4 and over IPv6.
#[test]
fn shares_a_group_with_keepalived() {
    if Command::new("keepalived")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("HAPOOL_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "HAPOOL_REQUIRE_TOOLS=1 but keepalived is not installed (apt-get install keepalived)"
        );
        eprintln!("SKIPPED: keepalived is not installed");
        return;
    }
    let Some((one, lab4)) = lab(2) else {
        return;
    };
    interoperate(lab4);
    drop(one);
    // And over IPv6.
    let Some((_one, lab6)) = lab_v6(2) else {
        return;
    };
    interoperate(lab6);
}

/// Each daemon as master and as backup of the other, in `lab`.
fn interoperate(mut lab: Lab) {
    for (high, low) in [
        (Daemon::Keepalived, Daemon::Hapool),
        (Daemon::Hapool, Daemon::Keepalived),
    ] {
        lab.start_as(0, high, 200);
        lab.start_as(1, low, 150);
        lab.wait_for(0, Duration::from_secs(10));
        lab.settle_on(0);
        // The master's machine dies: the other daemon takes over.
        lab.kill(0);
        lab.link(0, false);
        lab.wait_for(1, TAKEOVER);
        // It returns and takes the address back.
        lab.link(0, true);
        lab.start_as(0, high, 200);
        lab.wait_for(0, TAKEOVER);
        lab.settle_on(0);
        lab.kill(0);
        lab.kill(1);
    }
}

/// The side-by-side failover benchmark (`bench/vip-vs-keepalived.sh`):
/// two members and a client probing the virtual address every 2 ms; for
/// keepalived and for hapool vip, at 1 s and at 100 ms advertisements,
/// `HAPOOL_VIP_TRIALS` times (default 10): the master's machine dies (all
/// its daemon's processes killed, its link cut), and the time until the
/// other member answers is taken; then it returns, and the time until it
/// answers again, the probes lost and the longest gap are taken.
#[test]
#[ignore = "a benchmark: bench/vip-vs-keepalived.sh"]
fn vip_failover_bench() {
    let trials: usize = std::env::var("HAPOOL_VIP_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(10);
    for v6 in [false, true] {
        let Some((_one, mut lab)) = lab_of(2, v6) else {
            return;
        };
        failover_rows(&mut lab, trials);
    }
}

/// The benchmark's rows for one lab: over IPv4 at 1 s and 100 ms for both
/// daemons and at 50 ms for hapool; over IPv6 at 100 ms for both.
fn failover_rows(lab: &mut Lab, trials: usize) {
    let now_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64
    };
    let both = [
        ("keepalived", Daemon::Keepalived),
        ("hapool", Daemon::Hapool),
    ];
    let runs: Vec<(u64, &[(&str, Daemon)])> = if lab.v6 {
        vec![(100, &both)]
    } else {
        vec![(1000, &both), (100, &both), (50, &both[1..])]
    };
    let family = if lab.v6 { " IPv6" } else { "" };
    for (interval, daemons) in runs {
        for &(name, daemon) in daemons {
            let mut takeovers = Vec::new();
            let mut returns = Vec::new();
            let mut blips = Vec::new();
            for _ in 0..trials {
                lab.start_with(0, daemon, 200, interval);
                lab.start_with(1, daemon, 150, interval);
                lab.wait_for(0, Duration::from_secs(15));
                lab.settle_on(0);
                let mut prober = Command::new("ip")
                    .args(["netns", "exec", &lab.ns("c")])
                    .arg(std::env::current_exe().unwrap())
                    .args(["--ignored", "--exact", "prober", "--nocapture"])
                    .env("HAPOOL_VIP_TARGET", lab.target())
                    .env(
                        "HAPOOL_VIP_PROBE_SECS",
                        if interval == 1000 { "14" } else { "3" },
                    )
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                // The kill falls anywhere within an advertisement
                // interval: at one fixed phase every trial would measure
                // the same point of the Master_Down_Interval.
                let phase = rand::random_range(0..interval);
                std::thread::sleep(Duration::from_millis(300 + phase));
                let killed = now_us();
                lab.kill(0);
                lab.link(0, false);
                std::thread::sleep(Duration::from_millis(interval * 5));
                let restarted = now_us();
                lab.link(0, true);
                lab.start_with(0, daemon, 200, interval);
                let mut out = String::new();
                prober
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                let _ = prober.wait();
                let probes: Vec<(i64, String)> = out
                    .lines()
                    .filter_map(|l| {
                        let (t, who) = l.split_once(' ')?;
                        Some((t.parse().ok()?, who.to_owned()))
                    })
                    .collect();
                let first = |after: i64, who: &str| {
                    probes
                        .iter()
                        .find(|(t, w)| *t >= after && w == who)
                        .map(|(t, _)| (t - after) as f64 / 1000.0)
                };
                takeovers.push(first(killed, "r2").expect("member 2 answered"));
                returns.push(first(restarted, "r1").expect("member 1 answered again"));
                // The fall-back: probes lost and the longest gap between
                // answers, from the restart on.
                let answered: Vec<i64> = probes
                    .iter()
                    .filter(|(t, w)| *t >= restarted && w != "-")
                    .map(|(t, _)| *t)
                    .collect();
                let lost = probes
                    .iter()
                    .filter(|(t, w)| *t >= restarted && w == "-")
                    .count();
                let gap = answered.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
                blips.push((lost, gap as f64 / 1000.0));
                lab.kill(0);
                lab.kill(1);
            }
            let stats = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                (v[v.len() / 2], v[v.len() - 1])
            };
            let (t_med, t_max) = stats(&mut takeovers);
            let (r_med, r_max) = stats(&mut returns);
            let lost_max = blips.iter().map(|b| b.0).max().unwrap_or(0);
            let gap_max = blips.iter().map(|b| b.1).fold(0.0, f64::max);
            println!(
                "{name:<10} adverts {interval:>4} ms{family}: master death -> other answers median {t_med:.0} ms, max {t_max:.0} ms; return -> answers median {r_med:.0} ms, max {r_max:.0} ms; fall-back: at most {lost_max} probes lost, longest gap {gap_max:.0} ms ({trials} trials)"
            );
        }
    }
}

/// The benchmark's client: connects to the virtual address every 2 ms
/// for `HAPOOL_VIP_PROBE_SECS` seconds and prints, for each attempt, the
/// time (µs since the epoch) and who answered (`-` for nobody).
#[test]
#[ignore = "an entry point of the benchmark, not a test by itself"]
fn prober() {
    let secs: u64 = std::env::var("HAPOOL_VIP_PROBE_SECS")
        .expect("run by the benchmark")
        .parse()
        .unwrap();
    let addr = std::env::var("HAPOOL_VIP_TARGET")
        .unwrap_or_else(|_| format!("{VIP}:8080"))
        .parse()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut out = std::io::stdout().lock();
    while Instant::now() < end {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        let who = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(20))
            .ok()
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_millis(20))).ok()?;
                let mut name = String::new();
                s.read_to_string(&mut name).ok()?;
                Some(name)
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "-".to_owned());
        let _ = writeln!(out, "{at} {who}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A member's service: answers every connection on port 8080 with its name.
#[test]
#[ignore = "an entry point of the namespace tests, not a test by itself"]
fn service() {
    let name = std::env::var("HAPOOL_VIP_NAME").expect("run by a namespace test");
    // IPv4 and IPv6 (a dual-stack socket).
    let listener = std::net::TcpListener::bind("[::]:8080").unwrap();
    for mut s in listener.incoming().flatten() {
        let _ = s.write_all(name.as_bytes());
    }
}

/// The client: connects to the virtual address and prints who answered.
#[test]
#[ignore = "an entry point of the namespace tests, not a test by itself"]
fn client() {
    let addr = std::env::var("HAPOOL_VIP_TARGET")
        .unwrap_or_else(|_| format!("{VIP}:8080"))
        .parse()
        .unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut name = String::new();
    s.read_to_string(&mut name).unwrap();
    println!("answered by {name}");
}
