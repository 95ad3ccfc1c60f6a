mod clients;
mod hardening;
mod harness;
mod proxy;
