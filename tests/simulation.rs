//! The deterministic simulation (`agora_testkit::sim`), run as tests: tens of nodes, each running
//! the node's own service, converge under loss, duplication, reordering, a partition and restarts,
//! over several seeds; the same seed gives the same run. Virtual time: no test waits for real
//! time to pass. A failure prints the command that replays it.

use agora_testkit::sim::{self, ReplicaMode, SimConfig, SimReport};

/// A small office's worth of nodes and a few hundred contributions.
fn config(seed: u64) -> SimConfig {
    let mut c = SimConfig::new(50, 120, seed);
    c.write_seconds = 20;
    c
}

/// Runs `config` and checks that every node holds every contribution, with identical heads,
/// within three gossip heartbeats plus one sync period of the last write, heal or restart.
fn converges(config: SimConfig) -> SimReport {
    let report = sim::run(&config);
    let replay = config.replay();
    assert!(
        report.converged && report.delivered_fraction == 1.0,
        "did not converge: {report:?}\nreplay: {replay}"
    );
    assert!(
        report.within_bound,
        "converged {:?} s after the last event, over the bound of {} s: {report:?}\nreplay: {replay}",
        report.virtual_seconds_to_converge, report.bound_seconds
    );
    assert!(
        report.contributions > 0 && report.writes_failed == 0,
        "{report:?}"
    );
    assert_eq!(report.bans, 0, "an honest run bans no one: {report:?}");
    report
}

#[test]
fn nodes_converge_when_five_percent_of_messages_are_lost() {
    for seed in [1, 2, 3] {
        let mut c = config(seed);
        c.loss = 0.05;
        converges(c);
    }
}

#[test]
fn nodes_converge_when_messages_are_duplicated_and_reordered() {
    for seed in [4, 5, 6] {
        let mut c = config(seed);
        c.duplicate = 0.1;
        c.jitter_ms = 400;
        converges(c);
    }
}

#[test]
fn nodes_converge_after_a_sixty_second_partition() {
    for seed in [7, 8] {
        let mut c = config(seed);
        c.write_seconds = 60;
        c.partition_seconds = 60;
        c.loss = 0.02;
        let report = converges(c);
        assert!(report.heal_seconds.is_some());
    }
}

#[test]
fn nodes_converge_when_a_fifth_of_them_restart() {
    for seed in [9, 10, 11] {
        let mut c = config(seed);
        c.churn = 0.2;
        c.loss = 0.02;
        converges(c);
    }
}

#[test]
fn full_replicas_converge_with_loss_and_restarts() {
    // Real Automerge documents, real signature checks, real store reloads on restart.
    let mut c = SimConfig::new(20, 40, 12);
    c.replica = ReplicaMode::Full;
    c.write_seconds = 15;
    c.loss = 0.03;
    c.churn = 0.1;
    converges(c);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let mut c = config(13);
    c.loss = 0.05;
    c.duplicate = 0.05;
    c.jitter_ms = 100;
    let first = sim::run(&c);
    let second = sim::run(&c);
    assert_eq!(first.digest, second.digest);
    assert_eq!(first.bytes_per_node, second.bytes_per_node);
    assert_eq!(
        first.virtual_seconds_to_converge,
        second.virtual_seconds_to_converge
    );
    c.seed = 14;
    assert_ne!(
        sim::run(&c).digest,
        first.digest,
        "another seed, another run"
    );
}

#[test]
fn a_hundred_members_agree_on_what_removals_white_out() {
    // A private space of 100 members, each admitted by invitation; three are removed during the
    // writes, each writing a new idea just as it is removed (before it can hear of it), with
    // loss, reordering and restarts. Every node not removed must end with the same heads of
    // what stands and of the membership, and every contribution of a member must stand.
    let mut c = SimConfig::new(100, 40, 21);
    c.replica = ReplicaMode::Full;
    c.private = true;
    c.removals = 3;
    c.write_seconds = 20;
    c.loss = 0.02;
    c.jitter_ms = 100;
    c.churn = 0.1;
    let report = converges(c);
    assert_eq!(report.removed, 3);
    assert!(
        report.late_writes >= 3,
        "every removed member wrote after its removal: {report:?}"
    );
    assert!(
        report.whited_out > 0,
        "some late write is whited out: {report:?}"
    );
}
