//! A service's worker pool: a fixed number of threads and a bounded queue, so
//! that slow work (origin fetches, scripts, proofs) never runs on a core and a
//! flood of it is refused at once instead of piling up.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::{Reply, ServiceStats, Status};

/// Size, bound and deadline of a pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Worker threads.
    pub threads: usize,
    /// Requests that may wait for a worker; one more is refused (503).
    pub queue: usize,
    /// How long a request may take, queueing included, before the client gets
    /// 504 (the work itself is not interrupted: a thread cannot be, safely).
    pub deadline: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            threads: 2,
            queue: 256,
            deadline: Duration::from_secs(30),
        }
    }
}

/// Why work was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// The queue is at its bound: answer 503 with `Retry-After`.
    Full,
}

type Job = Box<dyn FnOnce() + Send>;

/// See the module docs. Dropping the pool lets its threads finish what they
/// hold and exit.
pub struct WorkerPool {
    tx: flume::Sender<Job>,
    name: Arc<str>,
    stats: Arc<ServiceStats>,
}

impl WorkerPool {
    pub fn new(
        name: &str,
        config: PoolConfig,
        stats: Arc<ServiceStats>,
    ) -> std::io::Result<WorkerPool> {
        let (tx, rx) = flume::bounded::<Job>(config.queue.max(1));
        for i in 0..config.threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("svc-{name}-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })?;
        }
        Ok(WorkerPool {
            tx,
            name: name.into(),
            stats,
        })
    }

    /// Queues `work`; its reply arrives on the returned channel, a `500` in its
    /// place if it panicked (counted and logged; the worker goes on).
    pub fn submit(
        &self,
        work: impl FnOnce() -> Reply + Send + 'static,
    ) -> Result<flume::Receiver<Reply>, PoolError> {
        let (done_tx, done_rx) = flume::bounded(1);
        let (name, stats) = (self.name.clone(), self.stats.clone());
        let job: Job = Box::new(move || {
            stats.busy.fetch_add(1, Ordering::Relaxed);
            let panicked = |panic: Box<dyn std::any::Any + Send>, what: &str| {
                ServiceStats::bump(&stats.panics);
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(service = %name, "{what} panicked: {message}");
            };
            let mut reply = match std::panic::catch_unwind(AssertUnwindSafe(work)) {
                Ok(reply) => reply,
                Err(panic) => {
                    panicked(panic, "request handler");
                    Reply::text(
                        Status::InternalServerError,
                        "the service failed on this request; see the node's log\n",
                    )
                }
            };
            // A streamed body: the head goes back first, then this worker
            // produces the body (bounded by the pool like any work).
            let producer = match &mut reply.body {
                crate::Body::Stream(s) => s.take_producer(),
                crate::Body::Bytes(_) | crate::Body::Blob(_) => None,
            };
            let _ = done_tx.send(reply);
            if let Some((produce, sender)) = producer {
                match std::panic::catch_unwind(AssertUnwindSafe(|| produce(&sender))) {
                    Ok(Ok(())) => sender.finish(),
                    Ok(Err(why)) => {
                        tracing::warn!(service = %name, "streamed body aborted: {why}")
                    }
                    Err(panic) => panicked(panic, "body producer"),
                }
            }
            stats.busy.fetch_sub(1, Ordering::Relaxed);
        });
        self.tx.try_send(job).map_err(|_| {
            ServiceStats::bump(&self.stats.rejected);
            PoolError::Full
        })?;
        ServiceStats::bump(&self.stats.jobs);
        Ok(done_rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_work_refuses_when_full_and_survives_a_panic() {
        let stats = Arc::new(ServiceStats::default());
        let config = PoolConfig {
            threads: 1,
            queue: 1,
            deadline: Duration::from_secs(5),
        };
        let pool = WorkerPool::new("test", config, stats.clone()).expect("pool");
        // One worker, blocked until we let it go; one slot in the queue.
        let (go_tx, go_rx) = flume::bounded::<()>(0);
        let busy = pool
            .submit(move || {
                let _ = go_rx.recv();
                Reply::text(Status::Ok, "first")
            })
            .expect("taken");
        // Wait until the worker holds the first job, so the queue is empty.
        while !pool.tx.is_empty() {
            std::thread::yield_now();
        }
        let queued = pool.submit(|| panic!("a handler bug")).expect("queued");
        assert_eq!(
            pool.submit(|| Reply::text(Status::Ok, "never")).err(),
            Some(PoolError::Full)
        );
        go_tx.send(()).expect("release");
        assert_eq!(busy.recv().expect("reply").body.bytes(), b"first");
        let failed = queued.recv().expect("reply");
        assert_eq!(failed.status, Status::InternalServerError);
        // The worker is still there.
        let after = pool
            .submit(|| Reply::text(Status::Ok, "after"))
            .expect("taken");
        assert_eq!(after.recv().expect("reply").body.bytes(), b"after");
        assert_eq!(stats.panics.load(Ordering::Relaxed), 1);
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(stats.jobs.load(Ordering::Relaxed), 3);
    }
}
