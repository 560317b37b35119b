//! The chat example as its users run it: two chat servers (processes) with
//! last wills pointing at each other, a client in mid-session, the serving
//! process killed with SIGKILL ten times: the client goes on with the
//! other server, which gets the state cookie before any data, and no line
//! is lost.

use std::process::Command;

#[test]
fn chat_sessions_survive_kill_9_of_their_server() {
    // `cargo test` builds the examples next to the test binaries.
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("chat"))
        .unwrap();
    assert!(example.exists(), "{} is not built", example.display());
    let out = Command::new(&example)
        .args(["failovers", "--count", "10"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .contains("cookie before any data on the new server: 10 of 10; lines sent 11, lost 0"),
        "{stdout}"
    );
    assert!(stdout.contains("10 failovers after kill -9"), "{stdout}");
}
