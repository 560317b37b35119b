//! Health probes, shared by `hapool pe` (is the server up?) and
//! `hapool vip` (tracking: is this machine fit to hold the address?), and
//! the operator's shell commands they run, with a time limit.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// One way to tell whether something is healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A TCP connection is accepted within 1 s.
    Tcp(SocketAddr),
    /// An HTTP GET answers 2xx within 2 s.
    Http(String),
    /// A shell command exits with status 0 within 5 s.
    Command(String),
}

impl Probe {
    /// Whether the probe passes now.
    pub(crate) async fn passes(&self) -> bool {
        match self {
            Self::Tcp(addr) => matches!(
                timeout(Duration::from_secs(1), TcpStream::connect(addr)).await,
                Ok(Ok(_))
            ),
            Self::Http(url) => matches!(
                timeout(Duration::from_secs(2), crate::admin::http_get(url)).await,
                Ok(Ok((code, _))) if code.is_success()
            ),
            Self::Command(command) => matches!(
                run_shell(command, COMMAND_LIMIT).await,
                Ok((status, _)) if status.success()
            ),
        }
    }
}

/// How long a probe or load command may run before it is killed.
pub(crate) const COMMAND_LIMIT: Duration = Duration::from_secs(5);

/// Why a shell command gave no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ShellError {
    /// The shell could not be started, or its output not read.
    #[error("cannot run: {0}")]
    Run(#[from] std::io::Error),
    /// It ran past its time limit, and was killed with what it started.
    #[error("took over {0:?}")]
    TimedOut(Duration),
}

/// The most of a command's standard output kept: a probe's or a load
/// command's answer is a line. A command that writes more blocks once its
/// pipe is full, and is killed at its time limit.
const OUTPUT_KEPT: u64 = 64 * 1024;

/// Runs `command` with `sh -c`, and returns its exit status and standard
/// output, at most [`OUTPUT_KEPT`] bytes of it (its standard error goes
/// where the daemon's does). The shell runs in a process group of its
/// own; past `limit` the whole group is killed, so a command that hangs,
/// or leaves something running that holds its output open, leaves no
/// process behind, however often it is run.
pub(crate) async fn run_shell(
    command: &str,
    limit: Duration,
) -> Result<(ExitStatus, Vec<u8>), ShellError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let group = child.id();
    let mut stdout = child.stdout.take().expect("standard output is piped");
    let finished = timeout(limit, async {
        let mut output = Vec::new();
        (&mut stdout)
            .take(OUTPUT_KEPT)
            .read_to_end(&mut output)
            .await?;
        Ok::<_, std::io::Error>((child.wait().await?, output))
    })
    .await;
    match finished {
        Ok(done) => Ok(done?),
        Err(_) => {
            // The shell leads the group and is not reaped before `child`
            // is dropped, below: the group's number is still this one's.
            if let Some(group) = group.and_then(|g| i32::try_from(g).ok()) {
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
            Err(ShellError::TimedOut(limit))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_answers_with_its_status_and_output() {
        let (status, output) = run_shell("echo 42", Duration::from_secs(5)).await.unwrap();
        assert!(status.success());
        assert_eq!(output, b"42\n");
        let (status, _) = run_shell("exit 3", Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.code(), Some(3));
    }

    #[tokio::test]
    async fn a_command_that_writes_too_much_is_stopped_at_its_limit() {
        // A megabyte: more than is kept and than the pipe holds.
        let error = run_shell("head -c 1000000 /dev/zero", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(error, ShellError::TimedOut(_)), "{error}");
    }

    /// Whether process `pid` is gone (or dead, waiting to be reaped).
    fn gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn a_command_past_its_limit_is_killed_with_what_it_started() {
        let dir = std::env::temp_dir().join(format!("hapool-shell-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        // A background sleep that keeps the output open, then a sleep in
        // the foreground.
        let command = format!("sleep 30 & echo $! > {}; sleep 30", pid_file.display());
        let error = run_shell(&command, Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(error, ShellError::TimedOut(_)), "{error}");
        assert_eq!(error.to_string(), "took over 500ms");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            gone(pid),
            "the command's background process {pid} still runs"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
