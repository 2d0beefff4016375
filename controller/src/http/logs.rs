//! `/api/v1/apps/{name}/logs`: an app's output and crash reports from every live node as
//! server-sent events, live. The nodes keep the logs (bounded, per app); this merges their
//! follow streams, neutralises terminal control characters and bounds what one viewer
//! costs: a backlog tail, a text size per entry, a queue per viewer and a viewer count.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use rebeam_proto::v1 as pb;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::http::api::{neutralise, pid_id, Api, ApiError};

/// Viewers following logs at once, per server: each holds a stream to every node.
pub const MAX_VIEWERS: usize = 32;
/// Backlog entries sent when a viewer connects, by default and at most.
pub const DEFAULT_TAIL: usize = 200;
/// The most backlog a viewer may ask for.
pub const MAX_TAIL: usize = 2_000;
/// Characters of one entry's text sent; a longer one keeps its end (where a traceback's
/// exception is) behind a marker.
pub const MAX_TEXT: usize = 16 * 1024;
/// Events queued for one viewer; a slower viewer slows its node streams (gRPC flow control)
/// instead of growing memory.
const QUEUE: usize = 256;
/// Longest app name (as the manifest allows).
const MAX_APP_NAME: usize = 64;

/// Who is following logs now.
pub struct Viewers(Arc<Semaphore>);

impl Default for Viewers {
    fn default() -> Self {
        Viewers(Arc::new(Semaphore::new(MAX_VIEWERS)))
    }
}

/// Query of the log stream.
#[derive(Deserialize)]
pub struct LogQuery {
    tail: Option<usize>,
    /// Follow new entries (the default), or end after the backlog with a `done` event
    /// (`rebeam logs --json` without `-f`).
    follow: Option<bool>,
    /// Only backlog entries written at or after this wall-clock time (ms since the epoch).
    since_ms: Option<u64>,
}

/// What the log handler shares.
pub struct LogState {
    /// The API (node clients).
    pub api: Arc<Api>,
    /// The viewer bound.
    pub viewers: Viewers,
}

/// Cuts `text` to [`MAX_TEXT`] characters, keeping the end, and neutralises it.
fn bounded(text: &str) -> String {
    let n = text.chars().count();
    if n <= MAX_TEXT {
        return neutralise(text);
    }
    let tail: String = text.chars().skip(n - MAX_TEXT).collect();
    format!("[{} characters cut]…{}", n - MAX_TEXT, neutralise(&tail))
}

fn entry_event(e: &pb::LogEntry) -> Event {
    Event::default().event("log").data(
        json!({
            "seq": e.seq,
            "time_ms": e.time_ms,
            "node": e.node,
            "pid": e.pid.as_ref().map(pid_id),
            "stream": e.stream,
            "text": bounded(&e.text),
        })
        .to_string(),
    )
}

fn note(kind: &str, node: &str, error: &str) -> Event {
    Event::default()
        .event(kind)
        .data(json!({"node": node, "error": error}).to_string())
}

/// The SSE stream of app `name`'s logs.
pub async fn stream(
    State(state): State<Arc<LogState>>,
    Path(name): Path<String>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad(format!("bad query string: {}", e.body_text())))?;
    if name.is_empty() || name.len() > MAX_APP_NAME {
        return Err(ApiError::bad(format!(
            "an app name of 1 to {MAX_APP_NAME} bytes is required"
        )));
    }
    let tail = q.tail.unwrap_or(DEFAULT_TAIL);
    if tail > MAX_TAIL {
        return Err(ApiError::bad(format!("tail must be 0 to {MAX_TAIL}")));
    }
    let permit = state.viewers.0.clone().try_acquire_owned().map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy".into(),
            format!("{MAX_VIEWERS} viewers follow logs already; close one and retry"),
        )
    })?;
    let (tx, rx) = mpsc::channel::<Event>(QUEUE);
    let backlog = Backlog {
        tail,
        since_ms: q.since_ms.unwrap_or(0),
        follow: q.follow.unwrap_or(true),
    };
    tokio::spawn(feed(state.api.clone(), name, backlog, tx));
    let events = futures::stream::unfold(
        (rx, permit),
        |(mut rx, permit): (mpsc::Receiver<Event>, OwnedSemaphorePermit)| async move {
            rx.recv().await.map(|e| (Ok(e), (rx, permit)))
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// What a viewer asked of the kept entries.
struct Backlog {
    tail: usize,
    since_ms: u64,
    follow: bool,
}

/// Sends the backlog tail of every live node, then follows each node from where its
/// backlog ended, until the viewer goes away (or, not following, ends with `done`).
async fn feed(api: Arc<Api>, app: String, backlog_asked: Backlog, tx: mpsc::Sender<Event>) {
    let Backlog {
        tail,
        since_ms,
        follow: following,
    } = backlog_asked;
    let backlog = api.nodes.logs(&app).await;
    for (node, error) in &backlog.missing {
        if tx.send(note("missing", node, error)).await.is_err() {
            return;
        }
    }
    let mut from: Vec<(String, u64)> = Vec::new();
    let mut kept: Vec<pb::LogEntry> = Vec::new();
    for (node, entries) in backlog.answers {
        from.push((node, entries.iter().map(|e| e.seq).max().unwrap_or(0)));
        kept.extend(entries.into_iter().filter(|e| e.time_ms >= since_ms));
    }
    kept.sort_by_key(|e| (e.time_ms, e.seq));
    let skip = kept.len().saturating_sub(tail);
    for e in kept.iter().skip(skip) {
        if tx.send(entry_event(e)).await.is_err() {
            return;
        }
    }
    if !following {
        let _ = tx.send(Event::default().event("done").data("{}")).await;
        return;
    }
    let live = api.nodes.live();
    for (node, after) in from {
        let Some(address) = live
            .iter()
            .find(|(id, _)| *id == node)
            .map(|(_, a)| a.clone())
        else {
            continue;
        };
        tokio::spawn(follow(
            api.clone(),
            node,
            address,
            app.clone(),
            after,
            tx.clone(),
        ));
    }
}

async fn follow(
    api: Arc<Api>,
    node: String,
    address: String,
    app: String,
    after: u64,
    tx: mpsc::Sender<Event>,
) {
    let mut stream = match api.nodes.follow_logs(&address, &app, after).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(note("missing", &node, &e)).await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            next = stream.message() => match next {
                Ok(Some(batch)) => {
                    for e in &batch.entries {
                        if tx.send(entry_event(e)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(s) => {
                    let _ = tx.send(note("missing", &node, s.message())).await;
                    return;
                }
            },
        }
    }
    let _ = tx.send(note("end", &node, "")).await;
}
