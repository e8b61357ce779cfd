//! `GET /v1/ws/echo`, for the Autobahn|Testsuite: the same WebSocket stack and limits as
//! `/v1/ws`, echoing every message.

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::State;
use axum::response::IntoResponse;

use super::max_message;
use crate::http::AppState;

/// `GET /v1/ws/echo` (only with `server.ws_echo`): echoes every message, through the same
/// stack and limits as `/v1/ws`, for the Autobahn conformance suite.
pub async fn echo(State(app): State<AppState>, upgrade: WebSocketUpgrade) -> impl IntoResponse {
    let limit = max_message(&app).max(16 * 1024 * 1024);
    let guard = app.tasks.token();
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |mut socket| async move {
            let _guard = guard;
            // Keep reading after a Close so the library can finish the closing handshake.
            while let Some(Ok(message)) = socket.recv().await {
                let reply = match message {
                    Message::Text(t) => Message::Text(t),
                    Message::Binary(b) => Message::Binary(b),
                    _ => continue,
                };
                if socket.send(reply).await.is_err() {
                    break;
                }
            }
        })
}
