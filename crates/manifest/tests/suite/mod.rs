pub(crate) mod cases;
mod discovery;
mod malformed;
mod plans;
mod props;
