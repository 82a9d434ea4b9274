//! STUN on the QUIC socket, over real UDP on 127.0.0.1: nodes answer Binding requests on their
//! QUIC port (to a raw socket, to coturn's `turnutils_stunclient`, to each other) and keep
//! speaking QUIC on it; a node's probe gets its reflexive address from spore nodes and from a
//! real coturn, which also answers the RFC 5780 filtering test.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use spore_core::Keypair;
use spore_core::nat::stun::{self, Incoming, Outcome};
use spore_core::nat::{Mapping, NatReport};
use spore_core::pow::{Difficulty, Stamp};
use spore_net::{NetConfig, NodeHandle};
use tokio::time::Instant;

const DIFFICULTY: Difficulty = Difficulty(8);

async fn start(stun_servers: Vec<SocketAddr>) -> NodeHandle {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    let mut config = NetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    config.node.kad.auto_bootstrap = false;
    config.nat.stun_servers = stun_servers;
    spore_net::start(keypair, stamp, config).await.unwrap().0
}

/// Waits for the node's first NAT probe to finish.
async fn report(node: &NodeHandle) -> NatReport {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(report) = node.status().await.unwrap().nat.report {
            return report;
        }
        assert!(Instant::now() < deadline, "no NAT report after 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Binding request from a plain UDP socket, and what came back.
fn ask(server: SocketAddr, change: Option<(bool, bool)>) -> (UdpSocket, Option<Outcome>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket
        .send_to(&stun::binding_request([9; 12], change), server)
        .unwrap();
    let mut buf = [0u8; 1500];
    let outcome = socket.recv_from(&mut buf).ok().map(|(n, from)| {
        assert_eq!(from, server, "answered from the QUIC socket");
        match stun::handle(&buf[..n], from) {
            Incoming::Response(r) => {
                assert_eq!(r.transaction, [9; 12]);
                r.outcome
            }
            other => panic!("not a response: {other:?}"),
        }
    });
    (socket, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_answer_stun_on_their_quic_port_and_keep_speaking_quic() {
    let a = start(Vec::new()).await;
    let b = start(Vec::new()).await;
    let (a_addr, b_addr) = (a.listen_addrs()[0], b.listen_addrs()[0]);

    // A plain socket learns its own address; a CHANGE-REQUEST is refused (one address only).
    let (socket, outcome) = ask(a_addr, None);
    let Some(Outcome::Success { mapped, .. }) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(mapped, socket.local_addr().unwrap());
    let (_, outcome) = ask(a_addr, Some((true, true)));
    assert_eq!(outcome, Some(Outcome::Error { code: 420 }));

    // Garbage that looks like neither STUN nor QUIC is dropped; the node still works.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for bytes in [
        &[0u8; 20][..],
        &[0x01, 0x01, 0, 0],
        &[0x40; 30],
        &[0xff; 1200],
    ] {
        junk.send_to(bytes, a_addr).unwrap();
    }

    // A third node probes both: no NAT on loopback, so it sees its own address.
    let c = start(vec![a_addr, b_addr]).await;
    let report = report(&c).await;
    assert_eq!(report.reflexive, vec![c.listen_addrs()[0]]);
    assert_eq!(report.mapping, Mapping::None);
    assert_eq!((report.answered, report.asked), (2, 2));

    // And QUIC on the same sockets is undisturbed.
    c.dial(a.peer_id(), a_addr).await.unwrap();
    let rtt = c.ping(a.peer_id()).await.unwrap();
    assert!(rtt < Duration::from_secs(1));
    let status = a.status().await.unwrap();
    assert!(status.nat.stun_answered >= 3, "{:?}", status.nat);
    println!("probe: {report:?}; a: {:?}", status.nat);
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills the child when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_and_spore_understand_each_other() {
    if !have("turnserver") || !have("turnutils_stunclient") {
        println!("SKIPPED: coturn is not installed (apt-get install coturn); .ci/run installs it");
        return;
    }
    // coturn's STUN client asks a spore node.
    let a = start(Vec::new()).await;
    let port = a.listen_addrs()[0].port();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("turnutils_stunclient")
            .args(["-p", &port.to_string(), "127.0.0.1"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mapped: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    assert!(
        !mapped.is_empty() && mapped.iter().all(|m| m.ip().is_loopback() && m.port() != 0),
        "turnutils_stunclient said:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("turnutils_stunclient got {mapped:?} from a spore node");

    // A spore node asks coturn, which listens on two addresses and so answers RFC 5780's
    // CHANGE-REQUEST from the other one.
    let (port, alt) = (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.2"));
    let _coturn = Killed(
        Command::new("turnserver")
            .args(["-n", "--stun-only", "--no-tls", "--no-dtls", "--no-cli"])
            .args(["--listening-ip", "127.0.0.1", "--listening-ip", "127.0.0.2"])
            .args(["--listening-port", &port.to_string()])
            .args(["--alt-listening-port", &alt.to_string()])
            .args(["--log-file", "stdout", "--simple-log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let coturn: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Wait until it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask(coturn, None).1.is_none() {
        assert!(Instant::now() < deadline, "coturn did not start");
    }
    let (_, outcome) = ask(coturn, None);
    let Some(Outcome::Success { other, .. }) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(other.is_some(), "coturn names its other address");

    let c = start(vec![coturn]).await;
    let report = report(&c).await;
    assert_eq!(report.reflexive, vec![c.listen_addrs()[0]]);
    assert_eq!((report.answered, report.asked), (1, 1));
    println!("a spore node's probe of coturn: {report:?}");
    for n in [a, c] {
        n.shutdown().await;
    }
}
