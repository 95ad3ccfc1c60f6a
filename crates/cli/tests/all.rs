//! End-to-end tests of the `bot-bottle` binary. They drive real bottles
//! and share helpers built on the native backend, which only Linux has: off
//! Linux this suite is empty (the crates still build there for docker and
//! smolmachines).
#![cfg(target_os = "linux")]
mod suite;
