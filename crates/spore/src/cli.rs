//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::settings::PeerAddr;

/// spore: a peer-to-peer node. Every connection is encrypted and authenticated by the peers'
/// Ed25519 keys; no central server is involved.
#[derive(Debug, Parser)]
#[command(name = "spore", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Where the identity, API token and config live [default: the platform's data directory,
    /// e.g. ~/.local/share/spore]
    #[arg(long, global = true, env = "SPORE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Log filter, e.g. `info`, `debug`, `spore_net=trace` [default: `info` for `spore node`,
    /// `warn` otherwise]
    #[arg(long, global = true, env = "SPORE_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// spore's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show this node's identity, creating it on first use.
    Id {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a node until Ctrl-C.
    Node(NodeArgs),
    /// List the peers a running node is connected to (asks its local HTTP API).
    Peers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a running node's status (asks its local HTTP API).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Store and read signed values in the DHT (asks the running node).
    Dht {
        /// What to do.
        #[command(subcommand)]
        command: DhtCommand,
    },
    /// Find a peer's signed address record in the DHT (asks the running node).
    FindPeer {
        /// The peer's id.
        #[arg(value_name = "PEERID")]
        peer: spore_core::PeerId,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Publish a message on a topic (asks the running node).
    ///
    /// The node signs the message with its key and sends it to its peers subscribed to TOPIC,
    /// which pass it on through the topic's mesh. Prints the message's id and to how many peers
    /// it went directly; fails if no connected peer subscribes to TOPIC (then nobody got it).
    #[command(name = "pub")]
    Pub(PubArgs),
    /// Print the messages published on a topic as they arrive (asks the running node).
    ///
    /// The node subscribes to TOPIC while this command runs (and stays subscribed if something
    /// else subscribed it too). One line per message: `AUTHOR SEQ: TEXT`, with AUTHOR shortened
    /// and binary data shown as base64, or one JSON object per line with --json. Stops after
    /// --count messages, or on Ctrl-C.
    Sub(SubArgs),
    /// Vouch for identities, revoke vouches, and see whom the node trusts (asks the running
    /// node).
    ///
    /// A vouch says "I trust this identity". The node signs the list of identities it vouches
    /// for, stores it in the DHT and publishes it on the trust topic; other nodes follow chains
    /// of vouches to decide whom they trust, e.g. who may publish on a closed topic
    /// (`spore sub TOPIC --trusted-within 2`). The list is saved in the data directory
    /// (`vouches.txt`) and published again when the node restarts.
    ///
    /// Example: `spore trust vouch PEERID`, then `spore trust check OTHERID --depth 2`.
    Trust {
        /// What to do.
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Search the network for shared names containing every word (asks the running node).
    ///
    /// The query travels a few hops over the node's overlay neighbors; each node sharing a
    /// matching name (case-insensitive substring match on every word) answers with a signed hit.
    /// Waits --timeout for answers, then prints them: name, size, content hash and the peer that
    /// shares it, or one JSON object per line with --json. Finding nothing is not an error.
    /// Applications share names through the node's HTTP API (`PUT /v1/shared`).
    ///
    /// Example: `spore search holiday photos --timeout 3s`
    Search(SearchArgs),
    /// Share a file or a directory: import it, serve it, print a ticket.
    ///
    /// Imports PATH into the node's blob store (BLAKE3-verified; a directory becomes a
    /// collection), pins it, runs a node that serves it and announces it in the DHT, and prints
    /// a ticket: the content's root hash plus this node's id and addresses. Anyone with the
    /// ticket runs `spore get TICKET`. Serves until Ctrl-C; `spore node` on the same data
    /// directory keeps serving every pinned blob.
    ///
    /// Example: `spore share ./holiday-photos`
    Share(ShareArgs),
    /// Download what a ticket names, from every peer that has it.
    ///
    /// Joins the network through the ticket's peer, finds more providers in the DHT and through
    /// peer exchange, and downloads from all of them at once, BitTorrent-style. Every chunk group
    /// is verified against the ticket's root hash before it is stored, and a peer that sends bad
    /// data is dropped. Shows rate, peers and ETA. The output is written only once all of it has
    /// verified. Interrupted? Run the same command again: verified data is not fetched twice.
    ///
    /// Example: `spore get blobaeaq… -o photos`
    Get(GetArgs),
    /// List, remove and garbage-collect the blobs in this data directory's store.
    ///
    /// Works on the store directly, so no node may be running on the data directory.
    Blobs {
        /// What to do.
        #[command(subcommand)]
        command: BlobsCommand,
    },
    /// Documents many peers edit at once, converging with no coordinator (asks the running node).
    ///
    /// A document maps keys to registers (last writer wins), counters, sets and text; edits are
    /// signed by their author and merge in any order. `new` prints the document's id and a
    /// ticket; others `join` with the ticket and read; the owner admits writers with `allow`.
    ///
    /// Example: `spore doc new`, then `spore doc set DOC title "Trip plan"` and
    /// `spore doc get DOC`.
    Doc {
        /// What to do.
        #[command(subcommand)]
        command: DocCommand,
    },
    /// Connect to a peer and measure round-trip times, like ping(8).
    ///
    /// Uses a fresh throwaway identity, so it never disturbs a node running from the same data
    /// directory.
    Ping(PingArgs),
    /// Start a small network of nodes on 127.0.0.1 and show them working. Needs no internet.
    Demo(DemoArgs),
    /// Run a simulation scenario: thousands of real spore nodes in virtual time.
    ///
    /// Reads a scenario file (see scenarios/ and docs/simulator.md), runs it deterministically
    /// with a progress bar, prints a summary table, and writes metrics.json plus SVG charts to
    /// the output directory. Exits with status 1 if a bound in the file's [[expect]] fails.
    Sim(SimArgs),
}

/// Arguments of `spore sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// The scenario file (TOML).
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,

    /// Directory for metrics.json and the charts [default: sim-results/NAME]
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,

    /// Run at this network size instead of the file's (replaces `nodes` and `sizes`)
    #[arg(long, value_name = "N")]
    pub nodes: Option<usize>,

    /// Use this seed instead of the file's
    #[arg(long)]
    pub seed: Option<u64>,

    /// Print the report as JSON on stdout instead of the table
    #[arg(long)]
    pub json: bool,

    /// No progress bar
    #[arg(long, short)]
    pub quiet: bool,
}

/// Arguments of `spore share`.
#[derive(Debug, Args)]
pub struct ShareArgs {
    /// The file or directory to share
    #[arg(value_name = "PATH")]
    pub path: PathBuf,

    /// Print the ticket as one JSON object (no progress bar)
    #[arg(long)]
    pub json: bool,

    /// Node settings, as for `spore node`
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Arguments of `spore get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The ticket `spore share` printed
    #[arg(value_name = "TICKET")]
    pub ticket: String,

    /// Where to write the file (or directory) [default: the shared name, in the current
    /// directory]; must not exist yet
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Keep serving the content to others after the download, until Ctrl-C
    #[arg(long)]
    pub seed: bool,

    /// Print one JSON object when done (no progress bar): hash, size, path, bytes downloaded
    /// by this run, seconds
    #[arg(long)]
    pub json: bool,

    /// Node settings, as for `spore node` [default listen port: any free port]
    #[command(flatten)]
    pub node: NodeArgs,
}

/// `spore doc` subcommands.
#[derive(Debug, Subcommand)]
pub enum DocCommand {
    /// Create a document owned by this node; prints its id and a ticket to share.
    New {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replicate the document a ticket names (read it; to write, ask its owner to `allow` you).
    Join {
        /// The ticket (`doc…`).
        ticket: String,
    },
    /// Set a key: a register (default), or with --add a set element, or with --incr a counter.
    Set {
        /// The document's id.
        doc: String,
        /// The key.
        key: String,
        /// The value (with --incr: the amount, may be negative).
        value: String,
        /// Add VALUE to the set KEY instead of writing a register.
        #[arg(long, conflicts_with = "incr")]
        add: bool,
        /// Add the integer VALUE to the counter KEY.
        #[arg(long)]
        incr: bool,
    },
    /// Print a document (every key) or one key.
    Get {
        /// The document's id.
        doc: String,
        /// Only this key (any kind).
        key: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Edit a text key in $EDITOR (default `vi`); the difference becomes one signed change.
    Edit {
        /// The document's id.
        doc: String,
        /// The text key.
        #[arg(default_value = "text")]
        key: String,
    },
    /// Print the document's state now and whenever a change arrives, until --count updates or
    /// Ctrl-C.
    Watch {
        /// The document's id.
        doc: String,
        /// Stop after this many updates (the first state counts).
        #[arg(long)]
        count: Option<usize>,
    },
    /// As the owner, admit a peer as a writer.
    Allow {
        /// The document's id.
        doc: String,
        /// The peer.
        peer: spore_core::PeerId,
    },
    /// Close the document to peers this node does not trust within DEPTH vouches: only
    /// trusted peers sync it with this node or send it live changes (while the node runs).
    Close {
        /// The document's id.
        doc: String,
        /// How many vouches away a peer may be (0: nobody but this node; at most 4).
        #[arg(long, value_name = "DEPTH", value_parser = clap::value_parser!(u8).range(0..=4))]
        trusted_within: u8,
    },
    /// Print the document's ticket.
    Ticket {
        /// The document's id.
        doc: String,
    },
}

/// `spore blobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum BlobsCommand {
    /// List the blobs: hash, size, complete or partial, collection, pinned.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Unpin a blob and remove it (with everything else unpinned: this runs `gc`).
    Rm {
        /// The blob's hash, 64 hex digits (as `spore blobs list` shows it)
        #[arg(value_name = "HASH")]
        hash: String,
    },
    /// Remove every blob that is not pinned (and not in a pinned collection).
    Gc,
}

/// Arguments of `spore pub`.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// The topic: 1 to 256 bytes, any characters
    pub topic: String,

    /// The message, up to 64 KiB; `-` reads it from standard input (binary data too)
    pub message: String,

    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `spore sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// The topic: 1 to 256 bytes, any characters
    pub topic: String,

    /// Print one JSON object per message and line: id, topic, author, seq, data, encoding
    /// (`utf8` or `base64`), from
    #[arg(long)]
    pub json: bool,

    /// Exit after this many messages [default: run until Ctrl-C]
    #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Close the topic first: the node then delivers and forwards only messages whose author
    /// it trusts within DEPTH vouches (see `spore trust`); 0 admits only the node itself. The
    /// topic stays closed until the node stops.
    #[arg(long, value_name = "DEPTH", value_parser = clap::value_parser!(u8).range(0..=4))]
    pub trusted_within: Option<u8>,
}

/// Arguments of `spore search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Words every name found must contain (1 to 8, case-insensitive)
    #[arg(value_name = "WORDS", required = true, num_args = 1..)]
    pub words: Vec<String>,

    /// How long to wait for answers, e.g. `3s`, `1500ms` (at most 25s; the node stops
    /// accepting answers after its own search timeout, 10s by default)
    #[arg(long, short, default_value = "5s", value_parser = parse_search_timeout)]
    pub timeout: std::time::Duration,

    /// Print one JSON object per hit and line: name, content (hex), size, responder, addrs
    #[arg(long)]
    pub json: bool,
}

fn parse_search_timeout(text: &str) -> Result<std::time::Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    let max = crate::api::search::MAX_SEARCH_TIMEOUT;
    if timeout > max {
        return Err(format!(
            "at most {} allowed",
            humantime::format_duration(max)
        ));
    }
    if timeout.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(timeout)
}

/// `spore dht` subcommands.
#[derive(Debug, Subcommand)]
pub enum DhtCommand {
    /// Sign VALUE under NAME with this node's key and store it on the closest nodes. Putting the
    /// same NAME again replaces the value (its sequence number grows).
    Put {
        /// Up to 64 bytes, no control characters.
        name: String,
        /// Up to 1024 bytes.
        value: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Read the value PUBLISHER stored under NAME; only a record signed by PUBLISHER is accepted.
    Get {
        /// `PUBLISHER/NAME`, where PUBLISHER is a peer id.
        #[arg(value_name = "PUBLISHER/NAME")]
        key: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `spore trust` subcommands.
#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Vouch for PEERID (at most 30 identities).
    Vouch {
        /// The identity vouched for.
        #[arg(value_name = "PEERID")]
        peer: spore_core::PeerId,
    },
    /// Withdraw the vouch for PEERID; nodes that trusted it through this node stop doing so.
    Revoke {
        /// The identity.
        #[arg(value_name = "PEERID")]
        peer: spore_core::PeerId,
    },
    /// Show the vouches, every identity trusted through them, closed topics, and the
    /// reputation the node keeps of the peers it has dealt with.
    Show {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Say whether the node trusts PEERID within DEPTH vouches, and through whom. Exits with
    /// status 1 if it does not.
    Check {
        /// The identity.
        #[arg(value_name = "PEERID")]
        peer: spore_core::PeerId,
        /// Longest chain accepted: 1 is "vouched for by this node" (at most 4)
        #[arg(long, short, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=4))]
        depth: u8,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `spore node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// UDP address to listen on; repeat for several [default: 0.0.0.0:7070 and [::]:7070]
    #[arg(
        long,
        env = "SPORE_LISTEN",
        value_delimiter = ',',
        value_name = "IP:PORT"
    )]
    pub listen: Vec<SocketAddr>,

    /// A peer to join through, as PEERID@IP:PORT; repeat for several
    #[arg(
        long,
        env = "SPORE_BOOTSTRAP",
        value_delimiter = ',',
        value_name = "PEERID@IP:PORT"
    )]
    pub bootstrap: Vec<PeerAddr>,

    /// A DNS name whose TXT records list bootstrap peers, one `spore=PEERID@IP:PORT` per record
    /// (e.g. _spore.example.org); resolved at start and every 10 minutes, and the peers found
    /// are kept like --bootstrap peers; repeat for several
    #[arg(
        long,
        env = "SPORE_BOOTSTRAP_DNS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub bootstrap_dns: Vec<String>,

    /// The DNS server to resolve --bootstrap-dns names with [default: the system's resolvers,
    /// from /etc/resolv.conf]
    #[arg(long, env = "SPORE_DNS_SERVER", value_name = "IP:PORT")]
    pub dns_server: Option<SocketAddr>,

    /// Address of the local HTTP API; must be a loopback address [default: 127.0.0.1:0, a free
    /// port, written to <data-dir>/api.addr]
    #[arg(long, env = "SPORE_API_LISTEN", value_name = "IP:PORT")]
    pub api_listen: Option<SocketAddr>,

    /// Proof-of-work bits every node id must carry; all nodes of a network must agree
    /// [default: 16]
    #[arg(long, env = "SPORE_DIFFICULTY", value_name = "BITS")]
    pub difficulty: Option<u8>,

    /// Most open connections [default: 512]
    #[arg(long, env = "SPORE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most open connections from one IP address [default: 8]
    #[arg(long, env = "SPORE_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// Most connections peers open to this node; when they are all taken a newcomer evicts the
    /// least valuable inbound peer (young, slow, unknown, from a crowded network group) or is
    /// refused [default: 448]
    #[arg(long, env = "SPORE_MAX_INBOUND", value_name = "N")]
    pub max_inbound: Option<usize>,

    /// Memory budget for everything peers can make the node buffer (QUIC windows, frames
    /// read and not yet handled, frames queued to send), e.g. `256M` or `1G` (binary units)
    /// [default: 1G]
    #[arg(long, env = "SPORE_MAX_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,

    /// Announce this node and find peers on the local network by mDNS (_spore._udp.local)
    #[arg(long, env = "SPORE_MDNS")]
    pub mdns: bool,

    /// `server` answers DHT queries and stores records; `client` only uses the DHT (for nodes
    /// others cannot reach) [default: server]
    #[arg(long, env = "SPORE_DHT_MODE", value_name = "MODE")]
    pub dht_mode: Option<DhtMode>,

    /// Config file [default: <data-dir>/config.toml, if present]
    #[arg(long, env = "SPORE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Upload limit for serving blobs, bytes per second, e.g. `500K` or `2M` (binary units)
    /// [default: none]
    #[arg(long, env = "SPORE_UPLOAD_LIMIT", value_name = "RATE", value_parser = parse_rate)]
    pub upload_limit: Option<u64>,

    /// STUN server to learn this node's public address and NAT type from, as HOST:PORT; repeat
    /// or separate with commas for several (two at different IPs reveal whether the NAT maps
    /// per destination). Every spore node answers STUN on its QUIC port; coturn and other
    /// standard servers work too. `spore status` shows the result [default: none]
    #[arg(
        long = "stun",
        env = "SPORE_STUN",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub stun: Vec<String>,
    /// Relay for others: keep reservations for nodes behind NATs and carry their connections
    /// (end-to-end encrypted; quotas on circuits, bytes, time and rate). For public nodes
    #[arg(long, env = "SPORE_RELAY")]
    pub relay: bool,

    /// Reserve a slot at this relay (a node run with --relay) as PEERID@IP:PORT, so that nodes
    /// that cannot dial this one reach it through the relay; repeat for several. Kept and
    /// renewed while the node runs, and named in its peer record and tickets
    #[arg(
        long,
        env = "SPORE_RELAY_VIA",
        value_delimiter = ',',
        value_name = "PEERID@IP:PORT"
    )]
    pub relay_via: Vec<PeerAddr>,

    /// Ask the local gateway to forward this node's UDP port (by PCP, NAT-PMP or UPnP-IGD,
    /// whichever it speaks) and announce the mapped address, so that nodes beyond the NAT can
    /// dial this one directly. Renewed while the node runs, deleted when it stops; `spore
    /// status` shows it. Sends SSDP multicast on the local network and requests to the default
    /// gateway [default: off]
    #[arg(long, env = "SPORE_PORT_MAP")]
    pub port_map: bool,

    /// A TURN server (e.g. coturn) to allocate a relayed address on, with its long-term
    /// credentials, as USER:PASSWORD@IP:PORT. The relayed address is offered to peers when a
    /// hole punch starts, so that nodes behind NATs no punch gets through (two symmetric ones)
    /// still reach each other without a spore relay; peers get permission as they punch.
    /// Kept alive while the node runs, released when it stops [default: none]
    #[arg(long, env = "SPORE_TURN", value_name = "USER:PASSWORD@IP:PORT", value_parser = parse_turn_arg)]
    pub turn: Option<spore_core::nat::turn::TurnConfig>,
}

fn parse_turn_arg(s: &str) -> Result<spore_core::nat::turn::TurnConfig, String> {
    spore_net::parse_turn(s)
}

/// Reads a rate like `1048576`, `512K`, `2M`, `1G` or `2MiB/s` as bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use K, M or G)")),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate such as 512K or 2M"))?;
    match n.checked_shl(shift) {
        Some(rate) if rate > 0 && rate >> shift == n => Ok(rate),
        _ => Err(format!("{s:?} is not a rate above zero that fits")),
    }
}

/// A size in bytes, as `4096`, `512K`, `256M` or `1G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_rate(s).map_err(|_| format!("{s:?} is not a size such as 256M or 1G"))
}

/// Arguments of `spore ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// The peer, as PEERID@IP:PORT
    #[arg(value_name = "PEERID@IP:PORT")]
    pub target: PeerAddr,

    /// Number of pings
    #[arg(short, long, default_value_t = 4)]
    pub count: u32,

    /// Seconds between pings
    #[arg(short, long, default_value_t = 1.0)]
    pub interval: f64,

    /// Proof-of-work bits the network requires
    #[arg(
        long,
        env = "SPORE_DIFFICULTY",
        default_value_t = 16,
        value_name = "BITS"
    )]
    pub difficulty: u8,

    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `spore demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of nodes
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(3..=64))]
    pub nodes: u16,

    /// Pings each node sends to each of its peers
    #[arg(long, default_value_t = 5)]
    pub pings: u32,
}

/// `--dht-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhtMode {
    /// Answer queries and store records.
    Server,
    /// Use the DHT without serving it.
    Client,
}

impl From<DhtMode> for spore_core::kad::Mode {
    fn from(m: DhtMode) -> Self {
        match m {
            DhtMode::Server => spore_core::kad::Mode::Server,
            DhtMode::Client => spore_core::kad::Mode::Client,
        }
    }
}
