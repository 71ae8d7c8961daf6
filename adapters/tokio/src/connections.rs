//! The connections a node has accepted: a bounded table in which a connection that has
//! not finished its handshake gives its place to a new one.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::task::AbortHandle;
use tracing::debug;

/// The connections a node has accepted, by the order they came in.
#[derive(Debug)]
pub(crate) struct Connections {
    max: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    live: BTreeMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    handshaken: bool,
    task: Option<AbortHandle>,
}

impl Connections {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            table: Mutex::default(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes room for a new connection and returns its id, or `None` if every place is
    /// taken by a connection that finished its handshake. The oldest connection still in
    /// its handshake gives up its place.
    pub(crate) fn admit(&self) -> Option<u64> {
        let mut table = self.table();
        if table.live.len() >= self.max {
            let oldest = table
                .live
                .iter()
                .find(|(_, e)| !e.handshaken)
                .map(|(id, _)| *id)?;
            if let Some(task) = table.live.remove(&oldest).and_then(|e| e.task) {
                task.abort();
            }
            debug!(
                connection = oldest,
                "dropped to make room for a new connection"
            );
        }
        let id = table.next;
        table.next += 1;
        table.live.insert(
            id,
            Entry {
                handshaken: false,
                task: None,
            },
        );
        Some(id)
    }

    pub(crate) fn started(&self, id: u64, task: AbortHandle) {
        if let Some(entry) = self.table().live.get_mut(&id) {
            entry.task = Some(task);
        }
    }

    /// The connection's peer has sent its `Hello`.
    pub(crate) fn handshaken(&self, id: u64) {
        if let Some(entry) = self.table().live.get_mut(&id) {
            entry.handshaken = true;
        }
    }

    pub(crate) fn closed(&self, id: u64) {
        self.table().live.remove(&id);
    }

    pub(crate) fn len(&self) -> usize {
        self.table().live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_gives_the_oldest_unfinished_handshake_s_place_to_a_new_connection() {
        let c = Connections::new(2);
        let a = c.admit().unwrap();
        let b = c.admit().unwrap();
        c.handshaken(b);
        let d = c.admit().unwrap();
        assert_eq!(c.len(), 2);
        assert!(
            !c.table().live.contains_key(&a),
            "the oldest in its handshake left"
        );
        c.handshaken(d);
        assert_eq!(c.admit(), None, "every place holds an open session");
        c.closed(b);
        assert!(c.admit().is_some());
    }
}
