//! The `camscope` binary. Everything it does lives in the library ([`camscope::cli`]), so a Rust
//! program with its own model runs the same commands.

use std::process::ExitCode;

/// A trace allocates and frees tens of megabytes of feature maps; glibc's allocator hands big
/// blocks back to the kernel and faults them in again (zeroed) on the next use, which was ~40% of
/// the CPU time of a trace. mimalloc, told never to purge, keeps them for the next trace.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3); -1 means never return freed memory.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // SAFETY: sets a process-wide allocator option; mimalloc allows it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    camscope::cli::main()
}
