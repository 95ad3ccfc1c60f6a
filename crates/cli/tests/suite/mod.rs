#[path = "../../../manifest/tests/suite/cases.rs"]
mod cases;
mod claude;
mod cli;
mod doors;
mod dry_run;
mod escape;
mod gate;
mod malformed;
mod native;
mod providers;
mod proxy_cmd;
mod scan;
mod smolmachines;
mod start_native;
mod terminal;
mod workspace;
