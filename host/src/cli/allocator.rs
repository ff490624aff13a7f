//! The process's allocator: mimalloc, asked for a plain block whenever a plain block is aligned
//! enough.
//!
//! The `mimalloc` crate's `MiMalloc` hands every allocation to `mi_malloc_aligned`. In mimalloc
//! v3 that call stays on the fast path only while the next free block happens to be aligned;
//! once a page's free list runs dry, a block size that is not a power of two (24, 40, 48, 80
//! bytes: most of a message's pieces) is over-allocated from a larger bin
//! (`mi_theap_malloc_zero_aligned_at_overalloc`). Callgrind on `wasmill bench` (in-memory relay,
//! 80,000 messages): 1.85M allocations, 733k of them on that path, about 1,400 instructions per
//! message. mimalloc's blocks are aligned to 16 bytes (`MI_MAX_ALIGN_SIZE`) from 16 bytes up and
//! to their size below it, so an alignment of at most 16 and at most the size is met by plain
//! `mi_malloc`, the rule std's own `System` allocator applies to `malloc`. Larger alignments
//! keep the aligned calls.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block of at least this size has (`MI_MAX_ALIGN_SIZE`).
const MIN_ALIGN: usize = 16;

/// mimalloc as the global allocator (see the module's documentation).
pub struct Mimalloc;

/// Whether a plain (unaligned) mimalloc call returns a block of `size` aligned to `align`.
fn plain_is_aligned(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

// SAFETY: each method hands the layout's size (and alignment, where a plain block would not
// meet it) to the mimalloc function of the same contract; `dealloc` and `realloc` are only
// given blocks this allocator returned, which `mi_free` and `mi_realloc*` accept whichever
// mimalloc call made them.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: plain FFI calls; mimalloc returns null when it cannot allocate.
        unsafe {
            if plain_is_aligned(align, size) {
                mi::mi_malloc(size).cast()
            } else {
                mi::mi_malloc_aligned(size, align).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: as in `alloc`.
        unsafe {
            if plain_is_aligned(align, size) {
                mi::mi_zalloc(size).cast()
            } else {
                mi::mi_zalloc_aligned(size, align).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract); the
        // new block keeps the layout's alignment.
        unsafe {
            if plain_is_aligned(align, new_size) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, align).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a Rust program asks for comes back aligned, written and
    /// reallocated without losing its bytes, whichever mimalloc call served it.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes_across_realloc() {
        let a = Mimalloc;
        let mut aligns = vec![1, 2, 4, 8, 16, 32, 64, 128, 4096];
        aligns.reverse();
        for &align in &aligns {
            for size in (1..=300).chain([1000, 4096, 70_000]) {
                let layout = Layout::from_size_align(size, align).unwrap();
                // Many at once, so pages run dry and the slow paths are taken too.
                let blocks: Vec<*mut u8> = (0..64)
                    .map(|i| {
                        // SAFETY: a non-zero size; freed below with the same layout.
                        let p = unsafe { a.alloc(layout) };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                        // SAFETY: `p` holds `size` bytes.
                        unsafe { p.write_bytes(i as u8, size) };
                        p
                    })
                    .collect();
                for (i, p) in blocks.into_iter().enumerate() {
                    let new_size = size * 3 / 2 + 1;
                    // SAFETY: `p` came from `alloc(layout)`.
                    let q = unsafe { a.realloc(p, layout, new_size) };
                    assert!(!q.is_null());
                    assert_eq!(
                        q as usize % align,
                        0,
                        "realloc {size}->{new_size}, align {align}"
                    );
                    // SAFETY: the first `size` bytes were kept.
                    let kept = unsafe { std::slice::from_raw_parts(q, size) };
                    assert!(kept.iter().all(|&b| b == i as u8));
                    let new_layout = Layout::from_size_align(new_size, align).unwrap();
                    // SAFETY: `q` came from `realloc` to `new_size`.
                    unsafe { a.dealloc(q, new_layout) };
                }
                // SAFETY: as above.
                let z = unsafe { a.alloc_zeroed(layout) };
                assert_eq!(z as usize % align, 0);
                // SAFETY: `z` holds `size` zeroed bytes.
                assert!(
                    unsafe { std::slice::from_raw_parts(z, size) }
                        .iter()
                        .all(|&b| b == 0)
                );
                // SAFETY: `z` came from `alloc_zeroed(layout)`.
                unsafe { a.dealloc(z, layout) };
            }
        }
    }

    #[test]
    fn only_alignments_a_plain_block_meets_skip_the_aligned_calls() {
        assert!(plain_is_aligned(8, 24));
        assert!(plain_is_aligned(16, 48));
        assert!(plain_is_aligned(1, 1));
        assert!(!plain_is_aligned(32, 64), "mimalloc guarantees 16 only");
        assert!(
            !plain_is_aligned(8, 4),
            "a block smaller than its alignment"
        );
    }
}
