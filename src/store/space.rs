//! Free space of the store's file system, read at most once a second, and the watermark
//! below which no new content is written (cached content is still served).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a reading of the free space is trusted.
const FRESH: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Space {
    root: PathBuf,
    min_free: u64,
    last: Mutex<Option<(Instant, u64)>>,
    low: AtomicBool,
}

impl Space {
    pub fn new(root: &Path, min_free: u64) -> Self {
        Self {
            root: root.to_owned(),
            min_free,
            last: Mutex::new(None),
            low: AtomicBool::new(false),
        }
    }

    /// Bytes available to stevedore on the store's file system (`statvfs`: one syscall on
    /// the superblock's counters, no disk access), at most a second old.
    pub fn free(&self) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, free)) = *last
            && at.elapsed() < FRESH
        {
            return free;
        }
        let free = available_bytes(&self.root).unwrap_or(u64::MAX);
        *last = Some((Instant::now(), free));
        free
    }

    /// Forgets the last reading (after writing or removing a lot).
    pub fn invalidate(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Whether writing `need` more bytes would take the file system below the watermark.
    /// Logs when the store crosses the watermark either way.
    pub fn is_low(&self, need: u64) -> bool {
        let free = self.free();
        let low = free < self.min_free.saturating_add(need);
        if need == 0 {
            let was = self.low.swap(low, Ordering::Relaxed);
            if low && !was {
                tracing::error!(
                    path = %self.root.display(), free, min_free = self.min_free,
                    "content store below its free-space watermark: no new content is stored \
                     (misses are streamed from upstream, verified, without being kept); \
                     cached content is still served"
                );
            } else if was && !low {
                tracing::info!(path = %self.root.display(), free, "content store above its free-space watermark again");
            }
        }
        low
    }

    /// Whether the last check found the store below its watermark (for metrics).
    pub fn was_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }
}

fn available_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` points at writable memory of the right
    // type; statvfs fills it on success (return 0), which is checked before reading it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_free_space_and_applies_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let s = Space::new(dir.path(), 0);
        assert!(s.free() > 0);
        assert!(!s.is_low(0));
        let huge = Space::new(dir.path(), u64::MAX / 2);
        assert!(huge.is_low(0));
        assert!(huge.was_low());
    }
}
