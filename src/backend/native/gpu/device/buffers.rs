//! Device allocations and pinned host buffers, freed on drop.

use super::*;

/// A raw device allocation, freed on drop.
pub(super) struct DevBuf {
    pub(super) ptr: u64,
    pub(super) bytes: usize,
}

impl DevBuf {
    pub(super) fn new(bytes: usize) -> Result<Self> {
        let ptr = if bytes == 0 {
            0
        } else {
            // SAFETY: the context is current on this thread (bound when the model was built).
            dk(
                unsafe { drv::malloc_sync(bytes) },
                "allocating device memory",
            )?
        };
        Ok(DevBuf { ptr, bytes })
    }
    /// Address of float `i`.
    pub(super) fn f(&self, i: usize) -> u64 {
        self.ptr + 4 * i as u64
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // SAFETY: allocated by malloc_sync and freed once, here.
            let _ = unsafe { drv::free_sync(self.ptr) };
        }
    }
}

/// Page-locked host memory for asynchronous uploads, freed on drop.
pub(super) struct Pinned {
    pub(super) ptr: *mut u8,
    pub(super) bytes: usize,
    /// Recorded after the upload that last read this buffer.
    pub(super) done: drv_sys::CUevent,
}

impl Pinned {
    pub(super) fn new(bytes: usize) -> Result<Self> {
        // SAFETY: a plain page-locked allocation of `bytes` (at least 1) bytes.
        let ptr = dk(
            unsafe { drv::malloc_host(bytes.max(1), 0) },
            "allocating pinned memory",
        )?;
        let done = dk(
            drv::event::create(drv_sys::CUevent_flags::CU_EVENT_DISABLE_TIMING),
            "creating an event",
        )?;
        Ok(Pinned {
            ptr: ptr.cast(),
            bytes,
            done,
        })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host / event::create, released once here.
        unsafe {
            let _ = drv::event::synchronize(self.done);
            let _ = drv::event::destroy(self.done);
            let _ = drv::free_host(self.ptr.cast());
        }
    }
}
