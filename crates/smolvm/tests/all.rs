//! The smolvm wrapper: command lines (pure), and every subcommand run end to
//! end against fake-smolvm.
mod suite;
