//! Integration tests for the manifest crate: data-driven plan and error
//! snapshots, property tests, and discovery.
mod suite;
