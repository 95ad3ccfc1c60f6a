//! Undo steps registered as resources are created, run in reverse.

/// A stack of undo steps. Each is run once, newest first, by [`run`] or
/// when the stack is dropped (so an early return or a panic still tears
/// down what was made).
///
/// [`run`]: Teardown::run
#[derive(Default)]
pub struct Teardown {
    steps: Vec<(String, Box<dyn FnOnce() + Send>)>,
}

impl std::fmt::Debug for Teardown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.steps.iter().map(|(what, _)| what)).finish()
    }
}

impl Teardown {
    pub fn new() -> Teardown {
        Teardown::default()
    }

    /// Registers `undo`, described by `what`.
    pub fn push(&mut self, what: impl Into<String>, undo: impl FnOnce() + Send + 'static) {
        self.steps.push((what.into(), Box::new(undo)));
    }

    /// Runs every step, newest first. A step that panics does not stop the
    /// others.
    pub fn run(&mut self) {
        while let Some((what, undo)) = self.steps.pop() {
            // A step that panics is reported and the rest still run: one
            // broken undo must not leave the others' resources behind.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(undo)).is_err() {
                tracing::warn!(step = %what, "a teardown step panicked; `bot-bottle cleanup` retries what it held");
            }
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.run();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::Teardown;

    #[test]
    fn steps_run_newest_first_once_even_past_a_panic() {
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let mut t = Teardown::new();
            for i in 0..3 {
                let l = log.clone();
                t.push(format!("step {i}"), move || l.lock().map(|mut v| v.push(i)).unwrap_or(()));
            }
            t.push("panics", || panic!("boom"));
            let l = log.clone();
            t.push("last", move || l.lock().map(|mut v| v.push(9)).unwrap_or(()));
        }
        assert_eq!(*log.lock().unwrap_or_else(|e| e.into_inner()), vec![9, 2, 1, 0]);
    }
}
