//! smolvm's command line, as far as the fake models it (the subset of
//! `src/cli/machine.rs` and `src/cli/pack.rs` at v1.9.3 the wrapper uses).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "smolvm", bin_name = "smolvm", about = "fake-smolvm: a test double of the smolvm CLI")]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) cmd: Top,
}

#[derive(Subcommand)]
pub(super) enum Top {
    #[command(visible_alias = "vm")]
    Machine {
        #[command(subcommand)]
        cmd: MachineCmd,
    },
    Pack {
        #[command(subcommand)]
        cmd: PackCmd,
    },
}

#[derive(Subcommand)]
pub(super) enum MachineCmd {
    Create(Box<CreateArgs>),
    Start(NameArg),
    Stop(NameArg),
    #[command(visible_alias = "rm")]
    Delete(DeleteArgs),
    Status(StatusArgs),
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    Exec(ExecArgs),
    Cp(CpArgs),
}

#[derive(Subcommand)]
pub(super) enum PackCmd {
    Create(PackCreateArgs),
}

#[derive(Args)]
pub(super) struct NameArg {
    #[arg(short = 'n', long, default_value = "default")]
    pub(super) name: String,
}

#[derive(Args, Default)]
pub(super) struct CreateArgs {
    #[arg(short = 'n', long)]
    pub(super) name: Option<String>,
    #[arg(long, value_parser = key_value)]
    pub(super) label: Vec<(String, String)>,
    #[arg(short = 'I', long)]
    pub(super) image: Option<String>,
    #[arg(long)]
    pub(super) cpus: Option<u32>,
    #[arg(long)]
    pub(super) mem: Option<u32>,
    #[arg(long)]
    pub(super) storage: Option<u32>,
    #[arg(long)]
    pub(super) overlay: Option<u32>,
    #[arg(short = 'v', long = "volume")]
    pub(super) volume: Vec<String>,
    #[arg(short = 'p', long = "port", value_parser = port)]
    pub(super) port: Vec<(u16, u16)>,
    /// Since 1.6.4.
    #[arg(long = "mount-socket", value_parser = mount_socket)]
    pub(super) mount_socket: Vec<(PathBuf, String)>,
    #[arg(long)]
    pub(super) net: bool,
    #[arg(long, value_enum)]
    pub(super) net_backend: Option<Backend>,
    #[arg(long)]
    pub(super) dns: Option<Ipv4Addr>,
    #[arg(long, value_parser = cidr)]
    pub(super) allow_cidr: Vec<String>,
    #[arg(long)]
    pub(super) allow_host: Vec<String>,
    #[arg(long)]
    pub(super) outbound_localhost_only: bool,
    #[arg(short = 'e', long = "env")]
    pub(super) env: Vec<String>,
    #[arg(short = 'w', long)]
    pub(super) workdir: Option<String>,
    #[arg(short = 's', long, conflicts_with = "image")]
    pub(super) smolfile: Option<PathBuf>,
    #[arg(long, conflicts_with_all = ["image", "smolfile"])]
    pub(super) from: Option<PathBuf>,
    /// The persistent workload; recorded, never run.
    #[arg(last = true)]
    pub(super) command: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Backend {
    Tsi,
    VirtioNet,
}

#[derive(Args)]
pub(super) struct DeleteArgs {
    #[arg(short = 'n', long)]
    pub(super) name: String,
    #[arg(short = 'f', long)]
    pub(super) force: bool,
    #[arg(long)]
    pub(super) cascade: bool,
}

#[derive(Args)]
pub(super) struct StatusArgs {
    #[arg(short = 'n', long, default_value = "default")]
    pub(super) name: String,
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub(super) struct LsArgs {
    #[arg(short = 'v', long)]
    pub(super) verbose: bool,
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub(super) struct ExecArgs {
    /// Long only: exec has no `-n`.
    #[arg(long, default_value = "default")]
    pub(super) name: String,
    #[arg(short = 'w', long)]
    pub(super) workdir: Option<String>,
    #[arg(short = 'e', long = "env")]
    pub(super) env: Vec<String>,
    #[arg(long, value_parser = duration)]
    pub(super) timeout: Option<Duration>,
    #[arg(short = 'i', long)]
    pub(super) interactive: bool,
    #[arg(short = 't', long)]
    pub(super) tty: bool,
    #[arg(long)]
    pub(super) stream: bool,
    #[arg(short = 'd', long, conflicts_with_all = ["interactive", "tty", "stream"])]
    pub(super) detach: bool,
    /// Since 1.14.
    #[arg(short = 'u', long)]
    pub(super) user: Option<String>,
    #[arg(required = true, trailing_var_arg = true)]
    pub(super) command: Vec<String>,
}

#[derive(Args)]
pub(super) struct CpArgs {
    pub(super) src: String,
    pub(super) dst: String,
    #[arg(long, value_parser = octal)]
    pub(super) mode: Option<u32>,
    #[arg(long)]
    pub(super) uid: Option<u32>,
    #[arg(long)]
    pub(super) gid: Option<u32>,
}

#[derive(Args)]
pub(super) struct PackCreateArgs {
    #[arg(short = 'I', long, required_unless_present_any = ["from_vm", "smolfile"])]
    pub(super) image: Option<String>,
    #[arg(long)]
    pub(super) from_vm: Option<String>,
    #[arg(short = 's', long)]
    pub(super) smolfile: Option<PathBuf>,
    #[arg(short = 'o', long)]
    pub(super) output: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub(super) cpus: u32,
    #[arg(long, default_value_t = 8192)]
    pub(super) mem: u32,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

fn port(s: &str) -> Result<(u16, u16), String> {
    let parsed = s.split_once(':').and_then(|(h, g)| Some((h.parse().ok()?, g.parse().ok()?)));
    parsed.ok_or_else(|| format!("expected HOST:GUEST ports, got '{s}'"))
}

/// `HOST:GUEST`, both absolute.
fn mount_socket(s: &str) -> Result<(PathBuf, String), String> {
    match s.split_once(':') {
        Some((h, g)) if h.starts_with('/') && g.starts_with('/') => Ok((h.into(), g.to_owned())),
        _ => Err(format!("expected HOST_PATH:GUEST_PATH (both absolute), got '{s}'")),
    }
}

fn cidr(s: &str) -> Result<String, String> {
    crate::argv::check_cidr(s).map(|()| s.to_owned()).map_err(|e| e.to_string())
}

/// humantime's forms that matter: `30s`, `1500ms`, `5m`, `1h`; more than zero.
fn duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("invalid duration '{s}'"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("invalid duration '{s}'")),
    };
    if d.is_zero() { Err("timeout must be greater than zero".to_owned()) } else { Ok(d) }
}

fn octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| format!("invalid octal mode '{s}'"))
}
