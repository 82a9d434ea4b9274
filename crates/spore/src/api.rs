//! The node's local HTTP/JSON API, and the client the CLI uses to reach it.
//!
//! The server binds a loopback address only and requires `Authorization: Bearer <token>` on
//! every request; the token lives in the data directory with mode 0600, so only the node's user
//! can read it.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/status` | | [`spore_net::Status`] |
//! | GET | `/v1/peers` | | `[`[`PeerView`]`]` |
//! | POST | `/v1/ping` | `{"peer": ID}` | `{"peer": ID, "rtt_ms": f64}` |
//! | POST | `/v1/dial` | `{"peer": ID, "addr": "IP:PORT"}` | `{"peer": ID}` |
//! | POST | `/v1/dht/values` | [`PutValueRequest`] | [`PutValueResponse`] |
//! | GET | `/v1/dht/values/{publisher}/{name}` | | [`ValueView`], or 404 |
//! | GET | `/v1/dht/peers/{peer}` | | [`PeerRecordView`], or 404 |
//! | GET | `/v1/topics` | | `[`[`TopicView`]`]`: subscribed topics, mesh and peer counts |
//! | PUT | `/v1/topics/{topic}` | | [`SubscriptionView`]: subscribes |
//! | DELETE | `/v1/topics/{topic}` | | [`SubscriptionView`], or 404 if not subscribed |
//! | POST | `/v1/topics/{topic}/messages` | [`PublishRequest`] | [`PublishResponse`] |
//! | GET | `/v1/topics/{topic}/messages` | | server-sent events: `message` ([`MessageView`]), `lagged` |
//! | POST | `/v1/search` | [`SearchRequest`] | [`SearchResponse`]: the hits that came in time |
//! | PUT | `/v1/shared` | [`SharedName`] | [`SharedName`]: the node answers searches with it |
//! | DELETE | `/v1/shared/{content}` | | [`UnsharedView`], or 404 if nothing is shared for it |
//! | GET | `/v1/overlay` | | [`spore_net::OverlayStatus`]: neighbors, passive view size, counters |
//! | POST | `/v1/docs` | | [`DocCreated`]: a new document owned by this node, and its ticket |
//! | POST | `/v1/docs/join` | [`JoinRequest`] | [`DocCreated`]: replicates the ticket's document |
//! | GET | `/v1/docs/{doc}` | | [`DocView`]: owner, writers, state (`"Kind:key"` → value), or 404 |
//! | GET | `/v1/docs/{doc}/ticket` | | `{"ticket": "doc…"}` |
//! | POST | `/v1/docs/{doc}/edits` | `[`[`EditRequest`]`]` | [`DocView`] after the change |
//! | POST | `/v1/docs/{doc}/writers` | [`WriterRequest`] | [`DocView`]: the owner admitted a writer |
//! | PUT | `/v1/docs/{doc}/closed` | `{"depth": D}` | [`ClosedDoc`]: only peers trusted within D vouches sync it with this node (while the node runs) |
//! | GET | `/v1/docs/{doc}/events` | | server-sent events: `state` ([`DocView`]) now and on every change from other replicas |
//! | GET | `/v1/trust` | | [`TrustView`]: vouches, the trust graph, closed topics, the reputation table |
//! | PUT | `/v1/trust/vouches/{peer}` | | [`VouchView`]: vouches for the peer (saved in `vouches.txt`) |
//! | DELETE | `/v1/trust/vouches/{peer}` | | [`VouchView`]: revokes the vouch, or 404 if there was none |
//! | GET | `/v1/trust/chains/{peer}?depth=D` | | [`ChainView`]: a shortest chain of at most D vouches (default 2, at most 4) |
//! | PUT | `/v1/topics/{topic}/closed` | `{"depth": D}` | [`ClosedTopic`]: only authors trusted within D vouches pass |
//!
//! Topic names are 1 to 256 bytes, percent-encoded in the path (`/` as `%2F`). Message data is
//! text in JSON, or base64 with `"encoding": "base64"` for binary data; a message holds at most
//! 64 KiB. Opening the event stream subscribes the node to the topic, and closing the last one
//! unsubscribes it unless a `PUT` holds the subscription (see [`topics`]).
//!
//! A search (`{"query": "holiday photos"}` or `{"words": [...]}`, optional `timeout_ms`,
//! default 5000, at most 25000) waits for the overlay's answers and returns them together;
//! no hit is an empty list, and a node without overlay neighbors answers 503. Shared names are
//! keyed by their content's BLAKE3 hash in hex (see [`search`]). Errors are JSON
//! `{"error": "..."}` with a 4xx or 5xx status.

pub mod docs;
pub mod events;
pub mod search;
pub mod topics;
pub mod trust;

pub use docs::{
    ClosedDoc, DocCreated, DocTicket, DocView, EditRequest, JoinRequest, WriterRequest,
};
pub use events::{EventStream, SseEvent};
pub use search::{SearchRequest, SearchResponse, SharedName, UnsharedView};
pub use topics::{
    Encoding, MessageView, PublishRequest, PublishResponse, SubscriptionView, TopicView,
};
pub use trust::{ChainView, ClosedTopic, ReputationView, TrustView, VouchView};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use spore_core::PeerId;
use spore_core::kad::QueryResult;
use spore_core::node::{Direction, PeerInfo};
use spore_net::NodeHandle;

/// One connected peer, as the API reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    /// The peer's id.
    pub peer: PeerId,
    /// The address this node observes the peer's connection at.
    pub addr: SocketAddr,
    /// Who dialed.
    pub direction: Direction,
    /// Whether its `Hello` has been verified.
    pub ready: bool,
    /// The addresses it says it listens on.
    pub listen_addrs: Vec<SocketAddr>,
    /// The address at which the peer observes this node.
    pub observed_us: Option<SocketAddr>,
    /// Its roles.
    pub capabilities: Vec<String>,
    /// Its software.
    pub agent: String,
    /// Last measured round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// How the connection travels: `direct`, `relayed` through a relay's circuit, or
    /// `punched` (a relayed connection a hole punch moved to a direct path).
    #[serde(default)]
    pub path: String,
    /// This node's reputation score of the peer: 0 (only bad evidence) to 1, 0.5 for a peer
    /// it knows nothing about.
    #[serde(default = "stranger_score")]
    pub reputation: f64,
    /// Credit: bytes exchanged with the peer over all swarms.
    #[serde(default)]
    pub credit: CreditView,
}

/// What a node and a peer gave each other, as `GET /v1/peers` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditView {
    /// Bytes this node sent the peer.
    pub uploaded: u64,
    /// Verified bytes the peer sent this node.
    pub downloaded: u64,
    /// Of `uploaded`, what the peer acknowledged in a signed receipt.
    pub receipted: u64,
}

fn stranger_score() -> f64 {
    spore_core::trust::reputation::Standing::STRANGER.score
}

impl From<PeerInfo> for PeerView {
    fn from(p: PeerInfo) -> Self {
        Self {
            peer: p.peer,
            addr: p.addr,
            direction: p.direction,
            ready: p.ready,
            listen_addrs: p.listen_addrs.to_vec(),
            observed_us: p.observed_us,
            capabilities: p
                .capabilities
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
            agent: p.agent,
            rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1e3),
            path: if spore_core::nat::relay::is_relayed_addr(&p.addr) {
                "relayed".into()
            } else if p.punched {
                "punched".into()
            } else {
                "direct".into()
            },
            reputation: stranger_score(),
            credit: CreditView::default(),
        }
    }
}

/// Body of `POST /v1/ping`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PingRequest {
    /// The peer to ping (must be connected).
    pub peer: PeerId,
}

/// Answer of `POST /v1/ping`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PingResponse {
    /// The peer.
    pub peer: PeerId,
    /// Round-trip time in milliseconds.
    pub rtt_ms: f64,
}

/// Body of `POST /v1/dial`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DialRequest {
    /// The peer's id; the connection fails unless the remote proves it holds this key.
    pub peer: PeerId,
    /// Where to reach it.
    pub addr: SocketAddr,
}

/// Body of `POST /v1/dht/values`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PutValueRequest {
    /// The name (at most 64 bytes, no control characters).
    pub name: String,
    /// The value (at most 1024 bytes).
    pub value: String,
}

/// Answer of `POST /v1/dht/values`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PutValueResponse {
    /// The signer: this node.
    pub publisher: PeerId,
    /// The name.
    pub name: String,
    /// The record's sequence number.
    pub seq: u64,
    /// Nodes that acknowledged storing it.
    pub stored: usize,
}

/// A value read from the DHT.
#[derive(Debug, Serialize, Deserialize)]
pub struct ValueView {
    /// Who signed it.
    pub publisher: PeerId,
    /// Its name.
    pub name: String,
    /// The value as text, if it is UTF-8.
    pub value: Option<String>,
    /// The value in hex.
    pub value_hex: String,
    /// Sequence number.
    pub seq: u64,
    /// Expiry, UNIX seconds.
    pub expires: u64,
}

/// A peer's signed record, as found in the DHT.
#[derive(Debug, Serialize, Deserialize)]
pub struct PeerRecordView {
    /// The peer.
    pub peer: PeerId,
    /// Where to dial it.
    pub addrs: Vec<SocketAddr>,
    /// Relays through which it can be reached.
    pub relays: Vec<PeerId>,
    /// Sequence number.
    pub seq: u64,
    /// Expiry, UNIX seconds.
    pub expires: u64,
}

/// Percent-encodes `s` for use as one URL path segment.
pub fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Clone)]
struct ApiState {
    node: NodeHandle,
    token: String,
    /// Where vouches are saved (`None`: not saved, e.g. an embedded node without one).
    data_dir: Option<spore_store::DataDir>,
    /// Held while the vouches are read back and saved.
    vouches_saved: Arc<tokio::sync::Mutex<()>>,
    holders: Arc<topics::Holders>,
    /// Permits for searches running through the API ([`search::MAX_SEARCHES`]).
    searches: Arc<tokio::sync::Semaphore>,
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// The API's routes, with bearer-token authentication on all of them. Vouches are saved in
/// `data_dir`, if given.
pub fn router(node: NodeHandle, token: String, data_dir: Option<spore_store::DataDir>) -> Router {
    let state = ApiState {
        node,
        token,
        data_dir,
        vouches_saved: Arc::default(),
        holders: Arc::default(),
        searches: Arc::new(tokio::sync::Semaphore::new(search::MAX_SEARCHES)),
    };
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/ping", post(ping))
        .route("/v1/dial", post(dial))
        .route("/v1/dht/values", post(put_value))
        .route("/v1/dht/values/{publisher}/{name}", get(get_value))
        .route("/v1/dht/peers/{peer}", get(find_peer))
        .route("/v1/topics", get(topics::list))
        .route(
            "/v1/topics/{topic}",
            put(topics::subscribe).delete(topics::unsubscribe),
        )
        .route(
            "/v1/topics/{topic}/messages",
            post(topics::publish).get(topics::stream),
        )
        .route("/v1/search", post(search::search))
        .route("/v1/shared", put(search::share))
        .route("/v1/shared/{content}", delete(search::unshare))
        .route("/v1/overlay", get(search::overlay))
        .route("/v1/docs", post(docs::create))
        .route("/v1/docs/join", post(docs::join))
        .route("/v1/docs/{doc}", get(docs::get))
        .route("/v1/docs/{doc}/ticket", get(docs::ticket))
        .route("/v1/docs/{doc}/edits", post(docs::edit))
        .route("/v1/docs/{doc}/writers", post(docs::add_writer))
        .route("/v1/docs/{doc}/closed", put(docs::close))
        .route("/v1/docs/{doc}/events", get(docs::events))
        .route("/v1/trust", get(trust::show))
        .route(
            "/v1/trust/vouches/{peer}",
            put(trust::vouch).delete(trust::revoke),
        )
        .route("/v1/trust/chains/{peer}", get(trust::chain))
        .route("/v1/topics/{topic}/closed", put(trust::close_topic))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: NodeHandle,
    token: String,
    data_dir: Option<spore_store::DataDir>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node, token, data_dir))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn authenticate(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => {
            Ok(next.run(request).await)
        }
        _ => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see api.token in the node's data directory)".into(),
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn status(State(s): State<ApiState>) -> Result<Json<spore_net::Status>, ApiError> {
    s.node.status().await.map(Json).map_err(unavailable)
}

async fn peers(State(s): State<ApiState>) -> Result<Json<Vec<PeerView>>, ApiError> {
    let peers = s.node.peers().await.map_err(unavailable)?;
    let standings: std::collections::BTreeMap<PeerId, f64> = s
        .node
        .reputation()
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|(peer, standing)| (peer, standing.score))
        .collect();
    let credits: std::collections::BTreeMap<PeerId, CreditView> = s
        .node
        .ledger()
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|e| {
            let t = e.totals;
            let credit = CreditView {
                uploaded: t.uploaded,
                downloaded: t.downloaded,
                receipted: t.receipted,
            };
            (e.peer, credit)
        })
        .collect();
    let views = peers.into_iter().map(|p| {
        let reputation = standings.get(&p.peer).copied();
        let credit = credits.get(&p.peer).copied();
        let mut view = PeerView::from(p);
        view.reputation = reputation.unwrap_or(view.reputation);
        view.credit = credit.unwrap_or_default();
        view
    });
    Ok(Json(views.collect()))
}

async fn ping(
    State(s): State<ApiState>,
    Json(req): Json<PingRequest>,
) -> Result<Json<PingResponse>, ApiError> {
    let rtt = s.node.ping(req.peer).await.map_err(|e| match e {
        spore_net::RequestError::NotConnected(_) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
        spore_net::RequestError::Timeout(_) => ApiError(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        e => unavailable(e),
    })?;
    Ok(Json(PingResponse {
        peer: req.peer,
        rtt_ms: rtt.as_secs_f64() * 1e3,
    }))
}

async fn dial(
    State(s): State<ApiState>,
    Json(req): Json<DialRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.node
        .dial(req.peer, req.addr)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Json(serde_json::json!({ "peer": req.peer })))
}

fn refused(e: spore_net::RequestError) -> ApiError {
    match e {
        spore_net::RequestError::Refused(msg) => ApiError(StatusCode::BAD_REQUEST, msg),
        e => unavailable(e),
    }
}

fn parse_peer(text: &str) -> Result<PeerId, ApiError> {
    text.parse()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid peer id: {e}")))
}

async fn put_value(
    State(s): State<ApiState>,
    Json(req): Json<PutValueRequest>,
) -> Result<Json<PutValueResponse>, ApiError> {
    let value = bytes::Bytes::from(req.value.into_bytes());
    let (result, _) = s.node.put_value(&req.name, value).await.map_err(refused)?;
    let QueryResult::PutValue { seq, stored, .. } = result else {
        return Err(unavailable("unexpected lookup result"));
    };
    let publisher = s.node.peer_id();
    Ok(Json(PutValueResponse {
        publisher,
        name: req.name,
        seq,
        stored,
    }))
}

async fn get_value(
    State(s): State<ApiState>,
    Path((publisher, name)): Path<(String, String)>,
) -> Result<Json<ValueView>, ApiError> {
    let publisher = parse_peer(&publisher)?;
    let (result, _) = s.node.get_value(publisher, &name).await.map_err(refused)?;
    match result {
        QueryResult::GetValue {
            record: Some(r), ..
        } => Ok(Json(ValueView {
            publisher: *r.publisher(),
            name: r.name().to_string(),
            value: std::str::from_utf8(r.value()).ok().map(String::from),
            value_hex: r.value().iter().map(|b| format!("{b:02x}")).collect(),
            seq: r.seq(),
            expires: r.expires(),
        })),
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no value {publisher}/{name} found"),
        )),
    }
}

async fn find_peer(
    State(s): State<ApiState>,
    Path(peer): Path<String>,
) -> Result<Json<PeerRecordView>, ApiError> {
    let peer = parse_peer(&peer)?;
    let (result, _) = s.node.find_peer(peer).await.map_err(refused)?;
    match result {
        QueryResult::FindPeer {
            record: Some(r), ..
        } => Ok(Json(PeerRecordView {
            peer: *r.peer(),
            addrs: r.addrs().to_vec(),
            relays: r.relays().to_vec(),
            seq: r.seq(),
            expires: r.expires(),
        })),
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no record of {peer} found"),
        )),
    }
}

/// A client for a node's API, found through its data directory.
#[derive(Debug)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// Connects to the node whose data directory is `dir`.
    pub fn from_data_dir(dir: &spore_store::DataDir) -> Result<Self> {
        let addr = dir.read_api_addr()?.with_context(|| {
            format!(
                "no running node found: {} has no api.addr; start one with `spore node`",
                dir.path().display()
            )
        })?;
        let token = dir.api_token()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .context("cannot build HTTP client")?;
        Ok(Self {
            base: format!("http://{addr}"),
            token,
            http,
        })
    }

    /// `GET path`, decoded from JSON.
    pub async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T> {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// `PUT path` with no body, decoded from JSON.
    pub async fn put<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T> {
        let request = self.http.put(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// `PUT path` with a JSON body, decoded from JSON.
    pub async fn put_json<B: Serialize, T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let request = self.http.put(format!("{}{path}", self.base)).json(body);
        self.send(request).await
    }

    /// `DELETE path`, decoded from JSON.
    pub async fn delete<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T> {
        let request = self.http.delete(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// `GET path` as a stream of server-sent events, read for as long as the node sends them.
    pub async fn events(&self, path: &str) -> Result<EventStream> {
        // The client's overall timeout would cut the stream; only connecting is timed.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .context("cannot build HTTP client")?;
        let request = http
            .get(format!("{}{path}", self.base))
            .header(header::ACCEPT, "text/event-stream");
        let response = self.response(request).await?;
        Ok(EventStream::new(response))
    }

    /// `POST path` with a JSON body, decoded from JSON.
    pub async fn post<B: Serialize, T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(request).await
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T> {
        self.response(request)
            .await?
            .json()
            .await
            .context("node API sent an unreadable answer")
    }

    /// Sends `request` with the token; an error unless the answer is a success.
    async fn response(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the node's API at {} (is `spore node` running?)",
                    self.base
                )
            })?;
        let status = response.status();
        if !status.is_success() {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let msg = body
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("no details");
            bail!("node API answered {status}: {msg}");
        }
        Ok(response)
    }
}
