//! chunk-sync on a Cortex-M3 in QEMU (`lm3s6965evb`): the device writes an event log,
//! seals it into chunks, refuses a garbled and a truncated handshake message, then keeps
//! a live session with a host node over UART0 on a secure link (Noise XX: each side
//! proves its key, every frame travels sealed, the device lets in the host's key only):
//! both sides fetch what they lack, the device appends events from a timer while the
//! session runs and the host answers each chunk of them with one of its own (an echo,
//! timed in device time). The device verifies what it holds, prints its result through
//! semihosting and exits with a status code.
//!
//! Run by `.ci/run` (see `firmware/qemu-lm3s6965/README.md`).
#![no_std]
#![no_main]
#![deny(unsafe_code)]

mod keys;
#[cfg(feature = "flash")]
mod ram_flash;
mod samples;
mod stack;
mod time_driver;
mod uart;

use core::cell::Cell;

use chunk_sync_core::chunk::{ChunkView, Chunker, Push, SealPolicy};
use chunk_sync_core::recon::KeyRange;
use chunk_sync_core::secure::{Handshake, Keypair, Role};
use chunk_sync_core::session::{Config, Error as SessionError};
use chunk_sync_core::{ChunkHash, Duration, Event, NodeId, Privacy, Span};
use chunk_sync_embassy::secure::Peers;
use chunk_sync_embassy::{Handle, Log, Resources, Runner, SharedStore, Store};
use cortex_m_semihosting::{debug, hprintln};
use embassy_executor::{Executor, Spawner};
use embassy_futures::join::join;
use embassy_futures::select::{Either, select};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::mutex::Mutex;
use embassy_time::{Instant, Timer};
use keys::{DEVICE, DEVICE_SECRET, HOST_KEY, PEERS};
use static_cell::StaticCell;

static KEYS: StaticCell<Keypair> = StaticCell::new();
/// The host's node id, its key's (checked at boot).
const HOST: NodeId = NodeId(0xf6d0_e27e_c0ee_0ebe);
/// Events the device writes before any session; every fifth is private.
const EVENTS: u64 = 40;
/// Events the device appends during the live session, one every `LIVE_PERIOD_MS`.
const LIVE_EVENTS: usize = 12;
const LIVE_PERIOD_MS: u64 = 250;
/// The live log seals a chunk once its first event is this old.
const SEAL_DELAY_MS: u64 = 100;

/// The device's store: 32 chunks in 8 KiB of RAM (the rest of the 64 KiB is statics and
/// the stack, whose high-water mark the run prints).
#[cfg(not(feature = "flash"))]
type DeviceStore = chunk_sync_core::store::RamStore<32, 8192>;
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
const STORE_NAME: &str = "RamStore<32, 8192>";
#[cfg(feature = "flash")]
const STORE_NAME: &str = "FlashStore<_, 32, 1024> (flash itself: 16384 B)";
/// The device's chunk buffers: 2 KiB, or 1 KiB beside the flash store, whose chunks are
/// smaller (its RAM goes to the modelled flash, and the stack needs the rest).
#[cfg(not(feature = "flash"))]
const MAX_CHUNK: usize = 2048;
#[cfg(feature = "flash")]
const MAX_CHUNK: usize = 1024;
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
        let privacy = if seq % 5 == 4 {
            Privacy::Private
        } else {
            Privacy::Public
        };
        if let Err(e) = log
            .append(&samples::sample(DEVICE, seq, privacy, &mut body))
            .await
        {
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

/// The core's golden chunks (`core/src/chunk/tests.rs`), sealed on this target: the same
/// events must give the same hash on every architecture, unsigned and signed (Ed25519
/// signatures are deterministic).
fn golden_chunks_match() -> bool {
    const GOLDEN: &str = "5e5a11d1a7ba281b85c42b701591b33db18395a708788dc0bae710f1442f4dc9";
    const GOLDEN_SIGNED: &str = "5f503489deb6e3a70ebbdecc80c8ba06d415989234fe3c44bd3e48fa1e4df490";
    let keys = Keypair::from_secret([7; 32]);
    let unsigned = golden_chunk(NodeId(7), None, |seq| {
        if seq == 1 {
            Privacy::Shareable
        } else {
            Privacy::Public
        }
    });
    let signed = golden_chunk(keys.node_id(), Some(&keys), |_| Privacy::Public);
    unsigned == GOLDEN.parse().ok() && signed == GOLDEN_SIGNED.parse().ok()
}

/// The hash of three events of `origin` at 0, 1 and 2, sealed (and signed by `keys`).
fn golden_chunk(
    origin: NodeId,
    keys: Option<&Keypair>,
    privacy: impl Fn(u64) -> Privacy,
) -> Option<ChunkHash> {
    let mut buf = [0u8; 256];
    let mut chunker = Chunker::new(origin, 4, 0, &mut buf).ok()?;
    if let Some(keys) = keys {
        chunker.sign_with(keys).ok()?;
    }
    for seq in 0..3u64 {
        let payload = [seq as u8; 2];
        let event = Event {
            origin,
            seq,
            timestamp: 1_000 + seq,
            kind: "t",
            privacy: privacy(seq),
            payload: &payload,
        };
        if chunker.push(&event) != Ok(Push::Added) {
            return None;
        }
    }
    chunker.seal().map(|sealed| sealed.id)
}

/// Device time, in microseconds, of the public-key operations a secure device runs (each
/// the mean of eight): an X25519 scalar multiplication (a Noise XX handshake costs each
/// side four), a key pair from its secret (one Ed25519 base-point multiplication), and
/// signing and verifying a chunk (verifying includes reading the key, as the first chunk
/// of an origin in a session does).
fn crypto_timings() -> [u64; 4] {
    let keys = Keypair::from_secret(DEVICE_SECRET);
    let mut buf = [0u8; 256];
    let mut chunk = [0u8; 256];
    let mut len = 0;
    if let Ok(mut chunker) = Chunker::new(DEVICE, 4, 0, &mut buf) {
        let event = Event {
            origin: DEVICE,
            seq: 0,
            timestamp: 0,
            kind: "t",
            privacy: Privacy::Public,
            payload: &[0x5a; 64],
        };
        if chunker.sign_with(&keys).is_ok()
            && chunker.push(&event) == Ok(Push::Added)
            && let Some(sealed) = chunker.seal()
        {
            len = sealed.bytes.len();
            chunk[..len].copy_from_slice(sealed.bytes);
        }
    }
    let Ok(view) = ChunkView::parse(&chunk[..len]) else {
        return [0; 4];
    };
    let time = |op: &mut dyn FnMut(u8) -> u8| {
        let started = Instant::now();
        for i in 0..8u8 {
            core::hint::black_box(op(i));
        }
        started.elapsed().as_micros() / 8
    };
    let x25519 =
        time(&mut |i| x25519_dalek::x25519([i; 32], x25519_dalek::X25519_BASEPOINT_BYTES)[0]);
    let keypair = time(&mut |i| Keypair::from_secret([i; 32]).public().0[0]);
    let sign = time(&mut |i| keys.sign_chunk(&chunk[..len - usize::from(i)])[0]);
    let mut held = 0;
    let verify = time(&mut |_| {
        held += u8::from(keys.public().verify_chunk(&view).is_ok());
        held
    });
    if held == 8 {
        [x25519, keypair, sign, verify]
    } else {
        [0; 4]
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

/// The device's side of a secure link: its keys, and how many handshakes it began.
struct Link {
    keys: &'static Keypair,
    sessions: Cell<u32>,
}

impl Link {
    /// A handshake for the next session, which the device initiates.
    ///
    /// QEMU models no random number generator for this machine, so the ephemeral secret
    /// is derived from the device's secret, the session's number and the time since boot:
    /// distinct within a boot, but repeated by a QEMU run that replays the same boot. A
    /// real device passes 32 bytes from its hardware random number generator instead.
    fn handshake(&self) -> Handshake {
        let n = self.sessions.get();
        self.sessions.set(n.wrapping_add(1));
        let mut material = [0u8; 44];
        material[..32].copy_from_slice(self.keys.secret());
        material[32..36].copy_from_slice(&n.to_le_bytes());
        material[36..].copy_from_slice(&Instant::now().as_ticks().to_le_bytes());
        let entropy =
            blake3::derive_key("chunk-sync qemu firmware 2026 session entropy", &material);
        Handshake::new(self.keys, Role::Initiator, entropy)
    }

    /// A runner for a secure session over `uart` with the host, and its handle.
    fn runner<'r, S: Store>(
        &self,
        uart: &'r mut uart::Uart0,
        store: S,
        config: Config,
        resources: &'r mut Res,
    ) -> (Handle<'r>, Runner<'r, &'r mut uart::Uart0, S, 8, 4>) {
        let peers = Peers::only(&PEERS);
        match Runner::new_secure(uart, store, config, resources, self.handshake(), peers) {
            Ok(parts) => parts,
            Err(e) => {
                hprintln!("chunk-sync firmware: bad configuration: {}", e);
                halt()
            }
        }
    }
}

/// Runs a session the host spoils on purpose; halts unless it ends with the expected error
/// and leaves the store as it was.
#[allow(clippy::too_many_arguments)]
async fn expect_refusal(
    link: &Link,
    uart: &mut uart::Uart0,
    mut store: Shared,
    config: Config,
    resources: &mut Res,
    own: usize,
    expected: fn(&SessionError) -> bool,
    what: &str,
) {
    // The runner is made before its future is awaited (not inside a `match` across the
    // await), so that the task does not hold both.
    let (_, mut runner) = link.runner(uart, store, config, resources);
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
    // A moment before the next handshake, as a device that retries would wait.
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
    link: &Link,
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
    let (handle, mut runner) = link.runner(uart, log.store(), config, resources);
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
        "chunk-sync firmware: RAM of Session<8, 4> {} B, Runner (its conduit and secure link) {} B, handshake state {} B, {} {} B, Resources<1024, 1024, {}> {} B, Throttle {} B",
        core::mem::size_of::<chunk_sync_core::session::Session<8, 4>>(),
        core::mem::size_of::<Runner<'static, &'static mut uart::Uart0, Shared, 8, 4>>(),
        core::mem::size_of::<Handshake>(),
        STORE_NAME,
        core::mem::size_of::<DeviceStore>(),
        MAX_CHUNK,
        core::mem::size_of::<Res>(),
        core::mem::size_of::<chunk_sync_core::Throttle>()
    );
    let keys = KEYS.init(Keypair::from_secret(DEVICE_SECRET));
    if keys.node_id() != DEVICE || HOST_KEY.node_id() != HOST {
        hprintln!("chunk-sync firmware: a node id is not its key's");
        halt()
    }
    let link = Link {
        keys,
        sessions: Cell::new(0),
    };
    let store = SharedStore::new(SHARED.init(Mutex::new(open_store().await)));
    let chunk_buf = CHUNK_BUF.init([0; MAX_CHUNK]);
    // The device's log seals ranges of 10 sequence numbers, or a chunk whose first event
    // is `SEAL_DELAY_MS` old.
    let policy = SealPolicy {
        max_bytes: CHUNK_LIMIT,
        max_delay: Some(Duration::from_millis(SEAL_DELAY_MS)),
    };
    // Its chunks are signed with its key: the host takes no other.
    let Ok(log) = DeviceLog::new(store, DEVICE, 10, 0, policy).and_then(|l| l.signed_by(keys))
    else {
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

    // First session: the host answers the device's first handshake message with a garbled
    // one on purpose. The device must refuse it with a typed error, keep its store intact
    // and be able to sync again.
    expect_refusal(
        &link,
        &mut uart,
        store,
        config,
        resources,
        own,
        |e| matches!(e, SessionError::Link(_)),
        "refused a garbled handshake message",
    )
    .await;

    // Second session: the host sends the start of its handshake message and falls silent.
    // The device must give up after its handshake timeout with a typed error, its store
    // intact.
    let impatient = Config {
        handshake_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..config
    };
    expect_refusal(
        &link,
        &mut uart,
        store,
        impatient,
        resources,
        own,
        |e| matches!(e, SessionError::HandshakeTimedOut | SessionError::TimedOut),
        "gave up on a silent peer after a truncated handshake message",
    )
    .await;

    // Third session: live. Both sides fetch what they lack, then the device appends events
    // while the host echoes each chunk of them.
    let (report, rtt) = live_session(&link, &mut uart, log, config, resources, chunk_buf).await;
    let mut store = log.store();
    let held = store.chunk_count().await.unwrap_or(0);
    let verified = all_verified(store, chunk_buf).await;
    let golden = golden_chunks_match();
    let [x25519_us, keypair_us, sign_us, verify_us] = crypto_timings();
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
    hprintln!(
        "chunk-sync firmware: device time (mean of 8): X25519 {} us, key pair {} us, sign a chunk {} us, verify a chunk {} us",
        x25519_us,
        keypair_us,
        sign_us,
        verify_us
    );
    let (used, room) = stack::high_water();
    hprintln!(
        "chunk-sync firmware: stack high-water mark {} B of the {} B between the statics and the top of RAM",
        used,
        room
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
    stack::paint();
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

// cortex-m-rt declares the HardFault handler `unsafe`; it only reports and exits.
#[allow(unsafe_code)]
#[cortex_m_rt::exception]
unsafe fn HardFault(frame: &cortex_m_rt::ExceptionFrame) -> ! {
    hprintln!("chunk-sync firmware: hard fault at pc {:#x}", frame.pc());
    halt()
}
