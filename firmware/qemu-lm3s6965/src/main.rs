//! chunk-sync on a Cortex-M3 in QEMU (`lm3s6965evb`): the device writes an event log,
//! seals it into chunks, syncs both ways with a host node over UART0, verifies what it
//! holds, prints one result line through semihosting and exits with a status code.
//!
//! Run by `.ci/run` (see `firmware/qemu-lm3s6965/README.md`).
#![no_std]
#![no_main]
#![deny(unsafe_code)]

#[cfg(feature = "flash")]
mod ram_flash;
mod time_driver;
mod uart;

use chunk_sync_core::chunk::{Chunker, Push};
use chunk_sync_core::session::{Config, Error as SessionError};
use chunk_sync_core::{ChunkHash, Duration, Event, NodeId, Privacy};
use chunk_sync_embassy::{Resources, Runner, Store};
use cortex_m_semihosting::{debug, hprintln};
use embassy_executor::{Executor, Spawner};
use embassy_time::Timer;
use static_cell::StaticCell;

/// This device's node id.
const DEVICE: NodeId = NodeId(0xD1);
/// Events the device writes; every fifth is private.
const EVENTS: u64 = 40;

/// The device's store: 32 chunks in 16 KiB of RAM.
#[cfg(not(feature = "flash"))]
type DeviceStore = chunk_sync_core::store::RamStore<32, 16_384>;
/// The device's store: up to 32 chunks of up to `CHUNK_LIMIT` bytes in `FLASH_SIZE` bytes
/// of NOR flash.
#[cfg(feature = "flash")]
type DeviceStore = chunk_sync_embassy::FlashStore<ram_flash::RamFlash, 32, 1024>;
/// Bytes of the modelled flash.
#[cfg(feature = "flash")]
const FLASH_SIZE: usize = 16 * 1024;
#[cfg(feature = "flash")]
static FLASH: StaticCell<[u8; FLASH_SIZE]> = StaticCell::new();
static STORE: StaticCell<DeviceStore> = StaticCell::new();
#[cfg(not(feature = "flash"))]
const STORE_NAME: &str = "RamStore<32, 16384>";
#[cfg(feature = "flash")]
const STORE_NAME: &str = "FlashStore<_, 32, 1024> (flash itself: 16384 B)";
/// The device's chunk buffers.
const MAX_CHUNK: usize = 2048;
/// The largest chunk the device seals or accepts: what its store keeps. A flash store item
/// (the 32-byte key and the chunk) must fit one 1 KiB page after the page's and the
/// item's headers.
#[cfg(not(feature = "flash"))]
const CHUNK_LIMIT: usize = MAX_CHUNK;
#[cfg(feature = "flash")]
const CHUNK_LIMIT: usize = 960;
type Res = Resources<1024, 1024, MAX_CHUNK>;
static RESOURCES: StaticCell<Res> = StaticCell::new();
/// Where the device seals its chunks, and later reads each one back to check it.
static CHUNK_BUF: StaticCell<[u8; MAX_CHUNK]> = StaticCell::new();
static EXECUTOR: StaticCell<Executor> = StaticCell::new();

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    hprintln!("chunk-sync firmware: panic: {}", info);
    halt()
}

/// Ends the run with a failure status (QEMU exits through semihosting).
fn halt() -> ! {
    loop {
        debug::exit(debug::EXIT_FAILURE);
        cortex_m::asm::wfi();
    }
}

/// An empty store.
#[cfg(not(feature = "flash"))]
async fn open_store() -> &'static mut DeviceStore {
    STORE.init(DeviceStore::new())
}

/// The store in (modelled) flash, opened as after a reset.
#[cfg(feature = "flash")]
async fn open_store() -> &'static mut DeviceStore {
    let flash = ram_flash::RamFlash::new(FLASH.init([0; FLASH_SIZE]));
    let range = 0..FLASH_SIZE as u32;
    match DeviceStore::open(flash, range).await {
        Ok(store) => STORE.init(store),
        Err(e) => {
            hprintln!("chunk-sync firmware: cannot open the flash store: {}", e);
            halt()
        }
    }
}

/// Stores one of the device's own chunks; halts if the store refuses it.
async fn keep(store: &mut DeviceStore, chunk: chunk_sync_core::Verified<'_>) {
    if let Err(e) = store.insert(chunk).await {
        hprintln!(
            "chunk-sync firmware: cannot store a chunk of its own: {}",
            e
        );
        halt()
    }
}

/// Seals the device's log into `store`; returns the number of chunks.
async fn write_log(store: &mut DeviceStore, buf: &mut [u8]) -> usize {
    let Ok(mut chunker) = Chunker::new(DEVICE, 10, 0, &mut buf[..CHUNK_LIMIT]) else {
        return 0;
    };
    let mut body = [0u8; 16];
    for seq in 0..EVENTS {
        body.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (seq as u8).wrapping_mul(7).wrapping_add(i as u8));
        let event = Event {
            origin: DEVICE,
            seq,
            timestamp: 1_000 * seq,
            kind: "adc.sample",
            privacy: if seq % 5 == 4 {
                Privacy::Private
            } else {
                Privacy::Public
            },
            payload: &body,
        };
        if chunker.push(&event) == Ok(Push::SealFirst) {
            if let Some(sealed) = chunker.seal() {
                keep(store, sealed.verified()).await;
            }
            let _ = chunker.push(&event);
        }
    }
    if let Some(sealed) = chunker.seal() {
        keep(store, sealed.verified()).await;
    }
    store.chunk_count().await.unwrap_or(0)
}

/// The core's golden chunk (`core/src/chunk/tests.rs`), sealed on this target: the same
/// events must give the same hash on every architecture.
fn golden_chunk_matches() -> bool {
    const GOLDEN: &str = "acfccfc27ba55cb70083868fb9a75b08d9b148837afb046969eaebc98a323654";
    let mut buf = [0u8; 256];
    let Ok(mut chunker) = Chunker::new(NodeId(7), 4, 0, &mut buf) else {
        return false;
    };
    for seq in 0..3u64 {
        let payload = [seq as u8; 2];
        let event = Event {
            origin: NodeId(7),
            seq,
            timestamp: 1_000 + seq,
            kind: "t",
            privacy: if seq == 1 {
                Privacy::Shareable
            } else {
                Privacy::Public
            },
            payload: &payload,
        };
        if chunker.push(&event) != Ok(Push::Added) {
            return false;
        }
    }
    match (chunker.seal(), GOLDEN.parse::<ChunkHash>()) {
        (Some(sealed), Ok(golden)) => sealed.id == golden,
        _ => false,
    }
}

/// Every stored chunk still hashes to its name.
async fn all_verified(store: &mut DeviceStore, buf: &mut [u8]) -> bool {
    let mut page = [ChunkHash::default(); 4];
    let mut after = None;
    loop {
        let Ok((n, last)) = store.ids_after(after.as_ref(), &mut page).await else {
            return false;
        };
        for id in &page[..n] {
            match store.read_into(id, buf).await {
                Ok(Some(len)) if id.matches(&buf[..len]) => {}
                _ => return false,
            }
        }
        if last || n == 0 {
            return true;
        }
        after = Some(page[n - 1]);
    }
}

/// Runs a session the host spoils on purpose; halts unless it ends with the expected error
/// and leaves the store as it was.
async fn expect_refusal(
    uart: &mut uart::Uart0,
    store: &mut DeviceStore,
    config: Config,
    resources: &mut Res,
    own: usize,
    expected: fn(&SessionError) -> bool,
    what: &str,
) {
    // The runner is taken out of the `match` before its future is awaited, so that the
    // task does not hold both.
    let mut runner = match Runner::<_, _, 8, 4>::new(uart, &mut *store, config, resources) {
        Ok((_, runner)) => runner,
        Err(e) => {
            hprintln!("chunk-sync firmware: bad configuration: {}", e);
            halt()
        }
    };
    let result = runner.run().await;
    drop(runner);
    let intact = store.chunk_count().await.ok() == Some(own);
    match result {
        Err(chunk_sync_embassy::Error::Protocol(e)) if expected(&e) => {
            hprintln!("chunk-sync firmware: {}; store intact: {}", what, intact);
        }
        _ => {
            hprintln!("chunk-sync firmware: the session should have {}", what);
            halt()
        }
    }
    if !intact {
        halt()
    }
    // Let the host see the error frame before the next Hello.
    Timer::after_millis(200).await;
}

/// Runs a real session; halts unless it completes.
async fn sync_both_ways(
    uart: &mut uart::Uart0,
    store: &mut DeviceStore,
    config: Config,
    resources: &mut Res,
) -> chunk_sync_embassy::Report {
    let (handle, mut runner) = match Runner::<_, _, 8, 4>::new(uart, store, config, resources) {
        Ok(parts) => parts,
        Err(e) => {
            hprintln!("chunk-sync firmware: bad configuration: {}", e);
            halt()
        }
    };
    match runner.run().await {
        Ok(report) if handle.progress().finished => report,
        Ok(_) => {
            hprintln!("chunk-sync firmware: the session ended unfinished");
            halt()
        }
        Err(e) => {
            hprintln!("chunk-sync firmware: sync failed: {}", e);
            halt()
        }
    }
}

#[embassy_executor::task]
async fn device() {
    hprintln!(
        "chunk-sync firmware: RAM of Session<8, 4> {} B, {} {} B, Resources<1024, 1024, 2048> {} B, Throttle {} B",
        core::mem::size_of::<chunk_sync_core::session::Session<8, 4>>(),
        STORE_NAME,
        core::mem::size_of::<DeviceStore>(),
        core::mem::size_of::<Res>(),
        core::mem::size_of::<chunk_sync_core::Throttle>()
    );
    let store = open_store().await;
    let chunk_buf = CHUNK_BUF.init([0; MAX_CHUNK]);
    let own = write_log(store, chunk_buf).await;
    let config = Config {
        max_frame: 1024,
        max_chunk_len: CHUNK_LIMIT as u32,
        window: 4,
        idle_timeout: Duration::from_secs(30),
        ..Config::new(DEVICE)
    };
    let resources = RESOURCES.init(Resources::new());
    let mut uart = uart::Uart0::new();

    // First session: the host garbles a frame on purpose. The device must refuse it with a
    // typed error, keep its store intact and be able to sync again.
    expect_refusal(
        &mut uart,
        store,
        config,
        resources,
        own,
        |e| matches!(e, SessionError::Frame(_)),
        "refused a garbled frame",
    )
    .await;

    // Second session: the host sends the start of a frame and falls silent. The device
    // must give up after its idle timeout with a typed error, its store intact.
    let impatient = Config {
        idle_timeout: Duration::from_secs(1),
        ..config
    };
    expect_refusal(
        &mut uart,
        store,
        impatient,
        resources,
        own,
        |e| matches!(e, SessionError::TimedOut),
        "gave up on a silent peer after a truncated frame",
    )
    .await;

    // Third session: a real sync, both ways.
    let report = sync_both_ways(&mut uart, store, config, resources).await;
    let held = store.chunk_count().await.unwrap_or(0);
    let verified = all_verified(store, chunk_buf).await;
    let golden = golden_chunk_matches();
    hprintln!(
        "chunk-sync firmware: sealed {} chunks, fetched {} ({} bytes), failed {}, store holds {} chunks, all verified: {}, golden chunk hash matches: {}, in {} ms",
        own,
        report.synced_chunks,
        report.bytes_transferred,
        report.failed_chunks,
        held,
        verified,
        golden,
        report.elapsed.as_millis()
    );
    let converged = golden
        && verified
        && report.failed_chunks == 0
        && report.synced_chunks > 0
        && held == own + report.synced_chunks as usize;
    debug::exit(if converged {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
}

#[cortex_m_rt::entry]
fn main() -> ! {
    let Some(peripherals) = cortex_m::Peripherals::take() else {
        halt()
    };
    time_driver::init(peripherals.SYST);
    let executor = EXECUTOR.init(Executor::new());
    executor.run(|spawner: Spawner| match device() {
        Ok(token) => spawner.spawn(token),
        Err(_) => debug::exit(debug::EXIT_FAILURE),
    })
}
