//! The VRRP driver on a real link: two network namespaces of this test's
//! own, joined by a veth pair. One side sends an advertisement to the VRRP
//! group, takes a virtual address and announces it by gratuitous ARP; the
//! other side receives the advertisement with its TTL, and its neighbour
//! table learns the virtual address at the sender's MAC. Needs root and
//! iproute2; without them it says SKIPPED, unless HAPOOL_REQUIRE_TOOLS=1.
//!
//! Each side runs as this test binary re-executed inside its namespace
//! (`ip netns exec`), in the ignored entry point `namespace_side`.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

use hapool_net::vrrp::{Addresses, Interface, VrrpSocket, gratuitous_arp};

/// The wire reference's IPv4 advertisement (VRID 1, priority 100, 1 s,
/// 192.0.2.254), checksummed for source 192.0.2.1.
const ADVERTISEMENT: [u8; 12] = [0x31, 1, 100, 1, 0, 100, 0x05, 0x0a, 192, 0, 2, 254];

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Link {
    namespaces: [String; 2],
    interfaces: [String; 2],
}

impl Link {
    fn create() -> Option<Self> {
        let id = std::process::id();
        let namespaces = [format!("hapool-vd-{id}-a"), format!("hapool-vd-{id}-b")];
        let interfaces = [format!("hv{id}a"), format!("hv{id}b")];
        if !ip(&["netns", "add", &namespaces[0]]) {
            return None;
        }
        let link = Self {
            namespaces,
            interfaces,
        };
        assert!(ip(&["netns", "add", &link.namespaces[1]]));
        assert!(ip(&[
            "link",
            "add",
            &link.interfaces[0],
            "type",
            "veth",
            "peer",
            "name",
            &link.interfaces[1]
        ]));
        for side in 0..2 {
            let (ns, ifname) = (&link.namespaces[side], &link.interfaces[side]);
            let address = format!("10.231.0.{}/24", side + 1);
            assert!(ip(&["link", "set", ifname, "netns", ns]));
            assert!(ip(&["-n", ns, "addr", "add", &address, "dev", ifname]));
            assert!(ip(&["-n", ns, "link", "set", ifname, "up"]));
            assert!(ip(&["-n", ns, "link", "set", "lo", "up"]));
        }
        // The receiving side takes unsolicited ARP into its table.
        let sysctl = format!("net.ipv4.conf.{}.arp_accept=1", link.interfaces[1]);
        assert!(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &link.namespaces[1],
                    "sysctl",
                    "-qw",
                    &sysctl
                ])
                .status()
                .unwrap()
                .success()
        );
        Some(link)
    }

    /// This test binary, re-executed in namespace `side` as `role`.
    fn side(&self, side: usize, role: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespaces[side]])
            .arg(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "namespace_side", "--nocapture"])
            .env("HAPOOL_VRRP_ROLE", role)
            .env("HAPOOL_VRRP_INTERFACE", &self.interfaces[side])
            .env("HAPOOL_VRRP_ADDRESS", format!("10.231.0.{}", side + 1));
        c
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

#[test]
fn advertisement_address_and_gratuitous_arp_cross_a_link() {
    let Some(link) = Link::create() else {
        assert!(
            std::env::var("HAPOOL_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "HAPOOL_REQUIRE_TOOLS=1 but no network namespace could be made (root and iproute2)"
        );
        eprintln!("SKIPPED: no network namespace (needs root and iproute2)");
        return;
    };
    let receiver = link
        .side(1, "receive")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let sender = link.side(0, "send").output().unwrap();
    let sent = String::from_utf8_lossy(&sender.stdout);
    assert!(
        sender.status.success(),
        "{sent}\n{}",
        String::from_utf8_lossy(&sender.stderr)
    );
    assert!(sent.contains("address added: true"), "{sent}");
    assert!(sent.contains("address removed: true"), "{sent}");
    let received = receiver.wait_with_output().unwrap();
    let got = String::from_utf8_lossy(&received.stdout);
    assert!(received.status.success(), "{got}");
    assert!(
        got.contains("received from 10.231.0.1 to 224.0.0.18 ttl 255: 31016401006405"),
        "{got}"
    );
    // The neighbour table of the receiving side has the virtual address at
    // the sender's MAC.
    let out = Command::new("ip")
        .args([
            "-n",
            &link.namespaces[0],
            "-o",
            "link",
            "show",
            &link.interfaces[0],
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let neigh = Command::new("ip")
        .args(["-n", &link.namespaces[1], "neigh", "show", "10.231.0.100"])
        .output()
        .unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(
        !mac.is_empty() && neigh.contains(&mac),
        "neighbour {neigh:?}, sender MAC {mac:?}"
    );
}

/// One side of the link test, run inside its namespace by the test above.
#[test]
#[ignore = "an entry point of the namespace test, not a test by itself"]
fn namespace_side() {
    let role = std::env::var("HAPOOL_VRRP_ROLE").expect("run by the namespace test");
    let name = std::env::var("HAPOOL_VRRP_INTERFACE").unwrap();
    let address: Ipv4Addr = std::env::var("HAPOOL_VRRP_ADDRESS")
        .unwrap()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let interface = Interface::find(&name).unwrap();
        let socket = VrrpSocket::open(&interface, IpAddr::V4(address)).unwrap();
        match role.as_str() {
            "receive" => {
                let got = tokio::time::timeout(Duration::from_secs(5), socket.recv())
                    .await
                    .expect("an advertisement within 5 s")
                    .unwrap();
                let hex: String = got.message.iter().map(|b| format!("{b:02x}")).collect();
                println!(
                    "received from {} to {} ttl {}: {hex}",
                    got.source, got.destination, got.ttl
                );
            }
            "send" => {
                socket.send_to_group(&ADVERTISEMENT).await.unwrap();
                let vip = IpAddr::V4(Ipv4Addr::new(10, 231, 0, 100));
                let addresses = Addresses::connect().unwrap();
                addresses.add(&interface, vip, 24).await.unwrap();
                // Already there is fine (a master asked to take it again).
                addresses.add(&interface, vip, 24).await.unwrap();
                println!(
                    "address added: {}",
                    addresses.has(&interface, vip).await.unwrap()
                );
                gratuitous_arp(&interface, Ipv4Addr::new(10, 231, 0, 100)).unwrap();
                std::thread::sleep(Duration::from_millis(200));
                addresses.remove(&interface, vip).await.unwrap();
                println!(
                    "address removed: {}",
                    !addresses.has(&interface, vip).await.unwrap()
                );
            }
            other => panic!("unknown role {other}"),
        }
    });
}
