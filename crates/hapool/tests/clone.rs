//! `hapool clone`: a registrar cloned from its admin port joins the
//! source's cluster (keys handed over only over HTTPS with the operator's
//! token); a gateway cloned serves the same pool on its own address.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::hapool;

fn spawn(args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hapool"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// Reads lines until one starts with `prefix`; returns its last word.
fn line_after(out: &mut BufReader<ChildStdout>, prefix: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "no line starting {prefix:?} in:\n{seen}"
        );
        if line.starts_with(prefix) {
            return line.trim().rsplit(' ').next().unwrap().to_owned();
        }
        seen.push_str(&line);
    }
}

/// A port free on both 127.0.0.1 and 127.0.0.2 (the source and the clone).
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if TcpListener::bind(("127.0.0.2", port)).is_ok() {
            return port;
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("clone-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn pki(file: &str) -> String {
    format!(
        "{}/../hapool-net/tests/pki/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn until(what: &str, mut done: impl FnMut() -> Option<String>) -> String {
    let start = Instant::now();
    loop {
        if let Some(found) = done() {
            return found;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_cloned_registrar_joins_the_cluster_with_the_keys_given_over_https() {
    let dir = scratch("registrar");
    let token = dir.join("token");
    std::fs::write(&token, "operator-token-0123456789\n").unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "not-the-operator-token\n").unwrap();
    let (admin_port, enrp_port) = (free_port(), free_port());
    let config = dir.join("source.toml");
    std::fs::write(
        &config,
        format!(
            r#"[registrar]
id = "00000001"
listen = "127.0.0.1:0"
admin = "127.0.0.1:{admin_port}"
[registrar.admin_tls]
certificate = "{cert}"
key = "{key}"
token_file = "{token}"
[registrar.tls]
listen = "127.0.0.1:0"
certificate = "{cert}"
key = "{key}"
[registrar.enrp]
listen = "127.0.0.1:{enrp_port}"
heartbeat = "200ms"
max_time_last_heard = "400ms"
max_time_no_response = "200ms"
server_hunt_timeout = "200ms"
"#,
            cert = pki("server.pem"),
            key = pki("server.key"),
            token = token.display()
        ),
    )
    .unwrap();
    let (source, mut source_out) = spawn(&["registrar", "--config", config.to_str().unwrap()]);
    let source_asap = line_after(&mut source_out, "registrar 00000001 serving ASAP on");
    line_after(&mut source_out, "admin HTTPS on");
    let https = format!("https://127.0.0.1:{admin_port}");
    let out_dir = dir.join("clone");
    let out_dir = out_dir.to_str().unwrap();
    let clone = |extra: &[&str]| {
        let mut args = vec!["clone", "--bind", "127.0.0.2", "--dir", out_dir];
        args.extend_from_slice(extra);
        hapool(&args)
    };

    // Plain HTTP to an HTTPS port: said so.
    let (ok, _, err) = clone(&["--from", &format!("127.0.0.1:{admin_port}")]);
    assert!(!ok && err.contains("an HTTPS port?"), "{err}");
    // HTTPS without the token: every key, certificate and secret is
    // named as kept back, and nothing is started.
    let (ok, _, err) = clone(&["--from", &https, "--ca", &pki("ca.pem")]);
    assert!(!ok, "{err}");
    for key in [
        "registrar.tls.key",
        "registrar.tls.certificate",
        "registrar.admin_tls.token_file",
    ] {
        assert!(err.contains(key), "{key} not named: {err}");
    }
    // A wrong token is refused.
    let (ok, _, err) = clone(&[
        "--from",
        &https,
        "--ca",
        &pki("ca.pem"),
        "--token-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("token was not accepted"), "{err}");
    // A token over plain HTTP is not even sent.
    let (ok, _, err) = clone(&[
        "--from",
        &format!("127.0.0.1:{admin_port}"),
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("only over HTTPS"), "{err}");

    // With the token: the clone starts on 127.0.0.2 with the source's keys.
    let (clone_child, mut clone_out) = spawn(&[
        "clone",
        "--from",
        &https,
        "--ca",
        &pki("ca.pem"),
        "--token-file",
        token.to_str().unwrap(),
        "--bind",
        "127.0.0.2",
        "--dir",
        out_dir,
    ]);
    let cloned = line_after(&mut clone_out, "cloned the registrar at");
    assert_eq!(cloned, format!("127.0.0.1:{enrp_port}"));
    let mut serving = String::new();
    while !serving.contains("serving ASAP on 127.0.0.2:") {
        serving.clear();
        assert!(
            clone_out.read_line(&mut serving).unwrap() > 0,
            "the clone did not start"
        );
    }
    let clone_id = serving.split(' ').nth(1).unwrap().to_owned();
    let clone_asap = serving.trim().rsplit(' ').next().unwrap().to_owned();
    assert_ne!(clone_id, "00000001");
    let tls_line = line_after(&mut clone_out, "ASAP over TLS on");
    assert!(tls_line.starts_with("127.0.0.2:"), "{tls_line}");
    let written = std::fs::read_to_string(Path::new(out_dir).join("registrar.toml")).unwrap();
    let key_file = Path::new(out_dir).join("files/registrar-tls-key");
    assert_eq!(
        std::fs::read(&key_file).unwrap(),
        std::fs::read(pki("server.key")).unwrap()
    );
    assert!(
        written.contains(&format!("peers = [\"127.0.0.1:{enrp_port}\"]")),
        "{written}"
    );

    // It shows up among the source's peers ...
    until("the source never listed the clone among its peers", || {
        let (ok, out, _) = hapool(&[
            "status",
            "--admin",
            &https,
            "--ca",
            &pki("ca.pem"),
            "--json",
        ]);
        (ok && out.contains(&format!("\"id\": \"{clone_id}\""))).then_some(out)
    });
    // ... and a PE registered with the clone is resolved by the source.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap().to_string();
    let pe = common::spawn_pe(&clone_asap, "cloned", &server_addr, &[]);
    until(
        "the source never resolved the PE registered with the clone",
        || {
            let (ok, out, _) = hapool(&["resolve", "cloned", "--registrar", &source_asap]);
            (ok && out.contains(&server_addr)).then_some(out)
        },
    );
    stop(pe);
    stop(clone_child);
    stop(source);
}

/// An HTTP server answering every request with `hello`, for as long as the
/// test runs.
fn hello_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    addr
}

fn answer(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ =
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello");
}

fn get(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

#[test]
fn a_cloned_gateway_serves_the_same_pool_on_its_own_address() {
    let dir = scratch("gateway");
    let backend = hello_server();
    let (port, admin_port) = (free_port(), free_port());
    let (source, mut source_out) = spawn(&[
        "gateway",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--pool",
        "web",
        "--member",
        &backend,
        "--admin",
        &format!("127.0.0.1:{admin_port}"),
        "--threads",
        "1",
    ]);
    line_after(&mut source_out, "admin HTTP on");
    let out_dir = dir.join("clone");
    let (clone_child, mut clone_out) = spawn(&[
        "clone",
        "--from",
        &format!("http://127.0.0.1:{admin_port}"),
        "--bind",
        "127.0.0.2",
        "--dir",
        out_dir.to_str().unwrap(),
    ]);
    let joined = line_after(&mut clone_out, "cloned the gateway at");
    assert!(joined.contains("source"), "{joined}");
    line_after(&mut clone_out, "admin HTTP on");
    let cloned = format!("127.0.0.2:{port}");
    until("the cloned gateway never served the pool", || {
        get(&cloned).filter(|text| text.starts_with("HTTP/1.1 200") && text.ends_with("hello"))
    });
    // The clone's own admin port says what it serves.
    let (ok, out, err) = hapool(&[
        "gateway",
        "ctl",
        "--admin",
        &format!("127.0.0.2:{admin_port}"),
        "list",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&backend), "{out}");
    stop(clone_child);
    stop(source);
}

#[test]
fn an_https_admin_port_needs_the_operator_token_to_change_anything() {
    let dir = scratch("token");
    let token = dir.join("token");
    std::fs::write(&token, "operator-token-0123456789\n").unwrap();
    let backend = hello_server();
    let admin_port = free_port();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"[gateway]
admin = "127.0.0.1:{admin_port}"
threads = 1
[gateway.admin_tls]
certificate = "{cert}"
key = "{key}"
token_file = "{token}"
[[gateway.listener]]
listen = "127.0.0.1:0"
pool = "web"
[[gateway.pool]]
handle = "web"
members = ["{backend}"]
"#,
            cert = pki("server.pem"),
            key = pki("server.key"),
            token = token.display()
        ),
    )
    .unwrap();
    let (gateway, mut out) = spawn(&["gateway", "--config", config.to_str().unwrap()]);
    line_after(&mut out, "admin HTTPS on");
    let https = format!("https://127.0.0.1:{admin_port}");
    let ctl = |extra: &[&str]| {
        let mut args = vec!["gateway", "ctl", "--admin", &https, "--ca"];
        let ca = pki("ca.pem");
        args.push(&ca);
        args.extend_from_slice(extra);
        hapool(&args)
    };
    // Reading needs no token.
    let (ok, list, err) = ctl(&["list"]);
    assert!(ok && list.contains(&backend), "{list}{err}");
    // Changing does.
    let (ok, _, err) = ctl(&["set", "web", "1", "out_of_service"]);
    assert!(!ok && err.contains("needs the operator token"), "{err}");
    let (ok, list, _) = ctl(&["list"]);
    assert!(ok && !list.contains("out_of_service"), "{list}");
    let (ok, _, err) = ctl(&[
        "--token-file",
        token.to_str().unwrap(),
        "set",
        "web",
        "1",
        "out_of_service",
    ]);
    assert!(ok, "{err}");
    let (ok, list, _) = ctl(&["list"]);
    assert!(ok && list.contains("out_of_service"), "{list}");
    // Without the authority that issued its certificate, nothing is sent.
    let (ok, _, err) = hapool(&["gateway", "ctl", "--admin", &https, "list"]);
    assert!(!ok && err.contains("--ca"), "{err}");
    // A reload brings another certificate, from another authority, and
    // another token: the old token no longer changes anything, and the
    // old authority no longer vouches for the port.
    let members_pki = |file: &str| {
        format!(
            "{}/../hapool-gateway/tests/pki/{file}",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let text = std::fs::read_to_string(&config).unwrap();
    let renewed = text
        .replace(&pki("server.pem"), &members_pki("members.pem"))
        .replace(&pki("server.key"), &members_pki("members.key"));
    std::fs::write(&config, renewed).unwrap();
    let old_token = dir.join("old-token");
    std::fs::copy(&token, &old_token).unwrap();
    std::fs::write(&token, "the-next-operator-token\n").unwrap();
    let (ok, out, err) = ctl(&["--token-file", old_token.to_str().unwrap(), "reload"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("in effect: admin_tls: certificate and token loaded"),
        "{out}"
    );
    let (ok, _, err) = ctl(&["list"]);
    assert!(!ok, "the old authority is still trusted: {err}");
    let ctl_new = |extra: &[&str]| {
        let ca = members_pki("members-ca.pem");
        let mut args = vec!["gateway", "ctl", "--admin", &https, "--ca", &ca];
        args.extend_from_slice(extra);
        hapool(&args)
    };
    let (ok, list, err) = ctl_new(&["list"]);
    assert!(ok && list.contains(&backend), "{list}{err}");
    let set = |token: &Path| {
        ctl_new(&[
            "--token-file",
            token.to_str().unwrap(),
            "set",
            "web",
            "1",
            "active",
        ])
    };
    let (ok, _, err) = set(&old_token);
    assert!(!ok && err.contains("needs the operator token"), "{err}");
    let (ok, _, err) = set(&token);
    assert!(ok, "{err}");
    // HTTPS turned off takes a restart: the port stays as it is.
    let text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("[gateway.admin_tls]").unwrap();
    let end = text.find("[[gateway.listener]]").unwrap();
    std::fs::write(&config, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let (ok, out, err) = ctl_new(&["--token-file", token.to_str().unwrap(), "reload"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("takes a restart: admin_tls: HTTPS turned on or off takes a restart"),
        "{out}"
    );
    let (ok, _, err) = set(&token);
    assert!(ok, "{err}");
    let (ok, _, err) = ctl_new(&["set", "web", "1", "active"]);
    assert!(!ok && err.contains("needs the operator token"), "{err}");
    stop(gateway);
}
