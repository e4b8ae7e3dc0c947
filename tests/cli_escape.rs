//! End to end: text that came from another peer reaches the terminal escaped. Node A (a hostile
//! peer) posts an idea whose title, body, tag and comment and whose author's display name carry
//! terminal escape sequences, carriage returns, BEL, a C1 control and bidirectional overrides;
//! node B receives it by gossip and its `agora idea list` / `idea show` (real processes) must print
//! the text visibly escaped, never the raw control characters. Loopback only, no mDNS.

use agora_protocol::Idea;
use agora_testkit::process::{wait_until, AgoraProc, Cli, InitOutput, SpaceCreated, LOOPBACK_ARGS};
use std::time::Duration;

/// Upper bound for gossip to bring the idea, its comment and its author's name to node B.
const CONVERGE: Duration = Duration::from_secs(60);

/// The hostile author's display name (names refuse control characters, not bidi overrides).
const NAME: &str = "Mallory\u{202e}live";
const NAME_SHOWN: &str = "Mallory\\u{202e}live";
/// The space's name (the same rule as display names).
const SPACE: &str = "Ops\u{2066}room\u{2069}";
const SPACE_SHOWN: &str = "Ops\\u{2066}room\\u{2069}";
/// Red text, an OSC that sets the window title (ended by BEL), a carriage return that would let
/// "OVER" overwrite the line, the 8-bit CSI U+009B, and a right-to-left override.
const TITLE: &str = "Plan\x1b[31mRED\x1b]0;pwned\x07\rOVER\u{9b}2J\u{202e}txet";
const TITLE_SHOWN: &str = "Plan\\x1b[31mRED\\x1b]0;pwned\\x07\\rOVER\\u{9b}2J\\u{202e}txet";
/// A body keeps its line breaks; everything else is escaped.
const BODY: &str = "line one\nline two\x1b[2J\x1b[H\r\u{9b}K\u{202e}end";
const BODY_SHOWN: &str = "line one\nline two\\x1b[2J\\x1b[H\\r\\u{9b}K\\u{202e}end";
/// Tags refuse control characters and whitespace, not bidi overrides.
const TAG: &str = "evil\u{202e}gat";
const TAG_SHOWN: &str = "evil\\u{202e}gat";
const COMMENT: &str = "nice\x1b]0;pwned\x07\r\u{9b}1m\u{202e}!";
const COMMENT_SHOWN: &str = "nice\\x1b]0;pwned\\x07\\r\\u{9b}1m\\u{202e}!";

fn init(dir: &std::path::Path, name: &str) {
    let v: InitOutput = Cli::new(dir).json(&["init", "--name", name, "--json"]);
    assert!(v.created, "init should create an identity: {v:?}");
}

/// Asserts that `out` (the stdout or stderr of `what`) holds no character that drives a
/// terminal: no ESC, BEL, CR or other C0 control except newline, no DEL, no C1 control, no bidi
/// control.
#[track_caller]
fn assert_terminal_safe(what: &str, out: &[u8]) {
    for b in [0x1b, 0x07, 0x0d] {
        assert!(
            !out.contains(&b),
            "{what}: byte {b:#04x} reached the terminal:\n{}",
            String::from_utf8_lossy(out)
        );
    }
    let text = std::str::from_utf8(out).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"));
    for c in text.chars() {
        let bad = (c.is_control() && c != '\n')
            || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        assert!(!bad, "{what}: {c:?} reached the terminal:\n{text}");
    }
}

#[track_caller]
fn assert_shows(what: &str, out: &str, shown: &[&str]) {
    for s in shown {
        assert!(out.contains(s), "{what} should show {s:?}:\n{out}");
    }
}

#[test]
fn peer_text_is_escaped_for_the_terminal() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (dir_a, dir_b) = (tmp.path().join("mallory"), tmp.path().join("bob"));
    init(&dir_a, NAME);
    init(&dir_b, "Bob");
    let a = AgoraProc::start(&dir_a, LOOPBACK_ARGS);
    let addr_a = a.listen_addr("/ip4/127.0.0.1/tcp/");
    let mut with_peer: Vec<&str> = LOOPBACK_ARGS.to_vec();
    with_peer.extend(["--peer", addr_a.as_str()]);
    let b = AgoraProc::start(&dir_b, &with_peer);
    let nodes = [&a, &b];

    let created: SpaceCreated = a.cli_json(&["space", "create", SPACE, "--json"]);
    assert_eq!(created.name, SPACE);
    let space = created.id.to_string();
    let ticket = a.invite(&space, 1);
    b.cli_ok(&["space", "join", &ticket]);
    let id = a.add_idea(&space, TITLE, BODY, &["ok", TAG]).to_string();
    a.cli_ok(&["idea", "comment", &id, COMMENT]);

    // Node B has the idea, the comment and the author's name once gossip (or sync) brings them.
    wait_until(
        "node B to show A's idea with its comment and A's name",
        CONVERGE,
        &nodes,
        || {
            let i: Idea = b.try_cli_json(&["idea", "show", &id, "--json"])?;
            let got = (
                i.title.as_str(),
                i.body.as_str(),
                i.author_name.as_deref(),
                i.comments.first().map(|c| c.text.as_str()),
                i.comments.first().and_then(|c| c.author_name.as_deref()),
            );
            let want = (TITLE, BODY, Some(NAME), Some(COMMENT), Some(NAME));
            if got == want && i.tags.iter().any(|t| t == TAG) {
                Ok(())
            } else {
                Err(format!("node B shows {i:?}"))
            }
        },
    );

    // `idea list` and `idea show` on node B, as a person sees them.
    let list = b.cli(&["idea", "list", "--space", &space]);
    assert!(list.status.success(), "idea list: {list:?}");
    assert_terminal_safe("idea list", &list.stdout);
    let list = String::from_utf8_lossy(&list.stdout);
    assert_shows("idea list", &list, &[&id, TITLE_SHOWN, NAME_SHOWN]);

    let show = b.cli(&["idea", "show", &id]);
    assert!(show.status.success(), "idea show: {show:?}");
    assert_terminal_safe("idea show", &show.stdout);
    let show = String::from_utf8_lossy(&show.stdout);
    assert_shows(
        "idea show",
        &show,
        &[
            TITLE_SHOWN,
            BODY_SHOWN,
            COMMENT_SHOWN,
            &format!("tags:   {TAG_SHOWN}, ok"),
            &format!("by:     {NAME_SHOWN} ("),
            &format!("- {NAME_SHOWN} ("),
        ],
    );

    // JSON keeps every character (as JSON escapes where a terminal would obey it).
    let json = b.cli(&["idea", "show", &id, "--json"]);
    assert_terminal_safe("idea show --json", &json.stdout);
    let i: Idea = serde_json::from_slice(&json.stdout).expect("idea show --json");
    assert_eq!((i.title.as_str(), i.body.as_str()), (TITLE, BODY));

    // The space's name, where it is known (node A).
    let spaces = a.cli(&["space", "list"]);
    assert_terminal_safe("space list", &spaces.stdout);
    assert_shows(
        "space list",
        &String::from_utf8_lossy(&spaces.stdout),
        &[&space, SPACE_SHOWN],
    );

    // An error message that quotes text verbatim (the multiaddr parser's) is escaped too.
    let err = a.cli(&["dial", "/evil\x1b]0;pwned\x07\u{9b}/1"]);
    assert!(!err.status.success(), "dial of a bad multiaddr: {err:?}");
    assert_terminal_safe("dial error", &err.stderr);
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one-line error: {stderr}"
    );
    assert_shows(
        "dial error",
        &stderr,
        &["multiaddr", "evil\\x1b]0;pwned\\x07\\u{9b}"],
    );
}
