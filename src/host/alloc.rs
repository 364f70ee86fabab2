//! The global allocator: Redis's own allocator inside `redis-server`, the system allocator elsewhere.
//!
//! Inside Redis every allocation of the module goes through `RedisModule_Alloc`, so the module's memory
//! is counted in `used_memory`, honoured by `maxmemory` and visible to operators. The same crate is also
//! linked into tests and the migration tool, where no Redis exists; there `RedisModule_Alloc` is never
//! set and the system allocator serves. The two cannot mix within one process: Redis sets the pointer in
//! `RedisModule_OnLoad`, before the module allocates anything.

use std::alloc::{GlobalAlloc, Layout, System};

use redis_module::raw;

pub struct ModuleAlloc;

/// Redis's allocators align to 16 bytes; larger alignments (e.g. cache-padded channel slots) get an
/// over-sized block with the original pointer stored just before the aligned one.
const NATURAL_ALIGN: usize = 16;

unsafe fn redis_alloc(size: usize) -> *mut u8 {
    match raw::RedisModule_Alloc {
        Some(alloc) => alloc(size).cast(),
        None => std::ptr::null_mut(),
    }
}

unsafe fn redis_free(ptr: *mut u8) {
    if let Some(free) = raw::RedisModule_Free {
        free(ptr.cast());
    }
}

unsafe impl GlobalAlloc for ModuleAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if { raw::RedisModule_Alloc }.is_none() {
            return System.alloc(layout);
        }
        if layout.align() <= NATURAL_ALIGN {
            return redis_alloc(layout.size().max(1));
        }
        let base = redis_alloc(layout.size() + layout.align() + std::mem::size_of::<usize>());
        if base.is_null() {
            return base;
        }
        let start = base as usize + std::mem::size_of::<usize>();
        let aligned = (start + layout.align() - 1) & !(layout.align() - 1);
        *((aligned - std::mem::size_of::<usize>()) as *mut usize) = base as usize;
        aligned as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if { raw::RedisModule_Free }.is_none() {
            return System.dealloc(ptr, layout);
        }
        if layout.align() <= NATURAL_ALIGN {
            redis_free(ptr);
        } else {
            let base = *((ptr as usize - std::mem::size_of::<usize>()) as *const usize);
            redis_free(base as *mut u8);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match raw::RedisModule_Realloc {
            None => System.realloc(ptr, layout, new_size),
            Some(realloc) if layout.align() <= NATURAL_ALIGN => {
                realloc(ptr.cast(), new_size.max(1)).cast()
            }
            Some(_) => {
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let new = self.alloc(new_layout);
                if !new.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                new
            }
        }
    }
}
