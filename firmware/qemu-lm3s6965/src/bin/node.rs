//! The smallest whole node chunk-sync makes for a Cortex-M3, to measure what a device that
//! only does its job costs: it seals a log of 40 events into signed chunks in a
//! `RamStore`, runs one secure session (Noise XX, sealed records) with the host over
//! UART0, fetching the host's signed chunks and giving its own, and exits through
//! semihosting with status 0 if it holds both logs. It formats nothing (no `core::fmt`):
//! it writes one line, its stack's high-water mark, with its own digits. What the main
//! firmware adds to this (the checks, timings, refusals and the live session of
//! `src/main.rs`) is test harness.
//!
//! `./scripts/qemu-sync.sh node` builds it, prints its footprint and syncs it.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

#[path = "../keys.rs"]
mod keys;
#[path = "../samples.rs"]
mod samples;
#[path = "../stack.rs"]
mod stack;
#[path = "../time_driver.rs"]
mod time_driver;
#[path = "../uart.rs"]
mod uart;

use chunk_sync_core::chunk::SealPolicy;
use chunk_sync_core::secure::{Handshake, Keypair, Role};
use chunk_sync_core::session::Config;
use chunk_sync_core::store::RamStore;
use chunk_sync_core::{Duration, NodeId, Privacy};
use chunk_sync_embassy::secure::Peers;
use chunk_sync_embassy::{Log, Resources, Runner, SharedStore, Store};
use cortex_m_semihosting::{debug, hio};
use embassy_executor::{Executor, Spawner};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::mutex::Mutex;
use embassy_time::Instant;
use static_cell::StaticCell;

/// Events the device writes.
const EVENTS: u64 = 40;
/// The largest chunk the device seals or takes.
const MAX_CHUNK: usize = 2048;

type DeviceStore = RamStore<32, 8192>;
type Shared = SharedStore<'static, CriticalSectionRawMutex, &'static mut DeviceStore>;
type DeviceLog = Log<'static, CriticalSectionRawMutex, &'static mut DeviceStore, MAX_CHUNK>;
type Res = Resources<1024, 1024, MAX_CHUNK>;

static KEYS: StaticCell<Keypair> = StaticCell::new();
static STORE: StaticCell<DeviceStore> = StaticCell::new();
static SHARED: StaticCell<Mutex<CriticalSectionRawMutex, &'static mut DeviceStore>> =
    StaticCell::new();
static LOG: StaticCell<DeviceLog> = StaticCell::new();
static RESOURCES: StaticCell<Res> = StaticCell::new();
static EXECUTOR: StaticCell<Executor> = StaticCell::new();

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    exit(false)
}

/// Ends the run (QEMU exits through semihosting).
fn exit(ok: bool) -> ! {
    loop {
        debug::exit(if ok {
            debug::EXIT_SUCCESS
        } else {
            debug::EXIT_FAILURE
        });
        cortex_m::asm::wfi();
    }
}

/// Writes `text` and `n` in decimal, then a newline, to the host's standard output.
fn say(text: &[u8], n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if let Ok(mut out) = hio::hstdout() {
        let _ = out.write_all(text);
        let _ = out.write_all(&digits[at..]);
        let _ = out.write_all(b"\n");
    }
}

/// The session's ephemeral secret: derived from the device's secret, the time since boot
/// and the session's purpose, as QEMU models no random number generator for this machine
/// (a real device passes 32 bytes from its hardware generator).
fn entropy(keys: &Keypair) -> [u8; 32] {
    let mut material = [0u8; 40];
    material[..32].copy_from_slice(keys.secret());
    material[32..].copy_from_slice(&Instant::now().as_ticks().to_le_bytes());
    blake3::derive_key("chunk-sync qemu node 2026 session entropy", &material)
}

#[embassy_executor::task]
async fn device() {
    let keys: &'static Keypair = KEYS.init(Keypair::from_secret(keys::DEVICE_SECRET));
    // The key's id (the main firmware checks it at boot).
    let own_id: NodeId = keys::DEVICE;
    let store = SharedStore::new(SHARED.init(Mutex::new(STORE.init(DeviceStore::new()))));
    let policy = SealPolicy {
        max_bytes: MAX_CHUNK,
        max_delay: None,
    };
    let Ok(log) = DeviceLog::new(store, own_id, 10, 0, policy).and_then(|l| l.signed_by(keys))
    else {
        exit(false)
    };
    let log: &'static DeviceLog = LOG.init(log);
    let mut body = [0u8; 16];
    for seq in 0..EVENTS {
        let event = samples::sample(own_id, seq, Privacy::Public, &mut body);
        if log.append(&event).await.is_err() {
            exit(false)
        }
    }
    if log.flush().await.is_err() {
        exit(false)
    }
    let mut shared: Shared = log.store();
    let own = shared.chunk_count().await.unwrap_or(0);
    let config = Config {
        max_frame: 1024,
        max_chunk_len: MAX_CHUNK as u32,
        window: 4,
        idle_timeout: Duration::from_secs(30),
        ..Config::new(own_id)
    };
    let mut uart = uart::Uart0::new();
    let handshake = Handshake::new(keys, Role::Initiator, entropy(keys));
    let resources = RESOURCES.init(Resources::new());
    let peers = Peers::only(&keys::PEERS);
    let Ok((_, mut runner)) = Runner::<_, _, 8, 4>::new_secure(
        &mut uart,
        log.store(),
        config,
        resources,
        handshake,
        peers,
    ) else {
        exit(false)
    };
    let report = runner.run().await;
    drop(runner);
    let held = shared.chunk_count().await.unwrap_or(0);
    let (used, _) = stack::high_water();
    say(
        b"chunk-sync firmware node: stack high-water mark (bytes) ",
        used,
    );
    let synced = report.map_or(0, |r| r.synced_chunks as usize);
    exit(synced > 0 && held == own + synced)
}

#[cortex_m_rt::entry]
fn main() -> ! {
    stack::paint();
    let Some(peripherals) = cortex_m::Peripherals::take() else {
        exit(false)
    };
    time_driver::init(peripherals.SYST);
    let executor = EXECUTOR.init(Executor::new());
    executor.run(|spawner: Spawner| match device() {
        Ok(token) => spawner.spawn(token),
        Err(_) => exit(false),
    })
}

// cortex-m-rt declares the HardFault handler `unsafe`; it only exits.
#[allow(unsafe_code)]
#[cortex_m_rt::exception]
unsafe fn HardFault(_: &cortex_m_rt::ExceptionFrame) -> ! {
    exit(false)
}
