//! An embassy-driven node whose peer stops taking bytes gives up after its idle timeout,
//! in embassy's mock time, instead of waiting on the write forever. (A file of its own: the
//! mock driver is a process-wide clock.)

mod support;

use std::convert::Infallible;

use chunk_sync_core::session::{Config, Error as SessionError};
use chunk_sync_core::store::RamStore;
use chunk_sync_core::{Duration, NodeId};
use chunk_sync_embassy::{Error, Resources, Runner};
use support::MockClock;

/// A transport whose reads and writes never complete: a peer that stopped reading and
/// never says anything.
struct Stalled;

impl embedded_io_async::ErrorType for Stalled {
    type Error = Infallible;
}

impl embedded_io_async::Read for Stalled {
    async fn read(&mut self, _: &mut [u8]) -> Result<usize, Infallible> {
        std::future::pending().await
    }
}

impl embedded_io_async::Write for Stalled {
    async fn write(&mut self, _: &[u8]) -> Result<usize, Infallible> {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_takes_no_bytes_times_the_session_out() {
    let clock = MockClock::start(embassy_time::Duration::from_millis(10));

    let mut store = Box::new(RamStore::<4, 4096>::new());
    let mut resources = Box::new(Resources::<1024, 1024, 1024>::new());
    let config = Config {
        max_frame: 1024,
        idle_timeout: Duration::from_secs(2),
        ..Config::new(NodeId(7))
    };
    let started = embassy_time::Instant::now();
    let (_handle, mut runner): (_, Runner<'_, _, _, 8, 2>) =
        Runner::new(Stalled, &mut *store, config, &mut resources).unwrap();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(20), runner.run())
        .await
        .expect("the runner gives up on its own");
    clock.stop().await;

    assert!(
        matches!(outcome, Err(Error::Protocol(SessionError::Stalled))),
        "{outcome:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= embassy_time::Duration::from_secs(2)
            && waited < embassy_time::Duration::from_secs(3),
        "gave up after {waited:?} of mock time"
    );
}
