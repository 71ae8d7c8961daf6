//! NOR flash with the LM3S6965's geometry (1 KiB erase pages, 4-byte words), kept in RAM:
//! QEMU's `lm3s6965evb` models no flash controller, so its flash cannot be written. The
//! model keeps NOR's rules: erasing sets a page to `0xFF`, programming can only clear
//! bits, and every access must be aligned and in range.

use embedded_storage_async::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// Why an access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamFlashError {
    /// Outside the flash.
    OutOfBounds,
    /// Not on a word (writes) or page (erases) boundary.
    NotAligned,
}

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            Self::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            Self::NotAligned => NorFlashErrorKind::NotAligned,
        }
    }
}

/// The flash: `mem.len()` bytes, a whole number of pages.
#[derive(Debug)]
pub struct RamFlash {
    mem: &'static mut [u8],
}

impl RamFlash {
    /// Flash over `mem`, erased.
    pub fn new(mem: &'static mut [u8]) -> Self {
        mem.fill(0xFF);
        Self { mem }
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, RamFlashError> {
        let start = offset as usize;
        let end = start.checked_add(len).ok_or(RamFlashError::OutOfBounds)?;
        if end > self.mem.len() {
            return Err(RamFlashError::OutOfBounds);
        }
        Ok(start..end)
    }
}

impl ErrorType for RamFlash {
    type Error = RamFlashError;
}

impl ReadNorFlash for RamFlash {
    const READ_SIZE: usize = 1;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let range = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.mem[range]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl NorFlash for RamFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 1024;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if from > to {
            return Err(RamFlashError::OutOfBounds);
        }
        let range = self.range(from, (to - from) as usize)?;
        if !range.start.is_multiple_of(Self::ERASE_SIZE)
            || !range.end.is_multiple_of(Self::ERASE_SIZE)
        {
            return Err(RamFlashError::NotAligned);
        }
        self.mem[range].fill(0xFF);
        Ok(())
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let range = self.range(offset, bytes.len())?;
        if !range.start.is_multiple_of(Self::WRITE_SIZE)
            || !bytes.len().is_multiple_of(Self::WRITE_SIZE)
        {
            return Err(RamFlashError::NotAligned);
        }
        // Programming NOR flash clears bits; it never sets one.
        for (cell, byte) in self.mem[range].iter_mut().zip(bytes) {
            *cell &= byte;
        }
        Ok(())
    }
}
