//! HTTP/1.1: a request for a service's pool, its body streamed into the
//! handler as it arrives (see [`service_api::RequestBody`]).
//!
//! The body is read from the socket a buffer at a time and handed over through
//! the bounded feed; while the handler has [`service_api::REQUEST_CHUNKS_IN_FLIGHT`]
//! chunks unread the core stops reading this connection, so TCP's window holds
//! the client back. `Content-Length` over the service's limit is refused before
//! a byte is read; a chunked body that grows past it is cut off and answered
//! `413`. A handler that answers before reading all of the body ends the
//! connection after its reply (the rest of the body is not read).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::AsyncWriteRent;
use service_api::{BodyFeed, OwnedRequest, Reply, RequestBody, Running, Unread};

use super::services::{self, Queued};
use super::{
    linger, read_more, write_reply, write_wbuf, Body, Conn, Core, Next, ReadOutcome, ReqInfo,
};
use crate::http::{ChunkedDecoder, Method, Status};

/// How feeding the body ended.
enum Fed {
    /// All of it.
    Whole,
    /// The handler stopped reading: the rest is still on the connection.
    Unread,
    /// The handler answered while the core waited for more of the body.
    Answered(Reply),
    /// Over the limit.
    TooLarge,
    /// The handler took no chunk within its deadline.
    Stalled,
    /// The service's queue is full (a chunked body's job is queued late).
    Busy(Reply),
    /// A malformed chunk: 400, and close.
    Malformed(&'static str),
    /// The client went away: close.
    Closed,
}

/// The request's job on the service's pool: queued once the body has shown
/// it is well framed (its first chunk decoded), so a malformed body never
/// costs the service a job.
enum Job {
    Pending(Box<(Arc<Running>, OwnedRequest, RequestBody)>),
    Queued(Queued),
    Taken,
}

impl Job {
    /// Queues the job if it is not yet; Err: the service's queue is full.
    fn start(&mut self) -> Result<(), Fed> {
        if let Job::Pending(..) = self {
            let Job::Pending(pending) = std::mem::replace(self, Job::Taken) else {
                return Ok(());
            };
            let (running, req, body) = *pending;
            match services::submit(&running, req, body) {
                Ok(queued) => *self = Job::Queued(queued),
                Err(busy) => return Err(Fed::Busy(busy)),
            }
        }
        Ok(())
    }

    fn queued(&self) -> Option<&Queued> {
        match self {
            Job::Queued(q) => Some(q),
            _ => None,
        }
    }
}

pub(super) async fn work(
    core: &Core,
    conn: &mut Conn,
    info: &ReqInfo,
    running: Arc<Running>,
    req: OwnedRequest,
) -> io::Result<Next> {
    let route = info.route;
    let limit = running.service.max_body_bytes();
    let head_only = info.method == Method::Head;
    conn.rbuf.drain(..info.head_len);
    let declared = match info.body {
        Body::Length(n) if n > limit => {
            let reply = services::too_large(limit);
            return write_reply(core, conn, route, reply, false, head_only, info.http10).await;
        }
        Body::Length(n) => Some(n),
        Body::None => Some(0),
        Body::Chunked => None,
    };
    let (feed, body) = service_api::request_body(declared);
    let watch = feed.watch();
    let mut job = Job::Pending(Box::new((running.clone(), req, body)));
    if declared.is_some() {
        if let Err(Fed::Busy(busy)) = job.start() {
            let keep_alive = info.keep_alive && declared == Some(0);
            return write_reply(core, conn, route, busy, keep_alive, head_only, info.http10).await;
        }
    }
    if info.expect_continue && declared != Some(0) {
        conn.wbuf.clear();
        conn.wbuf
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        write_wbuf(core, conn).await?;
    }
    let wait = Duration::from_millis(core.shared.config.idle_timeout_ms);
    let fed = match declared {
        Some(n) => feed_length(conn, &feed, &job, n, wait, running.deadline).await,
        None => feed_chunked(conn, &feed, &mut job, limit, wait, running.deadline).await,
    };
    let (running, watch) = (&running, &watch);
    let answer = |job: Job| async move {
        match job {
            Job::Queued(queued) => services::answer(running, queued, watch).await,
            _ => Reply::text(Status::InternalServerError, "the request was not queued\n"),
        }
    };
    let (reply, keep_alive) = match fed {
        Fed::Whole => {
            feed.finish();
            (answer(job).await, info.keep_alive && !core.stopping.get())
        }
        Fed::Unread => {
            drop(feed);
            (answer(job).await, false)
        }
        Fed::Answered(reply) | Fed::Busy(reply) => (reply, false),
        Fed::TooLarge => {
            feed.too_large();
            (services::too_large(limit), false)
        }
        Fed::Stalled => (services::timed_out(running), false),
        Fed::Malformed(why) => {
            let text = format!("malformed chunked body: {why}\n");
            (Reply::text(Status::BadRequest, &text), false)
        }
        Fed::Closed => return Ok(Next::Close),
    };
    let next = match reply.body {
        // A blob the handler stored: served as blobs are (ranges,
        // conditional requests, zero-copy).
        service_api::Body::Blob(blob) => {
            let hash = crate::BlobHash(blob.hash);
            if info.verified {
                super::get_verified(core, conn, info, hash, Some(&*blob), keep_alive).await?
            } else {
                super::get_plain(core, conn, info, hash, Some(&*blob), keep_alive).await?
            }
        }
        _ => write_reply(core, conn, route, reply, keep_alive, head_only, info.http10).await?,
    };
    if !keep_alive {
        // Part of the body may be unread: our side ends (FIN after the
        // reply), and what the client still sends is read and dropped, so
        // that closing does not reset the connection before it has read the
        // reply. A read cancelled above took the read buffer with it.
        if conn.rbuf.capacity() == 0 {
            conn.rbuf = super::ReadBuf::with_capacity(core.shared.config.max_header_bytes);
        }
        let _ = conn.stream.shutdown().await;
        linger(conn).await;
    }
    Ok(next)
}

/// Hands over one chunk; what stops the feeding, if anything.
async fn hand_over(feed: &BodyFeed, chunk: Vec<u8>, deadline: Duration) -> Option<Fed> {
    match monoio::time::timeout(deadline, feed.send(chunk)).await {
        Ok(Ok(())) => None,
        Ok(Err(Unread)) => Some(Fed::Unread),
        Err(_) => Some(Fed::Stalled),
    }
}

/// Reads more of the body unless the handler answers first.
async fn read_body(conn: &mut Conn, job: &Job, wait: Duration) -> Result<(), Fed> {
    let Some(queued) = job.queued() else {
        return match read_more(conn, wait).await {
            ReadOutcome::Data => Ok(()),
            _ => Err(Fed::Closed),
        };
    };
    monoio::select! {
        read = read_more(conn, wait) => match read {
            ReadOutcome::Data => Ok(()),
            _ => Err(Fed::Closed),
        },
        // The read was cancelled (it took the read buffer with it); the
        // connection closes after this reply.
        reply = queued.early() => Err(Fed::Answered(reply)),
    }
}

async fn feed_length(
    conn: &mut Conn,
    feed: &BodyFeed,
    job: &Job,
    len: u64,
    wait: Duration,
    deadline: Duration,
) -> Fed {
    let mut left = len;
    while left > 0 {
        if conn.rbuf.is_empty() {
            if let Err(stop) = read_body(conn, job, wait).await {
                return stop;
            }
        }
        let take = (conn.rbuf.len() as u64).min(left) as usize;
        let chunk = conn.rbuf[..take].to_vec();
        conn.rbuf.drain(..take);
        left -= take as u64;
        if let Some(stop) = hand_over(feed, chunk, deadline).await {
            return stop;
        }
    }
    Fed::Whole
}

async fn feed_chunked(
    conn: &mut Conn,
    feed: &BodyFeed,
    job: &mut Job,
    limit: u64,
    wait: Duration,
    deadline: Duration,
) -> Fed {
    let mut decoder = ChunkedDecoder::default();
    let mut total = 0u64;
    loop {
        let mut chunk = Vec::new();
        let used = decoder.decode(&conn.rbuf, |piece| chunk.extend_from_slice(piece));
        let used = match used {
            Ok(used) => used,
            Err(why) => return Fed::Malformed(why),
        };
        conn.rbuf.drain(..used);
        total += chunk.len() as u64;
        if total > limit {
            return Fed::TooLarge;
        }
        if !chunk.is_empty() || decoder.is_done() {
            if let Err(stop) = job.start() {
                return stop;
            }
        }
        if let Some(stop) = hand_over(feed, chunk, deadline).await {
            return stop;
        }
        if decoder.is_done() {
            return Fed::Whole;
        }
        if let Err(stop) = read_body(conn, job, wait).await {
            return stop;
        }
    }
}
