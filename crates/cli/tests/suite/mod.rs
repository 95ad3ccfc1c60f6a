#[path = "../../../manifest/tests/suite/cases.rs"]
mod cases;
mod claude;
mod cli;
mod dry_run;
mod egress;
mod escape;
mod malformed;
mod native;
mod proxy_cmd;
mod scan;
mod smolmachines;
mod start_native;
