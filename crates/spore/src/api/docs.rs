//! Documents through the API: create, join by ticket, read, edit, admit writers, watch.
//!
//! A document is named by its id (text form of [`DocId`]). Its state is shown as the map
//! [`Document::render`](spore_core::doc::Document::render) gives: `"Kind:key"` → value, e.g.
//! `"Register:title"`, `"Counter:votes"`, `"Set:tags"`, `"Text:notes"`. Edits are JSON objects
//! ([`EditRequest`]); a batch of them becomes one signed change.
//!
//! A *document ticket* (`doc…`, [`DocTicket`]) carries the owner-signed access list and where
//! the node that made it listens: `POST /v1/docs/join` replicates the document from there. The
//! owner admits writers with `POST /v1/docs/{doc}/writers`; everyone else reads.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::str::FromStr;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{self, KeepAlive, Sse};
use futures_util::stream::Stream;
use serde::{Deserialize, Serialize};
use spore_core::PeerId;
use spore_core::doc::sync::SyncError;
use spore_core::doc::{Access, DocId, Document, Edit, Value};
use spore_core::node::Event;
use spore_net::RequestError;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, ApiState};

/// Most edits in one request.
pub const MAX_EDITS: usize = 1024;

/// The text every document ticket starts with.
pub const TICKET_PREFIX: &str = "doc";
/// Most addresses in a document ticket.
const MAX_TICKET_ADDRS: usize = 16;

/// A document ticket: the access list (signed by the owner; it names the document) and a peer
/// that replicates it, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocTicket {
    /// The document's access list.
    pub access: Access,
    /// A replica to sync from.
    pub peer: PeerId,
    /// Where it listens.
    pub addrs: Vec<SocketAddr>,
}

impl std::fmt::Display for DocTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::ticket::to_text(TICKET_PREFIX, self)?)
    }
}

impl FromStr for DocTicket {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ticket: DocTicket =
            crate::ticket::from_text(TICKET_PREFIX, s).map_err(|e| e.to_string())?;
        if ticket.addrs.len() > MAX_TICKET_ADDRS {
            return Err(format!(
                "the ticket is invalid: {} addresses, more than {MAX_TICKET_ADDRS}",
                ticket.addrs.len()
            ));
        }
        ticket
            .access
            .verify()
            .map_err(|e| format!("the ticket's access list is not validly signed: {e}"))?;
        Ok(ticket)
    }
}

/// One edit, as JSON: `{"op": "set", "key": "title", "value": "Hello"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum EditRequest {
    /// Write a register (last writer wins).
    Set {
        /// The key.
        key: String,
        /// A string, integer, boolean or null.
        value: serde_json::Value,
    },
    /// Add to a counter (may be negative).
    Increment {
        /// The key.
        key: String,
        /// The amount.
        by: i64,
    },
    /// Add an element to a set.
    Add {
        /// The key.
        key: String,
        /// The element.
        value: serde_json::Value,
    },
    /// Remove an element from a set.
    Remove {
        /// The key.
        key: String,
        /// The element.
        value: serde_json::Value,
    },
    /// Insert text at a character position.
    Insert {
        /// The key.
        key: String,
        /// Position, in characters (Unicode scalar values).
        pos: usize,
        /// The text.
        text: String,
    },
    /// Delete characters.
    Delete {
        /// The key.
        key: String,
        /// Position, in characters.
        pos: usize,
        /// How many.
        len: usize,
    },
}

fn value(v: serde_json::Value) -> Result<Value, String> {
    Ok(match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Number(n) => Value::Int(
            n.as_i64()
                .ok_or_else(|| format!("{n} is not a 64-bit integer"))?,
        ),
        other => return Err(format!("{other} is not a string, integer, boolean or null")),
    })
}

impl EditRequest {
    /// The document edit.
    pub fn to_edit(self) -> Result<Edit, String> {
        Ok(match self {
            EditRequest::Set { key, value: v } => Edit::Set(key, value(v)?),
            EditRequest::Increment { key, by } => Edit::Increment(key, by),
            EditRequest::Add { key, value: v } => Edit::Add(key, value(v)?),
            EditRequest::Remove { key, value: v } => Edit::Remove(key, value(v)?),
            EditRequest::Insert { key, pos, text } => Edit::Insert(key, pos, text),
            EditRequest::Delete { key, pos, len } => Edit::Delete(key, pos, len),
        })
    }
}

/// A document as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocView {
    /// Its id.
    pub doc: String,
    /// Its owner.
    pub owner: PeerId,
    /// Writers not revoked.
    pub writers: Vec<PeerId>,
    /// Changes applied (folded into the checkpoint or in the log).
    pub changes: u64,
    /// Of those, changes still in the log (not folded into a checkpoint).
    #[serde(default)]
    pub log: usize,
    /// The number of the owner's checkpoint the log was last folded into (0: none yet).
    #[serde(default)]
    pub checkpoint: u64,
    /// Bytes the document takes: the checkpoint's state and the log (what the quota counts).
    #[serde(default)]
    pub bytes: usize,
    /// Its state: `"Kind:key"` → value.
    pub entries: BTreeMap<String, String>,
}

impl DocView {
    fn of(d: &Document) -> DocView {
        DocView {
            doc: d.id().to_string(),
            owner: *d.access().owner(),
            writers: d
                .access()
                .writers()
                .iter()
                .filter(|w| w.until.is_none())
                .map(|w| w.peer)
                .collect(),
            changes: d.applied(),
            log: d.len(),
            checkpoint: d.checkpoint().map_or(0, |c| c.number()),
            bytes: d.size(),
            entries: d.render(),
        }
    }
}

/// The answer to creating or joining a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocCreated {
    /// The document's id.
    pub doc: String,
    /// A ticket others join it with.
    pub ticket: String,
}

/// `POST /v1/docs/join`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The ticket.
    pub ticket: String,
}

/// `POST /v1/docs/{doc}/writers`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriterRequest {
    /// The peer to admit as a writer.
    pub peer: PeerId,
}

fn doc_error(e: RequestError) -> ApiError {
    let status = match &e {
        RequestError::Doc(SyncError::UnknownDoc) => StatusCode::NOT_FOUND,
        RequestError::Doc(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError(status, e.to_string())
}

fn parse_doc(doc: &str) -> Result<DocId, ApiError> {
    doc.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{doc:?} is not a document id"),
        )
    })
}

async fn ticket_for(s: &ApiState, doc: DocId) -> Result<String, ApiError> {
    let d = s
        .node
        .doc_get(doc)
        .await
        .map_err(doc_error)?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no document {doc}")))?;
    let ticket = DocTicket {
        access: d.access().clone(),
        peer: s.node.peer_id(),
        addrs: crate::share::node_ticket_addrs(&s.node).await,
    };
    Ok(ticket.to_string())
}

/// `POST /v1/docs`: a new document owned by this node.
pub(super) async fn create(State(s): State<ApiState>) -> Result<Json<DocCreated>, ApiError> {
    let nonce = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
    let doc = s.node.doc_create(nonce).await.map_err(doc_error)?;
    let ticket = ticket_for(&s, doc).await?;
    Ok(Json(DocCreated {
        doc: doc.to_string(),
        ticket,
    }))
}

/// `POST /v1/docs/join`: replicate the document a ticket names.
pub(super) async fn join(
    State(s): State<ApiState>,
    Json(req): Json<JoinRequest>,
) -> Result<Json<DocCreated>, ApiError> {
    let ticket: DocTicket = req
        .ticket
        .parse()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let mut reached = false;
    for addr in &ticket.addrs {
        if s.node.dial(ticket.peer, *addr).await.is_ok() {
            reached = true;
            break;
        }
    }
    if !reached && ticket.peer != s.node.peer_id() {
        return Err(ApiError(
            StatusCode::BAD_GATEWAY,
            format!(
                "cannot reach the ticket's peer {} at {:?}",
                ticket.peer, ticket.addrs
            ),
        ));
    }
    let doc = s
        .node
        .doc_open(ticket.access, vec![ticket.peer])
        .await
        .map_err(doc_error)?;
    let ticket = ticket_for(&s, doc).await?;
    Ok(Json(DocCreated {
        doc: doc.to_string(),
        ticket,
    }))
}

/// `GET /v1/docs/{doc}`
pub(super) async fn get(
    State(s): State<ApiState>,
    Path(doc): Path<String>,
) -> Result<Json<DocView>, ApiError> {
    let id = parse_doc(&doc)?;
    let d = s.node.doc_get(id).await.map_err(doc_error)?;
    d.map(|d| Json(DocView::of(&d)))
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no document {doc}")))
}

/// `GET /v1/docs/{doc}/ticket`
pub(super) async fn ticket(
    State(s): State<ApiState>,
    Path(doc): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_doc(&doc)?;
    let ticket = ticket_for(&s, id).await?;
    Ok(Json(serde_json::json!({ "ticket": ticket })))
}

/// `POST /v1/docs/{doc}/edits`: a batch of edits as one signed change.
pub(super) async fn edit(
    State(s): State<ApiState>,
    Path(doc): Path<String>,
    Json(edits): Json<Vec<EditRequest>>,
) -> Result<Json<DocView>, ApiError> {
    let id = parse_doc(&doc)?;
    if edits.is_empty() || edits.len() > MAX_EDITS {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("give 1 to {MAX_EDITS} edits"),
        ));
    }
    let edits = edits
        .into_iter()
        .map(EditRequest::to_edit)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    s.node.doc_edit(id, edits).await.map_err(doc_error)?;
    get(State(s), Path(doc)).await
}

/// `POST /v1/docs/{doc}/writers`: the owner admits a writer.
pub(super) async fn add_writer(
    State(s): State<ApiState>,
    Path(doc): Path<String>,
    Json(req): Json<WriterRequest>,
) -> Result<Json<DocView>, ApiError> {
    let id = parse_doc(&doc)?;
    s.node
        .doc_add_writer(id, req.peer)
        .await
        .map_err(doc_error)?;
    get(State(s), Path(doc)).await
}

/// Body and answer of `PUT /v1/docs/{doc}/closed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClosedDoc {
    /// Peers must be trusted within this many vouches (0: only this node) to sync the document
    /// with this node or send it live changes.
    pub depth: u8,
}

pub(super) async fn close(
    State(s): State<ApiState>,
    Path(doc): Path<String>,
    Json(body): Json<ClosedDoc>,
) -> Result<Json<ClosedDoc>, ApiError> {
    let id = parse_doc(&doc)?;
    super::trust::check_depth(body.depth)?;
    s.node.doc_close(id, body.depth).await.map_err(doc_error)?;
    Ok(Json(body))
}

/// `GET /v1/docs/{doc}/events`: server-sent events, `state` ([`DocView`]) now and after every
/// change that arrives from other replicas.
pub(super) async fn events(
    State(s): State<ApiState>,
    Path(doc): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<sse::Event, Infallible>>>, ApiError> {
    let id = parse_doc(&doc)?;
    let events = s.node.subscribe();
    let first = s
        .node
        .doc_get(id)
        .await
        .map_err(doc_error)?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no document {doc}")))?;
    let first = DocView::of(&first);
    let node = s.node.clone();
    let stream = futures_util::stream::unfold(
        (events, node, Some(first)),
        move |(mut events, node, first)| async move {
            if let Some(view) = first {
                let e = sse::Event::default().event("state").json_data(&view).ok()?;
                return Some((Ok(e), (events, node, None)));
            }
            loop {
                match events.recv().await {
                    Ok(Event::Doc(spore_core::doc::sync::Event::Changed { doc })) if doc == id => {}
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                }
                let d = node.doc_get(id).await.ok().flatten()?;
                let e = sse::Event::default()
                    .event("state")
                    .json_data(DocView::of(&d))
                    .ok()?;
                return Some((Ok(e), (events, node, None)));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tickets_round_trip_and_refuse_damage() {
        let owner = spore_core::Keypair::generate(&mut rand_core::OsRng);
        let doc = Document::create(&owner, 7, spore_core::doc::Limits::default());
        let ticket = DocTicket {
            access: doc.access().clone(),
            peer: owner.peer_id(),
            addrs: vec!["127.0.0.1:7070".parse().unwrap()],
        };
        let text = ticket.to_string();
        assert_eq!(text.parse::<DocTicket>().unwrap(), ticket);
        assert!("blobxyz".parse::<DocTicket>().is_err());
        assert!(text[..text.len() - 8].parse::<DocTicket>().is_err());
    }

    #[test]
    fn edits_read_from_json() {
        let e: Vec<EditRequest> = serde_json::from_str(
            r#"[{"op":"set","key":"t","value":"x"},{"op":"increment","key":"n","by":-2},
                {"op":"insert","key":"s","pos":0,"text":"hi"}]"#,
        )
        .unwrap();
        let edits: Vec<Edit> = e.into_iter().map(|e| e.to_edit().unwrap()).collect();
        assert_eq!(edits[0], Edit::Set("t".into(), Value::Str("x".into())));
        assert_eq!(edits[1], Edit::Increment("n".into(), -2));
        let bad = EditRequest::Set {
            key: "t".into(),
            value: serde_json::json!([1]),
        };
        assert!(bad.to_edit().is_err());
    }
}
