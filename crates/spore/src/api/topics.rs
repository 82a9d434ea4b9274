//! The pub/sub routes: subscribe, unsubscribe, publish, list topics, and a server-sent-events
//! stream of a topic's messages.
//!
//! The node is subscribed to a topic while it was subscribed with `PUT` (until `DELETE`) or
//! while at least one event stream on it is open: opening a stream subscribes, and closing the
//! last one unsubscribes unless a `PUT` holds the topic. The server notices a client that went
//! away when it next writes to it: a message or the keep-alive comment every 15 s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{self, KeepAlive, Sse};
use futures_util::stream::Stream;
use serde::{Deserialize, Serialize};
use spore_core::PeerId;
use spore_core::node::Event;
use spore_core::pubsub::{self, PubSubError};
use spore_net::{NodeHandle, RequestError};
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, ApiState, unavailable};

/// Most event streams open at once, over all topics.
pub const MAX_STREAMS: usize = 256;

/// How message data is written in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The data is UTF-8 text, written as it is.
    #[default]
    Utf8,
    /// The data is binary, written in standard base64 (with padding).
    Base64,
}

impl Encoding {
    /// `data` as text if it is UTF-8, else in base64.
    pub fn encode(data: &[u8]) -> (String, Encoding) {
        match std::str::from_utf8(data) {
            Ok(text) => (text.to_string(), Encoding::Utf8),
            Err(_) => (data_encoding::BASE64.encode(data), Encoding::Base64),
        }
    }

    /// The bytes `text` stands for in this encoding.
    pub fn decode(self, text: &str) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Utf8 => Ok(text.as_bytes().to_vec()),
            Encoding::Base64 => data_encoding::BASE64
                .decode(text.as_bytes())
                .map_err(|e| format!("invalid base64: {e}")),
        }
    }
}

/// Body of `POST /v1/topics/{topic}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishRequest {
    /// The message: text, or base64 if `encoding` says so. At most 64 KiB once decoded.
    pub data: String,
    /// How `data` is written; text unless told otherwise.
    #[serde(default)]
    pub encoding: Encoding,
}

/// Answer of `POST /v1/topics/{topic}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishResponse {
    /// The message's id (40 hex digits).
    pub id: String,
    /// The topic.
    pub topic: String,
    /// Peers it was sent to directly; 0 means no connected peer subscribes to the topic, and
    /// nobody got it.
    pub peers: usize,
}

/// Answer of `PUT` and `DELETE /v1/topics/{topic}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriptionView {
    /// The topic.
    pub topic: String,
    /// Whether the node is now subscribed (after a `DELETE`, still so while streams are open).
    pub subscribed: bool,
    /// Event streams open on the topic.
    pub streams: usize,
}

/// One subscribed topic, in the answer of `GET /v1/topics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicView {
    /// The topic.
    pub topic: String,
    /// Peers in the node's mesh for the topic: they get every message in full.
    pub mesh_peers: usize,
    /// Connected peers subscribed to the topic.
    pub topic_peers: usize,
    /// Event streams open on the topic.
    pub streams: usize,
}

/// A message on a topic, as `GET /v1/topics/{topic}/messages` streams it (the `data` of each
/// `message` event).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageView {
    /// The message's id (40 hex digits).
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Who wrote and signed it.
    pub author: PeerId,
    /// The author's sequence number.
    pub seq: u64,
    /// The payload, as text if it is UTF-8, else in base64.
    pub data: String,
    /// How `data` is written.
    pub encoding: Encoding,
    /// The peer it arrived from.
    pub from: PeerId,
}

impl MessageView {
    /// The view of a delivered message; `None` for other pub/sub events.
    pub fn from_event(event: &pubsub::Event) -> Option<Self> {
        match event {
            pubsub::Event::Message {
                id,
                topic,
                author,
                seq,
                data,
                from,
            } => {
                let (data, encoding) = Encoding::encode(data);
                Some(Self {
                    id: id.to_string(),
                    topic: topic.clone(),
                    author: *author,
                    seq: *seq,
                    data,
                    encoding,
                    from: *from,
                })
            }
            _ => None,
        }
    }

    /// The payload's bytes.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        self.encoding.decode(&self.data)
    }
}

/// Who holds each topic's subscription: a `PUT`, open streams, or both.
#[derive(Debug, Default)]
pub(super) struct Holders {
    state: tokio::sync::Mutex<HolderState>,
}

#[derive(Debug, Default)]
struct HolderState {
    put: BTreeSet<String>,
    streams: BTreeMap<String, usize>,
}

impl HolderState {
    fn streams(&self, topic: &str) -> usize {
        self.streams.get(topic).copied().unwrap_or(0)
    }
}

/// Keeps one stream's hold on its topic; dropping it lets go (and unsubscribes if it was the
/// last holder).
struct StreamHold {
    holders: Arc<Holders>,
    node: NodeHandle,
    topic: String,
}

impl Drop for StreamHold {
    fn drop(&mut self) {
        let (holders, node) = (self.holders.clone(), self.node.clone());
        let topic = std::mem::take(&mut self.topic);
        // Streams end inside the server's tokio runtime; at process exit there is none, and
        // nothing to clean up either.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut state = holders.state.lock().await;
                let left = state.streams(&topic).saturating_sub(1);
                if left == 0 {
                    state.streams.remove(&topic);
                    if !state.put.contains(&topic) {
                        let _ = node.unsubscribe_topic(&topic).await;
                    }
                } else {
                    state.streams.insert(topic, left);
                }
            });
        }
    }
}

fn pubsub_error(e: RequestError) -> ApiError {
    match e {
        RequestError::PubSub(e) => {
            let status = match e {
                PubSubError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                PubSubError::TooManyTopics => StatusCode::CONFLICT,
                PubSubError::Disabled => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError(status, e.to_string())
        }
        e => unavailable(e),
    }
}

/// `GET /v1/topics`
pub(super) async fn list(State(s): State<ApiState>) -> Result<Json<Vec<TopicView>>, ApiError> {
    let status = s.node.status().await.map_err(unavailable)?;
    let state = s.holders.state.lock().await;
    let topics = status.pubsub.topics.into_iter().map(|t| TopicView {
        streams: state.streams(&t.topic),
        topic: t.topic,
        mesh_peers: t.mesh_peers,
        topic_peers: t.topic_peers,
    });
    Ok(Json(topics.collect()))
}

/// `PUT /v1/topics/{topic}`
pub(super) async fn subscribe(
    State(s): State<ApiState>,
    Path(topic): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let mut state = s.holders.state.lock().await;
    s.node.subscribe_topic(&topic).await.map_err(pubsub_error)?;
    state.put.insert(topic.clone());
    Ok(Json(SubscriptionView {
        streams: state.streams(&topic),
        topic,
        subscribed: true,
    }))
}

/// `DELETE /v1/topics/{topic}`
pub(super) async fn unsubscribe(
    State(s): State<ApiState>,
    Path(topic): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let mut state = s.holders.state.lock().await;
    let held = state.put.remove(&topic);
    let streams = state.streams(&topic);
    if streams == 0 {
        let was = s
            .node
            .unsubscribe_topic(&topic)
            .await
            .map_err(unavailable)?;
        if !was && !held {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("not subscribed to {topic:?}"),
            ));
        }
    }
    Ok(Json(SubscriptionView {
        topic,
        subscribed: streams > 0,
        streams,
    }))
}

/// `POST /v1/topics/{topic}/messages`
pub(super) async fn publish(
    State(s): State<ApiState>,
    Path(topic): Path<String>,
    Json(req): Json<PublishRequest>,
) -> Result<Json<PublishResponse>, ApiError> {
    let data = req
        .encoding
        .decode(&req.data)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let published = s
        .node
        .publish(&topic, data.into())
        .await
        .map_err(pubsub_error)?;
    Ok(Json(PublishResponse {
        id: published.id.to_string(),
        topic,
        peers: published.peers,
    }))
}

/// `GET /v1/topics/{topic}/messages`: `message` events with a [`MessageView`] as data, and a
/// `lagged` event (`{"missed": N}`) if this stream fell so far behind the node that it skipped
/// N of the node's events, messages on the topic among them perhaps.
pub(super) async fn stream(
    State(s): State<ApiState>,
    Path(topic): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<sse::Event, axum::Error>>>, ApiError> {
    // Listen before subscribing, so the first message cannot slip past.
    let events = s.node.subscribe();
    {
        let mut state = s.holders.state.lock().await;
        let open: usize = state.streams.values().sum();
        if open >= MAX_STREAMS {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_STREAMS} event streams are open already"),
            ));
        }
        s.node.subscribe_topic(&topic).await.map_err(pubsub_error)?;
        *state.streams.entry(topic.clone()).or_default() += 1;
    }
    let hold = StreamHold {
        holders: s.holders.clone(),
        node: s.node.clone(),
        topic,
    };
    let stream = futures_util::stream::unfold((events, hold), |(mut events, hold)| async move {
        loop {
            let event = match events.recv().await {
                Ok(Event::PubSub(e)) => match MessageView::from_event(&e) {
                    Some(m) if m.topic == hold.topic => {
                        sse::Event::default().event("message").json_data(&m)
                    }
                    _ => continue,
                },
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => sse::Event::default()
                    .event("lagged")
                    .json_data(serde_json::json!({ "missed": missed })),
                Err(RecvError::Closed) => return None,
            };
            return Some((event, (events, hold)));
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
