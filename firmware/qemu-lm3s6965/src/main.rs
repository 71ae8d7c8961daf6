//! chunk-sync on a Cortex-M3 in QEMU (`lm3s6965evb`): the device writes an event log,
//! seals it into chunks, refuses a garbled and a truncated frame, then keeps a live
//! session with a host node over UART0: both sides fetch what they lack, the device
//! appends events from a timer while the session runs and the host answers each chunk of
//! them with one of its own (an echo, timed in device time). The device verifies what it
//! holds, prints its result through semihosting and exits with a status code.
//!
//! Run by `.ci/run` (see `firmware/qemu-lm3s6965/README.md`).
#![no_std]
#![no_main]
#![deny(unsafe_code)]

#[cfg(feature = "flash")]
mod ram_flash;
mod time_driver;
mod uart;

use core::cell::Cell;

use chunk_sync_core::chunk::{ChunkView, Chunker, Push, SealPolicy};
use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::session::{Config, Error as SessionError};
use chunk_sync_core::{ChunkHash, Duration, Event, NodeId, Privacy, Span};
use chunk_sync_embassy::{Handle, Log, Resources, Runner, SharedStore, Store};
use cortex_m_semihosting::{debug, hprintln};
use embassy_executor::{Executor, Spawner};
use embassy_futures::join::join;
use embassy_futures::select::{Either, select};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::mutex::Mutex;
use embassy_time::{Instant, Timer};
use static_cell::StaticCell;

/// This device's node id.
const DEVICE: NodeId = NodeId(0xD1);
/// The host's node id (`tests/src/bin/firmware-peer.rs`).
const HOST: NodeId = NodeId(1);
/// Events the device writes before any session; every fifth is private.
const EVENTS: u64 = 40;
/// Events the device appends during the live session, one every `LIVE_PERIOD_MS`.
const LIVE_EVENTS: usize = 12;
const LIVE_PERIOD_MS: u64 = 250;
/// The live log seals a chunk once its first event is this old.
const SEAL_DELAY_MS: u64 = 100;

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
/// Where the device reads chunks back to check them.
static CHUNK_BUF: StaticCell<[u8; MAX_CHUNK]> = StaticCell::new();
static EXECUTOR: StaticCell<Executor> = StaticCell::new();
/// The store, shared by the live session's runner and the device's log.
static SHARED: StaticCell<Mutex<CriticalSectionRawMutex, &'static mut DeviceStore>> =
    StaticCell::new();
type DeviceLog = Log<'static, CriticalSectionRawMutex, &'static mut DeviceStore, CHUNK_LIMIT>;
type Shared = SharedStore<'static, CriticalSectionRawMutex, &'static mut DeviceStore>;
static LOG: StaticCell<DeviceLog> = StaticCell::new();

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

/// Writes the device's log before any session (every fifth event private) and seals its
/// tail; returns the number of chunks stored.
async fn write_log(log: &DeviceLog) -> usize {
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
        if let Err(e) = log.append(&event).await {
            hprintln!("chunk-sync firmware: cannot append to its own log: {}", e);
            halt()
        }
    }
    if let Err(e) = log.flush().await {
        hprintln!("chunk-sync firmware: cannot seal its own log: {}", e);
        halt()
    }
    let mut store = log.store();
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
async fn all_verified(mut store: Shared, buf: &mut [u8]) -> bool {
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
    mut store: Shared,
    config: Config,
    resources: &mut Res,
    own: usize,
    expected: fn(&SessionError) -> bool,
    what: &str,
) {
    // The runner is taken out of the `match` before its future is awaited, so that the
    // task does not hold both.
    let mut runner = match Runner::<_, _, 8, 4>::new(uart, store, config, resources) {
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

/// Device time of each live event's append and of its echo's arrival, in ms.
struct Timings {
    appended: [Cell<u64>; LIVE_EVENTS],
    echoed: [Cell<Option<u64>>; LIVE_EVENTS],
}

impl Timings {
    fn new() -> Self {
        Self {
            appended: core::array::from_fn(|_| Cell::new(0)),
            echoed: core::array::from_fn(|_| Cell::new(None)),
        }
    }

    fn all_echoed(&self) -> bool {
        self.echoed.iter().all(|e| e.get().is_some())
    }

    /// Round trips in ms, sorted.
    fn round_trips(&self) -> [u64; LIVE_EVENTS] {
        let mut rtt = [u64::MAX; LIVE_EVENTS];
        for (i, slot) in rtt.iter_mut().enumerate() {
            if let Some(at) = self.echoed[i].get() {
                *slot = at.saturating_sub(self.appended[i].get());
            }
        }
        rtt.sort_unstable();
        rtt
    }
}

/// One live event a tick: sequence numbers from `EVENTS` on.
async fn sensor(log: &DeviceLog, timings: &Timings) {
    let mut body = [0u8; 16];
    for (i, appended) in timings.appended.iter().enumerate() {
        Timer::after_millis(LIVE_PERIOD_MS).await;
        let seq = EVENTS + i as u64;
        body.iter_mut()
            .enumerate()
            .for_each(|(k, b)| *b = (seq as u8).wrapping_add(k as u8));
        let event = Event {
            origin: DEVICE,
            seq,
            timestamp: Instant::now().as_millis(),
            kind: "adc.live",
            privacy: Privacy::Public,
            payload: &body,
        };
        appended.set(Instant::now().as_millis());
        if let Err(e) = log.append(&event).await {
            hprintln!("chunk-sync firmware: append failed: {}", e);
            halt()
        }
    }
}

/// Watches the store for the host's echoes (each names the end of a device chunk the host
/// stored) and closes the session once every live event was echoed.
async fn echoes(
    store: SharedStore<'static, CriticalSectionRawMutex, &'static mut DeviceStore>,
    timings: &Timings,
    handle: Handle<'_>,
    buf: &mut [u8],
) {
    // Host chunks are small and few: 8 at a time covers them in one page or two.
    let mut page = [(Span::default(), ChunkHash::default()); 8];
    let mut from = 0;
    while !timings.all_echoed() {
        Timer::after_millis(2).await;
        let mut store = store;
        let range = KeyRange {
            origin: HOST,
            lo: from,
            hi: u64::MAX,
        };
        let Ok(n) = store.chunks_in(&range, &mut page).await else {
            halt()
        };
        for (span, id) in &page[..n] {
            let Ok(Some(len)) = store.read_into(id, buf).await else {
                halt()
            };
            let Ok(view) = ChunkView::parse(&buf[..len]) else {
                halt()
            };
            let now = Instant::now().as_millis();
            for event in view.events().flatten() {
                let Ok(echo) = <[u8; 8]>::try_from(event.payload) else {
                    continue;
                };
                // The echo names where a device chunk ends: every live event below it
                // is acknowledged.
                let end = u64::from_le_bytes(echo);
                for (i, echoed) in timings.echoed.iter().enumerate() {
                    if EVENTS + (i as u64) < end && echoed.get().is_none() {
                        echoed.set(Some(now));
                    }
                }
            }
            from = span.end_seq;
        }
    }
    handle.close();
}

/// The live session: reconciles both ways, then follows both logs while the device
/// appends; halts unless every live event is echoed and the session completes.
async fn live_session(
    uart: &mut uart::Uart0,
    log: &'static DeviceLog,
    config: Config,
    resources: &mut Res,
    buf: &mut [u8],
) -> (chunk_sync_embassy::Report, [u64; LIVE_EVENTS]) {
    let config = Config {
        live: true,
        ..config
    };
    let (handle, mut runner) = match Runner::<_, _, 8, 4>::new(uart, log.store(), config, resources)
    {
        Ok(parts) => parts,
        Err(e) => {
            hprintln!("chunk-sync firmware: bad configuration: {}", e);
            halt()
        }
    };
    let Some(follower) = log.follow() else { halt() };
    runner.follow(follower);
    let timings = Timings::new();
    let device = join(
        runner.run(),
        join(
            sensor(log, &timings),
            echoes(log.store(), &timings, handle, buf),
        ),
    );
    let result = match select(device, log.seal_when_due()).await {
        Either::First((result, _)) => result,
        Either::Second(e) => {
            hprintln!("chunk-sync firmware: sealing failed: {}", e);
            halt()
        }
    };
    match result {
        Ok(report) if handle.progress().finished && timings.all_echoed() => {
            (report, timings.round_trips())
        }
        Ok(_) => {
            hprintln!("chunk-sync firmware: the live session ended before every echo");
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
    let store = SharedStore::new(SHARED.init(Mutex::new(open_store().await)));
    let chunk_buf = CHUNK_BUF.init([0; MAX_CHUNK]);
    // The device's log seals ranges of 10 sequence numbers, or a chunk whose first event
    // is `SEAL_DELAY_MS` old.
    let policy = SealPolicy {
        max_bytes: CHUNK_LIMIT,
        max_delay: Some(Duration::from_millis(SEAL_DELAY_MS)),
    };
    let Ok(log) = DeviceLog::new(store, DEVICE, 10, 0, policy) else {
        halt()
    };
    let log = LOG.init(log);
    let own = write_log(log).await;
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

    // Third session: live. Both sides fetch what they lack, then the device appends events
    // while the host echoes each chunk of them.
    let (report, rtt) = live_session(&mut uart, log, config, resources, chunk_buf).await;
    let mut store = log.store();
    let held = store.chunk_count().await.unwrap_or(0);
    let verified = all_verified(store, chunk_buf).await;
    let golden = golden_chunk_matches();
    let live_chunks = store
        .chunks_in(
            &KeyRange {
                origin: DEVICE,
                lo: EVENTS,
                hi: u64::MAX,
            },
            &mut [(Span::default(), ChunkHash::default()); 16],
        )
        .await
        .unwrap_or(0);
    hprintln!(
        "chunk-sync firmware: sealed {} chunks, then {} live events in {} chunks; fetched {} ({} bytes), failed {}, store holds {} chunks, all verified: {}, golden chunk hash matches: {}, live session {} ms",
        own,
        LIVE_EVENTS,
        live_chunks,
        report.synced_chunks,
        report.bytes_transferred,
        report.failed_chunks,
        held,
        verified,
        golden,
        report.elapsed.as_millis()
    );
    hprintln!(
        "chunk-sync firmware: echo round trip in device time (append, seal after {} ms, to host, host seals its echo, to device): min {} ms, p50 {} ms, max {} ms over {} events",
        SEAL_DELAY_MS,
        rtt[0],
        rtt[LIVE_EVENTS / 2],
        rtt[LIVE_EVENTS - 1],
        LIVE_EVENTS
    );
    let converged = golden
        && verified
        && report.failed_chunks == 0
        && report.synced_chunks > 0
        && live_chunks > 0
        && held == own + live_chunks + report.synced_chunks as usize;
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
