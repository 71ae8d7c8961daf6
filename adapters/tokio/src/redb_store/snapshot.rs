//! Opening a store file without ever writing to it.
//!
//! redb marks a file as open by writing its header, and repairs a file that was not closed
//! cleanly, so even a read needs writes. [`Snapshot`] takes them in memory: reads see the
//! file with those writes on top, and the file itself is never written, so a store on
//! read-only media can be verified and exported, and reading never changes a store.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, PoisonError};

use redb::StorageBackend;

/// A file opened for reading, with writes kept in memory.
#[derive(Debug)]
pub(super) struct Snapshot {
    file: File,
    state: Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    /// The length redb sees.
    len: u64,
    /// How much of the file is still seen under the writes: a shrink hides the rest, which
    /// then reads as zeros, as after a real `set_len`.
    file_len: u64,
    /// Writes in the order they were made: later ones cover earlier ones.
    writes: Vec<(u64, Vec<u8>)>,
}

impl Snapshot {
    pub(super) fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            state: Mutex::new(Overlay {
                len,
                file_len: len,
                writes: Vec::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StorageBackend for Snapshot {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state().len)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let state = self.state();
        let mut out = vec![0; len];
        // What the file holds of the range (past its end reads as zeros, as after
        // `set_len`).
        let file_len = state.file_len;
        if offset < file_len {
            let n = usize::try_from(file_len - offset).map_or(len, |n| n.min(len));
            self.file.read_exact_at(&mut out[..n], offset)?;
        }
        let end = offset + len as u64;
        for (at, data) in &state.writes {
            let (from, to) = ((*at).max(offset), (*at + data.len() as u64).min(end));
            if from < to {
                let src = &data[(from - at) as usize..(to - at) as usize];
                out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
            }
        }
        Ok(out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state();
        state.len = len;
        state.file_len = state.file_len.min(len);
        for (at, data) in &mut state.writes {
            data.truncate(usize::try_from(len.saturating_sub(*at)).unwrap_or(usize::MAX));
        }
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.state().writes.push((offset, data.to_vec()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_the_file_under_the_writes_and_the_file_is_untouched() {
        let path = std::env::temp_dir().join(format!("chunk-sync-snapshot-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let s = Snapshot::new(File::open(&path).unwrap()).unwrap();
        s.write(2, b"ab").unwrap();
        s.write(3, b"XYZ").unwrap();
        assert_eq!(s.read(0, 10).unwrap(), b"01aXYZ6789");
        s.set_len(12).unwrap();
        assert_eq!(s.len().unwrap(), 12);
        assert_eq!(s.read(8, 4).unwrap(), b"89\0\0");
        // A shrink hides what lay past the new end, of the file and of the writes.
        s.set_len(4).unwrap();
        s.set_len(10).unwrap();
        assert_eq!(s.read(0, 10).unwrap(), b"01aX\0\0\0\0\0\0");
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
        std::fs::remove_file(&path).unwrap();
    }
}
