//! A WebSocket session on an upgraded HTTP/1.1 connection, for a service that
//! took the request with `Decision::Upgrade`: the frames are the sans-IO
//! `crate::websocket` codec's, the loop is here, on the core; the service's
//! `socket()` runs on its pool and sees whole messages.

use std::io;

use monoio::io::AsyncWriteRent;
use std::sync::Arc;
use std::time::Duration;

use super::{
    bump, head, linger, read_more, write_reply, write_wbuf, Conn, Core, Next, ReadOutcome, Reply,
};
use crate::http::{Method, Route, Status};

/// Messages the session waits on.
enum SocketEvent {
    Readable(io::Result<()>),
    Outgoing(Result<service_api::Message, flume::RecvError>),
    Quiet,
}

/// A WebSocket on this connection (RFC 6455): the handshake checked and
/// answered 101, the service's `socket` started on its pool, then frames both
/// ways until either side closes. The connection is not reused after.
pub(super) async fn session(
    core: &Core,
    conn: &mut Conn,
    route: Route,
    running: Arc<service_api::Running>,
    req: Box<service_api::OwnedRequest>,
) -> io::Result<Next> {
    use crate::websocket::{self, Frame};
    use service_api::Message;
    let has = |name: &str, token: &str| {
        req.header(name).is_some_and(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    let key = req
        .header("sec-websocket-key")
        .filter(|k| websocket::valid_key(k));
    let refusal = if req.method != Method::Get {
        Some((Status::MethodNotAllowed, "a WebSocket opens with GET\n"))
    } else if !has("upgrade", "websocket") || !has("connection", "upgrade") {
        Some((
            Status::BadRequest,
            "this route takes a WebSocket: send Upgrade: websocket and Connection: Upgrade\n",
        ))
    } else if req.header("sec-websocket-version") != Some(b"13") {
        Some((
            Status::BadRequest,
            "only WebSocket version 13 is served (Sec-WebSocket-Version: 13)\n",
        ))
    } else if key.is_none() {
        Some((
            Status::BadRequest,
            "Sec-WebSocket-Key must be 16 bytes in base64\n",
        ))
    } else {
        None
    };
    if let Some((status, text)) = refusal {
        let reply = Reply::text(status, text).header("Sec-WebSocket-Version", "13");
        return write_reply(core, conn, route, reply, false, false, false).await;
    }
    let accept = websocket::accept_key(key.unwrap_or_default());
    let Ok(ends) = super::services::start_socket(&running, *req) else {
        let reply = super::services::busy();
        return write_reply(core, conn, route, reply, false, false, false).await;
    };
    let super::services::SocketEnds {
        to_service: in_tx,
        from_service: out_rx,
        max_message,
    } = ends;
    let mut wbuf = std::mem::take(&mut conn.wbuf);
    head(core, &mut wbuf, Status::SwitchingProtocols)
        .header("Upgrade", b"websocket")
        .header("Connection", b"Upgrade")
        .header("Sec-WebSocket-Accept", accept.as_bytes())
        .raw(b"\r\n");
    conn.wbuf = wbuf;
    core.stats()
        .count_request(route.label_index(), Status::SwitchingProtocols.index());
    write_wbuf(core, conn).await?;
    // Room for the largest frame the service takes, and its header.
    let capacity = conn.rbuf.capacity();
    conn.rbuf
        .reserve((max_message + 14).saturating_sub(capacity));
    let mut decoder = websocket::Decoder::new(max_message);
    let idle = Duration::from_millis(core.shared.config.idle_timeout_ms);
    let mut pinged = false;
    let close = |conn: &mut Conn, status: u16, reason: &str| {
        websocket::encode(
            &mut conn.wbuf,
            &Frame::Close(Some(status), reason.to_string()),
        );
    };
    loop {
        // Every whole frame already read.
        loop {
            match decoder.decode(&conn.rbuf) {
                Ok(None) => break,
                Ok(Some((used, frame))) => {
                    conn.rbuf.drain(..used);
                    pinged = false;
                    let message = match frame {
                        None | Some(Frame::Pong(_)) => continue,
                        Some(Frame::Ping(data)) => {
                            websocket::encode(&mut conn.wbuf, &Frame::Pong(data));
                            write_wbuf(core, conn).await?;
                            continue;
                        }
                        Some(Frame::Close(..)) => {
                            // Answer the close (RFC 6455 §5.5.1) and end.
                            close(conn, 1000, "");
                            let _ = write_wbuf(core, conn).await;
                            return Ok(Next::Close);
                        }
                        Some(Frame::Text(t)) => Message::Text(t),
                        Some(Frame::Binary(b)) => Message::Binary(b),
                    };
                    // Back-pressure: the client is read no faster than the
                    // service takes its messages.
                    if in_tx.send_async(message).await.is_err() {
                        close(conn, 1000, "");
                        let _ = write_wbuf(core, conn).await;
                        return Ok(Next::Close);
                    }
                }
                Err(v) => {
                    close(conn, v.status, v.reason);
                    let _ = write_wbuf(core, conn).await;
                    // Our side is done (FIN after the close frame); read what
                    // the client still sends (the rest of an oversized frame,
                    // its close) until it closes too, so that closing does not
                    // reset the connection before it has read ours.
                    let _ = conn.stream.shutdown().await;
                    linger(conn).await;
                    return Ok(Next::Close);
                }
            }
        }
        let event = monoio::select! {
            r = conn.stream.readable(false) => SocketEvent::Readable(r),
            m = out_rx.recv_async() => SocketEvent::Outgoing(m),
            _ = monoio::time::sleep(idle) => SocketEvent::Quiet,
        };
        match event {
            SocketEvent::Readable(r) => {
                r?;
                match read_more(conn, idle).await {
                    ReadOutcome::Data => {}
                    _ => return Ok(Next::Close),
                }
            }
            SocketEvent::Outgoing(Ok(message)) => {
                let frame = match message {
                    Message::Text(t) => Frame::Text(t),
                    Message::Binary(b) => Frame::Binary(b),
                };
                websocket::encode(&mut conn.wbuf, &frame);
                write_wbuf(core, conn).await?;
            }
            // The service's handler returned: a normal close.
            SocketEvent::Outgoing(Err(_)) => {
                close(conn, 1000, "");
                let _ = write_wbuf(core, conn).await;
                return Ok(Next::Close);
            }
            // Silent for the idle timeout: ping once, then give up.
            SocketEvent::Quiet if !pinged => {
                pinged = true;
                websocket::encode(&mut conn.wbuf, &Frame::Ping(Vec::new()));
                write_wbuf(core, conn).await?;
            }
            SocketEvent::Quiet => {
                bump(&core.stats().timeouts, 1);
                close(conn, 1001, "idle");
                let _ = write_wbuf(core, conn).await;
                return Ok(Next::Close);
            }
        }
    }
}
