//! Command-line parsing. The clap types live here and nowhere else; commands receive
//! resolved settings and a [`Printer`](crate::output::Printer).

mod cluster;
mod commands;
mod settings;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use settings::Settings;

/// Pack a Kubernetes-based system into one OCI cluster image and deliver it to offline hosts.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Data directory for the image store and caches [default: /var/lib/kiln for root,
    /// $XDG_DATA_HOME/kiln otherwise]
    #[arg(long, global = true, env = crate::env::KILN_ROOT, value_name = "DIR", help_heading = "Global options")]
    pub root: Option<PathBuf>,
    /// Print only data and errors
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub quiet: bool,
    /// Print debug logs
    #[arg(short = 'v', long = "verbose", global = true, help_heading = "Global options")]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a cluster image from a Kubefile
    Build(Box<BuildArgs>),
    /// List images in the local store
    Images(ImagesArgs),
    /// Show an image's manifest, config, Sealer extension and container images as JSON
    Inspect(InspectArgs),
    /// Give an image more names
    Tag(TagArgs),
    /// Remove image names and delete blobs nothing references any more
    Rmi(RmiArgs),
    /// Write images to an OCI archive file
    Save(SaveArgs),
    /// Load images from an OCI archive or a `docker save` tar
    Load(LoadArgs),
    /// Push an image to a registry
    Push(PushArgs),
    /// Pull an image from a registry
    Pull(PullArgs),
    /// Save credentials for a registry (checked against it first)
    Login(LoginArgs),
    /// Remove saved credentials for a registry
    Logout(LogoutArgs),
    /// The in-cluster registry: serve the container images a cluster image carries
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Check the hosts of a cluster (preflight) without changing anything
    Check(CheckArgs),
    /// Deliver a cluster image onto hosts and bring the cluster up (resumable)
    Run(Box<RunArgs>),
    /// Show a cluster's run state per host
    Status(StatusArgs),
    /// Add hosts to a cluster run from this machine (`-m`, `-n`); only the new hosts change
    #[command(visible_alias = "join")]
    ScaleUp(Box<ScaleUpArgs>),
    /// Remove hosts from a cluster run from this machine, leaving them as they were
    ScaleDown(Box<ScaleDownArgs>),
    /// Make a cluster match a Clusterfile: run it, or add and remove hosts (`--dry-run`: the diff)
    Apply(Box<ApplyArgs>),
    /// Remove a cluster from its hosts, leaving them as they were before `kiln run`
    Delete(Box<DeleteArgs>),
    /// Write an admin kubeconfig for a `kubernetes`-runtime cluster run from this machine
    Kubeconfig(KubeconfigArgs),
    /// A `kubernetes`-runtime cluster's certificates: expiry, renewal, more apiserver names
    Cert(Box<CertArgs>),
    /// Run a command on a cluster's hosts in parallel (as root), output prefixed by host
    Exec(Box<ExecArgs>),
    /// Plugins: what an image and a Clusterfile bring, checked
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List the plugins of an image and/or a Clusterfile (checked as a run checks them)
    List(PluginListArgs),
}

#[derive(Debug, Args)]
pub struct PluginListArgs {
    /// Cluster image (else the Clusterfile's `spec.image`)
    pub image: Option<String>,
    /// Clusterfile whose Plugin documents (and roles) count too
    #[arg(short = 'f', long = "clusterfile", value_name = "FILE")]
    pub clusterfile: Option<PathBuf>,
    /// Print the list as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Serve a registry directory or an image's `registry/` layer over the distribution API
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve the `registry/` layer of this cluster image (from the local store)
    #[arg(long, conflicts_with = "dir", required_unless_present = "dir")]
    pub image: Option<String>,
    /// Serve this directory (it holds `docker/registry/v2`)
    #[arg(long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:5000", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Require basic auth from this bcrypt htpasswd file
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate (chain)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// How to reach registries (shared by push, pull and login).
#[derive(Debug, Args, Clone)]
pub struct TransportArgs {
    /// Use plain HTTP instead of HTTPS
    #[arg(long, help_heading = "Registry options")]
    pub plain_http: bool,
    /// A registry (host[:port]) reached over plain HTTP; repeatable
    #[arg(long = "insecure-registry", value_name = "HOST", help_heading = "Registry options")]
    pub insecure_registries: Vec<String>,
    /// Do not verify the registry's TLS certificate
    #[arg(long, help_heading = "Registry options")]
    pub insecure_skip_tls_verify: bool,
    /// Also trust the CA certificates in this PEM file
    #[arg(long, value_name = "FILE", help_heading = "Registry options")]
    pub ca_file: Option<PathBuf>,
    /// Credentials file to read and write [default: Docker's config.json; also reads
    /// $REGISTRY_AUTH_FILE and containers' auth.json]
    #[arg(long, env = crate::env::KILN_AUTH_FILE, value_name = "FILE", help_heading = "Registry options")]
    pub authfile: Option<PathBuf>,
    /// Blobs transferred at once
    #[arg(long, default_value_t = 4, value_name = "N", help_heading = "Registry options")]
    pub max_concurrent: usize,
    /// Retries on connection errors and 5xx responses
    #[arg(long, default_value_t = 3, value_name = "N", help_heading = "Registry options")]
    pub retries: u32,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Local image
    pub image: String,
    /// Destination [default: the image's own name]
    pub destination: Option<String>,
    /// Upload blobs larger than this many bytes in chunks of this size [default: 64 MiB
    /// chunks for blobs over 256 MiB]
    #[arg(long, value_name = "BYTES")]
    pub chunk_size: Option<u64>,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Print a JSON summary
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image to pull (NAME[:TAG] or NAME@sha256:…)
    pub image: String,
    /// Platform to pull from a multi-platform image (os/arch[/variant]) [default: this machine's]
    #[arg(long, conflicts_with = "all_platforms")]
    pub platform: Option<String>,
    /// Pull every platform of a multi-platform image
    #[arg(long)]
    pub all_platforms: bool,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Print a JSON summary
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Registry host[:port]
    pub registry: String,
    /// User name
    #[arg(short, long)]
    pub username: String,
    /// Read the password from standard input (the only way: never pass it as an argument)
    #[arg(long, required = true)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub transport: TransportArgs,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Registry host[:port]
    pub registry: String,
    /// Credentials file [default: Docker's config.json]
    #[arg(long, env = crate::env::KILN_AUTH_FILE, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build context directory
    #[arg(default_value = ".")]
    pub context: PathBuf,
    /// Kubefile to build [default: CONTEXT/Kubefile]
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub kubefile: Option<PathBuf>,
    /// Name of the image, NAME[:TAG]; repeat for more names
    #[arg(short = 't', long = "tag", required = true, value_name = "NAME")]
    pub tags: Vec<String>,
    /// Build-time variable for ARG, KEY=VALUE
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Image config label, KEY=VALUE
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Manifest annotation, KEY=VALUE
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Rebuild every layer
    #[arg(long)]
    pub no_cache: bool,
    /// What the image installs
    #[arg(long = "type", default_value = "kube-installer", value_parser = ["kube-installer", "app-installer"])]
    pub image_type: String,
    /// Target platforms, comma separated (e.g. linux/amd64,linux/arm64) [default: this machine's]
    #[arg(long, value_name = "PLATFORMS")]
    pub platform: Option<String>,
    /// Layer compression
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd"])]
    pub compression: String,
    /// `all` caches every container image the manifests, charts and apps reference in a
    /// `registry/` layer; `lite` skips that (nodes then pull from the network)
    #[arg(long, default_value = "all", value_parser = ["all", "lite"], help_heading = "Container images")]
    pub build_mode: String,
    /// Extra container images to cache, one per line; repeatable
    #[arg(long = "image-list", value_name = "FILE", help_heading = "Container images")]
    pub image_lists: Vec<PathBuf>,
    /// Container images not to cache, one per line; repeatable
    #[arg(long = "ignored-image-list", value_name = "FILE", help_heading = "Container images")]
    pub ignored_image_lists: Vec<PathBuf>,
    /// Container images pulled at once
    #[arg(long, default_value_t = 8, value_name = "N", help_heading = "Container images")]
    pub max_pull_procs: usize,
    /// Take container images from here before any registry: `store` (kiln's own store: images
    /// built, pulled or loaded earlier), an OCI archive, a `docker save` tar, an OCI layout
    /// directory, or `containerd[:NAMESPACE]` (the build host's containerd, with the
    /// `containerd` feature); repeatable, first match wins
    #[arg(long = "image-source", value_name = "store|PATH|containerd[:NS]", help_heading = "Container images")]
    pub image_sources: Vec<crate::build::ImageSource>,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print the list as JSON
    #[arg(long)]
    pub json: bool,
    /// Show full digests
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image name
    pub image: String,
    /// Only this platform of a multi-platform image
    #[arg(long)]
    pub platform: Option<String>,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// Existing image
    pub source: String,
    /// New names
    #[arg(required = true)]
    pub targets: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Images to remove
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Keep blobs that are no longer referenced
    #[arg(long)]
    pub no_prune: bool,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Output file
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Images to save
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Archive to load (OCI archive or `docker save` tar, optionally gzip-compressed)
    #[arg(short, long, value_name = "FILE")]
    pub input: PathBuf,
    /// Name for the image when the archive does not name it (single-image archives only)
    #[arg(short, long, value_name = "NAME")]
    pub tag: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Which hosts and how to reach them: a Clusterfile, Sealer-style flags, or both (flag hosts
/// are appended).
#[derive(Debug, Args, Clone)]
pub struct HostArgs {
    /// Clusterfile (Sealer v2)
    #[arg(short = 'f', long = "clusterfile", value_name = "FILE", help_heading = "Hosts")]
    pub clusterfile: Option<PathBuf>,
    /// Masters: `IP,IP` or ranges `10.0.0.1-10.0.0.3`
    #[arg(short = 'm', long, value_name = "IPS", help_heading = "Hosts")]
    pub masters: Option<String>,
    /// Nodes: `IP,IP` or ranges
    #[arg(short = 'n', long, value_name = "IPS", help_heading = "Hosts")]
    pub nodes: Option<String>,
    /// SSH user for flag hosts (non-root users get root through sudo)
    #[arg(short = 'u', long, default_value = "root", help_heading = "Hosts")]
    pub user: String,
    /// SSH (and sudo) password, read from this file; safer than `-p`
    #[arg(long, value_name = "FILE", help_heading = "Hosts")]
    pub passwd_file: Option<PathBuf>,
    /// SSH password (visible to other local users in `ps`; prefer --passwd-file)
    #[arg(
        short = 'p',
        long = "passwd",
        value_name = "PASSWORD",
        env = "KILN_SSH_PASSWORD",
        hide_env_values = true,
        help_heading = "Hosts"
    )]
    pub password: Option<String>,
    /// SSH private key for flag hosts
    #[arg(long = "pk", value_name = "FILE", help_heading = "Hosts")]
    pub private_key: Option<PathBuf>,
    /// SSH port for flag hosts
    #[arg(long, default_value_t = 22, help_heading = "Hosts")]
    pub port: u16,
    /// Jump host: `[USER@]HOST[:PORT]` (same credentials as the hosts)
    #[arg(long, value_name = "HOST", help_heading = "SSH")]
    pub bastion: Option<String>,
    /// known_hosts file checked for host keys [default: ~/.ssh/known_hosts]
    #[arg(long, value_name = "FILE", help_heading = "SSH")]
    pub known_hosts: Option<PathBuf>,
    /// Record host keys seen for the first time instead of refusing them (changed keys are always refused)
    #[arg(long, help_heading = "SSH")]
    pub accept_new_host_keys: bool,
    /// Hosts connected to at once
    #[arg(long, default_value_t = 32, value_name = "N", help_heading = "SSH")]
    pub max_hosts: usize,
    /// Seconds to wait for a host to answer
    #[arg(long, default_value_t = 15, value_name = "SECONDS", help_heading = "SSH")]
    pub connect_timeout: u64,
}

/// Preflight settings shared by `check` and `run`.
#[derive(Debug, Args, Clone)]
pub struct PreflightArgs {
    /// Checks to skip, comma-separated (see `kiln check` for names)
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub skip_checks: Vec<String>,
    /// Largest clock difference allowed between a host and this machine
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub max_clock_skew: f64,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Cluster image whose platforms and size the hosts are checked against
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    #[command(flatten)]
    pub checks: PreflightArgs,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Cluster image (else the Clusterfile's `spec.image`)
    pub image: Option<String>,
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Env for scripts and apps, `K=V`; repeatable
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Commands to run on master0 instead of the image's (replaces CMDS and LAUNCH)
    #[arg(long, value_delimiter = ',', value_name = "CMDS")]
    pub cmds: Vec<String>,
    /// Apps to launch instead of the image's LAUNCH list (`""`: none)
    #[arg(long, value_delimiter = ',', value_name = "APPS")]
    pub apps: Option<Vec<String>>,
    #[command(flatten)]
    pub options: RunOptions,
}

/// How a run goes, shared by `run`, `scale-up` and `apply`.
#[derive(Debug, Args, Clone)]
pub struct RunOptions {
    /// Connect, check and print the plan per host; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// How layers travel: `compressed` (as stored; the host decompresses), `recompressed` (gzip
    /// layers recompressed here once with zstd, which hosts unpack several times faster), `raw`
    /// (decompressed here once; more bytes, no decompression on the host), `auto` (measured per
    /// host: recompressed where the host has zstd, raw where its link is faster than that)
    #[arg(long, value_enum, default_value_t = LayerTransferArg::Auto, value_name = "MODE")]
    pub layer_transfer: LayerTransferArg,
    /// Keep no copy of the layers on the hosts, only the unpacked rootfs: less disk and fewer
    /// writes there, but a run that must rebuild the rootfs (a new image) sends every layer again
    #[arg(long)]
    pub no_layer_cache: bool,
    /// `kubernetes` runtime: seconds to wait for every node to be Ready
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub wait_ready: u64,
    /// `kubernetes` runtime: days the cluster's certificates are valid (CAs: 10 years)
    #[arg(long, default_value_t = 365, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub cert_validity: u32,
    #[command(flatten)]
    pub checks: PreflightArgs,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Which cluster a command acts on, and where its state comes from.
#[derive(Debug, Args, Clone)]
pub struct StateSourceArgs {
    /// The cluster (its saved Clusterfile) [default: the only one run from this machine]
    #[arg(short = 'c', long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Take the cluster's state from its master0 (every finished run leaves a copy there), for
    /// a cluster run from another machine; reached with the SSH flags
    #[arg(long, value_name = "IP")]
    pub from_master0: Option<std::net::IpAddr>,
    /// With --from-master0: the cluster's data root on its hosts
    #[arg(long, default_value = crate::clusterfile::DEFAULT_DATA_ROOT, value_name = "DIR", requires = "from_master0")]
    pub data_root: String,
}

/// `kiln scale-up`: hosts join a cluster run from this machine.
#[derive(Debug, Args)]
pub struct ScaleUpArgs {
    #[command(flatten)]
    pub state: StateSourceArgs,
    /// The joining hosts (`-m`, `-n`) and how to reach them
    #[command(flatten)]
    pub hosts: HostArgs,
    #[command(flatten)]
    pub options: RunOptions,
}

/// `kiln scale-down`: hosts leave a cluster run from this machine.
#[derive(Debug, Args)]
pub struct ScaleDownArgs {
    #[command(flatten)]
    pub state: StateSourceArgs,
    /// The leaving hosts (`-m`, `-n`: either names any host) and SSH settings
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Take unreachable hosts out of the cluster without cleaning them (they are reported)
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// `kiln apply -f Clusterfile`: the cluster made to match the file.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Cluster image for a cluster not yet run (else the Clusterfile's `spec.image`)
    pub image: Option<String>,
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Take unreachable leaving hosts out without cleaning them
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub options: RunOptions,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LayerTransferArg {
    Auto,
    Compressed,
    Recompressed,
    Raw,
}

impl From<LayerTransferArg> for crate::runtime::distribute::LayerTransfer {
    fn from(arg: LayerTransferArg) -> Self {
        match arg {
            LayerTransferArg::Auto => Self::Auto,
            LayerTransferArg::Compressed => Self::Compressed,
            LayerTransferArg::Recompressed => Self::Recompressed,
            LayerTransferArg::Raw => Self::Raw,
        }
    }
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub hosts: HostArgs,
    /// A cluster run from this machine (its saved Clusterfile is used)
    #[arg(long, value_name = "NAME", conflicts_with = "all")]
    pub cluster: Option<String>,
    /// Every cluster run from this machine
    #[arg(long)]
    pub all: bool,
    /// Delete from the reachable hosts even if some cannot be reached (they are reported)
    #[arg(long)]
    pub force: bool,
    /// Also remove this machine's run log for the cluster
    #[arg(long)]
    pub prune: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// The cluster's Clusterfile (its name and master0 are read from it)
    #[arg(short = 'f', long = "clusterfile", value_name = "FILE")]
    pub clusterfile: std::path::PathBuf,
    /// Where to write it (mode 0600); `-` prints it
    #[arg(short = 'o', long, value_name = "FILE", default_value = "kubeconfig")]
    pub output: String,
    /// The apiserver address to use (default: master0's IP, port 6443)
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub hosts: HostArgs,
    /// A cluster run from this machine (its saved Clusterfile) [default: the only one]
    #[arg(short = 'c', long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Only hosts with one of these roles (`master`, `node` or a custom role)
    #[arg(short = 'r', long = "role", value_delimiter = ',', value_name = "ROLES")]
    pub roles: Vec<String>,
    /// Only these hosts of the cluster: `IP,IP` or ranges
    #[arg(long = "hosts", value_name = "IPS")]
    pub only: Option<String>,
    /// Print each host's exit code and output as JSON
    #[arg(long)]
    pub json: bool,
    /// The command, after `--` (run as root under `sh -c`)
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `kiln cert --alt-names NAMES` (Sealer's form), or a subcommand.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CertArgs {
    #[command(subcommand)]
    pub command: Option<CertCommand>,
    /// Add these DNS names or IP addresses to every master's apiserver certificate (kept for
    /// later runs and renewals); the apiservers are restarted one at a time
    #[arg(long, value_delimiter = ',', value_name = "NAMES", required = true)]
    pub alt_names: Vec<String>,
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Show when each certificate on each master expires
    CheckExpiration(CertCheckArgs),
    /// Reissue every master's certificates and kubeconfigs from the cluster's CAs and restart
    /// the control plane, one master at a time
    Renew(CertRenewArgs),
}

#[derive(Debug, Args)]
pub struct CertCheckArgs {
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CertRenewArgs {
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Days the renewed certificates are valid
    #[arg(long, default_value_t = 365, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub cert_validity: u32,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Cluster name (default: every cluster this machine ran)
    pub cluster: Option<String>,
    /// Print the state as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::resolve(&cli.global)?;
    let json = match &cli.command {
        Command::Images(a) => a.json,
        Command::Build(a) => a.json,
        Command::Push(a) => a.json,
        Command::Pull(a) => a.json,
        Command::Load(a) => a.json,
        Command::Check(a) => a.json,
        Command::Run(a) => a.options.json,
        Command::ScaleUp(a) => a.options.json,
        Command::ScaleDown(a) => a.json,
        Command::Apply(a) => a.options.json,
        Command::Status(a) => a.json,
        Command::Delete(a) => a.json,
        Command::Exec(a) => a.json,
        Command::Plugin(PluginCommand::List(a)) => a.json,
        Command::Cert(a) => match &a.command {
            None => a.json,
            Some(CertCommand::CheckExpiration(c)) => c.json,
            Some(CertCommand::Renew(r)) => r.json,
        },
        _ => false,
    };
    let printer = settings.printer(json);
    match cli.command {
        Command::Build(args) => commands::build::run(&settings, printer, *args).await,
        Command::Images(args) => commands::images::run(&settings, printer, args).await,
        Command::Inspect(args) => commands::inspect::run(&settings, printer, args).await,
        Command::Tag(args) => commands::tag::run(&settings, printer, args).await,
        Command::Rmi(args) => commands::rmi::run(&settings, printer, args).await,
        Command::Save(args) => commands::save::run(&settings, printer, args).await,
        Command::Load(args) => commands::load::run(&settings, printer, args).await,
        Command::Push(args) => commands::push::run(&settings, printer, args).await,
        Command::Pull(args) => commands::pull::run(&settings, printer, args).await,
        Command::Login(args) => commands::login::run(printer, args).await,
        Command::Logout(args) => commands::login::logout(printer, args).await,
        Command::Registry(RegistryCommand::Serve(args)) => commands::serve::run(&settings, printer, args).await,
        Command::Check(args) => commands::check::run(&settings, printer, args).await,
        Command::Run(args) => commands::run::run(&settings, printer, *args).await,
        Command::ScaleUp(args) => commands::scale::scale_up(&settings, printer, *args).await,
        Command::ScaleDown(args) => commands::scale::scale_down(&settings, printer, *args).await,
        Command::Apply(args) => commands::scale::apply(&settings, printer, *args).await,
        Command::Status(args) => commands::status::run(&settings, printer, args).await,
        Command::Delete(args) => commands::delete::run(&settings, printer, *args).await,
        Command::Kubeconfig(args) => commands::kubeconfig::run(&settings, printer, args).await,
        Command::Cert(args) => commands::cert::run(&settings, printer, *args).await,
        Command::Exec(args) => commands::exec::run(&settings, printer, *args).await,
        Command::Plugin(PluginCommand::List(args)) => commands::plugin::list(&settings, printer, args).await,
    }
}
