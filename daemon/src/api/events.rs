//! `GET /api/v1/events`: the registry's events as they commit, as Server-Sent Events (the
//! console's live view; `curl -N` works too). Backed by the store's feed (`store/feed.rs`),
//! so the stream is the same history `GET /api/v1/nodes/{name}/events` serves, in sequence
//! order. Each message's `id` is its event number: a client that reconnects with
//! `Last-Event-ID` (browsers do it by themselves), or `?after=N`, gets every event after it,
//! none twice — across daemon restarts too. A position the daemon cannot replay (older than
//! it keeps, or from another registry) gets a `reset` message: reload the node list, then
//! continue after its `head`.

use std::collections::VecDeque;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::nodes::{EventResponse, NodeResponse, event_response, node_response};
use super::{ApiError, AppState};
use crate::conns::BusyWhile;
use crate::store::{FeedChange, FeedItem, Since};

/// Events read back from disk for one reconnecting client, at most (beyond: `reset`).
const REPLAY_LIMIT: usize = 20_000;
/// A comment line this often keeps proxies and the browser from timing the stream out.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/events", get(stream))
}

/// One message of the stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeedMessage {
    pub seq: u64,
    pub mac: String,
    pub hostname: Option<String>,
    /// The node as it is now (`null` once removed).
    pub node: Option<NodeResponse>,
    /// The event (`null` for a removal).
    pub event: Option<EventResponse>,
    pub removed: bool,
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    after: Option<u64>,
}

/// Where a client resumes: `Last-Event-ID` wins over `?after=`; neither: from now.
fn start_position(state: &AppState, headers: &HeaderMap, query: &StreamQuery) -> u64 {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(query.after)
        .unwrap_or_else(|| state.store.feed_head())
}

fn message(state: &AppState, item: &FeedItem) -> String {
    let node = state
        .store
        .node_by_id(item.node_id)
        .map(|n| node_response(n, &state.config.flatcar.install_disk));
    let (event, removed) = match &item.change {
        FeedChange::Event(event) => (Some(event_response(event.clone())), false),
        FeedChange::Removed { .. } => (None, true),
    };
    let body = FeedMessage {
        seq: item.seq,
        mac: item.mac.to_string(),
        hostname: item.hostname.clone(),
        node: if removed { None } else { node },
        event,
        removed,
    };
    let json = serde_json::to_string(&body).expect("API types serialise");
    format!("id: {}\nevent: node\ndata: {json}\n\n", item.seq)
}

struct Stream {
    state: AppState,
    cursor: u64,
    queue: VecDeque<String>,
    head: tokio::sync::watch::Receiver<u64>,
    /// The console session the stream was opened with (its key and expiry): the stream ends
    /// with it (logout, revocation, a rotated token, expiry). `None`: opened with the token.
    session: Option<([u8; 32], time::OffsetDateTime)>,
    sessions: tokio::sync::watch::Receiver<u64>,
    _busy: Option<BusyWhile>,
}

impl Stream {
    /// Queues what was released after the cursor.
    fn fill(&mut self, since: Since) {
        match since {
            Since::Items(items) => {
                for item in items {
                    self.queue.push_back(message(&self.state, &item));
                    self.cursor = item.seq;
                }
            }
            Since::Reset { head } => {
                self.cursor = head;
                self.queue.push_back(format!(
                    "id: {head}\nevent: reset\ndata: {{\"head\":{head}}}\n\n"
                ));
            }
        }
    }

    /// Whether the stream's session still exists (a read of the registry's sessions tree,
    /// only when some session ended).
    fn session_lives(&self) -> bool {
        self.session
            .is_none_or(|(key, _)| self.state.store.session(&key).ok().flatten().is_some())
    }

    async fn next(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, Stream)> {
        loop {
            if let Some(text) = self.queue.pop_front() {
                return Some((Ok(Bytes::from(text)), self));
            }
            self.head.mark_unchanged();
            match self.state.store.feed_since(self.cursor, REPLAY_LIMIT) {
                Ok(since) => self.fill(since),
                Err(error) => {
                    tracing::warn!(%error, "the event stream could not read the registry");
                    return None;
                }
            }
            if !self.queue.is_empty() {
                continue;
            }
            let shutdown = self.state.shutdown.clone();
            // Until the session's end (never, for the token).
            let session_left = self.session.map_or(Duration::MAX, |(_, expires)| {
                (expires - time::OffsetDateTime::now_utc())
                    .try_into()
                    .unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                changed = self.head.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep(KEEPALIVE) => {
                    return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), self));
                }
                _ = self.sessions.changed(), if self.session.is_some() => {
                    if !self.session_lives() {
                        return None;
                    }
                }
                () = tokio::time::sleep(session_left), if self.session.is_some() => return None,
                () = shutdown.cancelled() => return None,
            }
        }
    }
}

async fn stream(
    State(state): State<AppState>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
    auth: Option<axum::Extension<super::session::Auth>>,
    busy: Option<axum::Extension<BusyWhile>>,
) -> Result<Response, ApiError> {
    let cursor = start_position(&state, &headers, &query);
    let head = state.store.feed_subscribe();
    let sessions = state.store.sessions_subscribe();
    let session = match auth.map(|a| a.0) {
        Some(super::session::Auth::Session) => {
            let found = super::session::session(&state, &headers).await?;
            let key = super::session::cookie_secret(&headers).map(super::session::session_key);
            match (found, key) {
                (Some(s), Some(key)) => Some((key, s.expires)),
                // Ended between the authentication and here.
                _ => {
                    return Err(ApiError::unauthorized(
                        "the console session has ended (expired or logged out): log in again",
                    ));
                }
            }
        }
        _ => None,
    };
    let mut first = Stream {
        state: state.clone(),
        cursor,
        queue: VecDeque::new(),
        head,
        session,
        sessions,
        _busy: busy.map(|b| b.0),
    };
    // The backlog may be read from disk: off the async workers.
    let store = state.store.clone();
    let backlog = tokio::task::spawn_blocking(move || store.feed_since(cursor, REPLAY_LIMIT))
        .await
        .map_err(|e| ApiError::internal("reading the event history", e))??;
    // The browser retries after 1 s when the daemon goes away (a restart).
    first.queue.push_back("retry: 1000\n: connected\n\n".into());
    first.fill(backlog);
    let body = Body::from_stream(futures_lite::stream::unfold(first, Stream::next));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response())
}
