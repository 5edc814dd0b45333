//! `GET /api/v1/system/stats/ws`: a WebSocket that sends the stats JSON once per sample.
//!
//! Each subscriber follows the snapshot `watch` channel, which holds only the latest value, so a
//! slow client skips straight to the newest snapshot and nothing queues without bound. A client
//! that stops reading for long is dropped; the number of subscribers is capped; on shutdown every
//! socket gets a Close frame.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::stats::StatsBody;
use crate::app::AppState;

/// A send that has not completed in this long means the client stopped reading.
const STALLED_CLIENT: Duration = Duration::from_secs(30);

/// Upgrades to a WebSocket, or 503 past `stream.max_subscribers`.
pub(crate) async fn ws(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let max = state.config().stream.max_subscribers;
    let taken = state.subscribers().fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1));
    if taken.is_err() {
        return ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            detail: format!("too many stats subscribers (stream.max_subscribers is {max}); try again later"),
        }
        .into_response();
    }
    let guard = Subscriber(state.clone());
    // The page offers `vramguard` (and its token as `bearer.<token>`, see auth): answering with
    // `vramguard` completes the handshake without echoing the token.
    upgrade.protocols(["vramguard"]).on_upgrade(move |socket| async move {
        let _guard = guard;
        serve(state, socket).await;
    })
}

/// Releases the subscriber slot however the connection ends.
struct Subscriber(AppState);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.subscribers().fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(state: AppState, mut socket: WebSocket) {
    let mut snapshots = state.snapshots();
    let mut shutdown = state.shutdown();
    snapshots.mark_changed(); // send the current snapshot at once
    loop {
        if *shutdown.borrow_and_update() {
            close_going_away(&mut socket).await;
            break;
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    // The sampler has stopped: vramguard is shutting down.
                    close_going_away(&mut socket).await;
                    break;
                }
                let Some(snapshot) = snapshots.borrow_and_update().clone() else { continue };
                let Ok(text) = serde_json::to_string(&StatsBody::from(snapshot.as_ref())) else { continue };
                match tokio::time::timeout(STALLED_CLIENT, socket.send(Message::Text(text.into()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {} // pings are answered by the library; other input is ignored
            },
            // A flip to true is handled at the top of the loop; a dropped sender means the
            // server is gone.
            changed = shutdown.changed() => if changed.is_err() {
                close_going_away(&mut socket).await;
                break;
            },
        }
    }
}

/// Sends the Close frame of a server going away, without waiting long for a slow client.
async fn close_going_away(socket: &mut WebSocket) {
    let frame = CloseFrame { code: axum::extract::ws::close_code::AWAY, reason: "vramguard is shutting down".into() };
    let _ = tokio::time::timeout(Duration::from_millis(200), socket.send(Message::Close(Some(frame)))).await;
}
