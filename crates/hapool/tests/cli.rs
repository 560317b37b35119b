//! The `hapool` command as a user runs it.

use std::io::{BufRead, BufReader};

mod common;
use common::{hapool, hapool_code};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn wire_decode_prints_each_message_of_a_stream() {
    // A registration and a keep-alive ack back to back, as on a TCP stream.
    let (ok, out, err) = hapool(&[
        "wire",
        "decode",
        "01000038 000900084563686f 000a002c 11223344 00000000 00007530",
        "00050010 00070000 00010008 0a000001 0008000c 40000001 40000000",
        "08000014 000900084563686f 000e000811223344",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "ASAP Registration\n  pool handle \"Echo\"\n  pool element 11223344 home 00000000 life 30000 ms\n    user transport tcp://10.0.0.1:7\n    policy LU load=25.00%\nASAP EndpointKeepAliveAck\n  pool handle \"Echo\"\n  PE 11223344\n"
    );
}

#[test]
fn wire_decode_enrp() {
    let (ok, out, err) = hapool(&[
        "wire",
        "decode",
        "--protocol",
        "enrp",
        "07000010 0a0b0c0d 00000000 0badbeef",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "ENRP InitTakeover from 0a0b0c0d to 00000000\n  target registrar 0badbeef\n"
    );
}

#[test]
fn wire_decode_names_the_fault_and_the_cause() {
    // A deregistration whose PE identifier parameter says length 12.
    let (ok, _, err) = hapool(&[
        "wire",
        "decode",
        "02000014 000900084563686f 000e000c11223344",
    ]);
    assert!(!ok);
    assert!(err.contains("ASAP message at offset 0"), "{err}");
    assert!(err.contains("Invalid Values (0x0003)"), "{err}");
    // An unknown message type maps to Unrecognized Message.
    let (ok, _, err) = hapool(&["wire", "decode", "7f000004"]);
    assert!(!ok);
    assert!(err.contains("Unrecognized Message (0x0002)"), "{err}");
    // Not hex at all.
    let (ok, _, err) = hapool(&["wire", "decode", "zz"]);
    assert!(!ok);
    assert!(err.contains("not hex"), "{err}");
    // A message cut short.
    let (ok, _, err) = hapool(&["wire", "decode", "08000014 00090008"]);
    assert!(!ok);
    assert!(err.contains("not a whole ASAP message"), "{err}");
}

/// Starts `hapool pe` for the server at `server` in pool `web`, with
/// `extra` flags.
fn spawn_pe(registrar: &str, server: &str, extra: &[&str]) -> Running {
    Running(common::spawn_pe(registrar, "web", server, extra))
}

/// Sends SIGTERM to `child` and waits for it.
/// A process a test started: killed when it goes out of scope, so that
/// none outlives a test whose assertion failed before [`terminate`].
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // After `terminate` the process is gone and this does nothing.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn terminate(mut child: Running) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    child.wait().expect("wait")
}

/// Runs `hapool resolve` until `done` accepts its output, for 10 s at most.
fn resolve_until(registrar: &str, done: impl Fn(bool, &str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (ok, out, err) = hapool(&["resolve", "web", "--registrar", registrar]);
        if done(ok, &out) {
            return format!("{out}{err}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "resolve gave: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn registrar_pe_sidecar_and_resolve() {
    let (registrar, addr) = start_registrar(&[
        "--id",
        "abcd",
        "--keep-alive-interval",
        "200ms",
        "--keep-alive-timeout",
        "200ms",
    ]);

    // An existing server, and the sidecar that registers it while it is up.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap().to_string();
    let pe = spawn_pe(
        &addr,
        &server_addr,
        &[
            "--policy",
            "lu",
            "--load",
            "25",
            "--id",
            "77",
            "--probe-interval",
            "100ms",
        ],
    );
    let out = resolve_until(&addr, |ok, out| ok && out.contains("0000004d"));
    assert!(out.contains(&format!("tcp://{server_addr}")), "{out}");
    assert!(out.contains("LU load=25.00%"), "{out}");
    assert!(out.contains("home 0000abcd"), "{out}");

    // The server goes down: the sidecar deregisters it.
    drop(server);
    let out = resolve_until(&addr, |ok, _| !ok);
    assert!(out.contains("Unknown Pool Handle"), "{out}");

    // SIGTERM ends both cleanly.
    assert!(terminate(pe).success());
    assert!(terminate(registrar).success());
}

#[test]
fn bad_arguments_are_named_and_exit_64() {
    let pe = [
        "pe",
        "--registrar",
        "127.0.0.1:1",
        "--pool",
        "p",
        "--address",
        "127.0.0.1:2",
    ];
    let (code, _, err) = hapool_code(&[&pe[..], &["--policy", "fastest"]].concat());
    assert_eq!(code, 64);
    assert!(err.contains("unknown policy \"fastest\""), "{err}");
    let (code, _, err) = hapool_code(&[&pe[..], &["--policy", "lu", "--load", "150"]].concat());
    assert_eq!(code, 64);
    assert!(err.contains("150 is not a percentage"), "{err}");
    let (code, _, err) = hapool_code(&["registrar", "--id", "0"]);
    assert_eq!(code, 64);
    assert!(err.contains("0 is reserved"), "{err}");
    let (code, _, err) = hapool_code(&["registrar", "--keep-alive-interval", "soon"]);
    assert_eq!(code, 64);
    assert!(err.contains("--keep-alive-interval"), "{err}");
    // A port already taken is a runtime failure, named, exit 1.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = hapool_code(&["registrar", "--listen", &addr]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert_eq!(hapool_code(&["--help"]).0, 0);
}

/// Starts `hapool registrar` on a free port; returns it and its address.
/// Checks the line it prints first.
fn start_registrar(extra: &[&str]) -> (Running, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hapool"));
    command
        .args(["registrar", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stderr(Stdio::null());
    let (registrar, line) = serving(command);
    if let Some(i) = extra.iter().position(|a| *a == "--id") {
        assert!(
            line.starts_with(&format!("registrar {:0>8}", extra[i + 1])),
            "{line}"
        );
    }
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    (registrar, addr)
}

/// Starts a registrar by `command` and waits for its first line, which
/// says where it serves ASAP.
fn serving(mut command: Command) -> (Running, String) {
    let mut registrar = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(registrar.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("registrar ") && line.contains(" serving ASAP on "),
        "{line}"
    );
    (Running(registrar), line)
}

#[test]
fn bench_loads_a_registrar() {
    let (registrar, addr) =
        start_registrar(&["--registration-rate", "0", "--resolution-rate", "0"]);
    let (ok, out, err) = hapool(&[
        "bench",
        "--registrar",
        &addr,
        "--concurrency",
        "2",
        "--duration",
        "200ms",
    ]);
    assert!(ok, "{err}");
    for phase in ["register", "re-register", "resolve"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{phase} ")))
            .unwrap_or_else(|| panic!("no {phase} line in {out}"));
        let requests: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(requests > 0, "{line}");
    }
    assert!(terminate(registrar).success());
    // Failure detection at 100 ms + 100 ms keep-alives.
    let (registrar, addr) = start_registrar(&[
        "--keep-alive-interval",
        "100ms",
        "--keep-alive-timeout",
        "100ms",
    ]);
    let (ok, out, err) = hapool(&["bench", "--registrar", &addr, "--failure-detection"]);
    assert!(ok, "{err}");
    let hung_ms: u64 = out
        .lines()
        .find(|l| l.starts_with("hung PE"))
        .and_then(|l| l.split_whitespace().rev().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    // Interval + timeout (200 ms), counted by the bench from the
    // registration's answer, so from a little after the registrar's own
    // count began (199 ms was seen): more than one interval alone, less
    // than two rounds.
    assert!((150..400).contains(&hung_ms), "{out}");
    assert!(
        out.contains("killed PE (connection closed): out of resolution"),
        "{out}"
    );
    assert!(terminate(registrar).success());
    // With the default limits the registrar refuses the flood, and the
    // bench says so.
    let (registrar, addr) = start_registrar(&[]);
    let (ok, _, err) = hapool(&[
        "bench",
        "--registrar",
        &addr,
        "--concurrency",
        "1",
        "--duration",
        "2s",
    ]);
    assert!(!ok);
    assert!(err.contains("Lack of Resources"), "{err}");
    assert!(terminate(registrar).success());
}

/// GET `path` from `addr` over plain HTTP/1.0; the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[test]
fn status_and_metrics_from_the_admin_port() {
    let (registrar, asap, admin) = common::registrar_with_admin(&["--id", "beef"]);
    let registrar = Running(registrar);
    // A fresh registrar already exports its gauges.
    let metrics = http_get(&admin, "/metrics");
    assert!(
        metrics.contains("hapool_registrar_pool_elements 0"),
        "{metrics}"
    );

    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap().to_string();
    let pe = spawn_pe(
        &asap,
        &server_addr,
        &[
            "--policy",
            "lu",
            "--load",
            "35",
            "--id",
            "42",
            "--probe-interval",
            "100ms",
        ],
    );
    resolve_until(&asap, |ok, _| ok);

    let (ok, table, err) = hapool(&["status", "--admin", &admin]);
    assert!(ok, "{err}");
    assert!(table.starts_with("registrar 0000beef  ASAP "), "{table}");
    let row = table.lines().find(|l| l.starts_with("web ")).expect(&table);
    for field in [
        "0000002a",
        &format!("tcp://{server_addr}"),
        "LU load=35.00%",
        "0000beef",
    ] {
        assert!(row.contains(field), "{row}");
    }
    let (ok, json, _) = hapool(&["status", "--admin", &admin, "--json"]);
    assert!(ok);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["pools"][0]["pool"], "web");
    assert_eq!(doc["pools"][0]["elements"][0]["id"], "0000002a");
    let metrics = http_get(&admin, "/metrics");
    assert!(
        metrics.contains("hapool_registrar_pool_elements 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hapool_registrar_registrations_total{result=\"added\"} 1"),
        "{metrics}"
    );

    assert!(terminate(pe).success());
    assert!(terminate(registrar).success());
    let (ok, _, err) = hapool(&["status", "--admin", &admin]);
    assert!(!ok);
    assert!(err.contains("cannot reach the admin port"), "{err}");
}

/// The admin port closes a client that does not finish its request head
/// within 10 s, and new connections past 256 open at once, so that a
/// flood of idle connections cannot take the daemon's descriptors; it
/// serves again as soon as they go.
#[test]
fn the_admin_port_bounds_slow_and_idle_clients() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let (registrar, _asap, admin) = common::registrar_with_admin(&[]);
    let _registrar = Running(registrar);
    let mut slow = std::net::TcpStream::connect(&admin).unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = slow.read_to_end(&mut got);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "a half-sent request head held the connection {took:?}"
    );
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(&admin).unwrap())
        .collect();
    for s in &idle {
        s.set_nonblocking(true).unwrap();
    }
    let mut closed = vec![false; idle.len()];
    let started = Instant::now();
    while closed.iter().filter(|c| **c).count() < 300 - 256 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {} of the connections past 256 closed",
            closed.iter().filter(|c| **c).count()
        );
        for (s, closed) in idle.iter().zip(&mut closed) {
            *closed |= matches!((&*s).read(&mut [0; 1]), Ok(0));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    for (s, closed) in idle.iter().zip(&mut closed) {
        *closed |= matches!((&*s).read(&mut [0; 1]), Ok(0));
    }
    assert_eq!(
        closed.iter().filter(|c| **c).count(),
        300 - 256,
        "the first 256 stay open"
    );
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    assert!(http_get(&admin, "/status").contains("registrar_id"));
}

/// A registrar out of descriptors (64 here, 100 connections open) stops
/// accepting for a moment after each failure, instead of failing again at
/// once in a loop: little CPU and a warning a second, not millions; and it
/// serves again once the connections go.
#[test]
fn a_registrar_out_of_descriptors_waits_instead_of_spinning() {
    use std::io::Read;
    let scratch = common::Scratch::new("registrar_out_of_descriptors");
    let log = scratch.write("registrar.log", "");
    let mut command = Command::new("prlimit");
    command
        .args(["--nofile=64:64", env!("CARGO_BIN_EXE_hapool")])
        .args(["registrar", "--listen", "127.0.0.1:0"])
        .stderr(std::fs::File::create(&log).unwrap());
    let (registrar, line) = serving(command);
    let asap = line.trim().rsplit(' ').next().unwrap().to_owned();
    let open: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(&asap).unwrap())
        .collect();
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", registrar.id())).unwrap();
        let fields: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        fields[0] + fields[1]
    };
    std::thread::sleep(Duration::from_millis(500));
    let (before, started) = (cpu(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu() - before;
    let took = started.elapsed();
    let mut text = String::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let warnings = text.matches("cannot accept connections").count();
    assert!(
        (1..=5).contains(&warnings),
        "{warnings} warnings in {:?}",
        took + Duration::from_millis(500)
    );
    // Clock ticks are hundredths of a second: under a fifth of the time.
    assert!(ticks < 40, "{ticks} ticks of CPU in {took:?}");
    drop(open);
    // Served again: the registrar answers (it knows no pool yet).
    let started = Instant::now();
    loop {
        let (_, _, err) = hapool(&["resolve", "web", "--registrar", &asap]);
        if err.contains("Unknown Pool Handle") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{err}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn check_config() {
    let scratch = common::Scratch::new("check_config");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/registrar.toml");
    let (code, out, err) = hapool_code(&["check-config", example]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid"), "{out}");
    assert!(
        out.contains(
            "ASAP on 127.0.0.1:3863, admin 127.0.0.1:3880, keep-alive every 5s (timeout 5s)"
        ),
        "{out}"
    );

    let vip = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/vip.toml");
    let (code, out, err) = hapool_code(&["check-config", vip]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("virtual router 51 on eth0 (192.0.2.11): priority 200, advertisements every 1000 ms, addresses [192.0.2.100], 1 tracking check(s)"),
        "{out}"
    );

    let gateway = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/gateway.toml");
    let (code, out, err) = hapool_code(&["check-config", gateway]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "gateway listener 127.0.0.1:2525 (Tcp) -> pool mail, affinity by client address"
        )
            && out.contains("gateway pool web: members from the registrars, busy below 10, at most 500 sessions per member")
            && out.contains("gateway pool mail: 2 static member(s)"),
        "{out}"
    );
    let proxied = scratch.write(
        "proxied.toml",
        "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:25\"\nprotocol = \"tcp\"\npool = \"mail\"\naccept_proxy_protocol = true\n[[gateway.pool]]\nhandle = \"mail\"\nmembers = [\"127.0.0.1:2525\"]\nproxy_protocol = \"v2\"\n",
    );
    let (code, out, err) = hapool_code(&["check-config", proxied.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "-> pool mail, affinity by client address, client address from a PROXY protocol header"
        ) && out.contains(", PROXY protocol v2 header to members"),
        "{out}"
    );

    let cases = [
        (
            "unknown.toml",
            "[registrar]\nlisten = \"127.0.0.1:1\"\nlisten_port = 5\n",
            "unknown field `listen_port`",
        ),
        (
            "duration.toml",
            "[registrar.keep_alive]\ninterval = \"soon\"\n",
            "at line 2",
        ),
        (
            "zero.toml",
            "[registrar.limits]\nmax_pools = 0\n",
            "registrar.limits.max_pools = 0",
        ),
        (
            "items.toml",
            "[registrar.limits]\ndefault_items = 9\nmax_items = 4\n",
            "default_items = 9 is above registrar.limits.max_items = 4",
        ),
        (
            "rate.toml",
            "[registrar.limits]\nresolution_rate = -1\n",
            "registrar.limits.resolution_rate = -1",
        ),
        (
            "fast.toml",
            "[registrar.keep_alive]\ntimeout = \"1ms\"\n",
            "below the 10ms minimum",
        ),
        ("id.toml", "[registrar]\nid = \"xyz\"\n", "registrar.id"),
        ("empty.toml", "", "no [registrar], [gateway] or [vip] table"),
        (
            "vip-interval.toml",
            "[[vip.router]]\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\nvrid = 5\naddresses = [\"10.0.0.100/24\"]\nadvert_interval = \"5ms\"\n",
            "vip.router[0].advert_interval = 5ms: 10ms to 40.95s",
        ),
        (
            "vip-priority.toml",
            "[[vip.router]]\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\nvrid = 5\naddresses = [\"10.0.0.100/24\"]\npriority = \"boss\"\n",
            "vip.router[0].priority = \"boss\"",
        ),
        (
            "vip-track.toml",
            "[[vip.router]]\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\nvrid = 5\naddresses = [\"10.0.0.100/24\"]\n[[vip.router.track]]\ntcp = \"127.0.0.1:80\"\ncommand = \"true\"\n",
            "vip.router[0].track[0]: exactly one of tcp, http, command",
        ),
        (
            "vip-families.toml",
            "[[vip.router]]\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\nvrid = 5\naddresses = [\"10.0.0.100/24\", \"2001:db8::5/64\"]\n",
            "every virtual address of a router is of one family",
        ),
        (
            "vip-v6-source.toml",
            "[[vip.router]]\ninterface = \"eth0\"\naddress = \"2001:db8::2\"\nvrid = 5\naddresses = [\"2001:db8::5/64\"]\n",
            "vip.router[0].address = 2001:db8::2: for IPv6 virtual addresses, this machine's link-local address",
        ),
        (
            "vip-v4-source.toml",
            "[[vip.router]]\ninterface = \"eth0\"\nvrid = 5\naddresses = [\"10.0.0.100/24\"]\n",
            "vip.router[0].address: required for IPv4 virtual addresses",
        ),
        (
            "rule.toml",
            "[[registrar.rules]]\npools = []\nidentities = [\"a\"]\n",
            "registrar.rules[0]: needs at least one pool",
        ),
        (
            "enrp-timers.toml",
            "[registrar.enrp]\nheartbeat = \"1s\"\nmax_time_last_heard = \"500ms\"\n",
            "max_time_last_heard = 500ms must be longer than registrar.enrp.heartbeat = 1s",
        ),
        (
            "enrp-address.toml",
            "[registrar.enrp]\nlisten = \"0.0.0.0:9901\"\n",
            "registrar.enrp.address = 0.0.0.0:9901",
        ),
        (
            "enrp-self.toml",
            "[registrar.enrp]\nlisten = \"127.0.0.1:9901\"\npeers = [\"127.0.0.1:9901\"]\n",
            "127.0.0.1:9901 is this registrar's own ENRP address",
        ),
        (
            "enrp-tls.toml",
            "[registrar.enrp.tls]\ncertificate = \"/nonexistent/r.pem\"\nkey = \"/nonexistent/r.key\"\nca = \"/nonexistent/ca.pem\"\n",
            "registrar.enrp.tls: ",
        ),
        (
            "glob.toml",
            "[[registrar.rules]]\npools = [\"a*b\"]\nidentities = [\"a\"]\n",
            "\"a*b\" is neither a pool handle nor a prefix",
        ),
    ];
    for (name, text, message) in cases {
        let path = scratch.write(name, text);
        let (code, _, err) = hapool_code(&["check-config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "{name}: {err}");
        assert!(err.contains(message), "{name}: {err}");
    }
    let (code, _, err) = hapool_code(&["check-config", "/nonexistent/hapool.toml"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("cannot read configuration file /nonexistent/hapool.toml"),
        "{err}"
    );
}

#[test]
fn registrar_flags_override_its_config_file() {
    let scratch = common::Scratch::new("registrar_flags_override_its_config_file");
    let path = scratch.write(
        "override.toml",
        "[registrar]\nid = \"1234\"\nlisten = \"127.0.0.1:1\"\n[registrar.keep_alive]\ninterval = \"200ms\"\n",
    );
    // The file's listen address (port 1) is overridden by the
    // `--listen 127.0.0.1:0` that start_registrar passes; the file's other
    // settings still load (and start_registrar checks the printed id).
    let (registrar, addr) = start_registrar(&["--config", path.to_str().unwrap(), "--id", "1234"]);
    assert!(!addr.ends_with(":1"), "{addr}");

    let (ok, _, err) = hapool(&["resolve", "none", "--registrar", &addr]);
    assert!(!ok);
    assert!(err.contains("Unknown Pool Handle"), "{err}");
    assert!(terminate(registrar).success());
}

#[test]
fn sidecar_probes_and_load_from_commands() {
    let (registrar, addr) = start_registrar(&[]);
    let dir = std::env::temp_dir().join(format!("hapool-sidecar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (health, load) = (dir.join("healthy"), dir.join("load"));
    std::fs::write(&health, "").unwrap();
    std::fs::write(&load, "10\n").unwrap();
    let pe = Running(
        Command::new(env!("CARGO_BIN_EXE_hapool"))
            .args([
                "pe",
                "--registrar",
                &addr,
                "--pool",
                "web",
                "--address",
                "127.0.0.1:9",
            ])
            .args(["--policy", "lu", "--probe-interval", "50ms"])
            .args(["--probe-command", &format!("test -f {}", health.display())])
            .args(["--load-command", &format!("cat {}", load.display())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Healthy by the command although nothing listens on port 9.
    resolve_until(&addr, |ok, out| ok && out.contains("LU load=10.00%"));
    std::fs::write(&load, "60%\n").unwrap();
    resolve_until(&addr, |ok, out| ok && out.contains("LU load=60.00%"));
    // A load that is not a percentage is ignored (logged), the last one kept.
    std::fs::write(&load, "lots\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (ok, out, _) = hapool(&["resolve", "web", "--registrar", &addr]);
    assert!(ok && out.contains("LU load=60.00%"), "{out}");
    std::fs::remove_file(&health).unwrap();
    let out = resolve_until(&addr, |ok, _| !ok);
    assert!(out.contains("Unknown Pool Handle"), "{out}");
    assert!(terminate(pe).success());
    assert!(terminate(registrar).success());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn registrar_over_tls_with_client_certificates() {
    let scratch = common::Scratch::new("registrar_over_tls_with_client_certificates");
    let pki = |f: &str| format!("{}/../hapool-net/tests/pki/{f}", env!("CARGO_MANIFEST_DIR"));
    let config = scratch.write(
        "tls.toml",
        &format!(
            "[registrar]\nlisten = \"127.0.0.1:0\"\n[registrar.tls]\nlisten = \"127.0.0.1:0\"\n\
             certificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
             [[registrar.rules]]\npools = [\"web\"]\nidentities = [\"pe-a\"]\n",
            pki("server.pem"),
            pki("server.key"),
            pki("ca.pem")
        ),
    );
    let (code, out, err) = hapool_code(&["check-config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("1 registration rule(s)") && out.contains("ASAP over TLS on 127.0.0.1:0"),
        "{out}"
    );
    let mut registrar = Running(
        Command::new(env!("CARGO_BIN_EXE_hapool"))
            .args(["registrar", "--config", config.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(registrar.stdout.take().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    out.read_line(&mut first).unwrap();
    out.read_line(&mut second).unwrap();
    let tls = second
        .trim()
        .strip_prefix("ASAP over TLS on ")
        .expect(&second)
        .to_owned();

    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap().to_string();
    let tls_flags = [
        "--tls-ca",
        &pki("ca.pem"),
        "--tls-cert",
        &pki("pe-a.pem"),
        "--tls-key",
        &pki("pe-a.key"),
    ];
    let pe = Running(
        Command::new(env!("CARGO_BIN_EXE_hapool"))
            .args([
                "pe",
                "--registrar",
                &tls,
                "--pool",
                "web",
                "--address",
                &server_addr,
                "--id",
                "10",
            ])
            .args(["--probe-interval", "100ms"])
            .args(tls_flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    loop {
        let (ok, out, err) = hapool(&[
            "resolve",
            "web",
            "--registrar",
            &tls,
            "--tls-ca",
            &pki("ca.pem"),
        ]);
        if ok && out.contains("0000000a") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{out}{err}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A CA file that cannot be read is named, and is a bad configuration.
    let (code, _, err) = hapool_code(&[
        "resolve",
        "web",
        "--registrar",
        &tls,
        "--tls-ca",
        "/nonexistent.pem",
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("/nonexistent.pem"), "{err}");
    assert!(terminate(pe).success());
    assert!(terminate(registrar).success());
}

#[test]
fn a_registrar_tells_its_service_manager_when_it_serves_and_stops() {
    // An abstract name, as systemd gives (`@/org/freedesktop/...`).
    let manager = common::NotifySocket::new(None);
    let mut registrar = Command::new(env!("CARGO_BIN_EXE_hapool"))
        .args(["registrar", "--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &manager.name)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(manager.heard(), "READY=1");
    assert!(
        common::handles_sigterm(registrar.id()),
        "ready before it handles SIGTERM"
    );
    // Ready is serving: the address it printed takes connections.
    let mut first = String::new();
    BufReader::new(registrar.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let address = first.trim().rsplit(' ').next().unwrap();
    std::net::TcpStream::connect(address).unwrap();
    let sent = Command::new("kill")
        .args(["-TERM", &registrar.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert_eq!(manager.heard(), "STOPPING=1");
    assert!(registrar.wait().unwrap().success());
}
