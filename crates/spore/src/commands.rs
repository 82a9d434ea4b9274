//! The CLI's commands, other than the demo.

use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use spore_core::Keypair;
use spore_core::pow::{Difficulty, Stamp};
use spore_net::{Limits, NetConfig};
use spore_store::DataDir;
use spore_store::blobs::{BlobLimits, BlobStore};

use crate::api::{self, ApiClient, PeerView};
use crate::cli::{NodeArgs, PingArgs, PubArgs, SearchArgs, SubArgs};
use crate::settings::{self, FileConfig, PeerAddr};

/// The port `spore node` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7070;
/// Most blobs a node downloads or serves at once (one swarm each; an idle swarm costs little).
pub const MAX_SWARMS: usize = 1024;

pub(crate) fn open_data_dir(flag: Option<PathBuf>) -> Result<DataDir> {
    let path = settings::data_dir(flag)?;
    DataDir::open(&path).with_context(|| format!("cannot open data directory {}", path.display()))
}

/// `spore id`
pub fn id(data_dir: Option<PathBuf>, json: bool) -> Result<()> {
    let dir = open_data_dir(data_dir)?;
    let file = FileConfig::load(&dir.path().join("config.toml"), false)?;
    let difficulty = Difficulty(file.difficulty.unwrap_or(Difficulty::DEFAULT.0));
    let identity = dir.load_or_create_identity(difficulty)?;
    let id = identity.keypair.peer_id();
    if json {
        let out = serde_json::json!({
            "peer_id": id,
            "created": identity.created,
            "data_dir": dir.path(),
            "stamp": { "nonce": identity.stamp.nonce, "work_bits": identity.stamp.work(&id) },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if identity.created {
            eprintln!("created a new identity in {}", dir.path().display());
        }
        println!("{id}");
    }
    Ok(())
}

/// Whether this machine can bind an IPv6 UDP socket.
fn ipv6_available() -> bool {
    UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// A node started from the data directory and flags, with its HTTP API: what `spore node`,
/// `spore share` and `spore get` run.
pub(crate) struct Launched {
    pub(crate) node: spore_net::NodeHandle,
    pub(crate) store: BlobStore,
    pub(crate) dir: DataDir,
    pub(crate) api_addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Launched {
    /// Stops the API and the node (which commits what downloads verified).
    pub(crate) async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.node.shutdown().await;
        let _ = self.server.await;
        self.dir.remove_api_addr()?;
        Ok(())
    }
}

/// `spore node`
pub async fn node(data_dir: Option<PathBuf>, args: NodeArgs) -> Result<()> {
    let dir = open_data_dir(data_dir)?;
    let launched = launch(dir, args, DEFAULT_PORT).await?;
    let node = &launched.node;
    let id = node.peer_id();
    println!("spore node {id}");
    for addr in node.listen_addrs() {
        println!(
            "  listening on {addr}  (others join with --bootstrap {id}@{})",
            dialable(*addr)
        );
    }
    println!(
        "  HTTP API on http://{} (token in {})",
        launched.api_addr,
        launched.dir.path().join("api.token").display()
    );
    let served = serve_pinned(&launched).await;
    if served > 0 {
        println!("  serving {served} pinned blob(s)");
    }
    println!("  press Ctrl-C to stop");
    shutdown_signal().await;
    eprintln!("stopping…");
    launched.stop().await
}

/// Serves every complete pinned blob (and every file of a pinned collection); returns how many.
pub(crate) async fn serve_pinned(launched: &Launched) -> usize {
    let mut hashes = Vec::new();
    for (_, hash) in launched.store.pins().unwrap_or_default() {
        hashes.push(hash);
        if let Ok(c) = launched.store.collection(&hash) {
            hashes.extend(c.entries().iter().map(|e| e.hash));
        }
    }
    hashes.sort();
    hashes.dedup();
    let mut served = 0;
    for hash in hashes {
        match launched.node.serve_blob(*hash.as_bytes()).await {
            Ok(()) => served += 1,
            Err(spore_net::RequestError::Swarm(spore_core::swarm::SwarmError::NotComplete)) => {}
            Err(e) => tracing::warn!(blob = %hash, error = %e, "cannot serve a pinned blob"),
        }
    }
    served
}

/// Starts a node from `dir`, its config file and `args`, with its blob store and HTTP API;
/// `default_port` is the UDP port used when neither flags nor the file name one (0: any).
pub(crate) async fn launch(dir: DataDir, args: NodeArgs, default_port: u16) -> Result<Launched> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path, true)?,
        None => FileConfig::load(&dir.path().join("config.toml"), false)?,
    };
    let difficulty = Difficulty(
        args.difficulty
            .or(file.difficulty)
            .unwrap_or(Difficulty::DEFAULT.0),
    );
    let listen = if !args.listen.is_empty() {
        args.listen
    } else if let Some(listen) = file.listen {
        listen
    } else {
        let mut listen = vec![SocketAddr::from(([0, 0, 0, 0], default_port))];
        if ipv6_available() {
            listen.push(SocketAddr::from((Ipv6Addr::UNSPECIFIED, default_port)));
        }
        listen
    };
    let bootstrap = if !args.bootstrap.is_empty() {
        args.bootstrap
    } else {
        let entries = file.bootstrap.unwrap_or_default();
        entries
            .iter()
            .map(|s| {
                s.parse::<PeerAddr>()
                    .with_context(|| format!("config file: bootstrap {s:?}"))
            })
            .collect::<Result<_>>()?
    };
    let api_listen = args
        .api_listen
        .or(file.api_listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    if !api_listen.ip().is_loopback() {
        bail!("--api-listen {api_listen} is not a loopback address; the API is local-only");
    }
    let stun = if args.stun.is_empty() {
        file.stun.unwrap_or_default()
    } else {
        args.stun
    };
    let mut stun_servers = Vec::new();
    for server in &stun {
        let addrs = tokio::net::lookup_host(server.as_str())
            .await
            .with_context(|| format!("STUN server {server:?}: expected HOST:PORT"))?;
        stun_servers.extend(addrs.take(2));
    }

    let defaults = Limits::default();
    let limits = Limits {
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(defaults.max_connections),
        max_per_ip: args
            .max_connections_per_ip
            .or(file.max_connections_per_ip)
            .unwrap_or(defaults.max_per_ip),
        max_inbound: args
            .max_inbound
            .or(file.max_inbound)
            .unwrap_or(defaults.max_inbound),
        max_memory: match (args.max_memory, &file.max_memory) {
            (Some(bytes), _) => usize::try_from(bytes).unwrap_or(usize::MAX),
            (None, Some(text)) => crate::cli::parse_size(text)
                .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
                .map_err(|e| anyhow::anyhow!("config file: max_memory: {e}"))?,
            (None, None) => defaults.max_memory,
        },
        ..defaults
    };

    let identity = dir.load_or_create_identity(difficulty)?;
    let store = BlobStore::open(dir.blobs_path(), BlobLimits::default()).with_context(|| {
        format!(
            "cannot open the blob store in {} (is another spore process using this data \
             directory? use --data-dir to run a second one)",
            dir.blobs_path().display()
        )
    })?;
    let mdns = args.mdns || file.mdns.unwrap_or(false);
    let mut config = NetConfig {
        listen,
        bootstrap: bootstrap.iter().map(|b| (b.peer, b.addr)).collect(),
        limits,
        records: Some(dir.path().join(spore_store::records::RECORDS_FILE)),
        mdns: mdns.then(spore_net::mdns::MdnsConfig::default),
        blobs: Some(store.clone()),
        doc_store: Some(doc_store(&dir)),
        vouches: dir.load_vouches()?,
        ledger: Some(dir.path().join(spore_store::credit::LEDGER_FILE)),
        anchors: Some(dir.path().join(spore_store::anchors::ANCHORS_FILE)),
        ..NetConfig::default()
    };
    config.node.difficulty = difficulty;
    let bootstrap_dns = if args.bootstrap_dns.is_empty() {
        file.bootstrap_dns.unwrap_or_default()
    } else {
        args.bootstrap_dns
    };
    if !bootstrap_dns.is_empty() {
        config.dns_bootstrap = Some(spore_net::dns::DnsBootstrap {
            server: args.dns_server.or(file.dns_server),
            ..spore_net::dns::DnsBootstrap::new(bootstrap_dns)
        });
    }
    if let Some(mode) = args.dht_mode.or(file.dht_mode) {
        config.node.kad.mode = mode.into();
    }
    config.node.swarm.upload_rate = args.upload_limit;
    config.nat.stun_servers = stun_servers;
    config.relay.serve = args.relay || file.relay.unwrap_or(false);
    if args.port_map || file.port_map.unwrap_or(false) {
        config.port_map = Some(spore_net::PortMapConfig::default());
    }
    config.nat.turn = match (args.turn, &file.turn) {
        (Some(turn), _) => Some(turn),
        (None, Some(text)) => Some(
            spore_net::parse_turn(text).map_err(|e| anyhow::anyhow!("config file: turn: {e}"))?,
        ),
        (None, None) => None,
    };
    let relay_via: Vec<PeerAddr> = if !args.relay_via.is_empty() {
        args.relay_via
    } else {
        file.relay_via
            .unwrap_or_default()
            .iter()
            .map(|s| {
                s.parse::<PeerAddr>()
                    .with_context(|| format!("config file: relay_via {s:?}"))
            })
            .collect::<Result<_>>()?
    };
    // One swarm per blob: a shared directory serves each of its files.
    config.node.swarm.max_swarms = MAX_SWARMS;
    let (node, _streams) = spore_net::start(identity.keypair, identity.stamp, config).await?;
    for relay in relay_via {
        tokio::spawn(keep_reservation(node.clone(), relay));
    }

    let listener = tokio::net::TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("cannot bind the HTTP API to {api_listen}"))?;
    let api_addr = listener.local_addr()?;
    dir.write_api_addr(api_addr)?;
    let token = dir.api_token()?;
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(
        listener,
        node.clone(),
        token,
        Some(dir.clone()),
        async {
            let _ = stop_rx.await;
        },
    ));
    Ok(Launched {
        node,
        store,
        dir,
        api_addr,
        stop,
        server,
    })
}

/// Opens `<data-dir>/docs.redb`, where the node's documents persist.
fn doc_store(dir: &DataDir) -> spore_net::DocStoreMaker {
    use spore_store::docs::{DOCS_FILE, DocLimits, RedbDocStore};
    let path = dir.path().join(DOCS_FILE);
    spore_net::DocStoreMaker::new(move || {
        let store = RedbDocStore::open(&path, DocLimits::default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Box::new(store) as Box<dyn spore_core::doc::sync::DocStore + Send>)
    })
}

/// A wildcard bind address shown with a loopback IP so it can be copied into a command.
pub(crate) fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `spore peers`
pub async fn peers(data_dir: Option<PathBuf>, json: bool) -> Result<()> {
    let dir = open_data_dir(data_dir)?;
    let client = ApiClient::from_data_dir(&dir)?;
    let peers: Vec<PeerView> = client.get("/v1/peers").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&peers)?);
        return Ok(());
    }
    if peers.is_empty() {
        println!("no peers connected");
        return Ok(());
    }
    println!(
        "{:<54} {:<24} {:<9} {:<8} {:>9} {:>5} {:>9} {:>9}  AGENT",
        "PEER", "ADDRESS", "DIRECTION", "PATH", "RTT", "REP", "GAVE", "GOT"
    );
    for p in peers {
        let rtt = p
            .rtt_ms
            .map(|r| format!("{r:.2} ms"))
            .unwrap_or_else(|| "-".into());
        let direction = match p.direction {
            spore_core::node::Direction::Inbound => "inbound",
            spore_core::node::Direction::Outbound => "outbound",
        };
        let state = if p.ready { "" } else { " (handshaking)" };
        // A relayed path's address is a local stand-in, not where the peer is.
        let addr = if p.path == "relayed" {
            "(via relay)".to_string()
        } else {
            p.addr.to_string()
        };
        println!(
            "{:<54} {:<24} {:<9} {:<8} {:>9} {:>5.2} {:>9} {:>9}  {}{state}",
            p.peer,
            addr,
            direction,
            p.path,
            rtt,
            p.reputation,
            human_size(p.credit.uploaded),
            human_size(p.credit.downloaded),
            p.agent
        );
    }
    Ok(())
}

/// `spore trust …`
pub async fn trust(data_dir: Option<PathBuf>, command: crate::cli::TrustCommand) -> Result<()> {
    use crate::cli::TrustCommand;
    let dir = open_data_dir(data_dir)?;
    let client = ApiClient::from_data_dir(&dir)?;
    match command {
        TrustCommand::Vouch { peer } => {
            let v: api::VouchView = client.put(&format!("/v1/trust/vouches/{peer}")).await?;
            if v.changed {
                let n = identities(v.vouches.len());
                println!("vouched for {peer}; this node vouches for {n}");
            } else {
                println!("this node already vouches for {peer}");
            }
        }
        TrustCommand::Revoke { peer } => {
            let v: api::VouchView = client.delete(&format!("/v1/trust/vouches/{peer}")).await?;
            let n = identities(v.vouches.len());
            println!("revoked the vouch for {peer}; this node vouches for {n}");
        }
        TrustCommand::Show { json } => {
            let t: api::TrustView = client.get("/v1/trust").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
                return Ok(());
            }
            print_trust(&t);
        }
        TrustCommand::Check { peer, depth, json } => {
            let c: api::ChainView = client
                .get(&format!("/v1/trust/chains/{peer}?depth={depth}"))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else if let Some(chain) = &c.chain {
                let links: Vec<String> = chain.iter().map(ToString::to_string).collect();
                println!("trusted within {depth}: {}", links.join(" -> "));
            } else {
                println!("not trusted within {depth} vouches: {peer}");
            }
            if !c.trusted {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

/// `n identities`, or `1 identity`.
fn identities(n: usize) -> String {
    if n == 1 {
        "1 identity".into()
    } else {
        format!("{n} identities")
    }
}

fn print_trust(t: &api::TrustView) {
    let s = &t.trust;
    if s.vouches.is_empty() {
        println!("vouches      none (spore trust vouch PEERID)");
    }
    for (i, peer) in s.vouches.iter().enumerate() {
        let label = if i == 0 { "vouches" } else { "" };
        println!("{label:<12} {peer}");
    }
    let further: Vec<_> = s.graph.iter().filter(|e| e.depth > 1).collect();
    println!(
        "graph        {} within {} vouches ({} statements held)",
        identities(s.graph.len()),
        s.depth,
        s.statements
    );
    for e in further {
        println!(
            "  depth {}   {} (vouched for by {})",
            e.depth, e.peer, e.via
        );
    }
    for (topic, depth) in &s.closed_topics {
        println!("closed topic {topic:?}: authors trusted within {depth}");
    }
    if t.reputation.is_empty() {
        println!("reputation   no peer recorded yet");
        return;
    }
    println!();
    println!(
        "{:<54} {:>5} {:>7} {:>7}  STATE",
        "PEER", "SCORE", "GOOD", "BAD"
    );
    for r in &t.reputation {
        let state = if r.standing.distrusted {
            "distrusted"
        } else {
            ""
        };
        println!(
            "{:<54} {:>5.2} {:>7.2} {:>7.2}  {state}",
            r.peer, r.standing.score, r.standing.good, r.standing.bad
        );
    }
}

/// `spore status`
pub async fn status(data_dir: Option<PathBuf>, json: bool) -> Result<()> {
    let dir = open_data_dir(data_dir)?;
    let client = ApiClient::from_data_dir(&dir)?;
    let status: serde_json::Value = client.get("/v1/status").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let s: spore_net::Status = serde_json::from_value(status)
        .context("the node's status has an unexpected shape (is it a different spore version?)")?;
    println!("peer id      {}", s.peer_id);
    println!("uptime       {} s", s.uptime_secs);
    for a in &s.listen_addrs {
        println!("listening    {a}");
    }
    for a in &s.observed_addrs {
        println!("observed as  {a}");
    }
    println!("nat          {}", nat_line(&s.nat));
    println!("port map     {}", s.port_map.summary());
    println!("turn         {}", s.turn.summary());
    if let Some(dns) = &s.dns {
        println!("dns          {}", dns.summary());
    }
    println!("connections  {} ({} ready)", s.connections, s.ready_peers);
    println!("super-peer   {}", superpeer_line(&s.superpeer));
    let dht = &s.dht;
    let state = if dht.bootstrapped {
        "joined"
    } else {
        "not joined yet"
    };
    println!(
        "dht          {:?} mode, {state}, {} nodes in the routing table",
        dht.mode, dht.table_size
    );
    if !dht.buckets.is_empty() {
        let fill: Vec<String> = dht
            .buckets
            .iter()
            .map(|(i, n)| format!("{i}:{n}"))
            .collect();
        println!(
            "buckets      {}  (bucket:entries; 255 = farthest half of the key space)",
            fill.join(" ")
        );
    }
    println!(
        "records      {} values, {} provider records, {} peer records",
        dht.records.values, dht.records.providers, dht.records.peers
    );
    let ps = &s.pubsub;
    let topics: Vec<String> = ps
        .topics
        .iter()
        .map(|t| {
            format!(
                "{} (mesh {}, {} peers)",
                t.topic, t.mesh_peers, t.topic_peers
            )
        })
        .collect();
    println!(
        "pubsub       {} topics{}{}",
        topics.len(),
        if topics.is_empty() { "" } else { ": " },
        topics.join(", ")
    );
    println!(
        "messages     {} published, {} delivered, {} forwarded, {} duplicates suppressed, \
         {} invalid, {} rejected",
        ps.stats.published,
        ps.stats.delivered,
        ps.stats.forwarded,
        ps.stats.duplicates,
        ps.stats.invalid,
        ps.stats.rejected
    );
    let ov = &s.overlay;
    if ov.enabled {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        println!(
            "overlay      {} (active view), {} in the passive view",
            plural(ov.active.len(), "neighbor", "neighbors"),
            plural(ov.passive, "peer", "peers")
        );
        println!(
            "search       {} searches sent, {} queries received, {} answered with hits",
            ov.stats.queries_sent, ov.stats.queries_received, ov.stats.hits_sent
        );
    } else {
        println!("overlay      disabled (keyword search is off)");
    }
    println!(
        "discarded    {} wire errors, {} protocol violations, {} frames dropped, {} pub/sub \
         frames shed, {} refused, {} evicted",
        s.runtime.wire_errors,
        s.core.violations,
        s.runtime.frames_dropped,
        s.runtime.pubsub_frames_shed,
        s.runtime.refused,
        s.runtime.evicted
    );
    let m = &s.resources.memory;
    println!(
        "memory       {} of {} reserved (an eighth is kept back as headroom): windows {}, \
         frames in {}, frames out {}, connections {}; {} reservations refused",
        human_size(m.used),
        human_size(m.limit),
        human_size(m.windows),
        human_size(m.inbound),
        human_size(m.outbound),
        human_size(m.state),
        m.refused
    );
    println!();
    print!("{}", limits_table(&s.resources.limits));
    Ok(())
}

/// The limits of `spore status`: one row each, with what is in use against it.
fn limits_table(limits: &[spore_net::LimitUse]) -> String {
    let amount = |n: u64, unit: &str| match unit {
        "bytes" => human_size(n),
        "bytes/s" => format!("{}/s", human_size(n)),
        _ => n.to_string(),
    };
    let rows: Vec<[String; 4]> = limits
        .iter()
        .map(|l| {
            let used = l
                .used
                .map_or_else(|| "-".to_string(), |u| amount(u, &l.unit));
            let unit = if l.unit.starts_with("bytes") {
                ""
            } else {
                l.unit.as_str()
            };
            [
                l.name.clone(),
                format!("per {}", l.scope),
                used,
                format!("{} {unit}", amount(l.limit, &l.unit))
                    .trim_end()
                    .to_string(),
            ]
        })
        .collect();
    let header = ["LIMIT", "SCOPE", "USED", "MAX"].map(String::from);
    let width = |i: usize| {
        rows.iter()
            .chain(std::iter::once(&header))
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {}\n",
            r[0], r[1], r[2], r[3]
        ));
    }
    out
}

/// `spore ping`
pub async fn ping(args: PingArgs) -> Result<()> {
    let target = args.target;
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    let difficulty = Difficulty(args.difficulty);
    let stamp = Stamp::mint(&keypair.peer_id(), difficulty);
    let bind: SocketAddr = if target.addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let mut config = NetConfig {
        listen: vec![bind],
        ..NetConfig::default()
    };
    config.node.difficulty = difficulty;
    config.node.ping.interval = None;
    let (node, _streams) = spore_net::start(keypair, stamp, config).await?;
    let result = ping_loop(&node, target, &args).await;
    node.shutdown().await;
    result
}

async fn ping_loop(node: &spore_net::NodeHandle, target: PeerAddr, args: &PingArgs) -> Result<()> {
    node.dial(target.peer, target.addr).await?;
    let peer = node
        .peers()
        .await?
        .into_iter()
        .find(|p| p.peer == target.peer);
    if !args.json {
        let seen = peer
            .and_then(|p| p.observed_us)
            .map(|a| format!(", which sees us at {a}"));
        println!(
            "connected to {} at {}{}",
            target.peer,
            target.addr,
            seen.unwrap_or_default()
        );
    }
    let mut rtts = Vec::new();
    for seq in 0..args.count {
        if seq > 0 {
            tokio::time::sleep(Duration::from_secs_f64(args.interval.max(0.0))).await;
        }
        match node.ping(target.peer).await {
            Ok(rtt) => {
                if !args.json {
                    println!(
                        "pong from {} seq={seq} time={:.3} ms",
                        target.peer.short(),
                        ms(rtt)
                    );
                }
                rtts.push(rtt);
            }
            Err(e) => {
                if !args.json {
                    println!("no pong seq={seq}: {e}");
                }
            }
        }
    }
    let received = rtts.len();
    if args.json {
        let out = serde_json::json!({
            "peer": target.peer,
            "addr": target.addr,
            "sent": args.count,
            "received": received,
            "rtt_ms": rtts.iter().map(|r| ms(*r)).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("--- {} ping statistics ---", target.peer.short());
        let loss = 100.0 * (1.0 - received as f64 / f64::from(args.count.max(1)));
        println!("{} sent, {received} received, {loss:.0}% loss", args.count);
        if let (Some(min), Some(max)) = (rtts.iter().min(), rtts.iter().max()) {
            let avg = rtts.iter().map(|r| ms(*r)).sum::<f64>() / received as f64;
            println!(
                "rtt min/avg/max = {:.3}/{avg:.3}/{:.3} ms",
                ms(*min),
                ms(*max)
            );
        }
    }
    if received == 0 && args.count > 0 {
        bail!("no answer from {}", target.peer);
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `spore dht put`
pub async fn dht_put(
    data_dir: Option<PathBuf>,
    name: String,
    value: String,
    json: bool,
) -> Result<()> {
    let dir = open_data_dir(data_dir)?;
    let client = ApiClient::from_data_dir(&dir)?;
    let body = api::PutValueRequest { name, value };
    let answer: api::PutValueResponse = client.post("/v1/dht/values", &body).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!(
            "stored {}/{} (seq {}) on {} nodes",
            answer.publisher, answer.name, answer.seq, answer.stored
        );
    }
    if answer.stored == 0 {
        bail!("no node stored the value (is this node connected to the network?)");
    }
    Ok(())
}

/// `spore dht get`
pub async fn dht_get(data_dir: Option<PathBuf>, key: String, json: bool) -> Result<()> {
    let Some((publisher, name)) = key.split_once('/') else {
        bail!("expected PUBLISHER/NAME, got {key:?} (no '/')");
    };
    let publisher: spore_core::PeerId = publisher
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid publisher {publisher:?}: {e}"))?;
    let dir = open_data_dir(data_dir)?;
    let client = ApiClient::from_data_dir(&dir)?;
    let path = format!("/v1/dht/values/{publisher}/{}", api::encode_path(name));
    let answer: api::ValueView = client.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        match &answer.value {
            Some(v) => println!("{v}"),
            None => println!("{}", answer.value_hex),
        }
    }
    Ok(())
}

/// `spore find-peer`
pub async fn find_peer(
    data_dir: Option<PathBuf>,
    peer: spore_core::PeerId,
    json: bool,
) -> Result<()> {
    let dir = open_data_dir(data_dir)?;
    let client = ApiClient::from_data_dir(&dir)?;
    let answer: api::PeerRecordView = client.get(&format!("/v1/dht/peers/{peer}")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!(
            "{} (record seq {}, expires {})",
            answer.peer, answer.seq, answer.expires
        );
        for a in &answer.addrs {
            println!("  {a}");
        }
        for r in &answer.relays {
            println!("  via relay {r}");
        }
    }
    Ok(())
}

/// `spore pub`
pub async fn publish(data_dir: Option<PathBuf>, args: PubArgs) -> Result<()> {
    let dir = open_data_dir(data_dir)?;
    let client = ApiClient::from_data_dir(&dir)?;
    let data = if args.message == "-" {
        read_stdin(spore_core::pubsub::MAX_DATA_LEN).await?
    } else {
        args.message.into_bytes()
    };
    let (data, encoding) = api::Encoding::encode(&data);
    let path = format!("/v1/topics/{}/messages", api::encode_path(&args.topic));
    let body = api::PublishRequest { data, encoding };
    let answer: api::PublishResponse = client.post(&path, &body).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        let peers = if answer.peers == 1 { "peer" } else { "peers" };
        println!(
            "published {} on {} to {} {peers}",
            answer.id, answer.topic, answer.peers
        );
    }
    if answer.peers == 0 {
        bail!(
            "no connected peer subscribes to {:?} yet, so nobody got the message",
            answer.topic
        );
    }
    Ok(())
}

/// All of standard input, refusing more than `max` bytes.
async fn read_stdin(max: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let read = tokio::task::spawn_blocking(move || {
        let mut data = Vec::new();
        std::io::stdin()
            .take(max as u64 + 1)
            .read_to_end(&mut data)
            .map(|_| data)
    });
    let data = read
        .await?
        .context("cannot read the message from standard input")?;
    if data.len() > max {
        bail!("the message on standard input is longer than {max} bytes");
    }
    Ok(data)
}

/// `spore sub`
pub async fn subscribe(data_dir: Option<PathBuf>, args: SubArgs) -> Result<()> {
    use std::io::Write;
    let dir = open_data_dir(data_dir)?;
    let client = ApiClient::from_data_dir(&dir)?;
    if let Some(depth) = args.trusted_within {
        let path = format!("/v1/topics/{}/closed", api::encode_path(&args.topic));
        let body = api::ClosedTopic {
            topic: String::new(),
            depth,
        };
        let _: api::ClosedTopic = client.put_json(&path, &body).await?;
        if !args.json {
            eprintln!(
                "closed {:?} to authors this node does not trust within {depth} vouches",
                args.topic
            );
        }
    }
    let path = format!("/v1/topics/{}/messages", api::encode_path(&args.topic));
    let mut stream = client.events(&path).await?;
    if !args.json {
        eprintln!(
            "subscribed to {:?}; waiting for messages (Ctrl-C to stop)",
            args.topic
        );
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut received = 0u64;
    loop {
        let event = tokio::select! {
            event = stream.next() => event?,
            _ = &mut ctrl_c => return Ok(()),
        };
        let Some(event) = event else {
            bail!("the node ended the stream (has it stopped?)");
        };
        match event.event.as_str() {
            "message" => {
                let m: api::MessageView = serde_json::from_str(&event.data)
                    .context("the node sent a message this command cannot read")?;
                let line = if args.json {
                    serde_json::to_string(&m)?
                } else {
                    message_line(&m)
                };
                // A closed pipe (`spore sub … | head -1`) ends the command quietly.
                if writeln!(std::io::stdout(), "{line}").is_err() {
                    return Ok(());
                }
                received += 1;
                if args.count.is_some_and(|n| received >= n) {
                    return Ok(());
                }
            }
            "lagged" => eprintln!(
                "warning: this command fell behind the node and may have missed messages ({})",
                event.data
            ),
            _ => {}
        }
    }
}

/// `AUTHOR SEQ: TEXT`, binary data as `[base64] …`.
fn message_line(m: &api::MessageView) -> String {
    let text = match m.encoding {
        api::Encoding::Utf8 => m.data.strip_suffix('\n').unwrap_or(&m.data).to_string(),
        api::Encoding::Base64 => format!("[base64] {}", m.data),
    };
    format!("{} {}: {text}", m.author.short(), m.seq)
}

/// `spore search`
pub async fn search(data_dir: Option<PathBuf>, args: SearchArgs) -> Result<()> {
    use std::io::Write;
    let dir = open_data_dir(data_dir)?;
    let client = ApiClient::from_data_dir(&dir)?;
    let text = args.words.join(" ");
    let body = api::SearchRequest {
        words: Some(args.words),
        timeout_ms: Some(u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX)),
        ..api::SearchRequest::default()
    };
    let waiting = humantime::format_duration(args.timeout);
    if !args.json {
        eprintln!("searching for {text:?} (waiting {waiting} for answers)…");
    }
    let answer: api::SearchResponse = client.post("/v1/search", &body).await?;
    let mut out = std::io::stdout().lock();
    if answer.hits.is_empty() {
        let msg = format!("no results for {text:?} within {waiting}");
        if args.json {
            eprintln!("{msg}");
        } else {
            writeln!(out, "{msg}")?;
        }
        return Ok(());
    }
    if args.json {
        for hit in &answer.hits {
            writeln!(out, "{}", serde_json::to_string(hit)?)?;
        }
        return Ok(());
    }
    let width = answer
        .hits
        .iter()
        .map(|h| h.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(4, 60);
    writeln!(
        out,
        "{:<width$}  {:>10}  {:<12}  RESPONDER",
        "NAME", "SIZE", "CONTENT"
    )?;
    for hit in &answer.hits {
        let content = hit.content_hex();
        writeln!(
            out,
            "{:<width$}  {:>10}  {:<12}  {}",
            hit.name,
            human_size(hit.size),
            &content[..12],
            hit.responder.short()
        )?;
    }
    let responders: std::collections::BTreeSet<_> =
        answer.hits.iter().map(|h| h.responder).collect();
    let (hits, peers) = (answer.hits.len(), responders.len());
    writeln!(
        out,
        "{hits} {} from {peers} {}",
        if hits == 1 { "result" } else { "results" },
        if peers == 1 { "peer" } else { "peers" }
    )?;
    Ok(())
}

/// `bytes` in binary units: `512 B`, `64.0 KiB`, `3.9 GiB`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Connects to a relay: over UDP (QUIC), and, if that has not worked within a second, over TCP
/// as well (relays accept TCP on their QUIC port, for networks that block UDP). The first to
/// connect wins.
pub(crate) async fn connect_relay(node: &spore_net::NodeHandle, relay: PeerAddr) -> Result<()> {
    let mut attempts = tokio::task::JoinSet::new();
    let udp = node.clone();
    attempts.spawn(async move {
        udp.dial(relay.peer, relay.addr)
            .await
            .map_err(|e| anyhow::anyhow!("over UDP: {e}"))
    });
    let tcp = node.clone();
    attempts.spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let connected = tcp
            .peers()
            .await
            .is_ok_and(|ps| ps.iter().any(|p| p.peer == relay.peer && p.ready));
        if connected {
            return Ok(());
        }
        tcp.dial_relay_tcp(relay.peer, relay.addr)
            .await
            .map_err(|e| anyhow::anyhow!("over TCP: {e}"))
    });
    let mut errors = Vec::new();
    while let Some(done) = attempts.join_next().await {
        match done {
            Ok(Ok(())) => {
                attempts.abort_all();
                return Ok(());
            }
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    bail!("cannot reach relay {relay}: {}", errors.join("; "))
}

/// Holds a reservation at `relay` while the node runs: dials it, reserves, and starts over
/// (with backoff) whenever the connection or the reservation is lost.
async fn keep_reservation(node: spore_net::NodeHandle, relay: PeerAddr) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let reserved = async {
            connect_relay(&node, relay).await?;
            anyhow::Ok(node.reserve_relay(relay.peer).await?)
        };
        match reserved.await {
            Ok(_) => {
                backoff = Duration::from_secs(1);
                // The runtime renews it; look again when it is gone.
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    match node.status().await {
                        Ok(s) if s.relay.reserved_at.contains(&relay.peer) => {}
                        Ok(_) => break,
                        Err(_) => return, // the node stopped
                    }
                }
                tracing::info!(relay = %relay, "reservation lost; reserving again");
            }
            Err(e) => {
                tracing::warn!(relay = %relay, error = %e, "cannot reserve at relay");
                if node.status().await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// One line on the node's place in the hybrid topology: serving as a super-peer, or a leaf
/// holding some, or neither (and how far it is from confirmed reachability).
fn superpeer_line(s: &spore_core::superpeer::Stats) -> String {
    if s.serving {
        format!("serving {} leaves (load {} %)", s.leaves, s.load)
    } else if s.leaf {
        format!(
            "leaf: holds {} super-peers ({} candidates known, {} rotations)",
            s.held, s.candidates, s.rotations
        )
    } else {
        format!(
            "neither ({} of the network groups needed have dialed in directly)",
            s.confirmations
        )
    }
}

/// One line on what STUN found: the NAT's behaviour and our reflexive addresses.
fn nat_line(nat: &spore_net::NatStatus) -> String {
    use spore_core::nat::{Filtering, Mapping};
    let Some(report) = &nat.report else {
        return if nat.stun_servers.is_empty() {
            "unknown (no STUN servers configured; see --stun)".to_string()
        } else {
            "probing STUN servers…".to_string()
        };
    };
    if report.answered == 0 {
        return format!("unknown (none of {} STUN servers answered)", report.asked);
    }
    let mapping = match report.mapping {
        Mapping::None => "no NAT (public address)",
        Mapping::EndpointIndependent => "NAT, endpoint-independent mapping",
        Mapping::Dependent => "NAT, mapping per destination (symmetric)",
        Mapping::Unknown => "NAT behaviour unknown (needs two STUN servers at different IPs)",
    };
    let filtering = match report.filtering {
        Filtering::EndpointIndependent if report.mapping != Mapping::None => ", open filtering",
        Filtering::AddressDependent => ", filters by address",
        Filtering::AddressAndPortDependent => ", filters by address and port",
        _ => "",
    };
    let addrs: Vec<String> = report.reflexive.iter().map(ToString::to_string).collect();
    format!(
        "{mapping}{filtering}; seen as {} ({} of {} STUN servers answered)",
        addrs.join(", "),
        report.answered,
        report.asked
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(65_536), "64.0 KiB");
        assert_eq!(human_size(3_141_592), "3.0 MiB");
        assert_eq!(human_size(4_200_000_000), "3.9 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }
}
