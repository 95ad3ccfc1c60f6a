//! A value built on a thread of its own (the secret detectors: compiling
//! the rules takes tens of milliseconds, which need not delay a bottle's
//! start). Whoever needs it first waits for it, asynchronously; nothing
//! ever goes on without it. A build that fails (panics), or one that was
//! never started, answers every wait with an error at once instead of
//! leaving it waiting: the caller fails closed.

use std::sync::Arc;

/// The result of the build, once known.
type Built<T> = Option<Result<Arc<T>, String>>;

pub(crate) struct Lazy<T>(tokio::sync::watch::Receiver<Built<T>>);

impl<T: Send + Sync + 'static> Lazy<T> {
    /// Starts building `build`'s value on a thread of its own.
    pub(crate) fn spawn(build: impl FnOnce() -> T + Send + 'static) -> Lazy<T> {
        let (tx, rx) = tokio::sync::watch::channel(None);
        std::thread::spawn(move || {
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(build))
                .map(Arc::new)
                .map_err(|_| "the secret detector failed to build".to_owned());
            // With no receiver left its user is gone: nothing to tell.
            tx.send_replace(Some(built));
        });
        Lazy(rx)
    }

    /// A value that is never built: every wait fails at once.
    pub(crate) fn never() -> Lazy<T> {
        Lazy(tokio::sync::watch::channel(None).1)
    }

    /// The value, once built.
    pub(crate) async fn get(&self) -> Result<Arc<T>, String> {
        let mut rx = self.0.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(|| Err("the secret detector is not ready".into())),
            Err(_) => Err("the secret detector failed to build".into()),
        }
    }

    /// The value if it is built already, without waiting.
    pub(crate) fn ready(&self) -> Option<Arc<T>> {
        self.0.borrow().as_ref().and_then(|r| r.as_ref().ok().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build that fails (panics), or one never started, answers at once
    /// instead of leaving its waiters waiting.
    #[tokio::test]
    async fn a_failed_or_missing_build_fails_closed() {
        let lazy: Lazy<u8> = Lazy::spawn(|| panic!("rules do not compile"));
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), lazy.get()).await;
        let why = r.expect("answers without hanging").expect_err("no value");
        assert!(why.contains("failed to build"), "{why}");
        let never: Lazy<u8> = Lazy::never();
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), never.get()).await;
        assert!(r.expect("answers without hanging").is_err());
        assert_eq!(*Lazy::spawn(|| 7u8).get().await.expect("built"), 7);
    }
}
