//! chunk-sync on a Cortex-M3 in QEMU (`lm3s6965evb`): the device writes an event log,
//! seals it into chunks, syncs both ways with a host node over UART0, verifies what it
//! holds, prints one result line through semihosting and exits with a status code.
//!
//! Run by `.ci/run` (see `firmware/qemu-lm3s6965/README.md`).
#![no_std]
#![no_main]
#![deny(unsafe_code)]

mod time_driver;
mod uart;

use chunk_sync_core::chunk::{Chunker, Push};
use chunk_sync_core::session::{Config, Error as SessionError};
use chunk_sync_core::store::{ChunkStore, RamStore};
use chunk_sync_core::{ChunkHash, Duration, Event, NodeId, Privacy};
use chunk_sync_embassy::{Resources, Runner};
use cortex_m_semihosting::{debug, hprintln};
use embassy_executor::{Executor, Spawner};
use embassy_time::Timer;
use static_cell::StaticCell;

/// This device's node id.
const DEVICE: NodeId = NodeId(0xD1);
/// Events the device writes; every fifth is private.
const EVENTS: u64 = 40;

type Store = RamStore<32, 16_384>;
static STORE: StaticCell<Store> = StaticCell::new();
type Res = Resources<1024, 1024, 4096, 8>;
static RESOURCES: StaticCell<Res> = StaticCell::new();
static CHUNK_BUF: StaticCell<[u8; 2048]> = StaticCell::new();
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

/// Seals the device's log into `store`; returns the number of chunks.
fn write_log(store: &mut Store) -> usize {
    let buf = CHUNK_BUF.init([0; 2048]);
    let Ok(mut chunker) = Chunker::new(DEVICE, 10, 0, buf) else {
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
                let _ = store.insert(sealed.verified());
            }
            let _ = chunker.push(&event);
        }
    }
    if let Some(sealed) = chunker.seal() {
        let _ = store.insert(sealed.verified());
    }
    store.chunk_count().unwrap_or(0)
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
fn all_verified(store: &mut Store) -> bool {
    let mut ids = [ChunkHash::default(); 32];
    let n = store.ids_after(None, &mut ids).unwrap_or(0);
    let mut buf = [0u8; 4096];
    ids[..n]
        .iter()
        .all(|id| match store.read_into(id, &mut buf) {
            Ok(Some(len)) => id.matches(&buf[..len]),
            _ => false,
        })
}

/// Runs a session the host spoils on purpose; halts unless it ends with the expected error
/// and leaves the store as it was.
async fn expect_refusal(
    uart: &mut uart::Uart0,
    store: &mut Store,
    config: Config,
    resources: &mut Res,
    own: usize,
    expected: fn(&SessionError) -> bool,
    what: &str,
) {
    let result = match Runner::<_, _, 8, 4>::new(uart, &mut *store, config, resources) {
        Ok((_, mut runner)) => runner.run().await,
        Err(e) => {
            hprintln!("chunk-sync firmware: bad configuration: {}", e);
            halt()
        }
    };
    let intact = store.chunk_count() == Ok(own);
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

#[embassy_executor::task]
async fn device() {
    hprintln!(
        "chunk-sync firmware: RAM of Session<8, 4> {} B, RamStore<32, 16384> {} B, Resources<1024, 1024, 4096, 8> {} B, Throttle {} B",
        core::mem::size_of::<chunk_sync_core::session::Session<8, 4>>(),
        core::mem::size_of::<Store>(),
        core::mem::size_of::<Resources<1024, 1024, 4096, 8>>(),
        core::mem::size_of::<chunk_sync_core::Throttle>()
    );
    let store = STORE.init(RamStore::new());
    let own = write_log(store);
    let config = Config {
        max_frame: 1024,
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
    let runner = Runner::<_, _, 8, 4>::new(&mut uart, &mut *store, config, resources);
    let (handle, mut runner) = match runner {
        Ok(parts) => parts,
        Err(e) => {
            hprintln!("chunk-sync firmware: bad configuration: {}", e);
            debug::exit(debug::EXIT_FAILURE);
            return;
        }
    };
    let report = match runner.run().await {
        Ok(report) => report,
        Err(e) => {
            hprintln!("chunk-sync firmware: sync failed: {}", e);
            debug::exit(debug::EXIT_FAILURE);
            return;
        }
    };
    drop(runner);
    if !handle.progress().finished {
        halt()
    }
    let held = store.chunk_count().unwrap_or(0);
    let verified = all_verified(store);
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
