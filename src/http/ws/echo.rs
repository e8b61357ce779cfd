//! `GET /v1/ws/echo`, for the Autobahn|Testsuite: the same WebSocket stack, limits and
//! compression settings as `/v1/ws`, echoing every message.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use yawc::{Frame, OpCode};

use super::max_message;
use super::socket::{close, received, Received, Upgrade};
use crate::http::AppState;

/// `GET /v1/ws/echo` (only with `server.ws_echo`): echoes every message, through the same
/// stack and settings as `/v1/ws`, for the Autobahn conformance suite.
pub async fn echo(State(app): State<AppState>, upgrade: Upgrade) -> Response {
    let limit = max_message(&app).max(16 * 1024 * 1024);
    let (response, socket) = match upgrade.accept(app.ws.options(limit)) {
        Ok(accepted) => accepted,
        Err(e) => return e.into_response(),
    };
    let guard = app.tasks.token();
    tokio::spawn(async move {
        let _guard = guard;
        let Some((mut ws, _)) = socket.await else {
            return;
        };
        // Keep reading after a Close so the library can finish the closing handshake.
        loop {
            let frame = match received(ws.next_frame().await) {
                Received::Frame(frame) => frame,
                Received::Closed => break,
                Received::Refused(how) => {
                    close(&mut ws, how).await;
                    break;
                }
            };
            let (opcode, _, payload) = frame.into_parts();
            let reply = match opcode {
                OpCode::Text => Frame::text(payload),
                OpCode::Binary => Frame::binary(payload),
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    response
}
