//! End-to-end tests of the `bot-bottle` binary.
mod suite;
