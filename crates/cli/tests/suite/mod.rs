#[path = "../../../manifest/tests/suite/cases.rs"]
mod cases;
mod cli;
mod dry_run;
mod malformed;
mod proxy_cmd;
mod scan;
