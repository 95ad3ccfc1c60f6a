//! Detector tests: every rule's own examples, recall on a generated corpus,
//! known-secret encodings, and streaming equivalence.
mod suite;
