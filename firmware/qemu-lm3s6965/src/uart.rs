//! UART0 of the LM3S6965 (a PL011) as an `embedded_io_async` byte stream, by polling.

use core::convert::Infallible;

use embassy_futures::yield_now;

const BASE: usize = 0x4000_C000;
const DR: usize = BASE;
const FR: usize = BASE + 0x018;
const CTL: usize = BASE + 0x030;
const FR_RXFE: u32 = 1 << 4;
const FR_TXFF: u32 = 1 << 5;
/// UART enable, transmit enable, receive enable.
const CTL_ENABLE: u32 = (1 << 0) | (1 << 8) | (1 << 9);

// Memory-mapped registers can only be reached through raw pointers. These three addresses
// are UART0's data, flag and control registers on this chip; nothing else maps them, and
// volatile 32-bit accesses are what the peripheral expects.
#[allow(unsafe_code)]
fn read_reg(addr: usize) -> u32 {
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

#[allow(unsafe_code)]
fn write_reg(addr: usize, value: u32) {
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// UART0, owned once.
#[derive(Debug)]
pub(crate) struct Uart0(());

impl Uart0 {
    /// Enables the UART.
    pub(crate) fn new() -> Self {
        write_reg(CTL, CTL_ENABLE);
        Self(())
    }
}

impl embedded_io_async::ErrorType for Uart0 {
    type Error = Infallible;
}

impl embedded_io_async::Read for Uart0 {
    /// Returns as soon as at least one byte arrived. Cancel-safe: bytes are taken from the
    /// FIFO only when the call returns them.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while read_reg(FR) & FR_RXFE != 0 {
            yield_now().await;
        }
        let mut n = 0;
        while n < buf.len() && read_reg(FR) & FR_RXFE == 0 {
            buf[n] = read_reg(DR) as u8;
            n += 1;
        }
        Ok(n)
    }
}

impl embedded_io_async::Write for Uart0 {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &b in buf {
            while read_reg(FR) & FR_TXFF != 0 {
                yield_now().await;
            }
            write_reg(DR, u32::from(b));
        }
        Ok(buf.len())
    }
}
