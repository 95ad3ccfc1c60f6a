//! The `bot-bottle` command. It parses flags, calls the libraries, prints
//! their results and maps failures to exit codes, as `docker run` does: 2
//! bad usage or manifest, 125 bot-bottle itself failed, 126 the agent's
//! program cannot be run, 127 it is not there, otherwise the agent's own
//! code. Nothing here decides policy.

mod bottles;
mod credentials;
mod launch;
mod logs;
mod persist;
mod proxy;
mod render;
mod requests;
mod scan;
mod state;
mod supervise;
mod task;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bot_bottle_manifest::{
    BackendKind, DiscoverError, DiscoverFrom, DockerRuntime, Manifest, Request, ResolveError, discover,
};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit status:
  0    success (or the agent exited 0)
  2    bad usage or an invalid manifest; nothing was created
  125  bot-bottle itself failed (the bottle, its sidecars, the host)
  126  the agent's program exists in the bottle but cannot be run
  127  the agent's program is not in the bottle
  N    otherwise, the agent's own exit status

Logging: RUST_LOG (e.g. RUST_LOG=debug) or -v/-vv; messages for you stay plain lines on stderr.";

#[derive(Debug, Parser)]
#[command(name = "bot-bottle", version, about, propagate_version = true, after_help = EXIT_CODES)]
struct Cli {
    /// More diagnostics on stderr: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ManifestArg {
    /// Manifest directory (default: $BOT_BOTTLE_MANIFEST, the nearest .bot-bottle/, or ~/.config/bot-bottle/).
    #[arg(long, value_name = "DIR")]
    manifest: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start an agent in a bottle.
    Start(StartArgs),
    /// Check or list the manifest.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Run the egress proxy standalone, for any process.
    Proxy(proxy::ProxyArgs),
    /// Look for secrets in files, directories (respecting .gitignore) or stdin (`-`).
    Scan(scan::ScanArgs),
    /// Check that this host can run bottles, and which hardening layers are active.
    Doctor,
    /// List running bottles (-a: also exited and crashed ones).
    #[command(visible_alias = "ps")]
    List(bottles::ListArgs),
    /// Stop running bottles: SIGTERM to the launcher, which tears the bottle
    /// down; SIGKILL after the grace period.
    Stop {
        /// The bottles' slugs, as `list` shows them.
        #[arg(required_unless_present = "all", value_name = "SLUG")]
        slugs: Vec<String>,
        /// Stop every running bottle.
        #[arg(long, conflicts_with = "slugs")]
        all: bool,
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(long, short = 't', value_name = "SECS", default_value_t = 10)]
        time: u64,
    },
    /// Start an exited bottle again: same request, same workspace copy.
    Resume {
        /// The bottle's slug, as `list -a` shows it.
        slug: String,
        /// Less progress output on stderr.
        #[arg(long, short)]
        quiet: bool,
        /// Run in the background; output is appended to the bottle's `agent.log`.
        #[arg(long, short)]
        detach: bool,
    },
    /// Run a command in a running bottle, as its agent, with the agent's
    /// environment; on a terminal of its own when you are on one.
    Exec {
        /// The bottle's slug, as `list` shows it.
        slug: String,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// Remove stopped bottles: their state dir and workspace copy.
    Rm {
        /// The bottles' slugs, as `list -a` shows them.
        #[arg(required = true, value_name = "SLUG")]
        slugs: Vec<String>,
        /// Stop a running bottle first (SIGTERM, then SIGKILL after 10 s).
        #[arg(long, short)]
        force: bool,
    },
    /// Remove what exited or crashed bottles left (processes, runtime dirs,
    /// sockets) and report what they still hold. Workspace copies are kept
    /// unless --purge.
    Cleanup {
        /// Also delete every stopped bottle's state, workspace copies included (asks first),
        /// and the images built for `dockerfile:` bottles that no container uses.
        #[arg(long)]
        purge: bool,
        /// Do not ask before --purge deletes.
        #[arg(long, short, requires = "purge")]
        yes: bool,
    },
    /// What a bottle did: its audit log (egress, gate, supervise), or its agent's output.
    Logs(logs::LogsArgs),
    /// A bottle's egress by host, decision and rule, with counts.
    Policy(logs::PolicyArgs),
    /// Egress requests from supervised bottles: list, approve, reject.
    #[command(subcommand)]
    Requests(requests::RequestsCommand),
    /// Work through pending egress requests in a TUI: approve, modify in $EDITOR, reject.
    Supervise {
        /// Only this bottle's requests.
        slug: Option<String>,
    },
    /// Print shell completions.
    Completions {
        /// The shell to print completions for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
struct StartArgs {
    #[command(flatten)]
    manifest: ManifestArg,
    /// The agent to start (agents/AGENT.md).
    agent: Option<String>,
    /// Bottle to use, replacing the agent's `bottle:` list; repeat to merge several in order.
    #[arg(long = "bottle", value_name = "BOTTLE")]
    bottles: Vec<String>,
    /// Backend, overriding the bottle's `backend:`.
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
    /// The docker backend's OCI runtime, overriding the bottle's `runtime:`
    /// (the daemon must have it registered; `bot-bottle doctor` lists them).
    #[arg(long, value_enum)]
    runtime: Option<RuntimeArg>,
    /// Resolve and print the plan; create nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format of the plan.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Less progress output on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// The project to work on, instead of the git repository around the
    /// current directory (or the current directory outside one).
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Run in the background; print the bottle's slug and return. Output goes
    /// to `agent.log` in the bottle's state dir; `stop SLUG` ends it.
    #[arg(long, conflicts_with = "dry_run")]
    detach: bool,
    /// Arguments passed to the agent.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum ManifestCommand {
    /// Check every file in the manifest directory and report all problems.
    Check {
        #[command(flatten)]
        manifest: ManifestArg,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
    /// List agents with their bottle lineage, and bottles with their parents.
    List {
        #[command(flatten)]
        manifest: ManifestArg,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    /// The bottle's `backend:`, else the first that works here.
    Auto,
    /// Linux namespaces on this host.
    Native,
    /// Docker containers through the local daemon.
    Docker,
    /// Micro-VMs through the smolvm CLI.
    Smolmachines,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RuntimeArg {
    /// gVisor's runsc when the daemon has it, else the daemon's default.
    Auto,
    /// Linux namespaces: the agent makes its syscalls to the host kernel.
    Runc,
    /// gVisor: a userspace kernel between the agent and the host's.
    Runsc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// For people.
    Text,
    /// For programs.
    Json,
    /// For programs and people.
    Yaml,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ListFormat {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

pub(crate) fn usage(message: impl Into<String>) -> Failure {
    Failure { code: 2, message: message.into() }
}

/// bot-bottle itself failed: exit 125, as `docker run` does, so that it is
/// never mistaken for the agent's own exit status.
pub(crate) fn failure(message: impl Into<String>) -> Failure {
    Failure { code: 125, message: message.into() }
}

/// The agent's exit status as ours: 0 is success, anything else passes
/// through (a status outside 1..=255 cannot, and becomes 125).
pub(crate) fn agent_exit(code: i32) -> Result<(), Failure> {
    match code {
        0 => Ok(()),
        c => Err(Failure { code: u8::try_from(c).ok().filter(|&c| c != 0).unwrap_or(125), message: String::new() }),
    }
}

fn main() -> ExitCode {
    // The backends' helpers inside bottles (an init, a forwarder) are this
    // same binary in hidden modes.
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = bot_bottle_backend::helper_main(&args[1..]) {
        return ExitCode::from(u8::try_from(code).unwrap_or(125));
    }
    // Whatever our parent left open stays out of every bottle: nothing here
    // needs a descriptor it did not open itself. First, before any thread.
    if let Err(e) = bot_bottle_backend::close_inherited_fds() {
        eprintln_best_effort(format_args!("error: closing inherited descriptors: {e}"));
        return ExitCode::from(125);
    }
    // `start --detach` runs this again in a session of its own, with no
    // controlling terminal: the bottle then can never reach the terminal
    // `start --detach` was typed in.
    if std::env::var_os(launch::DETACHED).is_some()
        && let Err(e) = nix::unistd::setsid()
    {
        eprintln_best_effort(format_args!("error: leaving the terminal's session: {e}"));
        return ExitCode::from(125);
    }
    let cli = Cli::parse();
    logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln_best_effort(f.message.trim_end());
            }
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "bot-bottle", &mut io::stdout());
            Ok(())
        }
        Command::Start(args) => start(args.manifest.manifest.clone(), args),
        Command::Scan(args) => scan::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Doctor => doctor(),
        Command::List(args) => bottles::list(&args),
        Command::Requests(cmd) => requests::run(cmd),
        Command::Supervise { slug } => supervise::run(slug),
        Command::Logs(args) => logs::logs(args),
        Command::Policy(args) => logs::policy(args),
        Command::Stop { slugs, all, time } => bottles::stop(&slugs, all, std::time::Duration::from_secs(time)),
        Command::Resume { slug, quiet, detach } => bottles::resume(&slug, quiet, detach),
        Command::Exec { slug, argv } => bottles::exec(&slug, &argv),
        Command::Rm { slugs, force } => bottles::rm(&slugs, force),
        Command::Cleanup { purge, yes } => bottles::cleanup(purge, yes),
        Command::Manifest(ManifestCommand::Check { manifest, format }) => check(manifest.manifest, format),
        Command::Manifest(ManifestCommand::List { manifest, format }) => list(manifest.manifest, format),
    }
}

struct Env {
    cwd: PathBuf,
    home: Option<PathBuf>,
}

fn env() -> Result<Env, Failure> {
    let cwd = std::env::current_dir().map_err(|e| failure(format!("error: cannot read the current directory: {e}")))?;
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    Ok(Env { cwd, home })
}

fn load(flag: Option<PathBuf>, env: &Env) -> Result<Manifest, Failure> {
    let from = DiscoverFrom {
        flag,
        env: std::env::var_os("BOT_BOTTLE_MANIFEST").map(PathBuf::from),
        cwd: env.cwd.clone(),
        xdg_config_home: std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
        home: env.home.clone(),
    };
    let (root, _) = discover(&from).map_err(|e| match e {
        DiscoverError::Missing { .. } | DiscoverError::NotFound { .. } => usage(format!("error: {e}")),
    })?;
    Manifest::load(&root, env.home.as_deref()).map_err(|e| usage(format!("error: {}", chain(&e))))
}

pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn render_diagnostics(d: &bot_bottle_manifest::Diagnostics, cwd: &Path) -> String {
    d.0.iter().map(|x| x.clone().relative_to(cwd).to_string()).collect::<Vec<_>>().join("\n")
}

fn start(flag: Option<PathBuf>, args: StartArgs) -> Result<(), Failure> {
    let env = env()?;
    let manifest = load(flag, &env)?;
    let Some(agent) = args.agent else {
        let known: Vec<String> = manifest.listing().agents.into_iter().map(|a| a.name).collect();
        return Err(usage(format!("error: name the agent to start (known: {})", known.join(", "))));
    };
    let req = Request {
        agent,
        bottles: args.bottles,
        backend: args.backend.map(|b| match b {
            BackendArg::Auto => BackendKind::Auto,
            BackendArg::Native => BackendKind::Native,
            BackendArg::Docker => BackendKind::Docker,
            BackendArg::Smolmachines => BackendKind::Smolmachines,
        }),
        runtime: args.runtime.map(|r| match r {
            RuntimeArg::Auto => DockerRuntime::Auto,
            RuntimeArg::Runc => DockerRuntime::Runc,
            RuntimeArg::Runsc => DockerRuntime::Runsc,
        }),
        args: args.args,
    };
    let is_set = crate::credentials::is_set;
    let plan = manifest.resolve(&req, &is_set).map_err(|e| match e {
        ResolveError::Invalid(d) => {
            usage(format!("{}\nerror: cannot start `{}`: {}", render_diagnostics(&d, &env.cwd), req.agent, d))
        }
        other => usage(format!("error: {other}")),
    })?;
    let project = launch::project(&plan, &env.cwd, env.home.as_deref(), args.workspace.as_deref())?;
    if args.dry_run {
        // The plan, and what its backend would build (`launch`).
        // What the backend cannot enforce here joins the plan's warnings.
        let launch = launch::dry_run(&plan, &project)?;
        let mut plan = plan;
        plan.warnings.extend(
            launch
                .get("warnings")
                .and_then(|w| w.as_array())
                .into_iter()
                .flatten()
                .filter_map(|w| w.as_str().map(str::to_owned)),
        );
        let full = || -> Result<serde_json::Value, Failure> {
            let mut v = serde_json::to_value(&plan).map_err(|e| failure(e.to_string()))?;
            if let Some(o) = v.as_object_mut() {
                o.insert("launch".into(), launch.clone());
            }
            Ok(v)
        };
        let out = match args.format {
            Format::Text => render::plan_text(&plan) + &render::project_text(&plan, &project),
            Format::Json => {
                serde_json::to_string_pretty(&full()?).map(|s| s + "\n").map_err(|e| failure(e.to_string()))?
            }
            Format::Yaml => serde_yaml::to_string(&full()?).map_err(|e| failure(e.to_string()))?,
        };
        print(&out)?;
        return Ok(());
    }
    // Launching is fail-closed on missing secrets before anything else.
    let unset: Vec<String> =
        plan.secrets.iter().filter(|s| !s.set).map(|s| format!("{} ({})", s.env, s.used_by)).collect();
    if !unset.is_empty() {
        return Err(failure(format!(
            "error: cannot start `{}`: host environment variables not set: {}\nset them, or remove the routes and repos that need them{}",
            plan.agent.name,
            unset.join(", "),
            render::login_hint(&plan)
        )));
    }
    launch::check_built(&plan)?;
    // The detached launcher's own run was checked by the `start --detach`
    // that spawned it, with the task it had then.
    if std::env::var_os(launch::DETACHED).is_none() {
        task::check(&plan, args.detach)?;
    }
    let request = launch::Stored {
        agent: plan.agent.name.clone(),
        bottles: req.bottles.clone(),
        backend: req.backend.map(BackendKind::as_str).map(str::to_owned),
        runtime: req.runtime.map(DockerRuntime::as_str).map(str::to_owned),
        args: req.args.clone(),
        manifest: manifest.root().to_path_buf(),
        project: project.root.clone(),
        workdir: project.subdir.clone(),
    };
    if args.detach {
        return launch::detach(&plan.agent.name, None);
    }
    // The slug `detach` claimed, for the detached launcher only: a stray
    // BOT_BOTTLE_SLUG in a user's environment never points `start` at
    // another bottle.
    let resume = std::env::var_os(launch::DETACHED).and_then(|_| std::env::var("BOT_BOTTLE_SLUG").ok());
    agent_exit(launch::run(&plan, &launch::Options { quiet: args.quiet, request, resume })?)
}

/// `tracing` to stderr: RUST_LOG when set, else warnings, or more with -v.
fn logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // A second subscriber cannot be installed, and only tests would try.
    if tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).without_time().try_init().is_err() {
        eprintln_best_effort("bot-bottle: warning: logging was already set up");
    }
}

/// Writes `msg` to stderr. Stderr is where the CLI says what went wrong;
/// when it is closed or full there is nowhere else to say it, and the exit
/// code still carries the outcome.
pub(crate) fn eprint_best_effort(msg: impl std::fmt::Display) {
    if write!(io::stderr(), "{msg}").is_err() {
        // Nowhere left to report it; see above.
    }
}

/// [`eprint_best_effort`] with a newline.
pub(crate) fn eprintln_best_effort(msg: impl std::fmt::Display) {
    eprint_best_effort(format_args!("{msg}\n"));
}

fn check(flag: Option<PathBuf>, format: ListFormat) -> Result<(), Failure> {
    let env = env()?;
    let manifest = load(flag, &env)?;
    let diags = manifest.check();
    let listing = manifest.listing();
    let errors = diags.errors().count();
    let warnings = diags.warnings().count();
    match format {
        ListFormat::Json => {
            let v = serde_json::json!({
                "manifest": manifest.root(),
                "errors": diags.errors().collect::<Vec<_>>(),
                "warnings": diags.warnings().collect::<Vec<_>>(),
            });
            print(&format!("{v:#}\n"))?;
        }
        ListFormat::Text => {
            let mut out = render_diagnostics(&diags, &env.cwd);
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!(
                "checked {}: {}, {}, {}; {}, {}\n",
                manifest.root().display(),
                count(listing.agents.len(), "agent"),
                count(listing.bottles.len(), "bottle"),
                count(listing.skills.len(), "skill"),
                count(errors, "error"),
                count(warnings, "warning"),
            ));
            if errors > 0 {
                return Err(usage(out));
            }
            print(&out)?;
        }
    }
    if errors > 0 { Err(usage(String::new())) } else { Ok(()) }
}

fn list(flag: Option<PathBuf>, format: ListFormat) -> Result<(), Failure> {
    let env = env()?;
    let manifest = load(flag, &env)?;
    let listing = manifest.listing();
    let out = match format {
        ListFormat::Json => serde_json::to_string_pretty(&listing).map_err(|e| failure(e.to_string()))? + "\n",
        ListFormat::Text => render::listing_text(&listing),
    };
    print(&out)
}

fn doctor() -> Result<(), Failure> {
    use bot_bottle_backend::{KINDS, Status, checks_ready};
    let mut out = String::new();
    let mut ready = Vec::new();
    for &kind in KINDS {
        out.push_str(&format!("{} backend\n", kind.as_str()));
        let checks = match launch::backend(kind) {
            Ok(b) => b.doctor(),
            Err(f) => {
                out.push_str(&format!("  FAIL {}\n", f.message.trim_start_matches("error: ")));
                continue;
            }
        };
        for c in &checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            out.push_str(&format!("  {mark} {:<16} {}\n", c.name, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("       {:<16} fix: {fix}\n", ""));
            }
        }
        if checks_ready(&checks) {
            ready.push(kind.as_str());
        }
    }
    match ready.first() {
        Some(first) => {
            out.push_str(&format!("bottles can run here on: {} (`auto` means {first})\n", ready.join(", ")));
            print(&out)
        }
        None => Err(failure(format!("{out}no backend can run bottles here until its FAIL lines are fixed"))),
    }
}

fn count(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

pub(crate) fn print(s: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`| head`) is not an error worth reporting.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(failure(format!("error: cannot write output: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag, argument and subcommand says what it is for.
    #[test]
    fn everything_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && a.get_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for s in cmd.get_subcommands() {
                let p = format!("{path} {}", s.get_name());
                if s.get_about().is_none() {
                    missing.push(p.clone());
                }
                walk(s, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "bot-bottle", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
