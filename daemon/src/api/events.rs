//! `GET /api/v1/events`: the registry's events as they commit, as Server-Sent Events (the
//! console's live view; `curl -N` works too). Backed by the store's feed (`store/feed.rs`),
//! so the stream is the same history `GET /api/v1/nodes/{name}/events` serves, in sequence
//! order. Each message's `id` is its event number: a client that reconnects with
//! `Last-Event-ID` (browsers do it by themselves), or `?after=N`, gets every event after it,
//! none twice — across daemon restarts too. A position the daemon cannot replay (more than
//! [`REPLAY_LIMIT`] events behind, or from another registry) gets a `reset` message: reload
//! the node list, then continue after its `head`.
//!
//! Bounds, so that streams cannot hurt anyone else: at most
//! [`crate::conns::Caps::event_streams`] streams are open at once (beyond, 503 with
//! `Retry-After`, while ordinary requests keep their slots); a stream reads its backlog a page
//! of [`PAGE`] events at a time, off the async workers, only when it has sent the previous
//! page, and at most [`REPLAY_READS`] pages are read from disk at once. A stream thus holds at
//! most one page in memory, and all of them together at most a page per open stream.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::nodes::{EventResponse, NodeResponse, event_response, node_response};
use super::openapi::ApiRouter;
use super::{ApiError, AppState};
use crate::conns::BusyWhile;
use crate::store::{FeedChange, FeedItem, Since};
use utoipa_axum::routes;

/// Events a reconnecting client may be behind, at most, counted when it connects (beyond:
/// `reset`, and it reloads the node list instead).
pub const REPLAY_LIMIT: u64 = 20_000;
/// Events read and rendered at once for one stream.
pub const PAGE: usize = 256;
/// Streams reading a page at once (disk reads, rendering): the rest wait their turn.
pub const REPLAY_READS: usize = 2;
/// What a client refused a stream is told to wait.
const STREAM_RETRY_SECS: u64 = 5;
/// A comment line this often keeps proxies and the browser from timing the stream out.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub(super) fn routes() -> ApiRouter {
    ApiRouter::new().routes(routes!(stream))
}

/// One message of the stream.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The stream's place under [`crate::conns::Caps::event_streams`].
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// A page of messages, rendered, and the cursor after them.
enum Page {
    Messages(Vec<String>, u64),
    Reset(u64),
}

fn reset_message(head: u64) -> String {
    format!("id: {head}\nevent: reset\ndata: {{\"head\":{head}}}\n\n")
}

/// The next page after `cursor`, read and rendered off the async workers, one of at most
/// [`REPLAY_READS`] at once.
async fn read_page(state: &AppState, cursor: u64) -> Result<Page, ApiError> {
    let permit = state
        .replay_reads
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal("reading the event history", e))?;
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        Ok(match state.store.feed_page(cursor, PAGE)? {
            Since::Items(items) => {
                let last = items.last().map_or(cursor, |i| i.seq);
                Page::Messages(items.iter().map(|i| message(&state, i)).collect(), last)
            }
            Since::Reset { head } => Page::Reset(head),
        })
    })
    .await
    .map_err(|e| ApiError::internal("reading the event history", e))?
}

impl Stream {
    /// Queues a page; whether it held anything.
    fn fill(&mut self, page: Page) -> bool {
        match page {
            Page::Messages(messages, cursor) => {
                self.cursor = cursor;
                let any = !messages.is_empty();
                self.queue.extend(messages);
                any
            }
            Page::Reset(head) => {
                self.cursor = head;
                self.queue.push_back(reset_message(head));
                true
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
            match read_page(&self.state, self.cursor).await {
                Ok(page) => {
                    if self.fill(page) {
                        continue;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error.detail, "the event stream could not read the registry");
                    return None;
                }
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

#[utoipa::path(
    get, path = "/events", tag = "events", operation_id = "event_stream",
    summary = "The registry's changes as Server-Sent Events: one `FeedMessage` per event",
    params(
        ("after" = Option<u64>, Query, description = "Resume after this sequence number (`Last-Event-ID` wins)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "The last `id:` received"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`; each `data:` is a FeedMessage", body = FeedMessage, content_type = "text/event-stream"),
        (status = 503, description = "Too many streams open", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn stream(
    State(state): State<AppState>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
    auth: Option<axum::Extension<super::session::Auth>>,
    busy: Option<axum::Extension<BusyWhile>>,
) -> Result<Response, ApiError> {
    let permit = state
        .event_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                format!(
                    "{} event streams are open already, the most this daemon serves at once; \
                 close one (a console tab) or retry later",
                    state.event_streams_cap
                ),
            )
            .retry_after(STREAM_RETRY_SECS)
        })?;
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
        _permit: permit,
    };
    // The browser retries after 1 s when the daemon goes away (a restart).
    first.queue.push_back("retry: 1000\n: connected\n\n".into());
    // The whole replay is checked against the limit before any of it is read (a count of
    // keys, off the async workers); the pages follow as the client reads.
    let store = state.store.clone();
    let backlog = tokio::task::spawn_blocking(move || store.feed_backlog(cursor))
        .await
        .map_err(|e| ApiError::internal("reading the event history", e))??;
    if backlog > REPLAY_LIMIT {
        let head = state.store.feed_head();
        tracing::info!(
            behind = backlog,
            limit = REPLAY_LIMIT,
            "an event stream asked for more history than a replay holds: reset"
        );
        first.fill(Page::Reset(head));
    }
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
