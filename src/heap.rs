//! Rust's heap in use, counted, for the soak's memory readout.
//!
//! The process's anonymous memory less the C allocator's heap is Rust's heap as the
//! allocator holds it (pages kept for reuse, fragmentation) plus the threads' stacks: it can
//! grow with no live allocation growing, and a leak can hide in it while freed pages are
//! handed back. [`Counting`] wraps the global allocator and keeps one number, the bytes
//! handed out and not yet freed, so a soak tells the two apart: what our code holds (a
//! leak or an unbounded queue grows it) and what the allocator keeps around it.
//!
//! It is a counter, not a profiler: one relaxed atomic add per allocation and per free.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes handed out by [`Counting`] and not freed yet.
static IN_USE: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that counts the bytes live in it (see the module's doc): the
/// `livros` binary's is `Counting(mimalloc::MiMalloc)`, set with `#[global_allocator]`.
#[derive(Debug, Default)]
pub struct Counting<A>(pub A);

// SAFETY: every call is passed on to the wrapped allocator unchanged; the counter is
// touched only after it succeeded, so a failed allocation counts nothing.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the wrapped allocator's.
        let ptr = unsafe { self.0.alloc(layout) };
        if !ptr.is_null() {
            IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let ptr = unsafe { self.0.alloc_zeroed(layout) };
        if !ptr.is_null() {
            IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as `alloc`; `ptr` came from this allocator with `layout`.
        unsafe { self.0.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`.
        let moved = unsafe { self.0.realloc(ptr, layout, new_size) };
        // A failed realloc leaves the old block where it was, still counted.
        if !moved.is_null() {
            if new_size >= layout.size() {
                IN_USE.fetch_add(new_size - layout.size(), Ordering::Relaxed);
            } else {
                IN_USE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        moved
    }
}

/// Bytes of Rust's heap in use, if the program's global allocator is a [`Counting`] one
/// (the `livros` binary's is); `None` otherwise (nothing was ever counted: a program that
/// counts has always allocated something by the time it asks).
pub fn in_use() -> Option<u64> {
    match IN_USE.load(Ordering::Relaxed) {
        0 => None,
        n => Some(n as u64),
    }
}

/// mimalloc's option `purge_delay` (`mi_option_purge_delay` in `mimalloc.h`, which
/// `libmimalloc-sys` does not name): how long freed memory is kept before it is given
/// back to the system, in milliseconds.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before giving it back to the system, in ms.
///
/// Every allocation here is mimalloc's, Rust's and SQLite's
/// ([`crate::sqlite::heap::use_mimalloc`]). Kept a second (mimalloc's default), what the
/// consumers' batches, the search index's commits and SQLite's page caches freed held
/// 85–130 MB resident around 70–90 MB in use through a soak, rising and falling by 30 MB
/// from one reading to the next. Given back sooner, memory is taken again from the
/// system, each page faulted in and zeroed by the kernel: after 10 ms the whole of
/// `bench --events 90000` took 7.6–8.0 s of CPU against 5.7–5.9 after 100 ms and 5.4–6.0
/// after a second (S2 59,000–63,000 events/s against 63,000–69,000 and 66,000–77,000;
/// page faults about 200,000, 57,000 and 11,000–19,000),
/// while a 15-minute soak's resident memory read the same within ten megabytes either way
/// (180–226 MB after 10 ms, 186–221 after 100, minutes 10 to 15; ARCHITECTURE.md,
/// "Measured").
pub const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Sets mimalloc to give freed memory back after [`PURGE_DELAY_MS`], unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. Called first thing in `main`, before any other
/// thread starts (mimalloc's options are not thread-safe).
pub fn purge_freed_memory_soon() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options; the caller runs before other threads.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option set is mimalloc's purge delay (its default, a second, tells it from its
    /// neighbours), and it is set to ours.
    #[test]
    fn freed_memory_is_purged_soon() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("skipped: MIMALLOC_PURGE_DELAY is set, and wins");
            return;
        }
        // SAFETY: reads and sets one option; no other test touches mimalloc's options.
        unsafe {
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            purge_freed_memory_soon();
            assert_eq!(
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                PURGE_DELAY_MS
            );
        }
    }

    /// The count follows what is allocated, grown, shrunk and freed through a `Counting`
    /// allocator. Tests run in parallel in one process whose global allocator is not
    /// this one, so only this test's own calls move the counter.
    #[test]
    fn counts_what_is_live_through_it() {
        let heap = Counting(std::alloc::System);
        let before = IN_USE.load(Ordering::Relaxed);
        let live = || IN_USE.load(Ordering::Relaxed) - before;
        let layout = Layout::from_size_align(1000, 8).unwrap();
        // SAFETY: a non-zero layout; each pointer is passed back with the layout it has.
        unsafe {
            let a = heap.alloc(layout);
            assert!(!a.is_null());
            assert_eq!(live(), 1000);
            let b = heap.alloc_zeroed(layout);
            assert_eq!(live(), 2000);
            let a = heap.realloc(a, layout, 5000);
            assert_eq!(live(), 6000);
            let a = heap.realloc(a, Layout::from_size_align(5000, 8).unwrap(), 10);
            assert_eq!(live(), 1010);
            heap.dealloc(a, Layout::from_size_align(10, 8).unwrap());
            heap.dealloc(b, layout);
        }
        assert_eq!(live(), 0);
    }
}
