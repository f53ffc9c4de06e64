//! Connections' read buffers, in pages of their own.
//!
//! A read buffer (the request head limit, 16 KiB by default) lives as long as
//! its connection is busy, or kept while it idles, and goes back to the core's
//! spares when it parks; the spares free what goes unused. Taken from the
//! heap, the buffers of a few hundred connections lie between those
//! connections' tasks, and freeing them leaves a resident page each: the
//! allocator writes its free-list links into a freed chunk's first page, and
//! a chunk between live ones never merges with another to be trimmed away.
//! That was most of what a 1,000-connection node held per idle connection.
//!
//! So read buffers come from [`Pages`], an allocator of whole pages: sizes up
//! to [`MAX_PAGES`] pages are slots in chunks mapped for them (one mapping
//! per [`SLOTS_PER_CHUNK`] slots, never unmapped), and a freed slot's pages go
//! back to the kernel at once (`MADV_DONTNEED`); a slot that is used again
//! faults in only the pages that are written. Larger buffers (an upload's, a
//! WebSocket message's) and any slot the kernel would not map come from the
//! heap as before.

use std::alloc::Layout;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

use allocator_api2::alloc::{AllocError, Allocator, Global};
use monoio::buf::{IoBuf, IoBufMut};

/// Slots of up to this many pages come from the chunks; larger buffers from
/// the heap.
pub(crate) const MAX_PAGES: usize = 16;
/// Slots per mapped chunk.
pub(crate) const SLOTS_PER_CHUNK: usize = 32;

/// A connection's read buffer: a `Vec` whose memory is [`Pages`]'.
pub(crate) struct ReadBuf(allocator_api2::vec::Vec<u8, Pages>);

impl Default for ReadBuf {
    /// No buffer yet (nothing allocated).
    fn default() -> Self {
        Self(allocator_api2::vec::Vec::new_in(Pages))
    }
}

impl ReadBuf {
    /// An empty buffer with room for `capacity` bytes.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self(allocator_api2::vec::Vec::with_capacity_in(capacity, Pages))
    }
}

impl Deref for ReadBuf {
    type Target = allocator_api2::vec::Vec<u8, Pages>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for ReadBuf {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

// SAFETY: the pointer is the vector's, valid for its first `len` bytes, which
// are initialised; it stays put while an operation owns the buffer.
unsafe impl IoBuf for ReadBuf {
    fn read_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.0.len()
    }
}

// SAFETY: the pointer is the vector's, valid for `capacity` bytes of which the
// first `len` are initialised, and it stays put while the vector is not
// touched (an operation that owns the buffer owns the vector). `set_init` is
// called with at most `bytes_total`, the bytes the kernel wrote.
unsafe impl IoBufMut for ReadBuf {
    fn write_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }

    fn bytes_total(&mut self) -> usize {
        self.0.capacity()
    }

    unsafe fn set_init(&mut self, pos: usize) {
        // SAFETY: the caller's contract (at most the capacity, written).
        unsafe { self.0.set_len(pos) }
    }
}

/// Allocates whole pages (see the module docs).
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Pages;

/// A mapping of slots of one size.
struct Chunk {
    map: memmap2::MmapMut,
    /// Pages per slot.
    pages: usize,
}

impl Chunk {
    fn start(&self) -> usize {
        self.map.as_ptr() as usize
    }
}

/// The chunks and their free slots, for all cores (allocations are rare: a
/// buffer is reused through the core's spares).
struct Slab {
    /// Free slots by size in pages (index 0: one page).
    free: [Vec<usize>; MAX_PAGES],
    /// Every chunk, sorted by address; never dropped (the slab is static).
    chunks: Vec<Chunk>,
}

static SLAB: Mutex<Slab> = Mutex::new(Slab {
    free: [const { Vec::new() }; MAX_PAGES],
    chunks: Vec::new(),
});

fn page_bytes() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    })
}

/// The slot size in pages for `layout`, if the chunks serve it.
fn slot_pages(layout: Layout) -> Option<usize> {
    let page = page_bytes();
    let pages = layout.size().div_ceil(page);
    (layout.size() > 0 && pages <= MAX_PAGES && layout.align() <= page).then_some(pages)
}

impl Slab {
    fn take(&mut self, pages: usize) -> Option<usize> {
        if let Some(slot) = self.free[pages - 1].pop() {
            return Some(slot);
        }
        let slot_bytes = pages * page_bytes();
        let mut map = memmap2::MmapMut::map_anon(slot_bytes * SLOTS_PER_CHUNK).ok()?;
        let start = map.as_mut_ptr() as usize;
        let at = self.chunks.partition_point(|c| c.start() < start);
        self.chunks.insert(at, Chunk { map, pages });
        // The first slot is the caller's; the others wait, lowest address
        // taken first.
        self.free[pages - 1].extend((1..SLOTS_PER_CHUNK).rev().map(|i| start + i * slot_bytes));
        Some(start)
    }

    /// The chunk that holds `addr` as a slot of `pages` pages, and the slot's
    /// offset in it.
    fn slot_at(&self, addr: usize, pages: usize) -> Option<(&Chunk, usize)> {
        let at = self
            .chunks
            .partition_point(|c| c.start() <= addr)
            .checked_sub(1)?;
        let chunk = &self.chunks[at];
        let offset = addr - chunk.start();
        (offset < chunk.map.len()
            && chunk.pages == pages
            && offset.is_multiple_of(pages * page_bytes()))
        .then_some((chunk, offset))
    }
}

fn slab() -> std::sync::MutexGuard<'static, Slab> {
    // A panic while the lock was held left the lists whole (each change is one
    // push, pop or insert), so a poisoned lock is still usable.
    SLAB.lock().unwrap_or_else(|e| e.into_inner())
}

// SAFETY: a slot is handed out by one `allocate` at a time: it leaves the free
// list under the lock, and returns to it only in `deallocate`. Its memory is a
// mapping of `pages * page` bytes that stays mapped for the process's life,
// page-aligned, so valid for any layout that `slot_pages` accepts. Everything
// else is the global allocator's, and `deallocate` tells the two apart by
// address (a heap block never lies inside a chunk's mapping).
unsafe impl Allocator for Pages {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if let Some(pages) = slot_pages(layout) {
            if let Some(addr) = slab().take(pages) {
                let ptr = NonNull::new(addr as *mut u8).ok_or(AllocError)?;
                return Ok(NonNull::slice_from_raw_parts(ptr, pages * page_bytes()));
            }
        }
        Global.allocate(layout)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if let Some(pages) = slot_pages(layout) {
            let mut slab = slab();
            let addr = ptr.as_ptr() as usize;
            if let Some((chunk, offset)) = slab.slot_at(addr, pages) {
                // SAFETY: the range is the slot, inside the chunk's mapping, and
                // no longer used; its pages read as zeros when next touched.
                let _ = unsafe {
                    chunk.map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        offset,
                        pages * page_bytes(),
                    )
                };
                slab.free[pages - 1].push(addr);
                return;
            }
        }
        // SAFETY: not a slot, so `Global.allocate(layout)` made it.
        unsafe { Global.deallocate(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident pages of `len` bytes at `ptr` (`mincore`).
    fn resident(ptr: *const u8, len: usize) -> usize {
        let page = page_bytes();
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `ptr` is page-aligned and the range is mapped (a slot).
        let rc = unsafe { libc::mincore(ptr as *mut _, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|b| *b & 1 == 1).count()
    }

    #[test]
    fn a_freed_buffer_gives_its_pages_back_and_its_slot_is_reused() {
        // A size no other test (nor a node's default buffers) uses, so that
        // no other thread takes the slot in between.
        let pages = 13;
        let len = pages * page_bytes();
        let mut buf = ReadBuf::with_capacity(len);
        let ptr = buf.as_ptr();
        assert_eq!(ptr as usize % page_bytes(), 0);
        buf.extend_from_slice(&vec![7u8; len]);
        assert_eq!(resident(ptr, len), pages);
        drop(buf);
        assert_eq!(resident(ptr, len), 0, "pages given back");
        assert!(slab().slot_at(ptr as usize, pages).is_some());
        // The slot freed last is taken first: this one again, reading zeros.
        let again = ReadBuf::with_capacity(len);
        assert_eq!(again.as_ptr(), ptr);
        // SAFETY: the slot is mapped for its whole capacity; untouched pages
        // read as zeros.
        let bytes = unsafe { std::slice::from_raw_parts(again.as_ptr(), again.capacity()) };
        assert!(bytes.iter().all(|b| *b == 0));
    }

    #[test]
    fn a_buffer_grown_past_the_slots_moves_to_the_heap_whole() {
        let mut buf = ReadBuf::with_capacity(4096);
        buf.extend_from_slice(b"head bytes");
        buf.reserve(MAX_PAGES * page_bytes() * 4);
        assert_eq!(&buf[..], b"head bytes");
        assert!(slab().slot_at(buf.as_ptr() as usize, 1).is_none());
        buf.extend_from_slice(&[1u8; 100_000]);
        assert_eq!(buf.len(), 100_010);
    }

    #[test]
    fn many_buffers_at_once_are_distinct_and_keep_their_bytes() {
        let bufs: Vec<ReadBuf> = (0..(SLOTS_PER_CHUNK * 3) as u8)
            .map(|i| {
                let mut b = ReadBuf::with_capacity(11 * page_bytes());
                b.extend_from_slice(&vec![i; 11 * page_bytes()]);
                b
            })
            .collect();
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.iter().all(|x| *x == i as u8), "buffer {i}");
        }
        let mut addrs: Vec<usize> = bufs.iter().map(|b| b.as_ptr() as usize).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), bufs.len());
    }
}
