//! The trust routes: the web of trust (vouches, revocations, chains), the reputation table,
//! and closed topics.
//!
//! A vouch or a revocation changes the node's signed statement, which it stores in the DHT and
//! publishes on the trust topic; the API also saves the list in the data directory
//! (`vouches.txt`) so that a restarted node vouches for the same identities. Chains are
//! answered from the statements the node holds: a chain to an identity the node has not heard
//! of yet (its statement still being fetched) appears a moment later.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use spore_core::PeerId;
use spore_core::trust::reputation::Standing;
use spore_net::TrustStatus;

use super::{ApiError, ApiState, parse_peer, refused, unavailable};

/// Depth of `GET /v1/trust/chains/{peer}` when the query does not say.
pub const DEFAULT_DEPTH: u8 = 2;

/// Answer of `GET /v1/trust`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustView {
    /// The web of trust.
    #[serde(flatten)]
    pub trust: TrustStatus,
    /// Every peer in the reputation table, in id order.
    pub reputation: Vec<ReputationView>,
}

/// One peer of the reputation table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReputationView {
    /// The peer.
    pub peer: PeerId,
    /// Its standing: score, decayed good and bad evidence, whether it is refused.
    #[serde(flatten)]
    pub standing: Standing,
}

/// Answer of `PUT` and `DELETE /v1/trust/vouches/{peer}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VouchView {
    /// The peer vouched for or revoked.
    pub peer: PeerId,
    /// Whether this changed anything (false: vouched for already).
    pub changed: bool,
    /// The identities the node vouches for now.
    pub vouches: Vec<PeerId>,
}

/// Query of `GET /v1/trust/chains/{peer}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChainQuery {
    /// Longest chain accepted, in vouches [default: 2, at most 4].
    pub depth: Option<u8>,
}

/// Answer of `GET /v1/trust/chains/{peer}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainView {
    /// The peer asked about.
    pub peer: PeerId,
    /// The depth asked for.
    pub depth: u8,
    /// Whether a chain of at most `depth` vouches leads to it.
    pub trusted: bool,
    /// A shortest such chain, this node first and `peer` last.
    pub chain: Option<Vec<PeerId>>,
}

/// Body and answer of `PUT /v1/topics/{topic}/closed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClosedTopic {
    /// The topic (in the answer; the body may leave it out).
    #[serde(default)]
    pub topic: String,
    /// Authors must be trusted within this many vouches (0: only this node).
    pub depth: u8,
}

pub(super) async fn show(State(s): State<ApiState>) -> Result<Json<TrustView>, ApiError> {
    let trust = s.node.trust_status().await.map_err(unavailable)?;
    let reputation = s
        .node
        .reputation()
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|(peer, standing)| ReputationView { peer, standing })
        .collect();
    Ok(Json(TrustView { trust, reputation }))
}

pub(super) async fn vouch(
    State(s): State<ApiState>,
    Path(peer): Path<String>,
) -> Result<Json<VouchView>, ApiError> {
    let peer = parse_peer(&peer)?;
    let changed = s.node.trust_vouch(peer).await.map_err(refused)?;
    let vouches = save(&s).await?;
    Ok(Json(VouchView {
        peer,
        changed,
        vouches,
    }))
}

pub(super) async fn revoke(
    State(s): State<ApiState>,
    Path(peer): Path<String>,
) -> Result<Json<VouchView>, ApiError> {
    let peer = parse_peer(&peer)?;
    let changed = s.node.trust_revoke(peer).await.map_err(unavailable)?;
    if !changed {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("this node does not vouch for {peer}"),
        ));
    }
    let vouches = save(&s).await?;
    Ok(Json(VouchView {
        peer,
        changed,
        vouches,
    }))
}

pub(super) async fn chain(
    State(s): State<ApiState>,
    Path(peer): Path<String>,
    Query(query): Query<ChainQuery>,
) -> Result<Json<ChainView>, ApiError> {
    let peer = parse_peer(&peer)?;
    let depth = query.depth.unwrap_or(DEFAULT_DEPTH);
    let chain = s.node.trust_chain(peer, depth).await.map_err(refused)?;
    Ok(Json(ChainView {
        peer,
        depth,
        trusted: chain.is_some(),
        chain,
    }))
}

pub(super) async fn close_topic(
    State(s): State<ApiState>,
    Path(topic): Path<String>,
    Json(body): Json<ClosedTopic>,
) -> Result<Json<ClosedTopic>, ApiError> {
    check_depth(body.depth)?;
    s.node
        .close_topic(&topic, body.depth)
        .await
        .map_err(refused)?;
    Ok(Json(ClosedTopic {
        topic,
        depth: body.depth,
    }))
}

/// A trust depth a closed topic or document may require: at most
/// [`MAX_DEPTH`](spore_core::trust::wot::MAX_DEPTH).
pub(super) fn check_depth(depth: u8) -> Result<(), ApiError> {
    let max = spore_core::trust::wot::MAX_DEPTH;
    if depth > max {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("trust depth {depth} is beyond the limit of {max}"),
        ));
    }
    Ok(())
}

/// Saves the node's vouches in the data directory (one change at a time, so the file always
/// holds the latest list) and returns them.
async fn save(s: &ApiState) -> Result<Vec<PeerId>, ApiError> {
    let _one_at_a_time = s.vouches_saved.lock().await;
    let vouches = s.node.trust_status().await.map_err(unavailable)?.vouches;
    if let Some(dir) = &s.data_dir {
        dir.save_vouches(&vouches.iter().copied().collect())
            .map_err(|e| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the node changed its vouches but could not save them: {e}"),
                )
            })?;
    }
    Ok(vouches)
}
