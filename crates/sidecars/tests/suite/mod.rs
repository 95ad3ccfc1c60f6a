mod clients;
mod gate;
mod gate_https;
mod gate_keys;
mod gate_support;
mod hardening;
mod harness;
mod proxy;
