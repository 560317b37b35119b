//! The three-node installation of `deploy/three-node/`, run as written:
//! three network namespaces with the example's addresses (192.0.2.11-13 on
//! `eth0`, joined by a bridge), each running `hapool registrar`, `hapool
//! gateway` and `hapool vip` from its `nodeN.toml`, and a web server kept
//! registered by `hapool pe`; a client namespace asks for
//! `http://192.0.2.10/`, the virtual address. Node 1 dies (every process
//! killed, link cut): the address moves to node 2 and the cluster drops
//! node 1's server. Then only node 2's gateway dies: its tracking check
//! gives the address to node 3. Needs root and iproute2; without them it
//! says SKIPPED, unless HAPOOL_REQUIRE_TOOLS=1.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "change-this-shared-registration-token";

mod common;
use common::ip;

/// One node's processes, by role.
#[derive(Default)]
struct Node {
    processes: Vec<(&'static str, Child)>,
}

struct Lab {
    prefix: String,
    nodes: Vec<Node>,
    dir: std::path::PathBuf,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn create() -> Option<Self> {
        let prefix = format!("hapool-3n-{}", std::process::id());
        if !common::switch(&format!("{prefix}-sw")) {
            return None;
        }
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        let lab = Self {
            prefix,
            nodes: (0..3).map(|_| Node::default()).collect(),
            dir,
        };
        let hosts = [
            ("n1", "192.0.2.11/24"),
            ("n2", "192.0.2.12/24"),
            ("n3", "192.0.2.13/24"),
            ("c", "192.0.2.100/24"),
        ];
        for (k, (name, address)) in hosts.iter().enumerate() {
            let tag = format!("h3{}{k}", std::process::id() % 100_000);
            common::host(&lab.ns("sw"), &lab.ns(name), &tag, &[address]);
        }
        common::accept_gratuitous_arp(&lab.ns("c"));
        Some(lab)
    }

    /// Runs `args` in node `n`'s namespace (0-based), as `role`.
    fn run(&mut self, n: usize, role: &'static str, program: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("n{}-{role}.log", n + 1))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(&format!("n{}", n + 1)), program])
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[n].processes.push((role, child));
    }

    fn start_node(&mut self, n: usize) {
        let hapool = env!("CARGO_BIN_EXE_hapool");
        let config = format!(
            "{}/../../deploy/three-node/node{}.toml",
            env!("CARGO_MANIFEST_DIR"),
            n + 1
        );
        let me = format!("192.0.2.1{}", n + 1);
        self.run(n, "registrar", hapool, &["registrar", "--config", &config]);
        self.run(n, "gateway", hapool, &["gateway", "--config", &config]);
        self.run(n, "vip", hapool, &["vip", "--config", &config]);
        // The node's web server, and the sidecar that keeps it registered.
        let web = format!("{me}:8080");
        let test = std::env::current_exe().unwrap();
        let mut service = Command::new("ip");
        service
            .args(["netns", "exec", &self.ns(&format!("n{}", n + 1))])
            .arg(&test)
            .args(["--ignored", "--exact", "web_server", "--nocapture"])
            .env("HAPOOL_3N_LISTEN", &web)
            .env("HAPOOL_3N_NAME", format!("node{}", n + 1))
            .stdout(Stdio::null());
        self.nodes[n]
            .processes
            .push(("web", service.spawn().unwrap()));
        let token = self.dir.join("token");
        self.run(
            n,
            "pe",
            hapool,
            &[
                "pe",
                "--registrar",
                &format!("{me}:3863"),
                "--pool",
                "web",
                "--address",
                &web,
                "--token-file",
                token.to_str().unwrap(),
                "--life",
                "6s",
            ],
        );
    }

    /// Every process of node `n` dies at once (SIGKILL: none says goodbye)
    /// and its link goes down, as when the machine dies.
    fn kill_node(&mut self, n: usize) {
        for (_, child) in &mut self.nodes[n].processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[n].processes.clear();
        assert!(ip(&[
            "-n",
            &self.ns(&format!("n{}", n + 1)),
            "link",
            "set",
            "eth0",
            "down"
        ]));
    }

    fn kill_role(&mut self, n: usize, role: &str) {
        for (r, child) in &mut self.nodes[n].processes {
            if *r == role {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The body the client gets from `http://192.0.2.10/`, if any.
    fn ask(&self) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("c")])
            .arg(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "client", "--nocapture"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("answer: ").map(str::to_owned))
    }

    /// Which live nodes hold the virtual address on their interface. (A
    /// dead machine's stale address does not count: its link is down.)
    fn holders(&self) -> Vec<usize> {
        (0..3)
            .filter(|&n| !self.nodes[n].processes.is_empty())
            .filter(|&n| {
                let out = Command::new("ip")
                    .args([
                        "-n",
                        &self.ns(&format!("n{}", n + 1)),
                        "-o",
                        "addr",
                        "show",
                        "eth0",
                    ])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains("192.0.2.10/")
            })
            .collect()
    }

    /// `hapool resolve web` from node `n`'s registrar.
    fn resolve(&self, n: usize) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(&format!("n{}", n + 1))])
            .args([
                env!("CARGO_BIN_EXE_hapool"),
                "resolve",
                "web",
                "--registrar",
            ])
            .arg(format!("192.0.2.1{}:3863", n + 1))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn until(&self, what: &str, limit: Duration, mut done: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            if start.elapsed() > limit {
                let logs: Vec<String> = std::fs::read_dir(&self.dir)
                    .unwrap()
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .map(|e| {
                        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(8).collect();
                        format!(
                            "{}:\n{}",
                            e.path().display(),
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                panic!(
                    "{what} (within {limit:?}); holders {:?}; last answer {:?}\n{}",
                    self.holders(),
                    self.ask(),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            for (_, child) in &mut node.processes {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for name in ["n1", "n2", "n3", "c", "sw"] {
            let _ = ip(&["netns", "del", &self.ns(name)]);
        }
        // The logs stay when the test failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn the_three_node_example_survives_a_node_and_a_gateway() {
    let Some(mut lab) = Lab::create() else {
        common::skipped_without_namespaces();
        return;
    };
    for n in 0..3 {
        lab.start_node(n);
    }
    // Node 1 (primary) holds the address; the client is served, and every
    // registrar knows all three web servers.
    lab.until(
        "node 1 never held the virtual address alone",
        Duration::from_secs(20),
        |lab| lab.holders() == [0],
    );
    lab.until(
        "the client was never served",
        Duration::from_secs(20),
        |lab| lab.ask().is_some_and(|a| a.starts_with("node")),
    );
    lab.until(
        "the registrars never shared all three servers",
        Duration::from_secs(20),
        |lab| {
            (0..3).all(|n| {
                let pes = lab.resolve(n);
                (1..=3).all(|k| pes.contains(&format!("192.0.2.1{k}:8080")))
            })
        },
    );
    // Node 1 dies: node 2 takes the address, the client is served by the
    // servers left, and the cluster drops node 1's server.
    lab.kill_node(0);
    lab.until(
        "node 2 never took the address over",
        Duration::from_secs(10),
        |lab| lab.holders() == [1],
    );
    lab.until(
        "the client was not served after node 1 died",
        Duration::from_secs(10),
        |lab| lab.ask().is_some_and(|a| a == "node2" || a == "node3"),
    );
    lab.until(
        "node 1's server stayed registered",
        Duration::from_secs(20),
        |lab| {
            (1..3).all(|n| {
                let pes = lab.resolve(n);
                !pes.contains("192.0.2.11:8080") && pes.contains("192.0.2.12:8080")
            })
        },
    );
    // Node 2's gateway dies, its machine lives: the tracking check of its
    // gateway's admin port lowers node 2's priority below node 3's.
    lab.kill_role(1, "gateway");
    lab.until(
        "node 3 never took the address from node 2's dead gateway",
        Duration::from_secs(10),
        |lab| lab.holders() == [2],
    );
    lab.until(
        "the client was not served through node 3",
        Duration::from_secs(10),
        |lab| lab.ask().is_some_and(|a| a == "node2" || a == "node3"),
    );
}

/// Run inside a node's namespace by the test above: an HTTP server on
/// HAPOOL_3N_LISTEN answering HAPOOL_3N_NAME to every request.
#[test]
#[ignore = "run by the_three_node_example_survives_a_node_and_a_gateway"]
fn web_server() {
    let (Ok(listen), Ok(name)) = (
        std::env::var("HAPOOL_3N_LISTEN"),
        std::env::var("HAPOOL_3N_NAME"),
    ) else {
        return;
    };
    let listener = std::net::TcpListener::bind(&listen).unwrap();
    for stream in listener.incoming().flatten() {
        let name = name.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut head = Vec::new();
            let mut buf = [0u8; 2048];
            loop {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                head.drain(..end);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                    name.len()
                );
                if stream.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
}

/// Run in the client namespace: one GET of http://192.0.2.10/.
#[test]
#[ignore = "run by the_three_node_example_survives_a_node_and_a_gateway"]
fn client() {
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(
        &"192.0.2.10:80".parse().unwrap(),
        Duration::from_millis(500),
    ) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nhost: 192.0.2.10\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    if text.starts_with("HTTP/1.1 200") {
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            println!("answer: {body}");
        }
    }
}
