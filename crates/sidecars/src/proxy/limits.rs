//! A bottle's share of the launcher: connections, requests in flight, the
//! memory held for decoding and scanning bodies, and the CPU that decoding
//! and scanning take.
//!
//! The proxy runs in the launcher, outside the bottle's cgroup, so the
//! bottle's own memory limit does not bound what the proxy holds for it.
//! These caps do. Over a cap a request waits (up to [`Limits::wait`]) and
//! then gets a 503 that says which cap; the audit log records it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The caps, per proxy (one proxy serves one bottle).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Client connections open at once.
    pub connections: usize,
    /// Requests being forwarded at once (a WebSocket counts while it lives).
    pub in_flight: usize,
    /// Bytes of request bodies held whole for decoding and scanning at once.
    pub body_memory: usize,
    /// How long a request waits for a slot before it gets a 503.
    pub wait: Duration,
    /// Threads that decode and scan at once (off the async workers).
    pub scan_threads: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: 512,
            in_flight: 256,
            body_memory: 128 << 20,
            wait: Duration::from_secs(30),
            scan_threads: std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)),
        }
    }
}

/// The live counters for one proxy.
#[derive(Debug)]
pub(crate) struct Gates {
    pub(crate) limits: Limits,
    connections: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    memory: Arc<Semaphore>,
    cpu: Arc<Semaphore>,
}

/// Which cap a request hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cap {
    Connections,
    InFlight,
    Memory,
}

impl Cap {
    pub(crate) fn reason(self, l: &Limits) -> String {
        match self {
            Cap::Connections => {
                format!("the bottle has {} connections open through the proxy, its limit", l.connections)
            }
            Cap::InFlight => format!("the bottle has {} requests in flight, its limit", l.in_flight),
            Cap::Memory => format!(
                "bodies held for scanning use the bottle's {} MiB budget; try again when other uploads finish",
                l.body_memory >> 20
            ),
        }
    }
}

/// Memory is counted in KiB permits (a semaphore holds at most u32::MAX).
const UNIT: usize = 1024;

impl Gates {
    pub(crate) fn new(limits: Limits) -> Gates {
        Gates {
            connections: Arc::new(Semaphore::new(limits.connections)),
            in_flight: Arc::new(Semaphore::new(limits.in_flight)),
            memory: Arc::new(Semaphore::new(limits.body_memory.div_ceil(UNIT))),
            cpu: Arc::new(Semaphore::new(limits.scan_threads)),
            limits,
        }
    }

    async fn take(&self, sem: &Arc<Semaphore>, n: u32, cap: Cap) -> Result<OwnedSemaphorePermit, Cap> {
        match tokio::time::timeout(self.limits.wait, sem.clone().acquire_many_owned(n)).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(cap),
        }
    }

    pub(crate) async fn connection(&self) -> Result<OwnedSemaphorePermit, Cap> {
        self.take(&self.connections, 1, Cap::Connections).await
    }

    pub(crate) async fn request(&self) -> Result<OwnedSemaphorePermit, Cap> {
        self.take(&self.in_flight, 1, Cap::InFlight).await
    }

    /// Reserves `bytes` of the body budget, all at once: a body that took
    /// its budget piecemeal could wait forever on another doing the same.
    pub(crate) async fn memory(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Cap> {
        let units = bytes.div_ceil(UNIT).min(self.limits.body_memory.div_ceil(UNIT)).max(1);
        self.take(&self.memory, u32::try_from(units).unwrap_or(u32::MAX), Cap::Memory).await
    }

    /// Runs CPU-heavy `f` (decoding, scanning) on the blocking pool, at most
    /// `scan_threads` at once, so the async workers keep serving.
    pub(crate) async fn offload<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let _permit = self.cpu.clone().acquire_owned().await.ok()?;
        tokio::task::spawn_blocking(f).await.ok()
    }
}
