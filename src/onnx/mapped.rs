//! Model and external data files, memory-mapped: the decoder slices initializers' `raw_data` out
//! of the map (no copy of the file, none of each tensor's bytes), and the tensors are converted
//! straight from the mapped pages.
//!
//! Like every memory-mapped reader (safetensors' included), this assumes that nobody rewrites or
//! truncates the file while it is open: a file cut short under a live map faults (SIGBUS) on the
//! next read of a page past its new end.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::Mmap;

/// A read-only map of a whole file, shared by every [`Bytes`] sliced out of it; unmapped when
/// the last of them is dropped.
#[derive(Clone)]
pub struct MappedFile(Arc<Mmap>);

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl MappedFile {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        // SAFETY: a read-only map; see the module's note on files changed while mapped.
        let map = unsafe { Mmap::map(&file)? };
        // Initializers are read front to back, once: ask for read-ahead (only a hint).
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Self(Arc::new(map)))
    }

    /// The whole file as `Bytes` that keep the map alive (no copy).
    pub fn bytes(&self) -> Bytes {
        Bytes::from_owner(self.clone())
    }

    /// Drops the pages read so far from the process's resident memory, once their tensors have
    /// been copied out: later reads fault them in again from the file (the page cache).
    pub fn release(&self) {
        #[cfg(unix)]
        // SAFETY: the map is read-only and file-backed (MAP_SHARED), so MADV_DONTNEED loses
        // nothing: a page read again is the file's, the same bytes (the module's assumption).
        let _ = unsafe { self.0.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    }
}
