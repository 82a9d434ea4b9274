//! The overlay routes: keyword search, the names this node shares, and the overlay's state.
//!
//! A search asks the node's overlay neighbors, which pass the query on for a few hops; every
//! node holding a name that contains all the words answers with a signed hit. `POST /v1/search`
//! waits for the answers until its timeout (default 5 s, at most 25 s) or until the node's own
//! search timeout ends the query, whichever is first, then returns them all; an empty list is an
//! answer, not an error. At most [`MAX_SEARCHES`] searches run through the API at once.
//!
//! `PUT /v1/shared` adds a name to the index the node answers searches from: a name (1 to 256
//! bytes, no control characters), the BLAKE3 hash of the content it stands for, and the
//! content's size. The node only announces the name; serving the content is the application's
//! business. The index lives in memory: a restarted node shares nothing until told again.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use spore_core::gossip::{SearchError, ShareError};
use spore_net::{OverlayStatus, RequestError, SearchHit};

use super::{ApiError, ApiState, unavailable};

/// How long `POST /v1/search` waits when the request does not say.
pub const DEFAULT_SEARCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait `POST /v1/search` accepts (the CLI's HTTP client gives up after 30 s).
pub const MAX_SEARCH_TIMEOUT: Duration = Duration::from_secs(25);
/// Most searches the API runs at once; more are refused with 503.
pub const MAX_SEARCHES: usize = 16;

/// Body of `POST /v1/search`: the words, as a list or as one text split at whitespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SearchRequest {
    /// The words a name must all contain (case-insensitive): 1 to 8, each at most 64 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<String>>,
    /// The words as one text, e.g. `"holiday photos"`; instead of `words`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// How long to wait for answers, in milliseconds [default: 5000, at most 25000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl SearchRequest {
    /// The words searched for.
    pub fn words(&self) -> Result<Vec<String>, String> {
        match (&self.words, &self.query) {
            (Some(_), Some(_)) => Err("give either `words` or `query`, not both".into()),
            (Some(words), None) => Ok(words.clone()),
            (None, Some(text)) => Ok(text.split_whitespace().map(String::from).collect()),
            (None, None) => Err("give the words to search for in `words` or `query`".into()),
        }
    }

    /// How long to wait for answers.
    pub fn timeout(&self) -> Result<Duration, String> {
        let timeout = self
            .timeout_ms
            .map_or(DEFAULT_SEARCH_TIMEOUT, Duration::from_millis);
        if timeout > MAX_SEARCH_TIMEOUT {
            return Err(format!(
                "timeout_ms {} is longer than the {} allowed",
                timeout.as_millis(),
                MAX_SEARCH_TIMEOUT.as_millis()
            ));
        }
        Ok(timeout)
    }
}

/// Answer of `POST /v1/search`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchResponse {
    /// The words searched for.
    pub words: Vec<String>,
    /// The hits, in the order they arrived: name, content (64 hex digits), size, responder
    /// and its addresses. Empty if nobody answered in time.
    pub hits: Vec<SearchHit>,
}

/// Body of `PUT /v1/shared`, and its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedName {
    /// The name searches match against: 1 to 256 bytes, no control characters.
    pub name: String,
    /// The BLAKE3 hash of the content, in hex (64 digits). One name per content: sharing a
    /// content again renames it.
    pub content: String,
    /// The content's size in bytes.
    pub size: u64,
}

/// Answer of `DELETE /v1/shared/{content}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnsharedView {
    /// The content (64 hex digits) no longer shared.
    pub content: String,
}

/// `content` (64 hex digits, either case) as bytes.
pub fn parse_content(text: &str) -> Result<[u8; 32], String> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok());
    bytes.ok_or_else(|| format!("content must be 64 hex digits (a BLAKE3 hash), got {text:?}"))
}

fn bad_request(msg: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg)
}

fn overlay_error(e: RequestError) -> ApiError {
    match e {
        RequestError::Search(SearchError::NoPeers) => ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "no overlay neighbors to search through yet (is the node connected to others?)".into(),
        ),
        RequestError::Search(e @ SearchError::Disabled) => {
            ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        RequestError::Search(e) => bad_request(e.to_string()),
        RequestError::Share(e @ ShareError::Full(_)) => {
            ApiError(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
        }
        RequestError::Share(e) => bad_request(e.to_string()),
        e => unavailable(e),
    }
}

/// `POST /v1/search`
pub(super) async fn search(
    State(s): State<ApiState>,
    Json(req): Json<SearchRequest>,
) -> Result<Json<SearchResponse>, ApiError> {
    let words = req.words().map_err(bad_request)?;
    let timeout = req.timeout().map_err(bad_request)?;
    let Ok(_permit) = s.searches.clone().try_acquire_owned() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_SEARCHES} searches are running already; try again shortly"),
        ));
    };
    let hits = s
        .node
        .search(words.clone(), timeout)
        .await
        .map_err(overlay_error)?;
    Ok(Json(SearchResponse { words, hits }))
}

/// `PUT /v1/shared`
pub(super) async fn share(
    State(s): State<ApiState>,
    Json(req): Json<SharedName>,
) -> Result<Json<SharedName>, ApiError> {
    let content = parse_content(&req.content).map_err(bad_request)?;
    s.node
        .share_name(&req.name, content, req.size)
        .await
        .map_err(overlay_error)?;
    Ok(Json(SharedName {
        content: data_encoding::HEXLOWER.encode(&content),
        ..req
    }))
}

/// `DELETE /v1/shared/{content}`
pub(super) async fn unshare(
    State(s): State<ApiState>,
    Path(content): Path<String>,
) -> Result<Json<UnsharedView>, ApiError> {
    let bytes = parse_content(&content).map_err(bad_request)?;
    let content = data_encoding::HEXLOWER.encode(&bytes);
    if !s.node.unshare_name(bytes).await.map_err(unavailable)? {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no name is shared for {content}"),
        ));
    }
    Ok(Json(UnsharedView { content }))
}

/// `GET /v1/overlay`
pub(super) async fn overlay(State(s): State<ApiState>) -> Result<Json<OverlayStatus>, ApiError> {
    let status = s.node.status().await.map_err(unavailable)?;
    Ok(Json(status.overlay))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_give_words_one_way_and_a_bounded_timeout() {
        let listed: SearchRequest =
            serde_json::from_str(r#"{"words": ["Holiday", "photos"]}"#).unwrap();
        assert_eq!(listed.words().unwrap(), ["Holiday", "photos"]);
        assert_eq!(listed.timeout().unwrap(), DEFAULT_SEARCH_TIMEOUT);
        let text: SearchRequest =
            serde_json::from_str(r#"{"query": "  holiday\tphotos ", "timeout_ms": 1500}"#).unwrap();
        assert_eq!(text.words().unwrap(), ["holiday", "photos"]);
        assert_eq!(text.timeout().unwrap(), Duration::from_millis(1500));
        let both: SearchRequest =
            serde_json::from_str(r#"{"words": ["a"], "query": "b", "timeout_ms": 99000}"#).unwrap();
        assert!(both.words().unwrap_err().contains("not both"));
        assert!(both.timeout().unwrap_err().contains("25000"));
        assert!(SearchRequest::default().words().is_err());
    }

    #[test]
    fn content_is_64_hex_digits() {
        assert_eq!(parse_content(&"aB".repeat(32)).unwrap(), [0xab; 32]);
        assert!(parse_content("abcd").is_err());
        assert!(parse_content(&"zz".repeat(32)).is_err());
        assert!(parse_content(&"ab".repeat(33)).is_err());
    }
}
