//! What the `hapool` command's integration tests share: running the
//! command, and network namespaces joined by a bridge. Each test file uses
//! part of it.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// Runs `hapool ARGS` to the end: success, standard output, standard
/// error.
pub(crate) fn hapool(args: &[&str]) -> (bool, String, String) {
    let (code, out, err) = hapool_code(args);
    (code == 0, out, err)
}

/// Runs `hapool ARGS` to the end: exit code, standard output, standard
/// error.
pub(crate) fn hapool_code(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hapool"))
        .args(args)
        .output()
        .expect("run hapool");
    (
        out.status.code().expect("hapool exited by a signal"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs `ip ARGS`; whether it succeeded.
pub(crate) fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `sysctl -qw SETTING` in namespace `ns`.
pub(crate) fn sysctl(ns: &str, setting: &str) {
    assert!(
        Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-qw", setting])
            .status()
            .unwrap()
            .success(),
        "sysctl {setting} in {ns}"
    );
}

/// Makes namespace `switch` with a bridge `br0`; `false` when namespaces
/// cannot be made here (not root, no iproute2).
pub(crate) fn switch(switch: &str) -> bool {
    if !ip(&["netns", "add", switch]) {
        return false;
    }
    assert!(ip(&["-n", switch, "link", "add", "br0", "type", "bridge"]));
    assert!(ip(&["-n", switch, "link", "set", "br0", "up"]));
    true
}

/// Makes namespace `ns` with an `eth0` on `switch`'s bridge holding
/// `addresses` (with their prefix lengths); `link` names the veth pair
/// while it is created (unique on this machine, at most 13 characters).
/// IPv6 addresses are usable at once (no duplicate address detection:
/// the link is the test's own).
pub(crate) fn host(switch: &str, ns: &str, link: &str, addresses: &[&str]) {
    let (inside, outside) = (format!("{link}i"), format!("{link}o"));
    assert!(ip(&["netns", "add", ns]));
    sysctl(ns, "net.ipv6.conf.all.accept_dad=0");
    sysctl(ns, "net.ipv6.conf.default.accept_dad=0");
    assert!(ip(&[
        "link", "add", &inside, "type", "veth", "peer", "name", &outside
    ]));
    assert!(ip(&["link", "set", &inside, "netns", ns]));
    assert!(ip(&["-n", ns, "link", "set", &inside, "name", "eth0"]));
    for address in addresses {
        assert!(ip(&["-n", ns, "addr", "add", address, "dev", "eth0"]));
    }
    assert!(ip(&["-n", ns, "link", "set", "eth0", "up"]));
    assert!(ip(&["-n", ns, "link", "set", "lo", "up"]));
    assert!(ip(&["link", "set", &outside, "netns", switch]));
    assert!(ip(&[
        "-n", switch, "link", "set", &outside, "master", "br0"
    ]));
    assert!(ip(&["-n", switch, "link", "set", &outside, "up"]));
}

/// Makes namespace `ns` take gratuitous ARP into its neighbour table at
/// once. Linux ignores an ARP update for an address within `locktime`
/// (1 s) of its entry's last change, and a host busy talking to the
/// address changes its entry about every second while the old MAC does
/// not answer; whichever VRRP daemon announces the move, such a host then
/// waits for its entry to fail (several seconds). A client namespace
/// turns that off, so that a test measures the daemon.
pub(crate) fn accept_gratuitous_arp(ns: &str) {
    sysctl(ns, "net.ipv4.conf.eth0.arp_accept=1");
    sysctl(ns, "net.ipv4.neigh.eth0.locktime=0");
}

/// Says SKIPPED when namespaces cannot be made, or fails the test when
/// HAPOOL_REQUIRE_TOOLS=1.
pub(crate) fn skipped_without_namespaces() {
    assert!(
        std::env::var("HAPOOL_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "HAPOOL_REQUIRE_TOOLS=1 but no network namespace could be made (root and iproute2)"
    );
    eprintln!("SKIPPED: no network namespace (needs root and iproute2)");
}

/// Starts `hapool registrar` on free loopback ports with an admin port and
/// `extra` flags; the process, its ASAP address and its admin address.
pub(crate) fn registrar_with_admin(extra: &[&str]) -> (std::process::Child, String, String) {
    use std::io::BufRead;
    let mut registrar = Command::new(env!("CARGO_BIN_EXE_hapool"))
        .args([
            "registrar",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(registrar.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let asap = first.trim().rsplit(' ').next().unwrap().to_owned();
    // Then the other ports it serves, the admin port last.
    let admin = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "no admin port line");
        if let Some(admin) = line.trim().strip_prefix("admin HTTP on ") {
            break admin.to_owned();
        }
    };
    (registrar, asap, admin)
}

/// Starts `hapool pe` keeping the server at `address` registered in
/// `pool` at the registrar `registrar`, with `extra` flags.
pub(crate) fn spawn_pe(
    registrar: &str,
    pool: &str,
    address: &str,
    extra: &[&str],
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_hapool"))
        .args(["pe", "--registrar", registrar, "--pool", pool])
        .args(["--address", address])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A directory of files for one test, removed when the test ends.
pub(crate) struct Scratch(std::path::PathBuf);

impl Scratch {
    pub(crate) fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hapool-test-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `text` to the file `name` in the directory.
    pub(crate) fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The value of `field` (e.g. `SigCgt`) in process `pid`'s
/// `/proc/PID/status`, trimmed.
pub(crate) fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"))
        .trim()
        .to_owned()
}

/// Whether process `pid` handles SIGTERM now (its `SigCgt` mask in
/// `/proc`): a daemon that says it is ready must, since its service
/// manager may stop it at once.
pub(crate) fn handles_sigterm(pid: u32) -> bool {
    let caught = u64::from_str_radix(&proc_status(pid, "SigCgt"), 16).unwrap();
    caught & (1 << (15 - 1)) != 0
}

/// A service manager's notification socket (`NOTIFY_SOCKET`): what a
/// daemon of `Type=notify` tells it, message by message.
pub(crate) struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    /// What `NOTIFY_SOCKET` says: a path, or `@` and an abstract name.
    pub(crate) name: String,
}

impl NotifySocket {
    /// A socket at `path`, or in the abstract namespace without one.
    pub(crate) fn new(path: Option<&std::path::Path>) -> Self {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let (address, name) = match path {
            Some(path) => (
                SocketAddr::from_pathname(path).unwrap(),
                path.display().to_string(),
            ),
            None => {
                let name = format!("hapool-test-notify-{}", std::process::id());
                (
                    SocketAddr::from_abstract_name(name.as_bytes()).unwrap(),
                    format!("@{name}"),
                )
            }
        };
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .unwrap();
        Self { socket, name }
    }

    /// The next message (within 15 s).
    pub(crate) fn heard(&self) -> String {
        let mut message = [0; 1024];
        let n = self
            .socket
            .recv(&mut message)
            .expect("a message to the service manager");
        String::from_utf8_lossy(&message[..n]).into_owned()
    }
}
