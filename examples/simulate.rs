//! Simulates many Agora nodes in one process, deterministically: the node's own service on each
//! node, a simulated network and gossipsub, virtual time, one seed.
//!
//! ```sh
//! cargo run --release --example simulate -- --nodes 1000 --ideas 10000 --seed 7 --json
//! cargo run --release --example simulate -- --nodes 200 --ideas 2000 --loss 0.05 --partition-seconds 60
//! cargo run --release --example simulate -- --nodes 50 --ideas 1000 --replica full --churn 0.1
//! ```
//!
//! The same flags and seed give the same run byte for byte (the `digest` field); a run that
//! does not converge prints the command that replays it. See `docs/ARCHITECTURE.md` (the
//! simulation) for what is modelled and what the model replica leaves out.

use agora_testkit::sim::{self, ReplicaMode, SimConfig};
use clap::{Parser, ValueEnum};
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum)]
enum Replica {
    /// The contribution DAG only (the default; 1,000 full replicas do not fit in memory).
    Model,
    /// Real Automerge documents, real verification, an in-memory store.
    Full,
}

#[derive(Parser)]
#[command(about = "Simulate many Agora nodes, deterministically")]
struct Args {
    /// Number of nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Number of ideas (each followed by comments and votes from other nodes).
    #[arg(long, default_value_t = 1000)]
    ideas: usize,
    /// The seed of everything random.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Probability that a message is lost.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability that a message is delivered twice.
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Extra random delay per message, up to this many ms (reorders messages).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Split the nodes into two halves for this many seconds during the writes, then heal.
    #[arg(long, default_value_t = 0)]
    partition_seconds: u64,
    /// Fraction of nodes that restart once during the writes, keeping their store.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Which replica every node runs.
    #[arg(long, value_enum, default_value_t = Replica::Model)]
    replica: Replica,
    /// Connections each node opens to random others.
    #[arg(long, default_value_t = 6)]
    degree: usize,
    /// Seconds over which the ideas are written.
    #[arg(long, default_value_t = 60)]
    write_seconds: u64,
    /// A private space (node 0 creates it and admits the others; needs --replica full).
    #[arg(long)]
    private: bool,
    /// Members removed from the private space during the writes.
    #[arg(long, default_value_t = 0, requires = "private")]
    removals: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Print progress to standard error every ten virtual seconds.
    #[arg(long)]
    progress: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = SimConfig::new(args.nodes, args.ideas, args.seed);
    config.loss = args.loss;
    config.duplicate = args.duplicate;
    config.jitter_ms = args.jitter_ms;
    config.partition_seconds = args.partition_seconds;
    config.churn = args.churn;
    config.degree = args.degree;
    config.write_seconds = args.write_seconds;
    config.progress = args.progress;
    config.private = args.private;
    config.removals = args.removals;
    config.replica = match args.replica {
        Replica::Model => ReplicaMode::Model,
        Replica::Full => ReplicaMode::Full,
    };
    let report = sim::run(&config);
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("a report serialises")
        );
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serialises")
        );
    }
    if report.converged {
        ExitCode::SUCCESS
    } else {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        eprintln!(
            "did not converge; replay with: cargo run --release --example simulate -- {}",
            argv.join(" ")
        );
        ExitCode::FAILURE
    }
}
