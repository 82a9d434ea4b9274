//! NAT behaviour discovery through a real Linux NAT. Three network namespaces: an "internet"
//! with two addresses (two spore nodes as STUN servers, and coturn listening on both), a router
//! that masquerades with iptables, and a private host behind it running `spore node --stun …`.
//! What `spore status` then says about the NAT is checked against how the router was built:
//!
//! - `MASQUERADE`: one mapping for every destination (endpoint-independent), and, as conntrack
//!   lets in only replies from where we sent, filtering by address and port (coturn answers
//!   RFC 5780's CHANGE-REQUEST from its other address, and that answer never arrives);
//! - `MASQUERADE --random-fully`: a new port per destination (symmetric).
//!
//! Root only, and needs `iptables`; coturn (`turnserver`) for the filtering step. Without them
//! the test prints `skipping: <reason>` and passes. Namespaces and their processes are removed
//! when the test ends, also when it fails.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{SPORE, ip, run, skip_reason};

/// The "internet": two addresses in the benchmarking range 198.18.0.0/15 (RFC 2544), which
/// exists only inside these namespaces.
const PUBLIC_A: &str = "198.18.0.1";
const PUBLIC_B: &str = "198.18.0.2";
/// The router's outside address: every mapping the NAT makes is on it.
const ROUTER_WAN: &str = "198.18.0.254";
const ROUTER_LAN: &str = "10.77.0.1";
const PRIVATE: &str = "10.77.0.2";
const STUN_PORT: u16 = 3478;
const COTURN_PORT: u16 = 3479;
const NODE_PORT: u16 = 7070;

const PUBLIC: usize = 0;
const ROUTER: usize = 1;
const HOST: usize = 2;

/// The namespaces, joined by two veth pairs (public `wan` ↔ router `wan`, router `lan` ↔ host
/// `lan`), and the processes started in them.
struct NatLab {
    names: [String; 3],
    children: Vec<Child>,
}

impl NatLab {
    fn new(tag: &str, masquerade: &[&str]) -> Result<NatLab, String> {
        let pid = std::process::id();
        let lab = NatLab {
            names: ["pub", "rtr", "host"].map(|n| format!("spore-nat-{pid}-{tag}-{n}")),
            children: Vec::new(),
        };
        for ns in &lab.names {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let [public, router, host] = &lab.names;
        // Each pair is created in one namespace with its peer moved straight into the other.
        ip(&[
            "-n", public, "link", "add", "wan", "type", "veth", "peer", "name", "wan", "netns",
            router,
        ])?;
        ip(&[
            "-n", router, "link", "add", "lan", "type", "veth", "peer", "name", "lan", "netns",
            host,
        ])?;
        for (ns, dev, addrs) in [
            (public, "wan", &[PUBLIC_A, PUBLIC_B][..]),
            (router, "wan", &[ROUTER_WAN][..]),
            (router, "lan", &[ROUTER_LAN][..]),
            (host, "lan", &[PRIVATE][..]),
        ] {
            for addr in addrs {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            }
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // The private host reaches the internet only through the router; the internet has no
        // route to 10.77.0.0/24 at all.
        ip(&["-n", host, "route", "add", "default", "via", ROUTER_LAN])?;
        run(lab
            .command(ROUTER, "sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"]))?;
        let mut nat = lab.command(ROUTER, "iptables");
        nat.args([
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan",
            "-j",
            "MASQUERADE",
        ]);
        nat.args(masquerade);
        run(&mut nat)?;
        Ok(lab)
    }

    /// `program` inside namespace `ns`.
    fn command(&self, ns: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[ns], program]);
        cmd.env_remove("SPORE_LOG");
        cmd
    }

    /// Starts `spore node` in namespace `ns` on `listen`, logging to `<data_dir>/node.log`.
    fn start_node(&mut self, ns: usize, data_dir: &Path, listen: &str, stun: &[String]) {
        let log = File::create(data_dir.join("node.log")).unwrap();
        let mut cmd = self.command(ns, SPORE);
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["--log", "info,spore_net=debug", "node", "--listen", listen])
            .args(["--difficulty", "8"]);
        if !stun.is_empty() {
            cmd.args(["--stun", &stun.join(",")]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start spore node");
        self.children.push(child);
    }

    /// Starts coturn in the public namespace on both addresses; it answers CHANGE-REQUEST from
    /// the other address and port (`COTURN_PORT + 1`).
    fn start_coturn(&mut self) {
        let child = self
            .command(PUBLIC, "turnserver")
            .args(["-n", "--stun-only", "--no-tls", "--no-dtls", "--no-cli"])
            .args(["--listening-ip", PUBLIC_A, "--listening-ip", PUBLIC_B])
            .args(["--listening-port", &COTURN_PORT.to_string()])
            .args(["--log-file", "stdout", "--simple-log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        self.children.push(child);
    }

    /// `spore status` (JSON, or text) of the node in `ns` with `data_dir`, once it answers.
    fn status(&self, ns: usize, data_dir: &Path, json: bool) -> Option<String> {
        let mut cmd = self.command(ns, SPORE);
        cmd.arg("--data-dir").arg(data_dir).arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits for the host node's first finished NAT probe; returns (report, status text).
    fn nat_report(&self, data_dir: &Path, timeout: Duration) -> (Value, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(text) = self.status(HOST, data_dir, true) {
                let status: Value = serde_json::from_str(&text).expect("status is JSON");
                let report = &status["nat"]["report"];
                if !report.is_null() {
                    let text = self.status(HOST, data_dir, false).unwrap_or_default();
                    return (report.clone(), text);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no NAT report after {timeout:?}; the node's log:\n{}",
                std::fs::read_to_string(data_dir.join("node.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.names {
            if let Ok(out) = ip(&["netns", "pids", ns]) {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// The lab with two spore STUN servers in the public namespace and, if `coturn`, coturn too;
/// the host's node asks `stun`.
fn lab_with_servers(
    tag: &str,
    masquerade: &[&str],
    coturn: bool,
    dirs: &tempfile::TempDir,
) -> NatLab {
    let mut lab = NatLab::new(tag, masquerade).unwrap();
    for (i, addr) in [PUBLIC_A, PUBLIC_B].iter().enumerate() {
        let dir = dirs.path().join(format!("server-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        lab.start_node(PUBLIC, &dir, &format!("{addr}:{STUN_PORT}"), &[]);
    }
    if coturn {
        lab.start_coturn();
    }
    lab
}

fn reflexive(report: &Value) -> Vec<String> {
    report["reflexive"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_node_behind_a_real_nat_learns_its_mapping_and_filtering() {
    if let Some(reason) = skip_reason(&["iptables"]) {
        println!("skipping: {reason}");
        return;
    }
    let dirs = tempfile::tempdir().unwrap();
    let servers = [
        format!("{PUBLIC_A}:{STUN_PORT}"),
        format!("{PUBLIC_B}:{STUN_PORT}"),
    ];
    let host_dir = |name: &str| {
        let dir = dirs.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let listen = format!("0.0.0.0:{NODE_PORT}");

    // Plain MASQUERADE: one mapping for both servers, on the router's address.
    let mut lab = lab_with_servers("eim", &[], false, &dirs);
    let dir = host_dir("host-eim");
    lab.start_node(HOST, &dir, &listen, &servers);
    let (report, text) = lab.nat_report(&dir, Duration::from_secs(30));
    println!("MASQUERADE: {report}\n{text}");
    assert_eq!(report["mapping"], "endpoint-independent", "{report}");
    let seen = reflexive(&report);
    assert_eq!(seen.len(), 1, "{report}");
    assert!(seen[0].starts_with(&format!("{ROUTER_WAN}:")), "{report}");
    assert_eq!(report["answered"], 2);
    assert!(text.contains("endpoint-independent mapping"), "{text}");
    drop(lab);

    // MASQUERADE --random-fully: a new port per destination.
    let mut lab = lab_with_servers("edm", &["--random-fully"], false, &dirs);
    let dir = host_dir("host-edm");
    lab.start_node(HOST, &dir, &listen, &servers);
    let (report, text) = lab.nat_report(&dir, Duration::from_secs(30));
    println!("MASQUERADE --random-fully: {report}\n{text}");
    assert_eq!(report["mapping"], "dependent", "{report}");
    assert_eq!(reflexive(&report).len(), 2, "{report}");
    assert!(text.contains("symmetric"), "{text}");
    drop(lab);

    // Filtering needs a server that can answer from elsewhere: coturn on two addresses.
    if let Some(reason) = skip_reason(&["iptables", "turnserver"]) {
        println!("skipping the filtering step: {reason}");
        return;
    }
    let mut lab = lab_with_servers("filter", &[], true, &dirs);
    let dir = host_dir("host-filter");
    let servers = [
        format!("{PUBLIC_A}:{COTURN_PORT}"),
        format!("{PUBLIC_B}:{STUN_PORT}"),
    ];
    lab.start_node(HOST, &dir, &listen, &servers);
    // Two CHANGE-REQUESTs that are never answered: about 2 × 7.75 s of retransmissions.
    let (report, text) = lab.nat_report(&dir, Duration::from_secs(45));
    println!("MASQUERADE with coturn: {report}\n{text}");
    assert_eq!(report["mapping"], "endpoint-independent", "{report}");
    assert_eq!(
        report["filtering"], "address-and-port-dependent",
        "{report}"
    );
    assert!(text.contains("filters by address and port"), "{text}");
}
