//! The connections a node has accepted: a bounded table, with a bound for each address,
//! in which a connection that has not finished its handshake gives its place to a new
//! one: the oldest of the address with the most such connections, so that a flood from
//! one address displaces only its own. An IPv6 address counts by its /64 prefix: one host
//! commonly holds a whole /64, and could otherwise come from as many addresses as it
//! likes.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::task::AbortHandle;
use tracing::debug;

/// The connections a node has accepted, by the order they came in.
#[derive(Debug)]
pub(crate) struct Connections {
    max: usize,
    /// The most from one address.
    per_address: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    live: BTreeMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Where the connection comes from.
    from: IpAddr,
    handshaken: bool,
    task: Option<AbortHandle>,
}

impl Connections {
    /// A table of `max` connections, at most `per_address` of them from one address.
    pub(crate) fn new(max: usize, per_address: usize) -> Self {
        Self {
            max: max.max(1),
            per_address: per_address.max(1),
            table: Mutex::default(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes room for a new connection from `from` (an IPv4 address seen through an IPv6
    /// socket given as the IPv4 address it is) and returns its id, or `None` if every
    /// place is taken by a connection that finished its handshake. A connection still in
    /// its handshake gives up its place: the oldest of those from the address that has
    /// the most of them (the oldest address of those that have as many).
    pub(crate) fn admit(&self, from: IpAddr) -> Option<u64> {
        let from = source(from);
        let mut table = self.table();
        let mine = table.live.values().filter(|e| e.from == from).count();
        if mine >= self.per_address {
            // As many from this address as one may have: only one of its own, still in
            // its handshake, makes room.
            let oldest = table
                .live
                .iter()
                .find(|(_, e)| e.from == from && !e.handshaken)
                .map(|(id, _)| *id)?;
            if let Some(task) = table.live.remove(&oldest).and_then(|e| e.task) {
                task.abort();
            }
            debug!(connection = oldest, %from, "dropped for a newer one from its address");
        } else if table.live.len() >= self.max {
            let mut unfinished: HashMap<IpAddr, (usize, u64)> = HashMap::new();
            for (id, e) in table.live.iter().filter(|(_, e)| !e.handshaken) {
                // Ids ascend: the first seen of an address is its oldest.
                unfinished.entry(e.from).or_insert((0, *id)).0 += 1;
            }
            let (_, oldest) = unfinished
                .into_values()
                .max_by_key(|(count, oldest)| (*count, std::cmp::Reverse(*oldest)))?;
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
                from,
                handshaken: false,
                task: None,
            },
        );
        Some(id)
    }

    pub(crate) fn started(&self, id: u64, task: AbortHandle) {
        match self.table().live.get_mut(&id) {
            Some(entry) => entry.task = Some(task),
            // It gave up its place before its task started (another listener's new
            // connection): the task ends too.
            None => task.abort(),
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

/// What connections are counted by: an IPv4 address, or an IPv6 address's /64 prefix.
fn source(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn a_full_table_gives_the_oldest_unfinished_handshake_s_place_to_a_new_connection() {
        let c = Connections::new(2, 2);
        let a = c.admit(HERE).unwrap();
        let b = c.admit(HERE).unwrap();
        c.handshaken(b);
        let d = c.admit(HERE).unwrap();
        assert_eq!(c.len(), 2);
        assert!(
            !c.table().live.contains_key(&a),
            "the oldest in its handshake left"
        );
        c.handshaken(d);
        assert_eq!(c.admit(HERE), None, "every place holds an open session");
        c.closed(b);
        assert!(c.admit(HERE).is_some());
    }

    /// A flood from one address displaces its own handshakes only.
    #[test]
    fn the_address_with_the_most_unfinished_handshakes_gives_up_a_place() {
        let flood = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));
        let c = Connections::new(4, 4);
        let honest = c.admit(HERE).unwrap();
        let flooded: Vec<u64> = (0..3).map(|_| c.admit(flood).unwrap()).collect();
        for _ in 0..100 {
            assert!(c.admit(flood).is_some());
            assert!(c.table().live.contains_key(&honest));
        }
        // A newcomer from elsewhere also takes the flood's place.
        let newcomer = c.admit(other).unwrap();
        assert!(c.table().live.contains_key(&honest) && c.table().live.contains_key(&newcomer));
        assert!(flooded.iter().all(|id| !c.table().live.contains_key(id)));
        // With as many of each, the oldest address gives up its oldest.
        let c = Connections::new(2, 2);
        let first = c.admit(HERE).unwrap();
        let _second = c.admit(flood).unwrap();
        let _ = c.admit(other).unwrap();
        assert!(!c.table().live.contains_key(&first));
    }

    /// Addresses of one IPv6 /64 count as one: a flood from many of them displaces only
    /// its own handshakes, and holds at most one address's share.
    #[test]
    fn an_ipv6_prefix_counts_as_one_address() {
        let in_prefix =
            |n: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 7, n, 0, 0, n));
        let elsewhere = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 8, 0, 0, 0, 1));
        let c = Connections::new(4, 2);
        let honest = c.admit(elsewhere).unwrap();
        for n in 0..100 {
            assert!(c.admit(in_prefix(n)).is_some());
            assert!(c.table().live.contains_key(&honest));
            assert!(c.len() <= 3, "the prefix holds at most its share of 2");
        }
        assert_eq!(source(in_prefix(1)), source(in_prefix(2)));
        assert_ne!(source(in_prefix(1)), source(elsewhere));
        assert_eq!(source(HERE), HERE);
    }

    /// One address holds at most its share: past it, only one of its own handshakes makes
    /// room, and once all of its own are open sessions, it is refused while others are
    /// let in.
    #[test]
    fn one_address_holds_at_most_its_share() {
        let one = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
        let c = Connections::new(10, 3);
        let own: Vec<u64> = (0..3).map(|_| c.admit(one).unwrap()).collect();
        let fourth = c.admit(one).unwrap();
        assert!(
            !c.table().live.contains_key(&own[0]),
            "its oldest handshake left"
        );
        assert_eq!(c.len(), 3);
        for id in [own[1], own[2], fourth] {
            c.handshaken(id);
        }
        assert_eq!(c.admit(one), None, "its share is taken by open sessions");
        assert!(c.admit(other).is_some());
    }
}
