//! `hapool demo --duration 20s`, as the README's first command runs it:
//! requests are served, the killed server and registrar are detected, and
//! no client request fails.

use std::process::Command;

#[test]
fn the_demo_survives_its_scripted_failures() {
    let out = Command::new(env!("CARGO_BIN_EXE_hapool"))
        .args(["demo", "--duration", "20s"])
        .output()
        .expect("run hapool demo");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stdout}{stderr}");
    let summary = stdout.split("summary after").nth(1).expect(&stdout);
    let served: u64 = summary
        .split("requests served: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect(summary);
    assert!(served > 0, "{summary}");
    assert!(summary.contains("; failed: 0\n"), "{summary}");
    assert!(
        summary.contains("killed server detected: web-2 removed"),
        "{summary}"
    );
    assert!(
        summary.contains("killed registrar detected: declared dead by its peers"),
        "{summary}"
    );
    assert!(summary.contains("result: OK"), "{summary}");
    // Both echo servers were used.
    let echo = summary
        .lines()
        .find(|l| l.contains("gateway pool echo: sessions sent per member"))
        .expect(summary);
    assert!(
        echo.contains("00000201:") && echo.contains("00000202:"),
        "{summary}"
    );
    let (code, _, err) = {
        let o = Command::new(env!("CARGO_BIN_EXE_hapool"))
            .args(["demo", "--duration", "2s"])
            .output()
            .unwrap();
        (
            o.status.code(),
            o.stdout,
            String::from_utf8(o.stderr).unwrap(),
        )
    };
    assert_ne!(code, Some(0));
    assert!(err.contains("--duration must be at least 6s"), "{err}");
}
