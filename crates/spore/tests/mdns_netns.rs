//! mDNS discovery between `spore node --mdns` processes, each in its own Linux network namespace,
//! joined by one veth pair. Every multicast packet stays on that pair: nothing here runs mDNS on
//! the machine's own interfaces, and every `spore node` runs inside a namespace.
//!
//! Root only. Without root or `ip` (iproute2) the tests print `skipping: <reason>` and pass; the
//! avahi test also needs `dbus-daemon`, `avahi-daemon` and `avahi-browse` (Debian packages
//! `dbus`, `avahi-daemon`, `avahi-utils`). Namespaces and every process started in them are
//! removed when a test ends, also when it fails.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{ip, run, skip_reason};

const SPORE: &str = env!("CARGO_BIN_EXE_spore");
/// The port every node listens on (each in its own namespace).
const PORT: u16 = 7070;
/// How long two nodes may take to find and connect to each other.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// Two network namespaces joined by a veth pair (`veth0` in each, 10.231.X.1 and 10.231.X.2),
/// and the processes started in them. Dropping it kills every process in the namespaces and
/// deletes them.
struct Lab {
    names: [String; 2],
    ips: [String; 2],
    children: Vec<Child>,
}

impl Lab {
    fn new(tag: &str) -> Result<Lab, String> {
        let pid = std::process::id();
        let subnet = pid % 250 + 1;
        let lab = Lab {
            names: [
                format!("spore-mdns-{pid}-{tag}-a"),
                format!("spore-mdns-{pid}-{tag}-b"),
            ],
            ips: [format!("10.231.{subnet}.1"), format!("10.231.{subnet}.2")],
            children: Vec::new(),
        };
        // On an error, dropping `lab` deletes whatever was created.
        let (a, b) = (lab.names[0].clone(), lab.names[1].clone());
        ip(&["netns", "add", &a])?;
        ip(&["netns", "add", &b])?;
        // Created in `a` with its peer moved straight into `b`: no end is ever on the host.
        let veth = "link add veth0 type veth peer name veth0 netns";
        let mut args: Vec<&str> = vec!["-n", &a];
        args.extend(veth.split(' '));
        args.push(&b);
        ip(&args)?;
        for (ns, addr) in [(&a, &lab.ips[0]), (&b, &lab.ips[1])] {
            let cidr = format!("{addr}/24");
            ip(&["-n", ns, "addr", "add", &cidr, "dev", "veth0"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", "veth0", "up"])?;
        }
        lab.wait_links_up();
        Ok(lab)
    }

    /// mDNS only uses interfaces whose operational state is UP (and rescans every few seconds),
    /// so nodes start once both ends are.
    fn wait_links_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for ns in &self.names {
            while Instant::now() < deadline {
                let up = ip(&["-n", ns, "-br", "link", "show", "veth0"])
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1) == Some("UP")
                    })
                    .unwrap_or(false);
                if up {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `program args…` inside namespace `ns` (0 or 1).
    fn command(&self, ns: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[ns], program]);
        cmd.env_remove("SPORE_LOG");
        cmd
    }

    /// Starts `spore node --mdns` in namespace `ns`, logging to `<data_dir>/node.log`.
    fn start_node(&mut self, ns: usize, data_dir: &Path) -> usize {
        let log = File::create(data_dir.join("node.log")).unwrap();
        let listen = format!("{}:{PORT}", self.ips[ns]);
        let child = self
            .command(ns, SPORE)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--log", "info,spore_net=debug", "node", "--listen", &listen])
            .args(["--difficulty", "8", "--mdns"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start spore node");
        self.children.push(child);
        self.children.len() - 1
    }

    /// Panics with the node's log if it has exited.
    fn assert_running(&mut self, child: usize, data_dir: &Path) {
        if let Ok(Some(status)) = self.children[child].try_wait() {
            panic!(
                "spore node exited ({status}); its output:\n{}",
                node_log(data_dir)
            );
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.names {
            // Whatever else still runs in our namespaces (daemons) was started by this test.
            if let Ok(out) = ip(&["netns", "pids", ns]) {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn node_log(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("node.log")).unwrap_or_default()
}

/// Creates the identity in `data_dir` and returns its PeerId (no network involved).
fn peer_id(data_dir: &Path) -> String {
    let out = run(Command::new(SPORE)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("id"))
    .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 52, "{id}");
    id
}

/// Waits until the node in namespace `ns` lists `peer` as ready, connected from `addr`.
fn wait_for_peer(
    lab: &mut Lab,
    (ns, child, data_dir): (usize, usize, &Path),
    peer: &str,
    addr: &str,
    deadline: Instant,
) -> Value {
    let mut last = String::new();
    while Instant::now() < deadline {
        lab.assert_running(child, data_dir);
        let out = lab
            .command(ns, SPORE)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["peers", "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            let peers: Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
            let found = peers.as_array().and_then(|ps| {
                ps.iter()
                    .find(|p| p["peer"] == peer && p["ready"] == true)
                    .cloned()
            });
            if let Some(p) = found {
                assert_eq!(p["addr"], addr, "connected over the veth pair: {peers}");
                return p;
            }
            last = peers.to_string();
        } else {
            last = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "namespace {ns}: no ready peer {peer} in time; last answer: {last}\nnode log:\n{}",
        node_log(data_dir)
    );
}

#[test]
fn nodes_in_two_namespaces_find_each_other_by_mdns() {
    if let Some(reason) = skip_reason(&[]) {
        println!("skipping: {reason}");
        return;
    }
    let mut lab = match Lab::new("nodes") {
        Ok(lab) => lab,
        Err(e) => {
            println!("skipping: cannot set up network namespaces: {e}");
            return;
        }
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ids = [peer_id(dirs[0].path()), peer_id(dirs[1].path())];
    let a = lab.start_node(0, dirs[0].path());
    let b = lab.start_node(1, dirs[1].path());

    // No --bootstrap: only mDNS can have told them about each other.
    let deadline = Instant::now() + DISCOVERY_TIMEOUT;
    let b_addr = format!("{}:{PORT}", lab.ips[1]);
    let a_addr = format!("{}:{PORT}", lab.ips[0]);
    wait_for_peer(&mut lab, (0, a, dirs[0].path()), &ids[1], &b_addr, deadline);
    wait_for_peer(&mut lab, (1, b, dirs[1].path()), &ids[0], &a_addr, deadline);
}

/// Runs dbus and avahi in namespace 0 with a private /run (so they never meet the host's) and
/// browses for `_spore._udp` until it resolves `want_name`, for at most 30 s. Prints `READY` once
/// avahi answers, then avahi-browse's parsable output and `END`; keeps avahi running until its
/// standard input closes.
const AVAHI_SCRIPT: &str = r#"
set -u
want_name=$1
# `ip netns exec` gave this shell its own mount namespace; /run here hides the host's.
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/dbus /run/avahi-daemon
dbus-daemon --system --nofork --nopidfile --nosyslog &
dbus=$!
trap 'kill $dbus ${avahi:-} 2>/dev/null; wait' EXIT
for _ in $(seq 100); do [ -S /run/dbus/system_bus_socket ] && break; sleep 0.1; done
avahi-daemon --no-drop-root --no-chroot --no-rlimits --no-proc-title &
avahi=$!
ready=
out=
for _ in $(seq 60); do
    out=$(avahi-browse -rtp _spore._udp 2>&1)
    if [ -z "$ready" ] && ! printf '%s\n' "$out" | grep -q 'Daemon not running'; then
        ready=1
        echo READY
    fi
    if printf '%s\n' "$out" | grep -q "^=;[^;]*;IPv4;$want_name;"; then break; fi
    sleep 0.5
done
printf '%s\nEND\n' "$out"
read -r _ || true
"#;

#[test]
fn avahi_sees_spore_and_spore_coexists_with_avahi() {
    if let Some(reason) = skip_reason(&["dbus-daemon", "avahi-daemon", "avahi-browse"]) {
        println!("skipping: {reason}");
        return;
    }
    let mut lab = match Lab::new("avahi") {
        Ok(lab) => lab,
        Err(e) => {
            println!("skipping: cannot set up network namespaces: {e}");
            return;
        }
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ids = [peer_id(dirs[0].path()), peer_id(dirs[1].path())];

    // avahi first, as on a Linux desktop; then a spore node beside it and one across the link.
    let mut avahi = lab
        .command(0, "sh")
        .args(["-c", AVAHI_SCRIPT, "avahi", &ids[1]])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dbus and avahi");
    let keep_avahi = avahi.stdin.take();
    let mut lines = BufReader::new(avahi.stdout.take().unwrap()).lines();
    lab.children.push(avahi);
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "READY", "avahi did not start");
    let a = lab.start_node(0, dirs[0].path());
    let b = lab.start_node(1, dirs[1].path());
    let output: Vec<String> = lines
        .map_while(Result::ok)
        .take_while(|l| l != "END")
        .collect();

    // avahi-browse -p: =;iface;proto;name;type;domain;host;address;port;txt
    let found = output.iter().find_map(|line| {
        let f: Vec<&str> = line.split(';').collect();
        (f.len() >= 10 && f[0] == "=" && f[2] == "IPv4" && f[3] == ids[1]).then(|| f.clone())
    });
    let Some(f) = found else {
        panic!(
            "avahi-browse did not resolve {}:\n{}",
            ids[1],
            output.join("\n")
        );
    };
    assert_eq!(f[4], "_spore._udp", "{f:?}");
    assert_eq!(f[7], lab.ips[1], "{f:?}");
    assert_eq!(f[8], PORT.to_string(), "{f:?}");
    let txt = f[9..].join(";");
    assert!(
        txt.contains(&format!("\"id={}\"", ids[1])) && txt.contains("\"v=1\""),
        "{txt}"
    );

    // With avahi still running, the spore node sharing port 5353 with it finds its peer and is
    // found.
    let deadline = Instant::now() + DISCOVERY_TIMEOUT;
    let b_addr = format!("{}:{PORT}", lab.ips[1]);
    let a_addr = format!("{}:{PORT}", lab.ips[0]);
    wait_for_peer(&mut lab, (0, a, dirs[0].path()), &ids[1], &b_addr, deadline);
    wait_for_peer(&mut lab, (1, b, dirs[1].path()), &ids[0], &a_addr, deadline);
    // Not only found by b: a's own mDNS works beside avahi (spore-net logs each discovery).
    let log = node_log(dirs[0].path());
    assert!(
        log.lines()
            .any(|l| l.contains("found a peer by mDNS") && l.contains(&ids[1])),
        "node a did not discover b by mDNS next to avahi; its log:\n{log}"
    );
    drop(keep_avahi);
}
