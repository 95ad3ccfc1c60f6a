//! I/O steps whose only possible failure is that the other end has gone.

/// Notes the outcome of `what`, a step on a connection whose failure can
/// only mean that the peer has gone or the connection is already broken
/// (a write of a courtesy message before closing, a shutdown, a
/// `set_nodelay`, a connection's serve loop ending in an error). Nothing
/// is checked or allowed by such a step: the connection ends either way,
/// and what it carried is audited where it was decided. So a failure is
/// only worth a debug line. Never use this for a step whose failure could
/// mean that a check did not happen.
pub(crate) fn peer_step<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "{what}: the peer has gone");
    }
}
