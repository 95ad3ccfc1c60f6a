//! Backends that build bottles.
//!
//! Today: the native backend (Linux namespaces, no daemon) as a launcher
//! ([`native::run`]) and the init stages it runs inside the bottle
//! ([`native::init_main`], reached through the binary's hidden
//! `__bottle-init` mode). The `Backend` and `Bottle` traits that every
//! backend implements arrive with the rest of the lifecycle.

pub mod native;
