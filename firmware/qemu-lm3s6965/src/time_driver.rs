//! An embassy-time driver on the Cortex-M SysTick: a 1 kHz tick counter and a small timer
//! queue checked on every tick.

use core::cell::{Cell, RefCell};
use core::task::Waker;

use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use critical_section::Mutex;
use embassy_time_driver::Driver;
use embassy_time_queue_utils::queue_generic::ConstGenericQueue;

/// Core clock of the emulated LM3S6965 (12 MHz), divided down to the 1 kHz tick.
const RELOAD: u32 = 12_000 - 1;

struct SysTickDriver {
    ticks: Mutex<Cell<u64>>,
    queue: Mutex<RefCell<ConstGenericQueue<16>>>,
}

impl Driver for SysTickDriver {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.ticks.borrow(cs).get())
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let now = self.ticks.borrow(cs).get();
            let mut queue = self.queue.borrow_ref_mut(cs);
            queue.schedule_wake(at, waker);
            // Wakes at once what is already due.
            queue.next_expiration(now);
        });
    }
}

// The macro exports the two symbols embassy-time links against; exporting an unmangled
// symbol is an `unsafe` attribute, and these two are the ones the driver contract names.
#[allow(unsafe_code)]
mod export {
    use super::*;

    embassy_time_driver::time_driver_impl!(static DRIVER: SysTickDriver = SysTickDriver {
        ticks: Mutex::new(Cell::new(0)),
        queue: Mutex::new(RefCell::new(ConstGenericQueue::new())),
    });

    pub(crate) fn tick() {
        critical_section::with(|cs| {
            let now = DRIVER.ticks.borrow(cs).get() + 1;
            DRIVER.ticks.borrow(cs).set(now);
            DRIVER.queue.borrow_ref_mut(cs).next_expiration(now);
        });
    }
}

/// Starts the tick.
pub(crate) fn init(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

#[cortex_m_rt::exception]
fn SysTick() {
    export::tick();
}
