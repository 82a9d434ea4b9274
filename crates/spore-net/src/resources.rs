//! The resource manager: one memory budget for every buffer peers can fill, with a scope per
//! connection inside it.
//!
//! go-libp2p's resource manager is the model: memory is reserved from nested scopes (the node,
//! then the connection) before it is used, and a reservation that does not fit is either waited
//! for (backpressure) or refused (the frame is dropped, the connection is refused). Four uses
//! share the node's budget ([`Limits::max_memory`]):
//!
//! - **connections**: a fixed charge per connection: [`CONNECTION_STATE`] for QUIC's and the
//!   runtime's bookkeeping, and [`FRAME_ALLOWANCE`], frame memory the connection is guaranteed
//!   even when peers have taken the rest of the budget (so a flood cannot starve an honest
//!   peer's pings and lookups);
//! - **windows**: each connection's QUIC receive and send windows. They bound what QUIC may
//!   buffer for the connection (received and not yet read; written and not yet acknowledged),
//!   so the window *is* the reservation. A connection starts with [`Limits::base_window`] each
//!   way, enough for control traffic; while bulk data (swarm chunks) flows it grows towards the
//!   transport's full windows as far as the budget allows, and it shrinks back once bulk traffic
//!   has stopped for [`WINDOW_IDLE`];
//! - **inbound frames**: bytes read from a peer and not yet handled: the frame decoders' partial
//!   frames and decoded messages waiting for the runtime. A reader that cannot reserve waits, so
//!   it stops reading and QUIC flow control stops the peer;
//! - **outbound frames**: frames queued for a peer and not yet written to QUIC. A frame that
//!   cannot be reserved is dropped, as a full queue drops it.
//!
//! An eighth of the budget ([`HEADROOM`]) is never reserved, for what reservations cannot see.
//!
//! Inbound and outbound frames come from the connection's guaranteed allowance first, then
//! from the shared budget, capped per connection by [`Limits::connection_memory`] so one peer
//! cannot take the whole budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Limits, TransportParams};

/// Charged per connection for QUIC's connection state and the runtime's tasks and queues.
pub const CONNECTION_STATE: usize = 64 << 10;
/// Frame memory each connection is guaranteed, reserved when it is admitted.
pub const FRAME_ALLOWANCE: usize = 256 << 10;
/// One part in this many of the budget is never reserved: headroom for what reservations
/// cannot see (the allocator's overhead, tasks' state, a connection between its handshake and
/// its admission).
pub const HEADROOM: usize = 8;
/// Bulk traffic must have stopped this long before a connection's grown windows shrink back.
pub const WINDOW_IDLE: Duration = Duration::from_secs(10);

/// What a reservation is for (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    State = 0,
    Windows = 1,
    Inbound = 2,
    Outbound = 3,
}

const USES: usize = 4;

/// The node's memory budget. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Memory(Arc<Budget>);

#[derive(Debug)]
struct Budget {
    permits: Arc<Semaphore>,
    limit: usize,
    /// `limit` less the headroom: what reservations may take.
    usable: usize,
    /// Every admitted connection's windows, by connection id, for code that has only the
    /// connection (relay circuits hold the windows of the connections they ride on).
    windows: Mutex<std::collections::HashMap<usize, std::sync::Weak<Windows>>>,
    used: [AtomicUsize; USES],
    /// Reservations refused (frames dropped, connections refused, windows not grown).
    refused: AtomicUsize,
}

/// How much of the budget is in use, by use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemoryUse {
    /// The budget, in bytes.
    pub limit: u64,
    /// Reserved in all, in bytes.
    pub used: u64,
    /// Reserved per connection: its state and its guaranteed frame allowance.
    pub state: u64,
    /// Reserved for QUIC receive and send windows.
    pub windows: u64,
    /// Reserved for frames read and not yet handled.
    pub inbound: u64,
    /// Reserved for frames queued and not yet written.
    pub outbound: u64,
    /// Reservations refused since start: a frame dropped, a connection refused, a window not
    /// grown.
    pub refused: u64,
}

impl Memory {
    /// A budget of `limit` bytes, of which [`HEADROOM`] is kept back.
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        let usable = limit - limit / HEADROOM;
        Self(Arc::new(Budget {
            permits: Arc::new(Semaphore::new(usable)),
            limit,
            usable,
            windows: Mutex::default(),
            used: Default::default(),
            refused: AtomicUsize::new(0),
        }))
    }

    /// Reserves `bytes` from the node's budget and, if given, from a connection's scope; `None`
    /// when either is short (nothing is reserved then).
    pub(crate) fn try_reserve(
        &self,
        what: Use,
        bytes: usize,
        scope: Option<&Scope>,
    ) -> Option<Reservation> {
        if let Some(own) = scope.and_then(|s| permits(&s.own, bytes)) {
            return Some(self.guaranteed(what, own));
        }
        let local = match scope {
            Some(scope) => match permits(&scope.permits, bytes) {
                Some(p) => Some(p),
                None => return self.refuse(),
            },
            None => None,
        };
        let Some(node) = permits(&self.0.permits, bytes) else {
            return self.refuse();
        };
        Some(self.reservation(what, bytes, node, local))
    }

    /// Reserves `bytes` from the connection's allowance if it has room, or else from its scope
    /// and then the node's budget, waiting until both have room. `None` if `bytes` can never
    /// fit, or the connection is gone.
    pub(crate) async fn reserve(
        &self,
        what: Use,
        bytes: usize,
        scope: &Scope,
    ) -> Option<Reservation> {
        if let Some(own) = permits(&scope.own, bytes) {
            return Some(self.guaranteed(what, own));
        }
        if bytes > scope.limit || bytes > self.0.usable {
            return None;
        }
        let n = u32::try_from(bytes).ok()?;
        let local = scope.permits.clone().acquire_many_owned(n).await.ok()?;
        let node = self.0.permits.clone().acquire_many_owned(n).await.ok()?;
        Some(self.reservation(what, bytes, node, Some(local)))
    }

    fn reservation(
        &self,
        what: Use,
        bytes: usize,
        node: OwnedSemaphorePermit,
        local: Option<OwnedSemaphorePermit>,
    ) -> Reservation {
        self.0.used[what as usize].fetch_add(bytes, Ordering::Relaxed);
        Reservation {
            budget: self.0.clone(),
            what,
            own: None,
            node: Some(node),
            local,
        }
    }

    fn guaranteed(&self, what: Use, own: OwnedSemaphorePermit) -> Reservation {
        Reservation {
            budget: self.0.clone(),
            what,
            own: Some(own),
            node: None,
            local: None,
        }
    }

    fn refuse(&self) -> Option<Reservation> {
        self.0.refused.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// An empty reservation of `what`, to merge others into.
    pub(crate) fn empty(&self, what: Use) -> Reservation {
        Reservation {
            budget: self.0.clone(),
            what,
            own: None,
            node: None,
            local: None,
        }
    }

    /// Holds the windows of connection `conn_id` grown while the hold lives (a relay circuit
    /// rides on it); `None` if the connection was not admitted or is gone.
    pub(crate) fn hold(&self, conn_id: usize) -> Option<WindowHold> {
        let windows = self
            .0
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&conn_id)?
            .upgrade()?;
        Some(windows.hold())
    }

    /// Whether `bytes` could be reserved from the shared budget now.
    pub(crate) fn has_room(&self, bytes: usize) -> bool {
        self.0.permits.available_permits() >= bytes
    }

    pub(crate) fn usage(&self) -> MemoryUse {
        let used = |u: Use| self.0.used[u as usize].load(Ordering::Relaxed) as u64;
        let (state, windows, inbound, outbound) = (
            used(Use::State),
            used(Use::Windows),
            used(Use::Inbound),
            used(Use::Outbound),
        );
        MemoryUse {
            limit: self.0.limit as u64,
            used: state + windows + inbound + outbound,
            state,
            windows,
            inbound,
            outbound,
            refused: self.0.refused.load(Ordering::Relaxed) as u64,
        }
    }
}

fn permits(sem: &Arc<Semaphore>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    let n = u32::try_from(bytes).ok()?;
    sem.clone().try_acquire_many_owned(n).ok()
}

/// Memory held for one use until dropped: from a connection's guaranteed allowance (`own`),
/// or from the shared budget (`node`) and the connection's cap (`local`, the same amount).
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<Budget>,
    what: Use,
    own: Option<OwnedSemaphorePermit>,
    node: Option<OwnedSemaphorePermit>,
    local: Option<OwnedSemaphorePermit>,
}

fn count(p: &Option<OwnedSemaphorePermit>) -> usize {
    p.as_ref().map_or(0, |p| p.num_permits())
}

impl Reservation {
    pub(crate) fn bytes(&self) -> usize {
        count(&self.own) + count(&self.node)
    }

    /// Adds `other` (of the same use and scope) to this reservation.
    pub(crate) fn merge(&mut self, mut other: Reservation) {
        merge(&mut self.own, other.own.take());
        merge(&mut self.node, other.node.take());
        merge(&mut self.local, other.local.take());
    }

    /// Splits off `bytes` of this reservation (all of it if it holds less), from the
    /// guaranteed allowance first.
    pub(crate) fn split(&mut self, bytes: usize) -> Reservation {
        let from_own = bytes.min(count(&self.own));
        let from_node = (bytes - from_own).min(count(&self.node));
        let own = split(&mut self.own, from_own);
        let node = split(&mut self.node, from_node);
        let local = split(&mut self.local, from_node);
        Reservation {
            budget: self.budget.clone(),
            what: self.what,
            own,
            node,
            local,
        }
    }
}

fn merge(into: &mut Option<OwnedSemaphorePermit>, from: Option<OwnedSemaphorePermit>) {
    match (into.as_mut(), from) {
        (Some(p), Some(q)) => p.merge(q),
        (None, Some(q)) => *into = Some(q),
        (_, None) => {}
    }
}

fn split(from: &mut Option<OwnedSemaphorePermit>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    if bytes == 0 {
        return None;
    }
    let p = from.as_mut()?;
    if p.num_permits() <= bytes {
        return from.take();
    }
    p.split(bytes)
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // The guaranteed allowance is counted with its connection, not here.
        let bytes = count(&self.node);
        self.budget.used[self.what as usize].fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A connection's own scope: its guaranteed frame allowance (reserved with the connection) and
/// its cap on what its frames may take from the shared budget.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    own: Arc<Semaphore>,
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Scope {
    /// A scope whose frames may take `limit` bytes from the shared budget, besides
    /// [`FRAME_ALLOWANCE`] of their own.
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        Self {
            own: Arc::new(Semaphore::new(FRAME_ALLOWANCE)),
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Bytes the connection's frames hold now.
    pub(crate) fn used(&self) -> usize {
        let own = FRAME_ALLOWANCE - self.own.available_permits().min(FRAME_ALLOWANCE);
        own + self.limit - self.permits.available_permits().min(self.limit)
    }

    /// Wakes and fails every waiter (the connection is gone).
    pub(crate) fn close(&self) {
        self.own.close();
        self.permits.close();
    }
}

/// A connection's QUIC windows and their reservation: base windows from admission, grown while
/// bulk data flows.
#[derive(Debug)]
pub(crate) struct Windows {
    inner: Mutex<WindowState>,
    conn_id: usize,
    /// Relay circuits riding on the connection: while any does, the windows stay grown.
    holds: AtomicUsize,
    memory: Memory,
    base: u64,
    full_receive: u64,
    full_send: u64,
}

#[derive(Debug)]
struct WindowState {
    conn: Option<quinn::Connection>,
    state: Option<Reservation>,
    base: Option<Reservation>,
    grown: Option<Reservation>,
    receive: u64,
    send: u64,
    last_bulk: Option<tokio::time::Instant>,
}

impl Windows {
    /// Reserves a new connection's base windows (and its state charge) and sets them on
    /// `conn`; `None` when the budget cannot take another connection.
    pub(crate) fn admit(
        memory: &Memory,
        conn: &quinn::Connection,
        limits: &Limits,
        transport: &TransportParams,
    ) -> Option<Arc<Self>> {
        let base = Self::base(limits, transport);
        let state = memory.try_reserve(Use::State, CONNECTION_STATE + FRAME_ALLOWANCE, None)?;
        let windows = memory.try_reserve(Use::Windows, 2 * base as usize, None)?;
        conn.set_receive_window(quinn::VarInt::from_u64(base).unwrap_or(quinn::VarInt::MAX));
        conn.set_send_window(base);
        let windows = Arc::new(Self {
            inner: Mutex::new(WindowState {
                conn: Some(conn.clone()),
                state: Some(state),
                base: Some(windows),
                grown: None,
                receive: base,
                send: base,
                last_bulk: None,
            }),
            memory: memory.clone(),
            base,
            full_receive: u64::from(transport.receive_window).max(base),
            full_send: transport.send_window.max(base),
            conn_id: conn.stable_id(),
            holds: AtomicUsize::new(0),
        });
        memory
            .0
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(conn.stable_id(), Arc::downgrade(&windows));
        Some(windows)
    }

    /// Each way's window of a connection without bulk traffic.
    fn base(limits: &Limits, transport: &TransportParams) -> u64 {
        u64::from(limits.base_window.min(transport.receive_window))
    }

    /// What [`admit`](Self::admit) reserves for a connection: its state, its frame allowance
    /// and its base windows.
    pub(crate) fn admission(limits: &Limits, transport: &TransportParams) -> usize {
        CONNECTION_STATE + FRAME_ALLOWANCE + 2 * Self::base(limits, transport) as usize
    }

    /// Keeps the windows grown until the hold is dropped.
    pub(crate) fn hold(self: &Arc<Self>) -> WindowHold {
        self.holds.fetch_add(1, Ordering::Relaxed);
        self.bulk();
        WindowHold(self.clone())
    }

    /// Bulk data moved on the connection: grow its windows if they are not grown yet, to the
    /// largest step (full, half, quarter, …) the budget has room for.
    pub(crate) fn bulk(&self) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.last_bulk = Some(tokio::time::Instant::now());
        if s.grown.is_some() || s.conn.is_none() {
            return;
        }
        let (mut receive, mut send) = (self.full_receive, self.full_send);
        while receive > self.base || send > self.base {
            let extra = (receive - self.base.min(receive)) + (send - self.base.min(send));
            if let Some(r) = self.memory.try_reserve(Use::Windows, extra as usize, None) {
                if let Some(conn) = &s.conn {
                    conn.set_receive_window(
                        quinn::VarInt::from_u64(receive.max(self.base))
                            .unwrap_or(quinn::VarInt::MAX),
                    );
                    conn.set_send_window(send.max(self.base));
                }
                s.grown = Some(r);
                s.receive = receive.max(self.base);
                s.send = send.max(self.base);
                return;
            }
            receive /= 2;
            send /= 2;
        }
    }

    /// The connection moved `bytes` (both ways) since the last call: if its windows are
    /// grown and that is more than its base windows could carry idly, it still counts as bulk.
    pub(crate) fn busy(&self, bytes: u64) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if s.grown.is_some() && bytes >= 4 * self.base {
            s.last_bulk = Some(tokio::time::Instant::now());
        }
    }

    /// Shrinks grown windows back to the base once bulk traffic has been idle for
    /// [`WINDOW_IDLE`].
    pub(crate) fn shrink_if_idle(&self) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let idle = s.last_bulk.is_none_or(|t| t.elapsed() >= WINDOW_IDLE)
            && self.holds.load(Ordering::Relaxed) == 0;
        if s.grown.is_none() || !idle {
            return;
        }
        if let Some(conn) = &s.conn {
            conn.set_receive_window(
                quinn::VarInt::from_u64(self.base).unwrap_or(quinn::VarInt::MAX),
            );
            conn.set_send_window(self.base);
        }
        s.grown = None;
        s.receive = self.base;
        s.send = self.base;
    }

    /// The current `(receive, send)` windows.
    pub(crate) fn current(&self) -> (u64, u64) {
        let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (s.receive, s.send)
    }

    /// The connection is gone: everything it reserved goes back to the budget.
    pub(crate) fn release(&self) {
        self.memory
            .0
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.conn_id);
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.conn = None;
        s.state = None;
        s.base = None;
        s.grown = None;
    }
}

/// Keeps a connection's windows grown (see [`Windows::hold`]).
#[derive(Debug)]
pub(crate) struct WindowHold(Arc<Windows>);

impl Drop for WindowHold {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_what_they_hold_and_give_it_back() {
        let memory = Memory::new(1 << 20);
        let scope = Scope::new(512 << 10);
        // The guaranteed allowance comes first and is not counted again.
        let own = memory
            .try_reserve(Use::Outbound, FRAME_ALLOWANCE, Some(&scope))
            .unwrap();
        assert_eq!(memory.usage().used, 0);
        assert_eq!(scope.used(), FRAME_ALLOWANCE);
        // Then the shared budget, capped by the connection's scope.
        let shared = memory
            .try_reserve(Use::Outbound, 512 << 10, Some(&scope))
            .unwrap();
        assert_eq!(memory.usage().outbound, 512 << 10);
        assert!(memory.try_reserve(Use::Outbound, 1, Some(&scope)).is_none());
        assert_eq!(memory.usage().refused, 1);
        assert_eq!(memory.usage().limit, 1 << 20);
        // Another connection gets the rest of the budget (an eighth is headroom), then only
        // its own allowance.
        let other = Scope::new(8 << 20);
        assert!(
            memory
                .try_reserve(Use::Inbound, 512 << 10, Some(&other))
                .is_none()
        );
        let rest = memory
            .try_reserve(Use::Inbound, 384 << 10, Some(&other))
            .unwrap();
        assert!(
            memory
                .try_reserve(Use::Inbound, 300 << 10, Some(&other))
                .is_none()
        );
        let guaranteed = memory.try_reserve(Use::Inbound, 1024, Some(&other));
        assert!(
            guaranteed.is_some(),
            "the allowance holds with the budget full"
        );
        drop((own, shared, rest));
        assert_eq!(memory.usage().used, 0);
        assert_eq!(scope.used(), 0);
    }

    #[test]
    fn split_and_merge_keep_the_count() {
        let memory = Memory::new(4 << 20);
        let scope = Scope::new(4 << 20);
        let mut held = memory.empty(Use::Inbound);
        for _ in 0..3 {
            held.merge(
                memory
                    .try_reserve(Use::Inbound, 200 << 10, Some(&scope))
                    .unwrap(),
            );
        }
        assert_eq!(held.bytes(), 600 << 10);
        // The first came from the allowance, the others (too big for what was left of it)
        // from the budget.
        assert_eq!(memory.usage().inbound, 400 << 10);
        let part = held.split(300 << 10);
        assert_eq!((part.bytes(), held.bytes()), (300 << 10, 300 << 10));
        drop(part);
        assert_eq!(scope.used(), 300 << 10);
        drop(held);
        assert_eq!((memory.usage().used, scope.used()), (0, 0));
    }

    #[tokio::test]
    async fn a_reader_waits_for_memory() {
        let memory = Memory::new(64 << 10);
        let scope = Scope::new(1 << 20);
        let _own = memory
            .reserve(Use::Inbound, FRAME_ALLOWANCE, &scope)
            .await
            .unwrap();
        // 56 KiB usable: the rest is headroom.
        let shared = memory
            .reserve(Use::Inbound, 56 << 10, &scope)
            .await
            .unwrap();
        let waiting = {
            let (memory, scope) = (memory.clone(), scope.clone());
            tokio::spawn(async move { memory.reserve(Use::Inbound, 56 << 10, &scope).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "the reader must wait while the budget is full"
        );
        drop(shared);
        assert!(waiting.await.unwrap().is_some());
        // Too big for the scope ever: refused at once rather than waiting forever.
        assert!(
            memory
                .reserve(Use::Inbound, 2 << 20, &scope)
                .await
                .is_none()
        );
    }
}
