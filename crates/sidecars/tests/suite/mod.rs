mod clients;
mod gate;
mod gate_support;
mod harness;
mod proxy;
