mod allowlist;
mod pool;
