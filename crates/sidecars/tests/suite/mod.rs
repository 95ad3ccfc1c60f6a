mod clients;
mod gate;
mod gate_https;
mod gate_keys;
mod gate_support;
mod harness;
mod proxy;
mod supervise;
