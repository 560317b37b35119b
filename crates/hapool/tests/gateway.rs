//! `hapool gateway` as an operator runs it: a registrar, two servers kept
//! registered by `hapool pe`, the gateway in front of them, `gateway ctl`
//! to drain one, and the registrar killed while traffic goes on.

mod common;
use common::hapool_code;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP/1.1 server that answers every request with its `name`, on
/// keep-alive connections; one thread per connection.
fn backend(name: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut line = String::new();
                    // The request head: lines up to an empty one.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                        name.len()
                    );
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// GET `path` from `addr` on a new connection: the whole response, or
/// an error, also when the answer has not ended in 10 s.
fn try_get_path(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// GET `path` from `addr` on a new connection: the whole response.
fn get_path(addr: &str, path: &str) -> String {
    try_get_path(addr, path).unwrap()
}

/// GET / through `addr` on a new connection; the body, or the status line
/// when it is not 200.
fn get(addr: &str) -> String {
    let response = get_path(addr, "/");
    if !response.starts_with("HTTP/1.1 200") {
        return response.lines().next().unwrap_or_default().to_owned();
    }
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hapool"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads `child`'s standard output until a line starts with `prefix`.
fn wait_line(child: &mut Child, prefix: &str) -> String {
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "no line {prefix:?}"
        );
        if line.starts_with(prefix) {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            return line.trim().to_owned();
        }
    }
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(15), "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn gateway_in_front_of_registered_servers() {
    let scratch = common::Scratch::new("gateway_in_front_of_registered_servers");
    let mut registrar = spawn(&["registrar", "--listen", "127.0.0.1:0"]);
    let line = wait_line(&mut registrar, "registrar ");
    let registrar_addr = line.rsplit(' ').next().unwrap().to_owned();
    let a = backend("a");
    let b = backend("b");
    let mut children = Killed(vec![registrar]);
    for server in [&a, &b] {
        children.0.push(pe_sidecar(&registrar_addr, server));
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let cache = scratch.write("gateway-members", "");
    std::fs::remove_file(&cache).unwrap();
    let cache_path = cache.display();
    let access = cache.with_file_name("access.log");
    let access_path = access.display();
    let config = scratch.write(
        "gateway.toml",
        &format!(
            r#"
[gateway]
admin = "{admin}"
registrars = ["{registrar_addr}"]
member_cache = "{cache_path}"
access_log = "{access_path}"
refresh = "200ms"
probe_interval = "200ms"

[[gateway.listener]]
listen = "{listen}"
pool = "web"

[[gateway.pool]]
handle = "web"
"#
        ),
    );
    let (code, out, err) = hapool_code(&["check-config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("gateway listener {listen} (Http) -> pool web")),
        "{out}"
    );
    let mut gateway = spawn(&["gateway", "--config", config.to_str().unwrap()]);
    wait_line(&mut gateway, "admin HTTP on");
    children.0.push(gateway);
    // Both servers get traffic once registered and probed.
    let mut seen = std::collections::HashSet::new();
    until("both servers answer through the gateway", || {
        seen.insert(get(&listen));
        seen.contains("a") && seen.contains("b")
    });
    // Each request has its line in the access log, naming its member.
    until("requests in the access log", || {
        let log = std::fs::read_to_string(&access).unwrap_or_default();
        [&a, &b].iter().all(|server| {
            let member = format!("member_address={server}");
            log.lines()
                .any(|l| l.contains("kind=http") && l.contains("status=200") && l.contains(&member))
        })
    });
    // The operator's view, and a drain.
    let ctl = |args: &[&str]| {
        let mut all = vec!["gateway", "ctl", "--admin", &admin];
        all.extend_from_slice(args);
        hapool_code(&all)
    };
    let (code, list, err) = ctl(&["list"]);
    assert_eq!(code, 0, "{err}");
    let a_line = list.lines().find(|l| l.contains(&a)).expect(&list);
    assert!(
        a_line.contains("active") && a_line.contains("available"),
        "{list}"
    );
    let a_id = a_line.split_whitespace().nth(1).unwrap().to_owned();
    let (code, out, err) = ctl(&["set", "web", &a_id, "out_of_service"]);
    assert_eq!(code, 0, "{out}{err}");
    for _ in 0..10 {
        assert_eq!(get(&listen), "b", "a drains: no new sessions");
    }
    let (_, list, _) = ctl(&["list"]);
    assert!(
        list.lines()
            .find(|l| l.contains(&a))
            .unwrap()
            .contains("out_of_service"),
        "{list}"
    );
    let (code, _, err) = ctl(&["set", "web", "zz", "restricted"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a hexadecimal PE identifier"), "{err}");
    let (code, _, err) = ctl(&["set", "web", &a_id, "asleep"]);
    assert_ne!(code, 0);
    assert!(err.contains("out_of_service"), "{err}");
    let (code, _, err) = ctl(&["sessions", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no pool \"nope\""), "{err}");
    assert_eq!(ctl(&["set", "web", &a_id, "active"]).0, 0);
    // The registrar dies: the gateway serves from what it knows.
    let mut registrar = children.0.remove(0);
    registrar.kill().unwrap();
    registrar.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(get(&listen));
    }
    assert_eq!(
        seen,
        ["a", "b"].iter().map(|s| s.to_string()).collect(),
        "served without a registrar"
    );
    let metrics = get_path(&admin, "/metrics");
    assert!(
        metrics.contains("hapool_gateway_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hapool_gateway_registrar_errors_total"),
        "{metrics}"
    );
    // Restarted while no registrar answers, the gateway serves the
    // members it kept on disk.
    let mut gateway = children.0.pop().unwrap();
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    assert!(cache.exists(), "the member cache was written");
    let mut gateway = spawn(&["gateway", "--config", config.to_str().unwrap()]);
    wait_line(&mut gateway, "admin HTTP on");
    children.0.push(gateway);
    let mut seen = std::collections::HashSet::new();
    until("both cached members answer after a restart", || {
        seen.insert(get(&listen));
        seen.contains("a") && seen.contains("b")
    });
}

/// A registrar restarts with an empty handlespace: until the PEs register
/// again, it answers that the pool has no member. The gateway keeps its
/// members for `empty_answer_hold` (their probes pass), so no request
/// fails; a pool whose PE is really gone is let go after the hold.
#[test]
fn a_registrar_restarted_empty_leaves_the_pool_its_members_for_a_while() {
    let scratch = common::Scratch::new("gateway_registrar_restarted_empty");
    let registrar_addr = format!("127.0.0.1:{}", free_port());
    let start_registrar = || {
        let mut registrar = spawn(&["registrar", "--listen", &registrar_addr]);
        wait_line(&mut registrar, "registrar ");
        registrar
    };
    let a = backend("a");
    let mut children = Killed(vec![start_registrar(), pe_sidecar(&registrar_addr, &a)]);
    let listen = format!("127.0.0.1:{}", free_port());
    let config = scratch.write(
        "gateway.toml",
        &format!(
            r#"
[gateway]
registrars = ["{registrar_addr}"]
refresh = "100ms"
probe_interval = "200ms"

[[gateway.listener]]
listen = "{listen}"
pool = "web"

[[gateway.pool]]
handle = "web"
empty_answer_hold = "2s"
"#
        ),
    );
    let mut gateway = spawn(&["gateway", "--config", config.to_str().unwrap()]);
    wait_line(&mut gateway, "gateway on");
    children.0.push(gateway);
    until("a answers through the gateway", || get(&listen) == "a");
    // Requests all the time while the registrar is killed and started
    // again at once, empty; its PE registers again a second later.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, listen) = (stop.clone(), listen.clone());
        std::thread::spawn(move || {
            let (mut served, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match get(&listen).as_str() {
                    "a" => served += 1,
                    other => failed.push(other.to_owned()),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (served, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut registrar = children.0.remove(0);
    registrar.kill().unwrap();
    registrar.wait().unwrap();
    children.0.push(start_registrar());
    std::thread::sleep(Duration::from_millis(2_500));
    stop.store(true, Ordering::SeqCst);
    let (served, failed) = load.join().unwrap();
    assert!(served > 100, "only {served} requests");
    assert!(
        failed.is_empty(),
        "{} of {served} failed: {failed:?}",
        failed.len()
    );
    // The PE's sidecar stops (its server does not): the registrars name
    // no member, and after the hold the gateway lets it go.
    let mut pe = children.0.remove(0);
    assert!(
        Command::new("kill")
            .arg(pe.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    pe.wait().unwrap();
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(&listen), "a", "held");
    until("the pool is let go after the hold", || {
        get(&listen).starts_with("HTTP/1.1 503")
    });
    let took = stopped.elapsed();
    assert!(took >= Duration::from_secs(2), "let go after {took:?}");
}

#[test]
fn gateway_configuration_errors_are_named() {
    let scratch = common::Scratch::new("gateway_configuration_errors_are_named");
    let cases = [
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n",
            "gateway.listener[0].pool = \"web\": no [[gateway.pool]] has this handle",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\n",
            "has no members and gateway.registrars is empty",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\navailability_threshold = 101\n",
            "gateway.pool[0].availability_threshold = 101: 0 to 100",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\nhedge_percent = 150\n",
            "gateway.pool[0].hedge_percent = 150: 0 to 100",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.listener.certificate]]\nnames = [\"a\"]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n",
            "gateway.listener[0].certificate[0].cert",
        ),
        (
            "[gateway]\nthreads = 0\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n",
            "gateway.threads = 0",
        ),
        (
            "[gateway]\npin_workers = \"yes\"\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n",
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            "[gateway]\nmax_header_bytes = 100\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n",
            "gateway.max_header_bytes = 100: at least 8192",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\ntls = true\n",
            "gateway.pool[0].tls = true needs gateway.member_ca",
        ),
        (
            "[gateway]\nmember_ca = \"/nonexistent-ca.pem\"\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\ntls = true\n",
            "gateway.member_ca: /nonexistent-ca.pem",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\nprotocol = \"tcp\"\npool = \"web\"\nabort_on_close = true\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n",
            "gateway.listener[0].abort_on_close: for HTTP listeners",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\naffinity = \"sticky\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n",
            "gateway.listener[0].affinity = \"sticky\": true, false, \"cookie\", \"client-address\" or \"tls-session\"",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\naffinity = \"tls-session\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n",
            "gateway.listener[0].affinity: tls-session affinity needs a TLS listener",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\nprotocol = \"tcp\"\npool = \"web\"\naffinity = \"tls-session\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n",
            "gateway.listener[0].affinity: tls-session affinity needs a TLS listener",
        ),
        (
            "[gateway]\nmember_cache = \"/nonexistent-dir/members\"\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n",
            "gateway.member_cache = \"/nonexistent-dir/members\": no directory /nonexistent-dir",
        ),
        (
            "[gateway]\naccess_log = \"/nonexistent-dir/access.log\"\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n",
            "gateway.access_log = \"/nonexistent-dir/access.log\": no directory /nonexistent-dir",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\nprobe_path = \"health\"\n",
            "gateway.pool[0].probe_path = \"health\": a path starting with /",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\", \"127.0.0.1:2\"]\n",
            "pool \"web\" lists the member 127.0.0.1:2 twice",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\nprobe = \"grpc\"\n",
            "gateway.pool[0].probe = \"grpc\" needs gateway.pool[0].http2 = true",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\nprobe_service = \"hapool.Echo\"\n",
            "gateway.pool[0].probe_service: applies to probe = \"grpc\"",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\nprobe = \"udp\"\n",
            "gateway.pool[0].probe = \"udp\": http, tcp or grpc",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\nerror_limit = 0\n",
            "gateway.pool[0].error_limit = 0: at least 1",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\nhttps_port = 443\n",
            "gateway.pool[0].https_port needs gateway.member_ca",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\nprobe_fall = 0\n",
            "gateway.pool[0].probe_fall = 0: at least 1",
        ),
        (
            "[gateway]\ntcp_idle_timeout = \"0s\"\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n",
            "gateway.tcp_idle_timeout = 0s: more than 0",
        ),
        (
            "[gateway]\nanswer_idle_timeout = \"0s\"\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n",
            "gateway.answer_idle_timeout = 0s: more than 0",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\nempty_answer_hold = \"5s\"\n",
            "gateway.pool[0].empty_answer_hold: only for pools whose members come from the registrars",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\nprotocol = \"tcp\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\nproxy_protocol = \"v3\"\n",
            "unknown variant `v3`, expected `v1` or `v2`",
        ),
        (
            "[gateway]\n[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\nproxy_protocol = \"v1\"\n",
            "listener 127.0.0.1:1 is HTTP, and pool \"web\" sends the PROXY protocol header",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = scratch.write(&format!("bad-{i}.toml"), text);
        let (code, out, err) = hapool_code(&["check-config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "case {i}: {out}{err}");
        assert!(err.contains(expected), "case {i}: {err}");
        let (code, _, err) = hapool_code(&["gateway", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "case {i}: {err}");
    }
    let (code, _, err) = hapool_code(&["gateway"]);
    assert_eq!(code, 64);
    assert!(err.contains("--config FILE"), "{err}");
    // A listener address in use is named.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = hapool_code(&[
        "gateway",
        "--listen",
        &addr,
        "--pool",
        "web",
        "--member",
        "127.0.0.1:2",
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    // So is the admin port's.
    let (code, _, err) = hapool_code(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        "web",
        "--member",
        "127.0.0.1:2",
        "--admin",
        &addr,
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr} for the admin port")),
        "{err}"
    );
}

#[test]
fn shared_ticket_keys_are_made_read_and_their_faults_named() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = common::Scratch::new("gateway_ticket_keys");
    let new_key = || {
        let (code, out, err) = hapool_code(&["gateway", "ticket-key"]);
        assert_eq!(code, 0, "{err}");
        let key = out.trim().to_owned();
        assert!(
            key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
            "{out}"
        );
        key
    };
    let (first, second) = (new_key(), new_key());
    assert_ne!(first, second);
    let keys_file = |name: &str, text: &str, mode: u32| {
        let path = scratch.write(name, text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let config = |name: &str, more: &str| {
        let text = format!(
            "[gateway]\n{more}[[gateway.listener]]\nlisten = \"127.0.0.1:1\"\npool = \"web\"\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [\"127.0.0.1:2\"]\n"
        );
        scratch.write(name, &text).to_str().unwrap().to_owned()
    };
    let check = |path: &str| hapool_code(&["check-config", path]);
    // Two gateways reading files with the same first key seal alike.
    let here = keys_file(
        "here",
        &format!("# rotated today\n{first}\n{second}\n"),
        0o600,
    );
    let there = keys_file("there", &format!("{first}\n"), 0o600);
    let (code, out, err) = check(&config(
        "here.toml",
        &format!("ticket_keys = {here:?}\nticket_lifetime = \"2h\"\n"),
    ));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("chmod"), "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("gateway TLS session tickets: 2 shared key(s), sealing with "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.ends_with(", good for 2h"), "{line}");
    let (code, out, _) = check(&config("there.toml", &format!("ticket_keys = {there:?}\n")));
    assert_eq!(code, 0);
    let sealing = |line: &str| line.split("sealing with ").nth(1).unwrap()[..8].to_owned();
    let there_line = out
        .lines()
        .find(|l| l.contains("sealing with"))
        .unwrap()
        .to_owned();
    assert_eq!(sealing(line), sealing(&there_line));
    assert!(there_line.ends_with("good for 6h"), "{there_line}");
    // A file others can read is taken, with a warning.
    let open = keys_file("open", &format!("{first}\n"), 0o644);
    let (code, _, err) = check(&config("open.toml", &format!("ticket_keys = {open:?}\n")));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    // What is wrong is named, and the gateway does not start.
    let short = keys_file("short", &format!("{first}\n{}\n", &second[..10]), 0o600);
    let empty = keys_file("empty", "# none yet\n", 0o600);
    let twice = keys_file("twice", &format!("{first}\n{first}\n"), 0o600);
    for (i, (more, expected)) in [
        (
            "ticket_keys = \"/nonexistent-keys\"\n".to_owned(),
            "gateway.ticket_keys: cannot read /nonexistent-keys: No such file".to_owned(),
        ),
        (
            format!("ticket_keys = {short:?}\n"),
            format!(
                "gateway.ticket_keys: {short}: line 2: 10 characters where a key is 64 hex digits"
            ),
        ),
        (
            format!("ticket_keys = {empty:?}\n"),
            format!("gateway.ticket_keys: {empty}: no key"),
        ),
        (
            format!("ticket_keys = {twice:?}\n"),
            format!("gateway.ticket_keys: {twice}: line 2: the key of line 1 again"),
        ),
        (
            format!("ticket_keys = {there:?}\nticket_lifetime = \"8days\"\n"),
            "gateway.ticket_lifetime: ticket lifetime 691200s: from 1s to 7 days".to_owned(),
        ),
        (
            "ticket_lifetime = \"1h\"\n".to_owned(),
            "gateway.ticket_lifetime: applies to gateway.ticket_keys, which is not set".to_owned(),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let path = config(&format!("bad-{i}.toml"), &more);
        let (code, _, err) = check(&path);
        assert_eq!(code, 64, "case {i}: {err}");
        assert!(err.contains(&expected), "case {i}: {err}");
        let (code, _, err) = hapool_code(&["gateway", "--config", &path]);
        assert_eq!(code, 64, "case {i}: {err}");
    }
}

/// A backend answering "a", and the file `gw.toml` in `scratch`: a
/// gateway in front of it on free ports. The backend's address, the
/// listener's, the admin port's and the file's path.
fn in_front_of_a(scratch: &common::Scratch) -> (String, String, String, std::path::PathBuf) {
    let a = backend("a");
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let path = scratch.write("gw.toml", &static_gateway(&listen, &admin, &[&a], ""));
    (a, listen, admin, path)
}

/// A gateway configuration: one HTTP listener on `listen` in front of the
/// static `members`, with the admin port on `admin` and `more` settings.
fn static_gateway(listen: &str, admin: &str, members: &[&str], more: &str) -> String {
    let members: Vec<String> = members.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[gateway]\nadmin = {admin:?}\nprobe_interval = \"100ms\"\n{more}[[gateway.listener]]\nlisten = {listen:?}\npool = \"web\"\naffinity = false\n[[gateway.pool]]\nhandle = \"web\"\nmembers = [{}]\n",
        members.join(", ")
    )
}

#[test]
fn a_running_gateway_reads_its_configuration_again_on_sighup_and_on_ctl_reload() {
    let scratch = common::Scratch::new("gateway_reload");
    let (a, b) = (backend("a"), backend("b"));
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let path = scratch.write("gw.toml", &static_gateway(&listen, &admin, &[&a], ""));
    let path = path.to_str().unwrap();
    let mut gateway = spawn(&["gateway", "--config", path, "--threads", "1"]);
    let pid = gateway.id().to_string();
    wait_line(&mut gateway, "gateway on");
    let _killed = Killed(vec![gateway]);
    until("a answers", || get(&listen) == "a");
    // SIGHUP: b joins.
    scratch.write("gw.toml", &static_gateway(&listen, &admin, &[&a, &b], ""));
    let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(sent.success());
    until("b answers after SIGHUP", || {
        (0..4).any(|_| get(&listen) == "b")
    });
    let ctl = |args: &[&str]| {
        let mut all = vec!["gateway", "ctl", "--admin", &admin];
        all.extend_from_slice(args);
        hapool_code(&all)
    };
    let admin_get = |path: &str| get_path(&admin, path);
    let words = listener_line(&admin, &listen);
    assert_eq!(
        words[..5],
        [listen.as_str(), "http", "web", "no", "none"],
        "{words:?}"
    );
    // Each member's series, rendered from what the gateway knows now.
    let metrics = admin_get("/metrics");
    for line in [
        format!("hapool_gateway_member_up{{pool=\"web\",member=\"00000001\",address=\"{a}\"}} 1"),
        format!("hapool_gateway_member_up{{pool=\"web\",member=\"00000002\",address=\"{b}\"}} 1"),
        format!(
            "hapool_gateway_member_state{{pool=\"web\",member=\"00000002\",address=\"{b}\",admin=\"active\",availability=\"available\"}} 1"
        ),
        "# TYPE hapool_gateway_member_sessions_total counter".to_owned(),
        format!("hapool_gateway_listener_connections{{listener=\"{listen}\",pool=\"web\"}}"),
    ] {
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }
    let served = |metrics: &str, who: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with("hapool_gateway_member_served_total") && l.contains(who))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(served(&metrics, &b) >= 1.0, "{metrics}");
    // A file that cannot be used changes nothing, and says why.
    let bad = static_gateway(&listen, &admin, &[&b], "") + "availability_threshold = 101\n";
    scratch.write("gw.toml", &bad);
    let (code, out, err) = ctl(&["reload"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("reload refused")
            && err.contains("gateway.pool[0].availability_threshold = 101"),
        "{err}"
    );
    let (_, list, _) = ctl(&["list"]);
    assert_eq!(list.lines().count(), 3, "both members still: {list}");
    // a leaves (it drains: nothing is open, so it goes at once); a limit
    // changes; a setting that takes a restart is named.
    let elsewhere = format!("127.0.0.1:{}", free_port());
    scratch.write(
        "gw.toml",
        &static_gateway(
            &listen,
            &elsewhere,
            &[&b],
            "retries = 1\nsession_idle = \"10m\"\n",
        ),
    );
    let (code, out, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("in effect: pool web: members"), "{out}");
    assert!(out.contains("in effect: limits: retries"), "{out}");
    assert!(out.contains("in effect: upkeep: session_idle"), "{out}");
    assert!(out.contains("takes a restart: admin changed"), "{out}");
    for _ in 0..6 {
        assert_eq!(get(&listen), "b");
    }
    until("a deleted once drained", || {
        let (_, list, _) = ctl(&["list"]);
        !list.contains(&a)
    });
    let metrics = admin_get("/metrics");
    assert!(!metrics.contains(&a), "a member that left leaves no series");
    assert!(served(&metrics, &b) >= 7.0, "{metrics}");
    let (code, out, _) = ctl(&["reload"]);
    assert_eq!(code, 0);
    assert!(!out.contains("in effect"), "nothing new: {out}");
    // `/config` shows the file once all of it is in effect.
    let config = || admin_get("/config");
    assert!(config().contains(&a), "a restart is pending: the old file");
    scratch.write("gw.toml", &static_gateway(&listen, &admin, &[&b], ""));
    let (code, out, _) = ctl(&["reload"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("in effect: limits: retries")
            && out.contains("in effect: upkeep: session_idle")
            && !out.contains("restart"),
        "{out}"
    );
    let shown = config();
    assert!(shown.contains(&b) && !shown.contains(&a), "{shown}");
}

#[test]
fn a_successor_gateway_takes_the_addresses_of_the_one_it_replaces() {
    let scratch = common::Scratch::new("gateway_successor");
    let (a, listen, admin, path) = in_front_of_a(&scratch);
    drop(successor_takes_over(&path, &listen, &admin, &a, false));
    // With a handover socket: the successor serves the same sockets.
    let socket = path.with_file_name("handover.sock");
    let with_handover = format!("handover = {:?}\n", socket.display().to_string());
    scratch.write(
        "gw.toml",
        &static_gateway(&listen, &admin, &[&a], &with_handover),
    );
    let successor = successor_takes_over(&path, &listen, &admin, &a, true);
    // `ctl listeners`: every socket of the listener was taken over.
    let words = listener_line(&admin, &listen);
    // SOCKETS, TAKEN-OVER, PASSED.
    let (sockets, taken) = (&words[words.len() - 3], &words[words.len() - 2]);
    assert!(sockets != "0" && sockets == taken, "{words:?}");
    assert_eq!(words[words.len() - 1], "0", "{words:?}");
    drop(successor);
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the owner's alone"
    );
    // Anything but a socket at the path is not replaced: the start fails,
    // naming it.
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, "keep me").unwrap();
    let (code, _, err) = hapool_code(&["gateway", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "cannot make the handover socket {}",
            socket.display()
        )) && err.contains("something other than a socket is there"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "keep me");
}

/// The words of `listen`'s line in `hapool gateway ctl listeners` of the
/// gateway whose admin port is `admin`.
fn listener_line(admin: &str, listen: &str) -> Vec<String> {
    let (code, listeners, err) = hapool_code(&["gateway", "ctl", "--admin", admin, "listeners"]);
    assert_eq!(code, 0, "{err}");
    let line = listeners
        .lines()
        .find(|l| l.starts_with(listen))
        .unwrap_or_else(|| panic!("no {listen} in:\n{listeners}"));
    line.split_whitespace().map(str::to_owned).collect()
}

/// Starts a gateway with the file at `path`, then a successor with the
/// same file, and stops the first: the successor serves `listen` and the
/// admin port. While both run, the admin port has one socket when it was
/// `handed_over`, else one each. The successor runs until the result is
/// dropped.
fn successor_takes_over(
    path: &std::path::Path,
    listen: &str,
    admin: &str,
    a: &str,
    handed_over: bool,
) -> Killed {
    let path = path.to_str().unwrap();
    let mut first = spawn(&["gateway", "--config", path]);
    wait_line(&mut first, "gateway on");
    until("a answers", || get(listen) == "a");
    // The successor starts on the same listener and admin addresses while
    // the first serves; then the first is stopped.
    let mut second = spawn(&["gateway", "--config", path]);
    wait_line(&mut second, "gateway on");
    let killed = Killed(vec![second]);
    if let Some(sockets) = listening_sockets(admin) {
        assert_eq!(sockets, if handed_over { 1 } else { 2 }, "{admin}");
    }
    let stopped = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(first.wait().unwrap().success());
    // Both addresses are the successor's.
    for _ in 0..4 {
        assert_eq!(get(listen), "a");
    }
    let (code, list, err) = hapool_code(&["gateway", "ctl", "--admin", admin, "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(list.contains(a), "{list}");
    killed
}

/// `listening_sockets` and `python_with`, shared with the gateway crate's
/// tests.
#[path = "../../hapool-gateway/tests/common/tools.rs"]
mod tools;
use tools::{listening_sockets, python_with};

/// A registrar of its own on loopback, and `hapool pe` keeping `server`
/// registered with it in pool `web`.
fn registrar_with(server: &str) -> (String, Killed) {
    let mut registrar = spawn(&["registrar", "--listen", "127.0.0.1:0"]);
    let line = wait_line(&mut registrar, "registrar ");
    let address = line.rsplit(' ').next().unwrap().to_owned();
    let pe = pe_sidecar(&address, server);
    (address, Killed(vec![registrar, pe]))
}

/// `hapool pe` keeping `server` registered in pool `web` at `registrar`.
fn pe_sidecar(registrar: &str, server: &str) -> Child {
    spawn(&[
        "pe",
        "--registrar",
        registrar,
        "--pool",
        "web",
        "--address",
        server,
    ])
}

#[test]
fn a_reload_changes_the_registrars_a_gateway_asks() {
    let scratch = common::Scratch::new("gateway_reload_registrars");
    let (a, b, s) = (backend("a"), backend("b"), backend("s"));
    let (first, _first) = registrar_with(&a);
    let (second, _second) = registrar_with(&b);
    // A registrar address nothing listens on.
    let silent = format!("127.0.0.1:{}", free_port());
    let front = format!("127.0.0.1:{}", free_port());
    let web = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    // Without registrars: one static pool.
    let file = |registrars: &[&str], with_web: bool| {
        let registrars: Vec<String> = registrars.iter().map(|r| format!("{r:?}")).collect();
        let mut text = format!(
            "[gateway]\nadmin = {admin:?}\nregistrars = [{}]\nrefresh = \"200ms\"\nprobe_interval = \"100ms\"\n\
             [[gateway.listener]]\nlisten = {front:?}\npool = \"front\"\naffinity = false\n\
             [[gateway.pool]]\nhandle = \"front\"\nmembers = [{s:?}]\n",
            registrars.join(", ")
        );
        if with_web {
            text += &format!(
                "[[gateway.listener]]\nlisten = {web:?}\npool = \"web\"\naffinity = false\n[[gateway.pool]]\nhandle = \"web\"\n"
            );
        }
        text
    };
    let path = scratch.write("gw.toml", &file(&[], false));
    let path = path.to_str().unwrap();
    let mut gateway = spawn(&["gateway", "--config", path]);
    wait_line(&mut gateway, "gateway on");
    let _gateway = Killed(vec![gateway]);
    until("s answers", || get(&front) == "s");
    let ctl = |args: &[&str]| {
        let mut all = vec!["gateway", "ctl", "--admin", &admin];
        all.extend_from_slice(args);
        hapool_code(&all)
    };
    let registrars_shown = || {
        let response = get_path(&admin, "/status");
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        let status: serde_json::Value = serde_json::from_str(body).unwrap();
        status["registrars"].clone()
    };
    assert_eq!(registrars_shown(), serde_json::json!([]));
    // The file with `registrars`, and the web pool or not, reloaded: what
    // the reload says.
    let reload = |registrars: &[&str], with_web: bool| {
        scratch.write("gw.toml", &file(registrars, with_web));
        let (code, out, err) = ctl(&["reload"]);
        assert_eq!(code, 0, "{err}");
        out
    };

    // Registrars, and a registrar pool with its listener.
    let out = reload(&[&first], true);
    assert!(
        out.contains(&format!("in effect: registrars: {first}\n")),
        "{out}"
    );
    assert!(
        out.contains("in effect: pool web: added (1 member(s), 1 answering)"),
        "{out}"
    );
    assert!(!out.contains("restart"), "{out}");
    until("a answers for web", || get(&web) == "a");
    assert_eq!(registrars_shown(), serde_json::json!([first]));

    // A member cache: written with the registrars' answers at once, a's
    // address in it (an ENRP handle table: a TCP transport parameter with
    // a's port and an IPv4 address parameter with its address).
    let cache = std::path::Path::new(path).with_file_name("members");
    scratch.write(
        "gw.toml",
        &file(&[&first], true).replacen(
            "[gateway]\n",
            &format!("[gateway]\nmember_cache = {cache:?}\n"),
            1,
        ),
    );
    let (code, out, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "in effect: member_cache: {} (written with the registrars' next answers)",
            cache.display()
        )),
        "{out}"
    );
    let a_binary: std::net::SocketAddrV4 = a.parse().unwrap();
    let names_a = |w: &[u8]| {
        w[..4] == [0, 5, 0, 16]
            && w[4..6] == a_binary.port().to_be_bytes()
            && w[8..12] == [0, 1, 0, 8]
            && w[12..16] == a_binary.ip().octets()
    };
    until("the cache file names a", || {
        std::fs::read(&cache).is_ok_and(|held| held.windows(16).any(names_a))
    });

    // Other registrars: they name b, and a leaves.
    let out = reload(&[&second], true);
    assert!(
        out.contains(&format!(
            "in effect: registrars: {second} (1 of 1 registrar pool(s) resolved by them)"
        )),
        "{out}"
    );
    for _ in 0..6 {
        assert_eq!(get(&web), "b", "the new registrars' member only");
    }
    assert_eq!(get(&front), "s");

    // Registrars that do not answer: the pool keeps its members.
    let out = reload(&[&silent], true);
    assert!(
        out.contains(&format!(
            "in effect: registrars: {silent} (0 of 1 registrar pool(s) resolved by them)"
        )),
        "{out}"
    );
    std::thread::sleep(Duration::from_millis(600));
    for _ in 0..6 {
        assert_eq!(get(&web), "b", "served from the last known members");
    }
    assert_eq!(registrars_shown(), serde_json::json!([silent]));

    // No registrars, and no registrar pool.
    let out = reload(&[], false);
    assert!(out.contains("in effect: registrars: none"), "{out}");
    assert!(out.contains("in effect: pool web: removed"), "{out}");
    assert_eq!(registrars_shown(), serde_json::json!([]));
    assert_eq!(get(&front), "s");
}

/// `tests/activate.py`: a service manager holding listening sockets and
/// starting and stopping a gateway with them, one command at a time.
struct ServiceManager {
    child: Child,
    input: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ServiceManager {
    /// Listens on 127.0.0.1 (a port the system gives) to run `hapool
    /// gateway --config <config>`; the address.
    fn new(python: &str, config: &std::path::Path) -> (Self, String) {
        let mut child = Command::new(python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/activate.py"))
            .args(["127.0.0.1:0", "--", env!("CARGO_BIN_EXE_hapool")])
            .args(["gateway", "--config", config.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let input = child.stdin.take();
        let reader = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut manager = Self {
            child,
            input,
            lines,
        };
        let line = manager.line("listening ");
        let address = line.trim_start_matches("listening ").to_owned();
        (manager, address)
    }

    /// The next line of the manager or its gateway that starts with
    /// `prefix` (the ones before are passed over).
    fn line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line {prefix:?}: {e}"),
            }
        }
    }

    /// Says `command` (`start`, `stop`).
    fn say(&mut self, command: &str) {
        let input = self.input.as_mut().expect("open until dropped");
        writeln!(input, "{command}").unwrap();
    }
}

impl Drop for ServiceManager {
    fn drop(&mut self) {
        // Its input closed, it stops the gateway and ends.
        drop(self.input.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_gateway_serves_the_sockets_its_service_manager_passed_and_a_restart_refuses_nothing() {
    let Some(python) = python_with("sys", "python3") else {
        return;
    };
    let scratch = common::Scratch::new("gateway_activation");
    let a = backend("a");
    let admin = format!("127.0.0.1:{}", free_port());
    let path = scratch.write("gw.toml", "");
    let (mut manager, listen) = ServiceManager::new(python, &path);
    // Two threads: both serve the one socket passed, and bind none.
    scratch.write(
        "gw.toml",
        &static_gateway(&listen, &admin, &[&a], "threads = 2\n"),
    );
    manager.say("start");
    assert_eq!(
        manager.line("listening socket on"),
        format!("listening socket on {listen} passed by the service manager")
    );
    manager.line("gateway on");
    until("a answers", || get(&listen) == "a");
    if let Some(sockets) = listening_sockets(&listen) {
        assert_eq!(sockets, 1, "{listen}");
    }
    let words = listener_line(&admin, &listen);
    // SOCKETS (one per worker), TAKEN-OVER, PASSED.
    assert_eq!(words[words.len() - 3..], ["2", "0", "1"], "{words:?}");
    // Requests one after another, each on a new connection, while the
    // gateway is stopped and started twice: none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (listen, stop) = (listen.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match try_get(&listen) {
                    Ok(body) if body == "a" => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        manager.say("stop");
        assert_eq!(manager.line("stopped"), "stopped 0");
        // No gateway runs: a connection made now waits in the socket's
        // queue, and the next gateway answers it.
        let waiting = {
            let listen = listen.clone();
            std::thread::spawn(move || try_get(&listen))
        };
        std::thread::sleep(Duration::from_millis(300));
        manager.say("start");
        manager.line("gateway on");
        assert_eq!(waiting.join().unwrap().unwrap(), "a");
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(ok > 10, "{ok} answered");
    if let Some(sockets) = listening_sockets(&listen) {
        assert_eq!(sockets, 1, "{listen}");
    }
    drop(manager);
}

/// GET / through `addr` on a new connection, with every failure an error:
/// the body of a 200.
fn try_get(addr: &str) -> std::io::Result<String> {
    let response = try_get_path(addr, "/")?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(std::io::Error::other(format!("answered {response:?}"))),
    }
}

#[test]
fn descriptors_a_service_manager_did_not_pass_as_listening_sockets_are_named() {
    let scratch = common::Scratch::new("gateway_activation_errors");
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let path = scratch.write(
        "gw.toml",
        &static_gateway(&listen, &admin, &["127.0.0.1:9"], ""),
    );
    // The shell sets LISTEN_PID to its own process id, which `exec` hands
    // to the gateway, as a service manager does.
    // `hapool gateway` run by the shell after `setup`, with LISTEN_PID
    // the shell's process id, which `exec` hands to the gateway, as a
    // service manager does, unless `setup` sets it.
    let gateway = |setup: &str| {
        let script = format!(
            "LISTEN_PID=$$\n{setup}\nexport LISTEN_PID\nexec \"$0\" gateway --config \"$1\""
        );
        let mut command = Command::new("sh");
        command.args([
            "-c",
            &script,
            env!("CARGO_BIN_EXE_hapool"),
            path.to_str().unwrap(),
        ]);
        command
    };
    let run = |setup: &str| {
        let out = gateway(setup).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (setup, said) in [
        (
            // Closed, whatever the test inherited there.
            "exec 3>&-; export LISTEN_FDS=1",
            "socket activation: descriptor 3 is not open, though LISTEN_FDS says it was passed",
        ),
        (
            "exec 3</dev/null; export LISTEN_FDS=1",
            "socket activation: descriptor 3 passed by the service manager is not a listening TCP socket: not a socket",
        ),
        (
            "export LISTEN_FDS=x",
            "socket activation: LISTEN_FDS is \"x\", not a number of descriptors",
        ),
    ] {
        let (code, err) = run(setup);
        assert_eq!(code, Some(64), "{setup}: {err}");
        assert!(err.contains(said), "{setup}: {err}");
    }
    // LISTEN_PID naming another process: nothing was passed to this one,
    // and it binds its own.
    let mut gateway = gateway("LISTEN_PID=1; export LISTEN_FDS=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = wait_line(&mut gateway, "gateway on");
    let _gateway = Killed(vec![gateway]);
    assert!(line.contains(&listen), "{line}");
}

#[test]
fn a_gateway_tells_its_service_manager_when_it_serves_reloads_and_stops() {
    let scratch = common::Scratch::new("gateway_notify");
    let (_, listen, admin, path) = in_front_of_a(&scratch);
    let manager = common::NotifySocket::new(Some(&path.with_file_name("notify")));
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_hapool"))
        .args(["gateway", "--config", path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &manager.name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = gateway.id().to_string();
    let signal = |name: &str| {
        let sent = Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(sent.success());
    };
    assert_eq!(manager.heard(), "READY=1");
    assert!(
        common::handles_sigterm(gateway.id()),
        "ready before it handles SIGTERM"
    );
    // Ready is serving: a request made at once is answered.
    assert_eq!(get(&listen), "a");
    // A reload, by SIGHUP and by `ctl reload`, is announced and ended.
    signal("-HUP");
    assert_eq!(manager.heard(), "RELOADING=1");
    assert_eq!(manager.heard(), "READY=1");
    let (code, _, err) = hapool_code(&["gateway", "ctl", "--admin", &admin, "reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(manager.heard(), "RELOADING=1");
    assert_eq!(manager.heard(), "READY=1");
    signal("-TERM");
    assert_eq!(manager.heard(), "STOPPING=1");
    assert!(gateway.wait().unwrap().success());
}

#[test]
fn a_gateway_runs_without_transparent_huge_pages() {
    let scratch = common::Scratch::new("gateway_huge_pages");
    let a = backend("a");
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let path = scratch.write("gw.toml", &static_gateway(&listen, &admin, &[&a], ""));
    let mut gateway = spawn(&["gateway", "--config", path.to_str().unwrap()]);
    let pid = gateway.id();
    wait_line(&mut gateway, "gateway on");
    let _killed = Killed(vec![gateway]);
    until("a answers", || get(&listen) == "a");
    // The kernel merging the allocator's pages into huge ones would stall
    // every request under way (src/gateway.rs, without_huge_pages).
    assert_eq!(common::proc_status(pid, "THP_enabled"), "0");
}

#[test]
fn pin_workers_in_the_file_decides_whether_workers_are_pinned() {
    let scratch = common::Scratch::new("gateway_pin_workers");
    let a = backend("a");
    for (more, pinned) in [
        ("threads = 2\n", true),
        ("threads = 2\npin_workers = false\n", false),
    ] {
        let listen = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let path = scratch.write("gw.toml", &static_gateway(&listen, &admin, &[&a], more));
        let mut gateway = spawn(&["gateway", "--config", path.to_str().unwrap()]);
        wait_line(&mut gateway, "gateway on");
        let gateway = Killed(vec![gateway]);
        until("a answers", || get(&listen) == "a");
        let response = get_path(&admin, "/status");
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        let status: serde_json::Value = serde_json::from_str(body).unwrap();
        let cpus = &status["worker_cpus"];
        // Pinned: two CPUs, each its own; on a machine of one CPU, never.
        let two_cpus = std::thread::available_parallelism().map_or(1, usize::from) >= 2;
        if pinned && two_cpus {
            let cpus = cpus.as_array().unwrap_or_else(|| panic!("{status}"));
            assert_eq!(cpus.len(), 2, "{status}");
            assert_ne!(cpus[0], cpus[1], "{status}");
        } else {
            assert!(cpus.is_null(), "{more}: {status}");
        }
        drop(gateway);
    }
}

/// An HTTP/2 frame: its 9-byte head (length, type, flags, stream) and
/// `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = length[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A connection to `listen` that has sent HTTP/2's preface and its
/// (empty) settings.
fn h2_opened(listen: &str) -> TcpStream {
    let mut stream = TcpStream::connect(listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    stream.write_all(&h2_frame(4, 0, 0, &[])).unwrap();
    stream
}

/// Reads what `stream` sends until it ends: the gateway closed it (or
/// reset it, when bytes it did not read were left).
fn until_closed(stream: &mut TcpStream) {
    let mut sink = [0; 65536];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the connection did not end: {e}"),
        }
    }
}

#[test]
fn http2_misuse_is_sent_away_and_counted_as_a_limit_hit() {
    let scratch = common::Scratch::new("gateway_http2_misuse");
    let (_a, listen, admin, path) = in_front_of_a(&scratch);
    let mut gateway = spawn(&[
        "gateway",
        "--config",
        path.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    wait_line(&mut gateway, "gateway on");
    let _killed = Killed(vec![gateway]);
    until("a answers", || get(&listen) == "a");
    let hits = || -> u64 {
        let metrics = get_path(&admin, "/metrics");
        metrics
            .lines()
            .find(|l| {
                l.starts_with(r#"hapool_gateway_limit_hits_total{limit="http2_enhance_your_calm"}"#)
            })
            .map_or(0, |l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
    };
    assert_eq!(hits(), 0);
    // GET / with `:authority: a` (HPACK: the static table's entries, and
    // a literal not indexed).
    let get_block = [0x82, 0x86, 0x84, 0x01, 0x01, b'a'];
    // Rapid reset: a thousand streams, each reset as it is opened.
    let mut stream = h2_opened(&listen);
    let mut burst = Vec::new();
    for id in (1..2000).step_by(2) {
        // HEADERS with END_STREAM and END_HEADERS; RST_STREAM CANCEL.
        burst.extend(h2_frame(1, 0x5, id, &get_block));
        burst.extend(h2_frame(3, 0, id, &8u32.to_be_bytes()));
    }
    // The gateway may end the connection before it has read all of it.
    let _ = stream.write_all(&burst);
    until_closed(&mut stream);
    until("the rapid reset counted", || hits() == 1);
    // A header block continued without end: HEADERS without END_HEADERS,
    // then CONTINUATION frames of 16 KB of headers each.
    let mut stream = h2_opened(&listen);
    stream.write_all(&h2_frame(1, 0x1, 1, &get_block)).unwrap();
    let mut junk = Vec::new();
    while junk.len() < 16_000 {
        junk.extend_from_slice(&[0x00, 6]);
        junk.extend_from_slice(b"x-junk");
        junk.push(100);
        junk.extend_from_slice(&[b'j'; 100]);
    }
    let continuation = h2_frame(9, 0, 1, &junk);
    let mut sent = 0;
    while sent < 64 << 20 && stream.write_all(&continuation).is_ok() {
        sent += continuation.len();
    }
    assert!(sent < 64 << 20, "64 MB of one header block taken");
    until_closed(&mut stream);
    until("the header flood counted", || hits() == 2);
    // Neither took the gateway down.
    assert_eq!(get(&listen), "a");
}
