//! mDNS diagnostic: announces a throwaway spore identity on the local network and prints every
//! spore node it discovers, with the addresses they announce.
//!
//! ```sh
//! cargo run -p spore-net --example mdns_probe -- [--port 7070] [--interface eth0] \
//!     [--seconds 10] [--expect N]
//! ```
//!
//! `RUST_LOG=debug` (or `mdns_sd=debug,spore_net=debug`) shows what the mDNS daemon does.
//! It exits with status 1 if it found fewer than `--expect` distinct peers. It sends multicast
//! on the LAN (or on `--interface` only): in a shared or CI environment run it only inside a
//! network namespace you created (`ip netns exec NS …`), as `scripts/mdns-netns-probe.sh` does.
//! Nothing listens on the announced port; the probe only exercises discovery.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use spore_core::Keypair;
use spore_net::mdns::{Mdns, MdnsConfig};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut port = 7070u16;
    let mut seconds = 10u64;
    let mut expect = 0usize;
    let mut config = MdnsConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--port" => port = value().parse().unwrap_or_else(|_| usage("bad --port")),
            "--seconds" => seconds = value().parse().unwrap_or_else(|_| usage("bad --seconds")),
            "--expect" => expect = value().parse().unwrap_or_else(|_| usage("bad --expect")),
            "--interface" => config.interface = Some(value()),
            other => usage(&format!("unknown argument {other}")),
        }
    }

    let peer = Keypair::generate(&mut rand_core::OsRng).peer_id();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (mdns, mut found) = Mdns::start(peer, port, config).unwrap_or_else(|e| {
        eprintln!("mdns_probe: {e}");
        std::process::exit(2)
    });
    println!("announcing {peer} on port {port}");

    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut peers = BTreeSet::new();
    runtime.block_on(async {
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match tokio::time::timeout(left, found.recv()).await {
                Ok(Some(d)) => {
                    let addrs: Vec<String> = d.addrs.iter().map(|a| a.to_string()).collect();
                    println!(
                        "found {} at {} after {:.1} s",
                        d.peer,
                        addrs.join(" "),
                        started.elapsed().as_secs_f64()
                    );
                    peers.insert(d.peer);
                }
                Ok(None) | Err(_) => break,
            }
        }
    });
    let stats = mdns.stats();
    mdns.shutdown();
    println!(
        "{} peers found; forwarded {}, duplicates {}, ignored {}, dropped {}",
        peers.len(),
        stats.forwarded,
        stats.duplicates,
        stats.ignored,
        stats.dropped
    );
    if peers.len() < expect {
        eprintln!("mdns_probe: expected at least {expect} peers");
        std::process::exit(1);
    }
}

fn usage(problem: &str) -> ! {
    eprintln!("mdns_probe: {problem}");
    eprintln!("usage: mdns_probe [--port P] [--interface NAME] [--seconds N] [--expect PEERS]");
    std::process::exit(2)
}
