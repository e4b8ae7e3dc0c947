//! Real `agora` processes, driven only through the CLI.
//!
//! - [`AgoraProc`] runs `agora --data-dir D up ...` with stdout and stderr appended to
//!   `D/agora-up.log`, waits until `agora status --json` answers (from this very process: the
//!   pid in `D/api.json` must be the child's), and kills the process in `Drop`, so a failing
//!   test leaves nothing running.
//! - [`Cli`] runs one CLI command with a deadline ([`run_bounded`]) and reads its `--json`
//!   output into the node's typed structs; [`wait_until`] polls with a deadline and panics with
//!   the last error and the tail of every node's log.
//! - Every command can run behind a wrapper prefix (e.g. `ip netns exec NS`), for tests that
//!   put nodes into network namespaces. `ip netns exec` execs the command in place, so the pid
//!   we hold is the node's own pid.
//!
//! The binary under test is found through the `CARGO_BIN_EXE_agora` variable that Cargo sets
//! for the root package's integration tests (see [`agora_bin`]).

use agora_node::config::{ApiFile, API_FILE};
use agora_node::{NodeStatus, PeerInfo};
use agora_protocol::{AuthorId, DocId, SpaceId};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

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
/// How often a starting node is checked for readiness.
const READY_POLL: Duration = Duration::from_millis(20);

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

/// What `agora init --json` prints.
#[derive(Debug, Clone, Deserialize)]
pub struct InitOutput {
    /// The author id.
    pub author: AuthorId,
    /// The libp2p peer id.
    pub peer_id: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Whether the identity was created now (false: it existed).
    pub created: bool,
}

/// What `agora space create --json` prints.
#[derive(Debug, Clone, Deserialize)]
pub struct SpaceCreated {
    /// The new space.
    pub id: SpaceId,
    /// Its name.
    pub name: String,
}

/// What `agora idea add --json` prints.
#[derive(Debug, Clone, Deserialize)]
pub struct IdeaCreated {
    /// The new idea.
    pub id: DocId,
}

/// The arguments of `agora idea add --space SPACE --title TITLE --body BODY [--tag T]... --json`.
pub fn idea_add_args<'a>(
    space: &'a str,
    title: &'a str,
    body: &'a str,
    tags: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "idea", "add", "--space", space, "--title", title, "--body", body,
    ];
    for t in tags {
        args.extend(["--tag", t]);
    }
    args.push("--json");
    args
}

/// The `agora` binary under test: `CARGO_BIN_EXE_agora`, which Cargo sets (at run time too)
/// for the root package's integration tests.
pub fn agora_bin() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_agora")
        .map(PathBuf::from)
        .expect(
        "CARGO_BIN_EXE_agora is not set: the process harness runs from the root package's tests",
    )
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

/// Sends SIGKILL to `pid` (`kill -9 PID`); panics if `kill` fails (e.g. no such process).
pub fn kill_9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("cannot run `kill`");
    assert!(status.success(), "`kill -9 {pid}` failed: {status}");
}

/// The pid recorded in `<dir>/api.json`, if the file is there and readable.
pub fn api_pid(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join(API_FILE)).ok()?;
    serde_json::from_str::<ApiFile>(&text).ok().map(|a| a.pid)
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

/// How to run CLI commands for one data dir: behind which wrapper, with which deadline.
#[derive(Debug, Clone)]
pub struct Cli {
    /// Command prefix (e.g. `ip netns exec NS`), empty for none.
    pub wrapper: Vec<String>,
    /// The data dir (`--data-dir`).
    pub dir: PathBuf,
    /// How long one command may take.
    pub timeout: Duration,
}

impl Cli {
    /// Commands for `dir`, no wrapper, [`CLI_TIMEOUT`].
    pub fn new(dir: &Path) -> Cli {
        Cli {
            wrapper: Vec::new(),
            dir: dir.to_path_buf(),
            timeout: CLI_TIMEOUT,
        }
    }

    /// The same, behind `wrapper` (e.g. `["ip", "netns", "exec", NS]`).
    pub fn wrapped<S: AsRef<str>>(mut self, wrapper: &[S]) -> Cli {
        self.wrapper = wrapper.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }

    /// The same, with another deadline per command.
    pub fn with_timeout(mut self, timeout: Duration) -> Cli {
        self.timeout = timeout;
        self
    }

    /// `agora --data-dir dir args...`, behind the wrapper, with a scrubbed environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(agora_bin());
                c
            }
            None => Command::new(agora_bin()),
        };
        cmd.arg("--data-dir").arg(&self.dir).args(args);
        for k in SCRUB_ENV {
            cmd.env_remove(k);
        }
        // Plain logs: no ANSI colour codes in the log files and panic messages.
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// The command line, for messages.
    pub fn describe(&self, args: &[&str]) -> String {
        let mut parts: Vec<String> = self.wrapper.clone();
        parts.push("agora".into());
        parts.push("--data-dir".into());
        parts.push(self.dir.display().to_string());
        parts.extend(args.iter().map(|a| a.to_string()));
        parts.join(" ")
    }

    /// Runs one command and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        run_bounded(self.command(args), self.timeout, &self.describe(args))
    }

    /// Runs a command that must succeed (no JSON expected); returns its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`{}` failed ({}): {}",
            self.describe(args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that prints JSON of type `T`; `Err` (with the exit status and stderr) if
    /// it fails or prints something else.
    pub fn try_json<T: DeserializeOwned>(&self, args: &[&str]) -> Result<T, String> {
        let out = self.run(args);
        let what = self.describe(args);
        if !out.status.success() {
            return Err(format!(
                "`{what}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "`{what}` printed no {} ({e}): {}",
                std::any::type_name::<T>(),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs a command that prints JSON of type `T`; panics with its stderr if it fails.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        self.try_json(args).unwrap_or_else(|e| panic!("{e}"))
    }
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

/// How to launch a node: the arguments after `up`, the wrapper, and its bounds.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The arguments after `up`.
    pub args: Vec<String>,
    /// Command prefix (e.g. `ip netns exec NS`), empty for none.
    pub wrapper: Vec<String>,
    /// `RUST_LOG` of the node.
    pub log_filter: String,
    /// How long the node may take to answer `status` after it was spawned.
    pub start_timeout: Duration,
    /// How long one CLI command may take.
    pub cli_timeout: Duration,
}

impl Launch {
    /// `up args...`, no wrapper, [`NODE_LOG_FILTER`], [`START_TIMEOUT`], [`CLI_TIMEOUT`].
    pub fn new(args: &[&str]) -> Launch {
        Launch {
            args: args.iter().map(|s| s.to_string()).collect(),
            wrapper: Vec::new(),
            log_filter: NODE_LOG_FILTER.to_string(),
            start_timeout: START_TIMEOUT,
            cli_timeout: CLI_TIMEOUT,
        }
    }

    /// Behind `wrapper` (e.g. `["ip", "netns", "exec", NS]`).
    pub fn wrapped<S: AsRef<str>>(mut self, wrapper: &[S]) -> Launch {
        self.wrapper = wrapper.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }

    /// With another `RUST_LOG`.
    pub fn log_filter(mut self, filter: &str) -> Launch {
        self.log_filter = filter.to_string();
        self
    }

    /// With other start and CLI deadlines.
    pub fn timeouts(mut self, start: Duration, cli: Duration) -> Launch {
        self.start_timeout = start;
        self.cli_timeout = cli;
        self
    }
}

/// A running `agora up` process. Killed (SIGKILL) on drop if still running.
pub struct AgoraProc {
    /// A short name for messages ("node1"): the last component of the data dir.
    pub name: String,
    /// The data dir.
    pub dir: PathBuf,
    /// How it is launched.
    pub launch: Launch,
    /// Where stdout and stderr go (appended across restarts).
    pub log: PathBuf,
    cli: Cli,
    child: Option<Child>,
    starts: u32,
}

impl AgoraProc {
    /// Starts `agora --data-dir dir up extra_args...` and waits until it answers `status`.
    pub fn start(dir: &Path, extra_args: &[&str]) -> AgoraProc {
        AgoraProc::start_launch(dir, Launch::new(extra_args))
    }

    /// Like [`AgoraProc::start`], behind a command prefix such as `["ip", "netns", "exec", NS]`.
    pub fn start_with<S: AsRef<str>>(wrapper: &[S], dir: &Path, extra_args: &[&str]) -> AgoraProc {
        AgoraProc::start_launch(dir, Launch::new(extra_args).wrapped(wrapper))
    }

    /// Starts a node as `launch` says and waits until it answers `status`.
    pub fn start_launch(dir: &Path, launch: Launch) -> AgoraProc {
        // If waiting panics, the node is dropped and its process killed.
        let mut p = AgoraProc::spawn(dir, launch);
        p.wait_ready();
        p
    }

    /// Starts a node as `launch` says, without waiting for it to answer (see
    /// [`AgoraProc::wait_ready`]).
    pub fn spawn(dir: &Path, launch: Launch) -> AgoraProc {
        let name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let cli = Cli::new(dir)
            .wrapped(&launch.wrapper)
            .with_timeout(launch.cli_timeout);
        let mut p = AgoraProc {
            name,
            dir: dir.to_path_buf(),
            log: dir.join(LOG_FILE),
            launch,
            cli,
            child: None,
            starts: 0,
        };
        p.respawn();
        p
    }

    /// Starts the (stopped or killed) process again with the same data dir, wrapper and
    /// arguments, without waiting for it to answer.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        std::fs::create_dir_all(&self.dir).expect("create the data dir");
        self.starts += 1;
        let mut args = vec!["up"];
        args.extend(self.launch.args.iter().map(String::as_str));
        let what = self.cli.describe(&args);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the node log");
        writeln!(log, "===== [test harness] start #{}: {what}", self.starts).expect("write log");
        let mut cmd = self.cli.command(&args);
        cmd.env("RUST_LOG", &self.launch.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        self.child = Some(child);
    }

    /// Starts the node again (see [`AgoraProc::respawn`]) and waits until it answers.
    pub fn restart(&mut self) {
        self.respawn();
        self.wait_ready();
    }

    /// Waits until `api.json` names this very process (a stale file left by a killed node does
    /// not count) and `status --json` answers; returns how long that took. Panics if the process
    /// exits first (e.g. because its store does not open) or the start deadline passes.
    pub fn wait_ready(&mut self) -> Duration {
        let started = Instant::now();
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "{} exited during start with {status} (the store did not open?)\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            let last = match api_pid(&self.dir) {
                Some(p) if p == pid => match self.try_cli_json::<NodeStatus>(&["status", "--json"])
                {
                    Ok(_) => return started.elapsed(),
                    Err(e) => e,
                },
                other => format!("api.json names pid {other:?}, the node is {pid}"),
            };
            if started.elapsed() > self.launch.start_timeout {
                panic!(
                    "{} did not answer `status` within {:?}: {last}\n{}",
                    self.name,
                    self.launch.start_timeout,
                    self.diagnostics()
                );
            }
            std::thread::sleep(READY_POLL);
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

    /// Kills the process with `kill -9 PID` and reaps it.
    pub fn kill_9(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        kill_9(child.id());
        child.wait().expect("reap the killed node")
    }

    /// How to run CLI commands against this node (same data dir, wrapper and deadline).
    pub fn cli_runner(&self) -> &Cli {
        &self.cli
    }

    /// Runs a CLI command against this node's data dir (behind the same wrapper).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli.run(args)
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    #[track_caller]
    pub fn cli_ok(&self, args: &[&str]) -> String {
        self.cli.ok(args)
    }

    /// Runs a CLI command that prints JSON of type `T`; `Err` with its stderr if it fails.
    pub fn try_cli_json<T: DeserializeOwned>(&self, args: &[&str]) -> Result<T, String> {
        self.cli.try_json(args)
    }

    /// Runs a CLI command that prints JSON of type `T`; panics with stderr and the node log if
    /// it fails.
    #[track_caller]
    pub fn cli_json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        self.try_cli_json(args)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", self.name, self.diagnostics()))
    }

    /// Posts an idea (`idea add ... --json`, see [`idea_add_args`]) and returns its id; panics
    /// with the node's log if that fails.
    #[track_caller]
    pub fn add_idea(&self, space: &str, title: &str, body: &str, tags: &[&str]) -> DocId {
        let created: IdeaCreated = self.cli_json(&idea_add_args(space, title, body, tags));
        created.id
    }

    /// Invites to a private space (`space invite`, one ticket for `uses` newcomers) and
    /// returns the ticket.
    #[track_caller]
    pub fn invite(&self, space: &str, uses: usize) -> String {
        let uses = uses.to_string();
        let out = self.cli_ok(&["space", "invite", space, "--uses", &uses]);
        let ticket = out.trim().to_string();
        assert!(
            ticket.starts_with("agora2:"),
            "{}: invite printed {out:?}",
            self.name
        );
        ticket
    }

    /// Creates a private space named `name` here and brings every node of `others` into it with
    /// one ticket (`space invite`, then `space join TICKET` on each). Returns the space id.
    #[track_caller]
    pub fn share_space(&self, name: &str, others: &[&AgoraProc]) -> String {
        let created: serde_json::Value = self.cli_json(&["space", "create", name, "--json"]);
        let space = created["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: create printed {created}", self.name))
            .to_string();
        if others.is_empty() {
            return space;
        }
        let ticket = self.invite(&space, others.len());
        for n in others {
            let out = n.cli_ok(&["space", "join", &ticket]);
            assert!(out.contains(&space), "{}: join printed {out:?}", n.name);
        }
        space
    }

    /// The peer ids `peers --json` shows: all connected peers, or those subscribed to `space`.
    pub fn peer_ids(&self, space: Option<&str>) -> Result<BTreeSet<String>, String> {
        let peers: Vec<PeerInfo> = self.try_cli_json(&["peers", "--json"])?;
        Ok(peers
            .into_iter()
            .filter(|p| space.is_none_or(|s| p.spaces.iter().any(|x| x.to_string() == s)))
            .map(|p| p.peer_id)
            .collect())
    }

    /// `status --json`.
    pub fn status(&self) -> NodeStatus {
        self.cli_json(&["status", "--json"])
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> String {
        self.status().peer_id
    }

    /// The first listen address (with `/p2p/<id>`) that starts with `prefix`.
    pub fn listen_addr(&self, prefix: &str) -> String {
        let status = self.status();
        status
            .listen_addrs
            .iter()
            .find(|a| a.starts_with(prefix))
            .unwrap_or_else(|| {
                panic!(
                    "{} has no listen address starting with {prefix}: {:?}",
                    self.name, status.listen_addrs
                )
            })
            .clone()
    }

    /// The last `n` lines of this node's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// The tail of this node's log, labelled.
    pub fn diagnostics(&self) -> String {
        format!(
            "----- {} log ({}), last 120 lines:\n{}\n----- end of {} log",
            self.name,
            self.log.display(),
            self.log_tail(120),
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
