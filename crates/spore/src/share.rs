//! `spore share`, `spore get` and `spore blobs`: sending files and directories.
//!
//! `share` imports a file or a directory into the node's blob store (BLAKE3-verified, with a
//! progress bar), pins it, serves it, announces it in the DHT, prints a ticket, and serves until
//! Ctrl-C. `get` runs a node that joins the network through the ticket's peer, finds more
//! providers in the DHT and inside the swarm, downloads from all of them at once with every
//! chunk group verified before it is stored, and writes the file (or directory) out only once
//! the whole of it has verified against the ticket's root hash. An interrupted `get` resumes:
//! the store keeps what was verified, and nothing verified is fetched again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use spore_net::NodeHandle;
use spore_store::blobs::{self, BlobState, BlobStore, Hash};

use crate::cli::{BlobsCommand, GetArgs, ShareArgs};
use crate::commands::{
    DEFAULT_PORT, Launched, human_size, launch, open_data_dir, serve_pinned, shutdown_signal,
};
use crate::settings::PeerAddr;
use crate::ticket::{Kind, MAX_ADDRS, MAX_NAME, Ticket};

/// Blobs of a directory fetched at once.
const PARALLEL_FILES: usize = 16;
/// How often progress is polled.
const TICK: Duration = Duration::from_millis(100);

fn bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
             {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// The pin that keeps a shared or downloaded blob: its hash in hex.
fn pin_name(hash: &Hash) -> String {
    hash.to_hex()
}

/// `spore share PATH`
pub async fn share(data_dir: Option<PathBuf>, args: ShareArgs) -> Result<()> {
    let path = args.path.clone();
    let meta =
        std::fs::metadata(&path).with_context(|| format!("cannot share {}", path.display()))?;
    let name = display_name(&path)?;
    let dir = open_data_dir(data_dir)?;
    let relay_via = args.node.relay_via.clone();
    let launched = launch(dir, args.node, DEFAULT_PORT).await?;
    let result = share_on(&launched, &path, meta.is_dir(), name, &relay_via, args.json).await;
    if result.is_ok() {
        shutdown_signal().await;
        eprintln!("stopping…");
    }
    launched.stop().await?;
    result
}

async fn share_on(
    launched: &Launched,
    path: &Path,
    is_dir: bool,
    name: String,
    relay_via: &[PeerAddr],
    json: bool,
) -> Result<()> {
    let store = launched.store.clone();
    let total = if is_dir {
        0
    } else {
        std::fs::metadata(path)?.len()
    };
    let progress = bar(total, json);
    progress.set_message(format!("importing {name}"));
    let (imported, kind) = {
        let (store, path, progress) = (store.clone(), path.to_path_buf(), progress.clone());
        tokio::task::spawn_blocking(move || -> Result<_> {
            let mut tick = |n: u64| progress.set_position(n);
            if is_dir {
                let i = store.import_dir(&path, &mut tick)?;
                Ok((i, Kind::Collection))
            } else {
                let i = store.import_file(&path, &mut tick)?;
                Ok((i, Kind::Blob))
            }
        })
        .await??
    };
    progress.finish_and_clear();
    store.pin(&pin_name(&imported.hash), imported.hash)?;
    drop(imported.lease);
    serve_pinned(launched).await;
    let node = &launched.node;
    // Announce in the DHT (the runtime announced each blob served; this one waits for it).
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        node.provide(*imported.hash.as_bytes()),
    )
    .await;
    let ticket = Ticket {
        hash: *imported.hash.as_bytes(),
        kind,
        size: imported.size,
        name: name.clone(),
        peer: node.peer_id(),
        addrs: node_ticket_addrs(node).await,
        relays: relays_of(node, relay_via).await,
    };
    if json {
        let out = serde_json::json!({
            "ticket": ticket.to_string(),
            "hash": imported.hash.to_hex(),
            "size": imported.size,
            "name": name,
            "kind": if kind == Kind::Collection { "collection" } else { "blob" },
            "peer_id": node.peer_id(),
        });
        println!("{out}");
    } else {
        let files = match kind {
            Kind::Collection => {
                let n = store.collection(&imported.hash)?.entries().len();
                format!(", {n} files")
            }
            Kind::Blob => String::new(),
        };
        println!(
            "sharing {name} ({}{files}), BLAKE3 {}",
            human_size(imported.size),
            imported.hash
        );
        println!("ticket: {ticket}");
        println!("get it with: spore get {ticket}");
        println!("serving until Ctrl-C");
    }
    Ok(())
}

/// The last component of `path`, for the ticket.
fn display_name(path: &Path) -> Result<String> {
    let canonical = path
        .canonicalize()
        .with_context(|| format!("cannot share {}", path.display()))?;
    let name = canonical
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("shared")
        .to_string();
    Ok(truncate(name, MAX_NAME))
}

fn truncate(mut s: String, max: usize) -> String {
    while s.len() > max {
        s.pop();
    }
    s
}

/// Addresses to put in a ticket: each bound address; a wildcard bind stands for every address
/// of this machine's interfaces of its family (loopback last).
/// The relays of `relay_via` that hold a reservation for this node, with the address they were
/// given at (a relay reached over TCP has no other address worth printing). The node reserves
/// in the background: wait briefly for the first.
pub(crate) async fn relays_of(
    node: &NodeHandle,
    relay_via: &[PeerAddr],
) -> Vec<(spore_core::PeerId, SocketAddr)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reserved = node
            .status()
            .await
            .map(|s| s.relay.reserved_at)
            .unwrap_or_default();
        let relays: Vec<_> = relay_via
            .iter()
            .filter(|r| reserved.contains(&r.peer))
            .map(|r| (r.peer, r.addr))
            .take(crate::ticket::MAX_RELAYS)
            .collect();
        if !relays.is_empty() || relay_via.is_empty() || Instant::now() >= deadline {
            return relays;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a ticket waits for the gateway's first port mapping (when port mapping is on).
const MAPPING_WAIT: Duration = Duration::from_secs(10);

/// The addresses a ticket of `node` names: the one its gateway forwards to it first (reachable
/// from beyond the NAT), then those of its sockets.
pub(crate) async fn node_ticket_addrs(node: &spore_net::NodeHandle) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = node.port_mapping(MAPPING_WAIT).await.into_iter().collect();
    for addr in ticket_addrs(node.listen_addrs()) {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    addrs.truncate(MAX_ADDRS);
    addrs
}

pub(crate) fn ticket_addrs(listen: &[SocketAddr]) -> Vec<SocketAddr> {
    let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
    let mut out = Vec::new();
    for addr in listen {
        if !addr.ip().is_unspecified() {
            out.push(*addr);
            continue;
        }
        let mut ips: Vec<_> = interfaces
            .iter()
            .map(|i| i.ip())
            .filter(|ip| ip.is_ipv4() == addr.is_ipv4())
            .filter(|ip| match ip {
                // Link-local IPv6 needs a scope id, which a ticket does not carry.
                std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
                std::net::IpAddr::V4(_) => true,
            })
            .collect();
        ips.sort_by_key(|ip| ip.is_loopback());
        out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, addr.port())));
    }
    out.dedup();
    out.truncate(MAX_ADDRS);
    out
}

/// `spore get TICKET`
pub async fn get(data_dir: Option<PathBuf>, mut args: GetArgs) -> Result<()> {
    let ticket: Ticket = args.ticket.parse()?;
    let output = match &args.output {
        Some(p) => p.clone(),
        None => PathBuf::from(safe_file_name(&ticket.name)),
    };
    if output.exists() {
        bail!(
            "{} already exists; choose another output with -o PATH",
            output.display()
        );
    }
    let dir = open_data_dir(data_dir)?;
    // The sharer is the way in: to the swarm and to the DHT.
    for addr in &ticket.addrs {
        args.node.bootstrap.push(PeerAddr {
            peer: ticket.peer,
            addr: *addr,
        });
    }
    let launched = launch(dir, args.node, 0).await?;
    let result = get_on(&launched, &ticket, &output, args.json).await;
    if result.is_ok() && args.seed {
        eprintln!("seeding until Ctrl-C");
        shutdown_signal().await;
    }
    launched.stop().await?;
    result
}

/// Connects to the sharer: at its own addresses and, half a second later if none has answered
/// yet, through the relays the ticket names (the relayed connection then tries to go direct by
/// hole punching). The first connection to be ready wins. Failing all is not fatal here: the
/// DHT may know other providers, and the download reports it if nobody serves.
async fn reach_sharer(node: &NodeHandle, ticket: &Ticket) {
    let mut attempts = tokio::task::JoinSet::new();
    for addr in ticket.addrs.clone() {
        let (node, peer) = (node.clone(), ticket.peer);
        attempts.spawn(async move {
            let dial = tokio::time::timeout(Duration::from_secs(5), node.dial(peer, addr));
            matches!(dial.await, Ok(Ok(())))
        });
    }
    for (relay, addr) in ticket.relays.clone() {
        let (node, peer) = (node.clone(), ticket.peer);
        attempts.spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let connected = node
                .peers()
                .await
                .is_ok_and(|ps| ps.iter().any(|p| p.peer == peer && p.ready));
            if connected {
                return true;
            }
            let relay_addr = PeerAddr { peer: relay, addr };
            if let Err(e) = crate::commands::connect_relay(&node, relay_addr).await {
                tracing::debug!(error = %e, "relay unreachable");
                return false;
            }
            match node.dial_relayed(peer, relay).await {
                Ok(()) => {
                    tracing::info!(%relay, "reached the sharer through a relay");
                    true
                }
                Err(e) => {
                    tracing::warn!(%relay, error = %e, "the relay could not connect us");
                    false
                }
            }
        });
    }
    while let Some(done) = attempts.join_next().await {
        if done.unwrap_or(false) {
            attempts.abort_all();
            return;
        }
    }
}

/// A file name from a ticket's name that stays in the current directory.
fn safe_file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => "download".to_string(),
        _ => cleaned,
    }
}

async fn get_on(launched: &Launched, ticket: &Ticket, output: &Path, json: bool) -> Result<()> {
    let started = Instant::now();
    let store = &launched.store;
    let node = &launched.node;
    let root = Hash::from_bytes(ticket.hash);
    // The pin keeps what is verified across interruptions (GC spares pinned partial blobs).
    store.pin(&pin_name(&root), root)?;
    let sharer = (ticket.peer, ticket.addrs.clone());
    reach_sharer(node, ticket).await;
    tokio::spawn(add_dht_providers(node.clone(), ticket.hash));

    let progress = bar(ticket.size, json);
    progress.set_message(ticket.name.clone());
    let before = node.status().await?.swarm.stats.bytes_downloaded;
    let size = match ticket.kind {
        Kind::Blob => {
            fetch_all(launched, &[(root, ticket.size)], &sharer, &progress).await?;
            store.export(&root, output)?
        }
        Kind::Collection => {
            fetch_all(launched, &[(root, 0)], &sharer, &progress).await?;
            let collection = store.register_collection(&root)?;
            let files: Vec<(Hash, u64)> = collection
                .entries()
                .iter()
                .map(|e| (e.hash, e.size))
                .collect();
            progress.set_length(collection.total_size());
            fetch_all(launched, &files, &sharer, &progress).await?;
            store.export_collection(&root, output)?;
            collection.total_size()
        }
    };
    progress.finish_and_clear();
    let status = node.status().await?;
    let downloaded = status.swarm.stats.bytes_downloaded - before;
    let secs = started.elapsed().as_secs_f64();
    if json {
        let out = serde_json::json!({
            "hash": root.to_hex(),
            "size": size,
            "path": output,
            "downloaded_bytes": downloaded,
            "seconds": secs,
        });
        println!("{out}");
    } else {
        let rate = downloaded as f64 / secs.max(1e-3);
        println!(
            "got {} ({}) in {secs:.1} s, {}/s; every byte verified against BLAKE3 {root}",
            output.display(),
            human_size(size),
            human_size(rate as u64),
        );
    }
    Ok(())
}

/// Looks the content up in the DHT every few seconds and adds the providers found to the
/// download (the swarm ignores those it has).
async fn add_dht_providers(node: NodeHandle, hash: [u8; 32]) {
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Ok((spore_core::kad::QueryResult::GetProviders { providers, .. }, _)) =
            node.find_providers(hash).await
        else {
            continue;
        };
        let providers: Vec<_> = providers
            .iter()
            .filter(|p| *p.provider() != node.peer_id())
            .map(|p| (*p.provider(), p.addrs().to_vec()))
            .collect();
        if !providers.is_empty() && node.fetch_blob(hash, providers).await.is_err() {
            return;
        }
    }
}

/// Downloads every blob of `blobs` (hash, size), at most [`PARALLEL_FILES`] at once, from the
/// sharer and whoever the swarms lead to, advancing `progress` by verified bytes.
async fn fetch_all(
    launched: &Launched,
    blobs: &[(Hash, u64)],
    sharer: &(spore_core::PeerId, Vec<SocketAddr>),
    progress: &ProgressBar,
) -> Result<()> {
    let store = &launched.store;
    let node = &launched.node;
    // The empty blob needs no transfer: every store can make it.
    if blobs.iter().any(|(h, _)| *h == Hash::EMPTY) {
        let _ = store.import_bytes(&[])?;
    }
    let mut waiting: Vec<(Hash, u64)> = blobs
        .iter()
        .rev()
        .filter(|(h, _)| *h != Hash::EMPTY)
        .copied()
        .collect();
    let mut running: Vec<(Hash, u64)> = Vec::new();
    let mut done_bytes = 0u64;
    let mut stalled_since: Option<Instant> = None;
    loop {
        while running.len() < PARALLEL_FILES
            && let Some((hash, size)) = waiting.pop()
        {
            node.fetch_blob(*hash.as_bytes(), vec![sharer.clone()])
                .await
                .with_context(|| format!("cannot start downloading {hash}"))?;
            running.push((hash, size));
        }
        let mut in_flight = 0u64;
        let mut peers = 0;
        let mut still = Vec::new();
        for (hash, size) in running.drain(..) {
            if let Ok(blobs::BlobStatus::Complete { size }) = store.have(&hash) {
                done_bytes += size;
                continue;
            }
            match node.swarm_info(*hash.as_bytes()).await? {
                Some((info, _)) => {
                    in_flight += info.verified_bytes;
                    peers += info.peers;
                }
                None => bail!(
                    "the download of {hash} stopped: no provider could be reached or all \
                     sent bad data. What was verified is kept: run the same command to resume."
                ),
            }
            still.push((hash, size));
        }
        running = still;
        progress.set_position(done_bytes + in_flight);
        progress.set_message(format!(
            "{} peer{}",
            peers,
            if peers == 1 { "" } else { "s" }
        ));
        if running.is_empty() && waiting.is_empty() {
            return Ok(());
        }
        if peers == 0 {
            let since = *stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(5) {
                progress.set_message("looking for providers".to_string());
            }
        } else {
            stalled_since = None;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// `spore blobs …`
pub fn blobs(data_dir: Option<PathBuf>, command: BlobsCommand) -> Result<()> {
    let dir = open_data_dir(data_dir)?;
    let store =
        BlobStore::open(dir.blobs_path(), blobs::BlobLimits::default()).with_context(|| {
            format!(
                "cannot open the blob store in {} (a running node holds it; stop it first)",
                dir.blobs_path().display()
            )
        })?;
    match command {
        BlobsCommand::List { json } => {
            let list = store.list()?;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "hash": b.hash.to_hex(),
                            "size": b.size,
                            "complete": b.state == BlobState::Complete,
                            "pins": b.pins,
                            "collection": b.collection,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if list.is_empty() {
                println!("no blobs in {}", store.path().display());
                return Ok(());
            }
            println!("{:<64}  {:>10}  {:<8}  kind", "hash", "size", "state");
            for b in &list {
                let state = if b.state == BlobState::Complete {
                    "complete"
                } else {
                    "partial"
                };
                let kind = if b.collection { "collection" } else { "blob" };
                let pinned = if b.pins.is_empty() { "" } else { ", pinned" };
                println!(
                    "{:<64}  {:>10}  {state:<8}  {kind}{pinned}",
                    b.hash.to_hex(),
                    human_size(b.size)
                );
            }
            println!(
                "{} blob{}, {} used",
                list.len(),
                if list.len() == 1 { "" } else { "s" },
                human_size(store.used_bytes())
            );
        }
        BlobsCommand::Rm { hash } => {
            let hash: Hash = hash.parse().context("not a blob hash (64 hex digits)")?;
            let mut unpinned = 0;
            for (name, pinned) in store.pins()? {
                if pinned == hash {
                    store.unpin(&name)?;
                    unpinned += 1;
                }
            }
            if unpinned == 0 && !store.list()?.iter().any(|b| b.hash == hash) {
                bail!("no blob {hash} in this store");
            }
            let report = store.gc()?;
            println!(
                "unpinned {hash}; removed {} blob{} ({} freed)",
                report.removed_blobs,
                if report.removed_blobs == 1 { "" } else { "s" },
                human_size(report.freed_bytes)
            );
        }
        BlobsCommand::Gc => {
            let report = store.gc()?;
            println!(
                "removed {} unpinned blob{} ({} freed)",
                report.removed_blobs,
                if report.removed_blobs == 1 { "" } else { "s" },
                human_size(report.freed_bytes)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_stay_in_the_current_directory() {
        assert_eq!(safe_file_name("report.pdf"), "report.pdf");
        assert_eq!(safe_file_name("../etc/passwd"), ".._etc_passwd");
        assert_eq!(safe_file_name(".."), "download");
        assert_eq!(safe_file_name(""), "download");
        assert_eq!(safe_file_name("a\nb"), "a_b");
    }

    #[test]
    fn wildcard_binds_expand_to_interface_addresses() {
        let addrs = ticket_addrs(&["0.0.0.0:7070".parse().expect("an address")]);
        assert!(addrs.iter().all(|a| a.is_ipv4() && a.port() == 7070));
        assert!(addrs.iter().any(|a| a.ip().is_loopback()));
        let fixed: SocketAddr = "127.0.0.1:9".parse().expect("an address");
        assert_eq!(ticket_addrs(&[fixed]), vec![fixed]);
    }
}
