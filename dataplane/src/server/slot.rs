//! Memory for request handlers, reused per core.
//!
//! An `async fn`'s state machine is as large as its largest state, and a
//! connection's task holds it for the connection's whole life. The request
//! handler's state is several KiB (every route's locals), while an idle
//! keep-alive connection needs only its socket. So the connection loop runs each
//! request's handler in a block taken from this pool and given back when the
//! handler ends: the connection's own task stays small, and nothing is
//! allocated per request once the pool holds a block (blocks are kept up to a
//! bound, and freed when the pool is dropped).

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free blocks, each with the layout it was allocated with.
pub(crate) struct Slots {
    free: RefCell<Vec<(NonNull<u8>, Layout)>>,
    kept: usize,
}

impl Slots {
    /// A pool that keeps at most `kept` free blocks.
    pub(crate) fn new(kept: usize) -> Self {
        Self {
            free: RefCell::new(Vec::with_capacity(kept)),
            kept,
        }
    }

    /// Moves `fut` into a pooled block; the returned future runs it there.
    pub(crate) fn run<F: Future>(&self, fut: F) -> InSlot<'_, F> {
        let layout = Layout::new::<F>();
        let mem = self.take(layout).cast::<F>();
        // SAFETY: `mem` is valid for a write of `layout`, the size and alignment
        // of `F` (a dangling, aligned pointer when `F` has no size), and no one
        // else uses it until `give`.
        unsafe { mem.as_ptr().write(fut) };
        InSlot {
            fut: mem,
            slots: self,
        }
    }

    fn take(&self, layout: Layout) -> NonNull<u8> {
        if layout.size() == 0 {
            // An aligned dangling pointer is valid for zero-sized values.
            return NonNull::new(layout.align() as *mut u8).unwrap_or(NonNull::dangling());
        }
        let mut free = self.free.borrow_mut();
        if let Some(i) = free.iter().rposition(|(_, l)| *l == layout) {
            return free.swap_remove(i).0;
        }
        drop(free);
        // SAFETY: `layout` has a non-zero size (checked above).
        let mem = unsafe { alloc::alloc(layout) };
        NonNull::new(mem).unwrap_or_else(|| alloc::handle_alloc_error(layout))
    }

    fn give(&self, mem: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.kept {
            free.push((mem, layout));
        } else {
            // SAFETY: `mem` came from `alloc::alloc(layout)` in `take` and is no
            // longer used.
            unsafe { alloc::dealloc(mem.as_ptr(), layout) };
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        for (mem, layout) in self.free.get_mut().drain(..) {
            // SAFETY: every free block came from `alloc::alloc(layout)` and is
            // in use by no one (an `InSlot` borrows the pool, so none is alive).
            unsafe { alloc::dealloc(mem.as_ptr(), layout) };
        }
    }
}

/// A future running in a pooled block; dropping it drops the future in place and
/// gives the block back.
pub(crate) struct InSlot<'a, F: Future> {
    fut: NonNull<F>,
    slots: &'a Slots,
}

impl<F: Future> Future for InSlot<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `fut` points at the live future written in `Slots::run`. It is
        // never moved out of its block and is dropped in place only in `drop`,
        // so it is pinned for its whole life, and `&mut self` makes this the
        // only reference to it.
        unsafe { Pin::new_unchecked(&mut *self.fut.as_ptr()) }.poll(cx)
    }
}

impl<F: Future> Drop for InSlot<'_, F> {
    fn drop(&mut self) {
        // SAFETY: the future at `fut` is live (written in `run`) and dropped here
        // exactly once; the block is not used after it is given back.
        unsafe { std::ptr::drop_in_place(self.fut.as_ptr()) };
        self.slots.give(self.fut.cast(), Layout::new::<F>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    struct Noisy(Rc<Cell<u32>>, [u8; 512]);
    impl Drop for Noisy {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    fn block_on<F: Future>(fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn a_block_is_reused_and_its_future_dropped_once() {
        let slots = Slots::new(2);
        let drops = Rc::new(Cell::new(0));
        let mut seen = None;
        for i in 0..5u32 {
            let noisy = Noisy(drops.clone(), [i as u8; 512]);
            let fut = slots.run(async move {
                let n = noisy.1[0] as u32;
                drop(noisy);
                n * 2
            });
            let at = fut.fut.as_ptr() as usize;
            assert_eq!(*seen.get_or_insert(at), at, "the same block every time");
            assert_eq!(block_on(fut), i * 2);
        }
        assert_eq!(drops.get(), 5);
        // A future dropped before it finishes is dropped in place too.
        let noisy = Noisy(drops.clone(), [0; 512]);
        let fut = slots.run(async move {
            std::future::pending::<()>().await;
            drop(noisy);
        });
        drop(fut);
        assert_eq!(drops.get(), 6);
        assert_eq!(slots.free.borrow().len(), 1);
    }
}
