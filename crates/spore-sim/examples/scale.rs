//! How fast the simulator runs a large network: `cargo run --release -p spore-sim --example
//! scale -- [NODES] [DEGREE] [SECONDS]`. Builds a ring plus random chords (average degree
//! about DEGREE), runs it in virtual time and prints wall-clock time and counters. A benchmark,
//! not a test: it asserts nothing.

use std::time::{Duration, Instant as WallClock};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use spore_sim::{NodeIndex, Sim, SimConfig};

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nodes = arg(1, 10_000) as u32;
    let degree = arg(2, 8);
    let seconds = arg(3, 60);

    let start = WallClock::now();
    let mut sim = Sim::new(SimConfig {
        seed: 1,
        nodes: nodes as usize,
        ..SimConfig::default()
    })?;
    let built = start.elapsed();

    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for i in 0..nodes {
        sim.connect(NodeIndex(i), NodeIndex((i + 1) % nodes))?;
    }
    let chords = u64::from(nodes) * degree.saturating_sub(2) / 2;
    let mut made = 0;
    while made < chords {
        let (a, b) = (rng.next_u32() % nodes, rng.next_u32() % nodes);
        if sim.connect(NodeIndex(a), NodeIndex(b)).is_ok() {
            made += 1;
        }
    }

    let run = WallClock::now();
    sim.run_for(Duration::from_secs(seconds));
    let ran = run.elapsed();

    let m = sim.metrics();
    let ready = m.events.peer_ready;
    println!("nodes            {nodes}");
    println!("connections      {}", sim.connections().count());
    println!("virtual time     {seconds} s");
    println!("build (mint ids) {built:.2?}");
    println!("run              {ran:.2?}");
    println!("events processed {}", m.events_processed);
    println!(
        "messages         {} delivered, {} bytes",
        m.messages_delivered, m.bytes_delivered
    );
    println!("peer ready       {ready}");
    println!(
        "events / s       {:.0}",
        m.events_processed as f64 / ran.as_secs_f64()
    );
    let hash: String = sim.trace_hash()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("trace            {hash}…");
    Ok(())
}
