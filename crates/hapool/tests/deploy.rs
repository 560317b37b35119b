//! The files under `deploy/` say what the code does: the three-node
//! configurations are valid, Prometheus scrapes the admin ports they
//! configure, the Grafana dashboard asks only for series and labels the
//! daemons export, and the systemd units run commands that exist.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

mod common;
use common::hapool;

#[test]
fn the_three_node_configurations_are_valid_and_scraped() {
    let prometheus = read("deploy/prometheus.yml");
    for n in 1..=3 {
        let path = root().join(format!("deploy/three-node/node{n}.toml"));
        let (ok, out, err) = hapool(&["check-config", path.to_str().unwrap()]);
        assert!(ok, "node{n}: {err}");
        assert!(out.contains(&format!("registrar 0000000{n}")), "{out}");
        assert!(out.contains("gateway listener 0.0.0.0:80"), "{out}");
        assert!(out.contains("virtual router 51"), "{out}");
        // ENRP on the nodes' network is left without TLS (commented out
        // in the files), and the check says what that leaves open.
        assert!(
            out.contains(&format!(
                "warning: ENRP on 192.0.2.1{n}:9901 without TLS: anyone who reaches it"
            )),
            "{out}"
        );
        // Each admin port the node configures is a Prometheus target.
        for port in [3880, 3882, 3890] {
            let target = format!("\"192.0.2.1{n}:{port}\"");
            assert!(prometheus.contains(&target), "{target} is not scraped");
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.contains(&format!("admin = \"192.0.2.1{n}:{port}\"")),
                "node{n} does not serve an admin port on {port}"
            );
        }
    }
}

/// Metric names and label names the sources export (`"hapool_…"` in the
/// metric macros, `"label" =>` in their arguments; and the series the
/// gateway renders at each scrape, in `gateway_metrics.rs`: its
/// `"hapool_…"` literals, and the `label=\"` in its lines).
fn exported() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut labels = BTreeSet::from(["instance".to_owned(), "job".to_owned()]);
    let mut stack: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .map(|crate_dir| crate_dir.path().join("src"))
        .collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for call in ["counter!(", "gauge!(", "histogram!("] {
                    for piece in text.split(call).skip(1) {
                        // Without white space, so that `)\n.increment` is found.
                        let piece: String = piece
                            .chars()
                            .take(400)
                            .filter(|c| !c.is_whitespace())
                            .collect();
                        // The arguments end where the macro's value is used.
                        let end = [").increment", ").set", ").record"]
                            .iter()
                            .filter_map(|close| piece.find(close))
                            .min()
                            .unwrap_or(0);
                        let args = &piece[..end];
                        // Only calls whose first argument is a literal name.
                        let Some(rest) = piece.strip_prefix('"') else {
                            continue;
                        };
                        names.insert(rest[..rest.find('"').unwrap()].to_owned());
                        for pair in args.split(',').skip(1) {
                            if let Some((label, _)) = pair.split_once("=>")
                                && let Some(label) = label.trim().strip_prefix('"')
                            {
                                labels.insert(label.trim_end_matches('"').to_owned());
                            }
                        }
                    }
                }
            }
        }
    }
    let rendered = read("crates/hapool/src/gateway_metrics.rs");
    for piece in rendered.split("\"hapool_").skip(1) {
        let name = &piece[..piece
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap()];
        names.insert(format!("hapool_{name}"));
    }
    for piece in rendered.split("=\\\"").collect::<Vec<_>>().windows(2) {
        let before = piece[0];
        let label = before
            .rsplit(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .next()
            .unwrap();
        if !label.is_empty() {
            labels.insert(label.to_owned());
        }
    }
    (names, labels)
}

#[test]
fn the_grafana_dashboard_asks_only_for_exported_series() {
    let (names, labels) = exported();
    assert!(names.len() > 15, "{names:?}");
    for name in &names {
        assert!(
            name.starts_with("hapool_") && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "metric {name:?} does not follow hapool_<daemon>_<what>"
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/hapool.json")).expect("Grafana JSON");
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("hapool_") {
                    assert!(names.contains(word), "{expr}: {word} is not exported");
                    used.insert(word.to_owned());
                }
            }
            if let Some(by) = expr.split("by (").nth(1) {
                for label in by[..by.find(')').unwrap()].split(',') {
                    assert!(labels.contains(label.trim()), "{expr}: no label {label:?}");
                }
            }
        }
    }
    // Every daemon has its panels.
    for daemon in ["hapool_gateway_", "hapool_registrar_", "hapool_vip_"] {
        assert!(
            used.iter().any(|n| n.starts_with(daemon)),
            "no {daemon} panel"
        );
    }
}

#[test]
fn a_running_registrar_exports_what_the_dashboard_reads() {
    let (mut registrar, _, admin) = common::registrar_with_admin(&[]);
    let start = Instant::now();
    let text = loop {
        let mut stream = std::net::TcpStream::connect(&admin).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        if text.contains("hapool_registrar_pool_elements")
            || start.elapsed() > Duration::from_secs(10)
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = registrar.kill();
    let _ = registrar.wait();
    let (names, _) = exported();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            names.contains(name),
            "{name} is exported but not found in the sources"
        );
    }
    for name in [
        "hapool_registrar_pool_elements",
        "hapool_registrar_pools",
        "hapool_registrar_peers",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
}

#[test]
fn the_systemd_units_run_hapool_commands_that_exist() {
    for daemon in ["registrar", "gateway", "vip"] {
        let unit = read(&format!("deploy/systemd/hapool-{daemon}.service"));
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(words[..2], ["/usr/local/bin/hapool", daemon], "{exec}");
        assert_eq!(
            words[2..],
            ["--config", "/etc/hapool/hapool.toml"],
            "{exec}"
        );
        let (ok, _, err) = hapool(&[daemon, "--help"]);
        assert!(ok, "{err}");
        // A bad configuration is not restarted in a loop.
        assert!(
            unit.contains("RestartPreventExitStatus=64"),
            "hapool-{daemon}"
        );
        assert!(unit.contains("NoNewPrivileges=yes"), "hapool-{daemon}");
        // Each says when it serves
        // (`a_registrar_tells_its_service_manager_when_it_serves_and_stops`,
        // `a_gateway_tells_its_service_manager_when_it_serves_reloads_and_stops`,
        // `a_configured_member_tracks_notifies_and_reports`).
        assert!(unit.contains("\nType=notify\n"), "hapool-{daemon}");
    }
    // `systemctl reload hapool-gateway` checks the file, then sends SIGHUP.
    let gateway = read("deploy/systemd/hapool-gateway.service");
    let reload: Vec<&str> = gateway
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert_eq!(
        reload,
        [
            "/usr/local/bin/hapool check-config /etc/hapool/hapool.toml",
            "/bin/kill -HUP $MAINPID"
        ]
    );
    // The example's access log, member cache and handover directories are
    // writable.
    let example = read("deploy/gateway.toml");
    for (dir, directive) in [
        ("/var/lib/hapool/", "StateDirectory=hapool"),
        ("/var/log/hapool/", "LogsDirectory=hapool"),
        ("/run/hapool/", "RuntimeDirectoryPreserve=yes"),
    ] {
        assert!(
            example.contains(dir) && gateway.contains(directive),
            "{dir}"
        );
    }
    // The socket unit holds the example's listening addresses, every
    // listener's and the admin port's, and no other.
    let socket = read("deploy/systemd/hapool-gateway.socket");
    let held: BTreeSet<&str> = socket
        .lines()
        .filter_map(|l| l.strip_prefix("ListenStream="))
        .collect();
    let example: toml::Table = toml::from_str(&example).unwrap();
    let gateway = example["gateway"].as_table().unwrap();
    let mut configured: BTreeSet<&str> = gateway["listener"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["listen"].as_str().unwrap())
        .collect();
    configured.insert(gateway["admin"].as_str().unwrap());
    assert_eq!(held, configured);
}
