//! A request body streamed into a service's handler.
//!
//! The transport reads the body from the client as it arrives and hands it over
//! in chunks through a bounded channel ([`REQUEST_CHUNKS_IN_FLIGHT`]); the handler
//! reads it with blocking [`std::io::Read`] on its worker. When the handler reads
//! slowly the channel fills, the transport stops reading the socket (HTTP/1.1) or
//! the stream (HTTP/3, whose flow control then holds the client back), so a body
//! costs a few chunks of memory however long it is. A body longer than the
//! service's [`crate::Service::max_body_bytes`] is cut off: the handler's read
//! fails, and the client is answered `413` whatever the handler returns.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Chunks of a request body in flight between the transport and the handler.
pub const REQUEST_CHUNKS_IN_FLIGHT: usize = 4;

#[derive(Debug, Default)]
struct Shared {
    /// The transport delivered the whole body.
    complete: AtomicBool,
    /// The body passed the service's limit.
    too_large: AtomicBool,
}

/// The handler's end: a blocking reader of the body.
#[derive(Debug)]
pub struct RequestBody {
    rx: Option<flume::Receiver<Vec<u8>>>,
    shared: Arc<Shared>,
    chunk: Vec<u8>,
    at: usize,
    declared: Option<u64>,
    read: u64,
}

/// The transport's end: where the body's chunks go.
#[derive(Debug)]
pub struct BodyFeed {
    tx: flume::Sender<Vec<u8>>,
    shared: Arc<Shared>,
}

/// What the transport keeps of a body after handing the feed on: whether it
/// was refused for its size.
#[derive(Debug, Clone)]
pub struct BodyWatch(Arc<Shared>);

/// A body that streams in: `declared` is its `Content-Length`, when the client
/// stated one.
pub fn request_body(declared: Option<u64>) -> (BodyFeed, RequestBody) {
    let (tx, rx) = flume::bounded(REQUEST_CHUNKS_IN_FLIGHT);
    let shared = Arc::new(Shared::default());
    (
        BodyFeed {
            tx,
            shared: shared.clone(),
        },
        RequestBody {
            rx: Some(rx),
            shared,
            chunk: Vec::new(),
            at: 0,
            declared,
            read: 0,
        },
    )
}

impl RequestBody {
    /// A body that is all here already (possibly empty).
    pub fn from_bytes(bytes: Vec<u8>) -> RequestBody {
        let shared = Shared::default();
        shared.complete.store(true, Ordering::Relaxed);
        RequestBody {
            rx: None,
            shared: Arc::new(shared),
            declared: Some(bytes.len() as u64),
            chunk: bytes,
            at: 0,
            read: 0,
        }
    }

    /// The body's length as the client declared it, if it did.
    pub fn declared_len(&self) -> Option<u64> {
        self.declared
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Reads the rest of the body into memory (it is at most the service's
    /// `max_body_bytes`).
    pub fn read_all(mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.declared.unwrap_or(0).min(1 << 20) as usize);
        io::Read::read_to_end(&mut self, &mut out)?;
        Ok(out)
    }

    fn ended(&self) -> io::Result<usize> {
        if self.shared.too_large.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the request body is over the service's limit",
            ));
        }
        if self.shared.complete.load(Ordering::Acquire) {
            return Ok(0);
        }
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the client did not send the whole request body",
        ))
    }
}

impl io::Read for RequestBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            let Some(rx) = &self.rx else {
                return self.ended();
            };
            match rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Err(_) => {
                    self.rx = None;
                    return self.ended();
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        self.read += n as u64;
        Ok(n)
    }
}

/// The handler dropped its body without reading all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unread;

impl BodyFeed {
    /// Hands a chunk over, waiting while the handler has
    /// [`REQUEST_CHUNKS_IN_FLIGHT`] unread.
    pub async fn send(&self, chunk: Vec<u8>) -> Result<(), Unread> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.tx.send_async(chunk).await.map_err(|_| Unread)
    }

    /// Hands a chunk over if there is room now; Ok(Some(chunk)) gives it back
    /// when there is not.
    pub fn try_send(&self, chunk: Vec<u8>) -> Result<Option<Vec<u8>>, Unread> {
        match self.tx.try_send(chunk) {
            Ok(()) => Ok(None),
            Err(flume::TrySendError::Full(chunk)) => Ok(Some(chunk)),
            Err(flume::TrySendError::Disconnected(_)) => Err(Unread),
        }
    }

    /// The body is whole: the handler reads to its end.
    pub fn finish(self) {
        self.shared.complete.store(true, Ordering::Release);
    }

    /// The body passed the limit: the handler's read fails, the client gets 413.
    pub fn too_large(self) {
        self.shared.too_large.store(true, Ordering::Release);
    }

    pub fn watch(&self) -> BodyWatch {
        BodyWatch(self.shared.clone())
    }
}

impl BodyWatch {
    pub fn too_large(&self) -> bool {
        self.0.too_large.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // The feed's futures complete without a runtime's timers: a busy poll
        // with a no-op waker is enough for these tests.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn chunks_arrive_in_order_and_end_cleanly() {
        let (feed, body) = request_body(Some(10));
        let reader = std::thread::spawn(move || body.read_all());
        for piece in [&b"hello"[..], b"", b" wor", b"ld"] {
            block_on(feed.send(piece.to_vec())).expect("reader alive");
        }
        feed.finish();
        assert_eq!(
            reader.join().expect("no panic").expect("whole"),
            b"hello world"
        );
    }

    #[test]
    fn a_cut_body_is_an_error_not_a_short_read() {
        let (feed, mut body) = request_body(None);
        block_on(feed.send(b"part".to_vec())).expect("reader alive");
        drop(feed);
        let mut out = Vec::new();
        let err = body.read_to_end(&mut out).expect_err("cut off");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(out, b"part");
    }

    #[test]
    fn too_large_is_its_own_error() {
        let (feed, body) = request_body(None);
        feed.too_large();
        let err = body.read_all().expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn the_feed_holds_back_and_notices_a_reader_gone() {
        let (feed, body) = request_body(None);
        for _ in 0..REQUEST_CHUNKS_IN_FLIGHT {
            assert_eq!(feed.try_send(vec![1]), Ok(None));
        }
        assert_eq!(
            feed.try_send(vec![2]),
            Ok(Some(vec![2])),
            "full: given back"
        );
        drop(body);
        assert_eq!(feed.try_send(vec![3]), Err(Unread));
    }

    #[test]
    fn bytes_already_here() {
        let body = RequestBody::from_bytes(b"abc".to_vec());
        assert_eq!(body.declared_len(), Some(3));
        assert_eq!(body.read_all().expect("whole"), b"abc");
        assert!(RequestBody::from_bytes(Vec::new())
            .read_all()
            .expect("empty")
            .is_empty());
    }
}
