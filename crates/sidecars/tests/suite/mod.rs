mod clients;
mod harness;
mod proxy;
