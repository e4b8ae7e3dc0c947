//! Process harness for end-to-end tests: real `agora` processes, driven only through the CLI.
//!
//! - [`AgoraProc`] runs `agora --data-dir D up ...` with stdout and stderr appended to
//!   `D/agora-up.log`, waits until `agora status --json` answers (from this very process: the
//!   pid in `D/api.json` must be the child's), and kills the process in `Drop`, so a failing
//!   test leaves nothing running.
//! - [`cli`] / [`cli_json`] run one CLI command with a deadline; [`wait_until`] polls with a
//!   deadline and panics with the last error and the tail of every node's log.
//! - Every command can run behind a wrapper prefix (e.g. `ip netns exec NS`), for tests that
//!   put nodes into network namespaces. `ip netns exec` execs the command in place, so the pid
//!   we hold is the node's own pid.
#![allow(dead_code)]

use serde_json::Value;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_agora");
/// How long a node may take to answer `status` after it was spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CLI command may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Log filter for nodes under test.
pub const NODE_LOG_FILTER: &str = "info,agora=debug";
/// Name of the node's log file inside its data dir.
pub const LOG_FILE: &str = "agora-up.log";

/// Environment variables that would change what a node or a CLI command does; scrubbed from
/// every command so that the caller's environment cannot leak into a test.
const SCRUB_ENV: &[&str] = &[
    "AGORA_DATA_DIR",
    "AGORA_LISTEN",
    "AGORA_PEERS",
    "AGORA_API",
    "AGORA_NO_MDNS",
    "RUST_LOG",
];

/// Loopback-only arguments for `up` on the host: no mDNS, random ports.
pub const LOOPBACK_ARGS: &[&str] = &[
    "--no-mdns",
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--api",
    "127.0.0.1:0",
];

/// `agora --data-dir dir args...`, behind `wrapper` if it is not empty.
pub fn command(wrapper: &[String], dir: &Path, args: &[&str]) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.arg("--data-dir").arg(dir).args(args);
    for k in SCRUB_ENV {
        cmd.env_remove(k);
    }
    // Plain logs: no ANSI colour codes in the log files and panic messages.
    cmd.env("NO_COLOR", "1");
    cmd
}

fn describe(wrapper: &[String], dir: &Path, args: &[&str]) -> String {
    let mut parts: Vec<String> = wrapper.to_vec();
    parts.push("agora".into());
    parts.push("--data-dir".into());
    parts.push(dir.display().to_string());
    parts.extend(args.iter().map(|a| a.to_string()));
    parts.join(" ")
}

/// Runs `cmd` to completion with captured output; kills it and panics after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let o = t_out.join().unwrap_or_default();
                let e = t_err.join().unwrap_or_default();
                panic!(
                    "`{what}` did not finish within {timeout:?}\n--- stdout:\n{}\n--- stderr:\n{}",
                    String::from_utf8_lossy(&o),
                    String::from_utf8_lossy(&e)
                );
            }
            Err(e) => panic!("waiting for `{what}` failed: {e}"),
        }
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Runs one CLI command (no wrapper) and returns its output, whatever the exit status.
pub fn cli(dir: &Path, args: &[&str]) -> Output {
    cli_with(&[], dir, args)
}

/// Runs one CLI command behind `wrapper`.
pub fn cli_with(wrapper: &[String], dir: &Path, args: &[&str]) -> Output {
    let what = describe(wrapper, dir, args);
    run_bounded(command(wrapper, dir, args), CLI_TIMEOUT, &what)
}

/// Runs a CLI command that prints JSON; `Err` (with the exit status and stderr) if it fails.
pub fn try_cli_json_with(wrapper: &[String], dir: &Path, args: &[&str]) -> Result<Value, String> {
    let out = cli_with(wrapper, dir, args);
    let what = describe(wrapper, dir, args);
    if !out.status.success() {
        return Err(format!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "`{what}` printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs a CLI command that prints JSON (no wrapper); panics with its stderr if it fails.
pub fn cli_json(dir: &Path, args: &[&str]) -> Value {
    try_cli_json_with(&[], dir, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a CLI command that must succeed (no JSON expected); returns its stdout.
pub fn cli_ok_with(wrapper: &[String], dir: &Path, args: &[&str]) -> String {
    let out = cli_with(wrapper, dir, args);
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}",
        describe(wrapper, dir, args),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that a command failed with a non-zero exit and exactly one line on stderr, which
/// contains `needle` (case-insensitive). Returns that line.
#[track_caller]
pub fn assert_one_line_error(out: &Output, what: &str, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "{what}: expected a failure, got {}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
        out.status
    );
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "{what}: expected a non-zero exit code, got {}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected a one-line error on stderr, got {} lines:\n{stderr}",
        lines.len()
    );
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "{what}: the error should mention {needle:?}: {}",
        lines[0]
    );
    lines[0].to_string()
}

/// The last `n` lines of a file (or a note that it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => {
            let text = String::from_utf8_lossy(&b);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A running `agora up` process. Killed (SIGKILL) on drop if still running.
pub struct AgoraProc {
    /// A short name for messages ("node1").
    pub name: String,
    /// The data dir.
    pub dir: PathBuf,
    /// Command prefix (e.g. `ip netns exec NS`), empty for none.
    pub wrapper: Vec<String>,
    /// The arguments after `up`.
    pub args: Vec<String>,
    /// Where stdout and stderr go (appended across restarts).
    pub log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl AgoraProc {
    /// Starts `agora --data-dir dir up extra_args...` and waits until it answers `status`.
    /// The node is named after the last component of `dir` in messages.
    pub fn start(dir: &Path, extra_args: &[&str]) -> AgoraProc {
        AgoraProc::start_with(&[], dir, extra_args)
    }

    /// Like [`AgoraProc::start`], behind a command prefix such as `["ip", "netns", "exec", NS]`.
    pub fn start_with(wrapper: &[&str], dir: &Path, extra_args: &[&str]) -> AgoraProc {
        let name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut p = AgoraProc {
            name,
            dir: dir.to_path_buf(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            args: extra_args.iter().map(|s| s.to_string()).collect(),
            log: dir.join(LOG_FILE),
            child: None,
            starts: 0,
        };
        // If this panics, `p` is dropped and its child killed.
        p.spawn();
        p
    }

    fn up_args(&self) -> Vec<&str> {
        let mut v = vec!["up"];
        v.extend(self.args.iter().map(String::as_str));
        v
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        std::fs::create_dir_all(&self.dir).expect("create the data dir");
        self.starts += 1;
        let args = self.up_args();
        let what = describe(&self.wrapper, &self.dir, &args);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the node log");
        writeln!(log, "===== [test harness] start #{}: {what}", self.starts).expect("write log");
        let mut cmd = command(&self.wrapper, &self.dir, &args);
        cmd.env("RUST_LOG", NODE_LOG_FILTER)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until `api.json` names this process and `status --json` answers.
    fn wait_ready(&mut self) {
        let started = Instant::now();
        let pid = self.pid().expect("just spawned");
        let api_file = self.dir.join("api.json");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "{} exited during start with {status}\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            let last = match std::fs::read_to_string(&api_file) {
                Ok(text) => {
                    let file_pid = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["pid"].as_u64());
                    if file_pid == Some(u64::from(pid)) {
                        match self.try_cli_json(&["status", "--json"]) {
                            Ok(_) => return,
                            Err(e) => e,
                        }
                    } else {
                        format!("api.json names pid {file_pid:?}, the node is {pid}")
                    }
                }
                Err(e) => format!("no api.json yet: {e}"),
            };
            if started.elapsed() > START_TIMEOUT {
                panic!(
                    "{} did not answer `status` within {START_TIMEOUT:?}: {last}\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (not yet reaped).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends SIGTERM (through `kill -TERM`) and waits, bounded, for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("running");
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return status;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.child = None;
                    panic!(
                        "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed it)\n{}",
                        self.name,
                        self.diagnostics()
                    );
                }
                Err(e) => panic!("waiting for {} failed: {e}", self.name),
            }
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let _ = child.kill();
        child.wait().expect("reap the killed node")
    }

    /// Starts the node again with the same data dir, wrapper and arguments.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Runs a CLI command against this node's data dir (behind the same wrapper).
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with(&self.wrapper, &self.dir, args)
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        cli_ok_with(&self.wrapper, &self.dir, args)
    }

    /// Runs a CLI command that prints JSON; `Err` with its stderr if it fails.
    pub fn try_cli_json(&self, args: &[&str]) -> Result<Value, String> {
        try_cli_json_with(&self.wrapper, &self.dir, args)
    }

    /// Runs a CLI command that prints JSON; panics with stderr and the node log if it fails.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        self.try_cli_json(args)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", self.name, self.diagnostics()))
    }

    /// `status --json`.
    pub fn status(&self) -> Value {
        self.cli_json(&["status", "--json"])
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> String {
        self.status()["peer_id"]
            .as_str()
            .expect("status has peer_id")
            .to_string()
    }

    /// The first listen address (with `/p2p/<id>`) that starts with `prefix`.
    pub fn listen_addr(&self, prefix: &str) -> String {
        let status = self.status();
        status["listen_addrs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|a| a.starts_with(prefix))
            .unwrap_or_else(|| {
                panic!(
                    "{} has no listen address starting with {prefix}: {status}",
                    self.name
                )
            })
            .to_string()
    }

    /// The tail of this node's log, labelled.
    pub fn diagnostics(&self) -> String {
        format!(
            "----- {} log ({}), last 120 lines:\n{}\n----- end of {} log",
            self.name,
            self.log.display(),
            tail(&self.log, 120),
            self.name
        )
    }
}

impl Drop for AgoraProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `f` every 200 ms until it returns `Ok`, for at most `timeout`; then panics with the
/// last error and the tail of each node's log.
#[track_caller]
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    nodes: &[&AgoraProc],
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if started.elapsed() > timeout {
            let logs: Vec<String> = nodes.iter().map(|n| n.diagnostics()).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}\nlast check: {last}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `ip ARGS` (iproute2) and returns its stdout, or a message with its stderr.
pub fn run_ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip ARGS` and panics if it fails.
#[track_caller]
pub fn ip(args: &[&str]) -> String {
    run_ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Fails the test (never skips it) unless we are root and iproute2 is installed. `need` says
/// which test needs them and why.
pub fn require_root_and_iproute2(need: &str) {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| panic!("{need}: cannot run `id -u`: {e}"));
    assert_eq!(uid, "0", "{need}: running as uid {uid}");
    if let Err(e) = run_ip(&["-V"]) {
        panic!("{need}: {e}");
    }
}
