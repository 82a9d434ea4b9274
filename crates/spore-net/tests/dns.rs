//! DNS TXT bootstrap against a real DNS server (Debian's dnsmasq) on 127.0.0.1: a node whose
//! configured bootstrap peer is gone still gets in through the peers a TXT record names.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use spore_core::pow::{Difficulty, Stamp};
use spore_core::{Keypair, PeerId};
use spore_net::dns::DnsBootstrap;
use spore_net::{NetConfig, NodeHandle};

const DIFFICULTY: Difficulty = Difficulty(8);
/// Under the `.test` top-level domain, which never resolves on the internet (RFC 2606).
const NAME: &str = "_spore.bootstrap.test";

fn config() -> NetConfig {
    let mut config = NetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..NetConfig::default()
    };
    config.node.difficulty = DIFFICULTY;
    config
}

async fn node_with(config: NetConfig) -> NodeHandle {
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let stamp = Stamp::mint(&keypair.peer_id(), DIFFICULTY);
    spore_net::start(keypair, stamp, config).await.unwrap().0
}

/// A dnsmasq serving only the given TXT records, on loopback; killed when dropped.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 (DNS uses both).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Starts dnsmasq with `records` at [`NAME`], or `None` if it is not installed.
fn dnsmasq(records: &[String]) -> Option<Dnsmasq> {
    let port = free_port();
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--pid-file=",
        "--log-facility=-",
    ])
    .arg(format!("--port={port}"));
    // As root dnsmasq would switch to a `dnsmasq` user that the bare package does not create.
    if is_root() {
        cmd.arg("--user=root");
    }
    for record in records {
        cmd.arg(format!("--txt-record={NAME},{record}"));
    }
    let child = match cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot start dnsmasq: {e}"),
    };
    Some(Dnsmasq {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

async fn is_connected(n: &NodeHandle, peer: PeerId) -> bool {
    n.peers()
        .await
        .unwrap()
        .iter()
        .any(|p| p.peer == peer && p.ready)
}

#[tokio::test]
async fn a_node_gets_in_through_peers_named_in_dns_txt_records() {
    let a = node_with(config()).await;
    let b = node_with(config()).await;
    let records = vec![
        format!("spore={}@{}", a.peer_id(), a.listen_addrs()[0]),
        format!("spore={}@{}", b.peer_id(), b.listen_addrs()[0]),
        // Someone else's record at the same name, and a broken spore one.
        "v=spf1 -all".to_string(),
        "spore=not-a-peer@127.0.0.1:1".to_string(),
    ];
    let Some(dns) = dnsmasq(&records) else {
        eprintln!("skipped: dnsmasq is not installed (Debian package dnsmasq-base)");
        return;
    };

    // The configured bootstrap peer is gone: nothing listens where it was.
    let gone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let mut c_config = config();
    c_config.bootstrap = vec![(
        Keypair::generate(&mut rand_core::OsRng).peer_id(),
        gone_addr,
    )];
    c_config.dns_bootstrap = Some(DnsBootstrap {
        names: vec![NAME.to_string()],
        server: Some(dns.addr),
        refresh: Duration::from_secs(600),
    });
    let c = node_with(c_config).await;

    // dnsmasq may still be binding its socket: the resolver retries after 5 s at worst.
    let mut connected = false;
    for _ in 0..100 {
        if is_connected(&c, a.peer_id()).await && is_connected(&c, b.peer_id()).await {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = c.status().await.unwrap().dns.unwrap();
    assert!(connected, "C did not reach both DNS peers: {status:?}");
    assert_eq!(status.names, [NAME]);
    let mut peers = status.peers.clone();
    peers.sort();
    let mut expected = vec![
        format!("{}@{}", a.peer_id(), a.listen_addrs()[0]),
        format!("{}@{}", b.peer_id(), b.listen_addrs()[0]),
    ];
    expected.sort();
    assert_eq!(peers, expected);
    assert!(status.resolved >= 1);
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.contains("not-a-peer") && error.contains("peer id"),
        "the broken record is reported: {error:?}"
    );
    c.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}
