//! Egress proxy tests: a real TLS upstream on loopback with its own test CA,
//! the proxy in process, and real clients (curl, python3, node, git)
//! trusting the bottle CA only through their environment.
mod suite;
