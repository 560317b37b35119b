//! The live dashboard in a real browser: headless Chromium (Debian's
//! `chromium`) loads the gateway's admin page while `hapool demo` runs; the
//! demo kills server web-2, and the same page, kept current by server-sent
//! events, must show that member's row change and list the change among
//! its recent events. A screenshot is kept as
//! `target/tmp/dashboard.png`. Without Chromium the test says SKIPPED,
//! unless HAPOOL_REQUIRE_TOOLS=1.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;

/// Debian's Chromium; without it the test says SKIPPED, or fails when
/// HAPOOL_REQUIRE_TOOLS=1.
fn chromium() -> Option<&'static str> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        assert!(
            std::env::var("HAPOOL_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "HAPOOL_REQUIRE_TOOLS=1 but chromium is not installed"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
    }
    found
}

/// Chromium, headless, as this machine allows it (no sandbox as root, no
/// background traffic), with a fresh profile.
fn browser(binary: &str, profile: &std::path::Path) -> Command {
    let mut command = Command::new(binary);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// Starts Chromium once on each of `profiles` with a blank page, so that
/// its first start (a new profile, caches) is over before a test times
/// anything against a page: the registrar's page came back empty once,
/// in the first run on a freshly installed machine.
fn warm_up(binary: &str, profiles: &[&std::path::Path]) {
    for profile in profiles {
        let blank = browser(binary, profile)
            .args(["--dump-dom", "about:blank"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run chromium");
        assert!(blank.success(), "chromium could not show a blank page");
    }
}

#[test]
fn the_dashboard_follows_a_member_dying() {
    let Some(binary) = chromium() else {
        return;
    };
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    warm_up(
        binary,
        &[&dir.join("chromium-shot"), &dir.join("chromium-dom")],
    );
    // web-2 dies a third of the way into the run (5 s); the page is dumped
    // when the demo ends and closes its event stream.
    let mut demo = Command::new(env!("CARGO_BIN_EXE_hapool"))
        .args(["demo", "--duration", "15s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let admin = loop {
        let line = lines
            .next()
            .expect("the demo printed its admin address")
            .unwrap();
        if let Some(rest) = line.split("dashboard: http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let url = format!("http://{admin}/");
    // Both pages load at once, before web-2 dies: the screenshot is taken
    // 5 s later; the other page stays open across the death and is dumped
    // (kept as `target/tmp/dashboard.html`) once the demo ends.
    let screenshot = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let shot = browser(binary, &dir.join("chromium-shot"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .args([
            "--timeout=5000",
            "--window-size=1280,900",
            &format!("--screenshot={}", screenshot.display()),
            &url,
        ])
        .spawn()
        .expect("run chromium");
    let dom = browser(binary, &dir.join("chromium-dom"))
        .args(["--virtual-time-budget=8000", "--dump-dom", &url])
        .stderr(Stdio::null())
        .output()
        .expect("run chromium");
    let shot = shot.wait_with_output().expect("run chromium");
    let dom = String::from_utf8_lossy(&dom.stdout);
    std::fs::write(dir.join("dashboard.html"), dom.as_bytes()).unwrap();
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(
        dom.contains("data-key=\"web/00000101\" data-state=\"available\""),
        "{dom}"
    );
    assert!(
        dom.split("<li>").any(|event| event.contains("web/00000102")
            && (event.contains(" gone") || event.contains("→ unreachable"))),
        "the page never showed web-2's row change: {dom}"
    );
    assert!(
        !dom.contains("data-key=\"web/00000102\" data-state=\"available\""),
        "{dom}"
    );
    // Each listener with what keeps its sessions.
    assert!(
        dom.contains("<td>web</td><td>no</td><td>cookie</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<td>echo</td><td>no</td><td>none</td>"),
        "{dom}"
    );
    assert!(
        screenshot
            .metadata()
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "no screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
}

/// A registrar's page: its PEs with their home, and its peer registrars.
#[test]
fn a_registrar_dashboard_lists_its_pes_and_peers() {
    let Some(binary) = chromium() else {
        return;
    };
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    };
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    warm_up(binary, &[&dir.join("chromium-registrar")]);
    let (enrp1, enrp2) = (free(), free());
    let (mut first, asap, admin) =
        common::registrar_with_admin(&["--id", "1", "--enrp-listen", &enrp1]);
    let (mut second, _, _) =
        common::registrar_with_admin(&["--id", "2", "--enrp-listen", &enrp2, "--peer", &enrp1]);
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap().to_string();
    let mut pe = common::spawn_pe(&asap, "web", &server_addr, &[]);
    // The page is dumped when its event stream ends: the registrar stops
    // after the page has had a few updates.
    let first_pid = first.id();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(5));
        let _ = Command::new("kill").arg(first_pid.to_string()).status();
    });
    let dom = browser(binary, &dir.join("chromium-registrar"))
        .args([
            "--virtual-time-budget=8000",
            "--dump-dom",
            &format!("http://{admin}/"),
        ])
        .stderr(Stdio::null())
        .output()
        .expect("run chromium");
    stopper.join().unwrap();
    for child in [&mut pe, &mut first, &mut second] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let dom = String::from_utf8_lossy(&dom.stdout);
    std::fs::write(dir.join("dashboard-registrar.html"), dom.as_bytes()).unwrap();
    assert!(dom.contains("registrar 00000001"), "{dom}");
    assert!(dom.contains("data-key=\"peer/00000002\""), "{dom}");
    let row = dom
        .split("<tr ")
        .find(|row| row.contains("data-key=\"web/"))
        .unwrap_or_else(|| panic!("no PE row: {dom}"));
    assert!(
        row.contains(&server_addr) && row.contains("00000001"),
        "{row}"
    );
}
