//! The stack's high-water mark: the free RAM between the statics and the stack is painted
//! at boot, and the deepest word the stack overwrote is found at the end.

/// The word painted.
const PAINT: u32 = 0x5a5a_a5a5;
/// What stays unpainted below the stack pointer at boot: the frames of `main` itself.
const MARGIN: usize = 256;

// Symbols of the linker script: declaring them is `unsafe`, and only their addresses
// are used.
#[allow(unsafe_code)]
unsafe extern "C" {
    /// The end of the statics (cortex-m-rt's linker script).
    static __sheap: u32;
    /// The top of the stack.
    static _stack_start: u32;
}

fn bounds() -> (usize, usize) {
    // Only the symbols' addresses are taken; nothing is read through them here.
    let low = core::ptr::addr_of!(__sheap) as usize;
    let high = core::ptr::addr_of!(_stack_start) as usize;
    (low, high)
}

/// Paints the free RAM below the current stack pointer. Call once, first thing in `main`.
pub(crate) fn paint() {
    let (low, _) = bounds();
    let sp = cortex_m::register::msp::read() as usize;
    let mut at = low;
    while at + 4 <= sp - MARGIN {
        // Every word from the end of the statics up to below the live stack is free RAM
        // that nothing else uses (no heap): writing it disturbs no Rust object.
        #[allow(unsafe_code)]
        unsafe {
            core::ptr::write_volatile(at as *mut u32, PAINT);
        }
        at += 4;
    }
}

/// The most bytes of stack used since [`paint`], and the bytes there are for it.
pub(crate) fn high_water() -> (usize, usize) {
    let (low, high) = bounds();
    let mut at = low;
    // The painted words the stack never reached are still the paint.
    #[allow(unsafe_code)]
    while at < high && unsafe { core::ptr::read_volatile(at as *const u32) } == PAINT {
        at += 4;
    }
    (high - at, high - low)
}
