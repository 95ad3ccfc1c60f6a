//! The loopback crate's tests: the address pool against real lease files
//! and real processes, and the allowlist check against real SQLite DBs laid
//! out as smolvm lays them out.
mod suite;
