//! The smolvm wrapper's command lines, built without spawning anything.
mod suite;
