//! The `ironlb` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ironlb::control_plane;
use ironlb::controller::{self, metrics};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Bare-metal LoadBalancer provider for Kubernetes.
#[derive(Parser)]
#[command(name = "ironlb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How the controller and speaker log: `text` (colours only on a
    /// terminal) or `json` (one object per line, for log collectors).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "IRONLB_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as multi-document YAML
    /// (`ironlb crds | kubectl apply -f -`).
    Crds,
    /// Print ironlb's version.
    Version,
    /// Run the controller: give LoadBalancer Services addresses from IPAddressPools.
    Controller(ControllerArgs),
    /// Run a speaker: announce the addresses this node owns (ARP / NDP),
    /// advertise them to BGP peers, and forward the Services that ask for it.
    Speaker(Box<SpeakerArgs>),
    /// List this host's interfaces and, for --address, which ones would announce
    /// it and why the others would not.
    Interfaces(InterfacesArgs),
    /// Show pools and LoadBalancer Services: addresses, pool, announcing node
    /// and interface, forwarding mode.
    Status(StatusArgs),
    /// Prepare the cluster for `kubectl delete -k deploy/`: stop the
    /// controller, release the pools' finalizers and (unless
    /// --keep-service-addresses) take ironlb's addresses off the Services.
    Uninstall(UninstallArgs),
    /// Convert another provider's configuration to ironlb's.
    #[command(subcommand)]
    Migrate(MigrateFrom),
    /// Show ironlb working on this machine (root): three nodes, a client and
    /// backends in network namespaces; ownership, the client address the
    /// backend sees, and a measured failover. Cleans up after itself.
    Demo(DemoArgs),
    /// The demo's UDP echo backend.
    #[command(hide = true)]
    DemoUdpEcho {
        /// Where to listen.
        listen: SocketAddr,
    },
}

#[derive(Args)]
struct StatusArgs {
    /// Kubeconfig to use; else as kubectl finds it ($KUBECONFIG, a
    /// colon-separated list, else ~/.kube/config), else the in-cluster
    /// service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long)]
    context: Option<String>,
    /// `table` or `json`.
    #[arg(short = 'o', long = "output", default_value = "table")]
    output: OutputFormat,
    /// Count Services with no spec.loadBalancerClass as ironlb's (as the
    /// controller's --default-class).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    default_class: bool,
}

#[derive(Subcommand)]
enum MigrateFrom {
    /// Read MetalLB's objects (metallb.io v1beta1/v1beta2) from the cluster
    /// or from files; print ironlb's objects (stdout) and what became of
    /// every field (stderr); with --apply, create them server-side.
    Metallb(MigrateArgs),
}

#[derive(Args)]
struct MigrateArgs {
    /// Read these files (YAML or JSON, `---`-separated or a `kind: List`)
    /// instead of the cluster; `-` is standard input.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Create the objects on the cluster (server-side apply, field manager
    /// `ironlb-migrate`) instead of printing them.
    #[arg(long)]
    apply: bool,
    /// Leave out a field the migration refuses, as the table names it with
    /// its kind: `--skip BGPPeer.spec.vrf`. Repeatable.
    #[arg(long, value_name = "KIND.FIELD")]
    skip: Vec<String>,
    /// Where ironlb is installed: BGP password Secrets are written there.
    #[arg(long, default_value = "ironlb-system")]
    namespace: String,
    /// Kubeconfig to use; else as kubectl finds it.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long)]
    context: Option<String>,
}

#[derive(Args)]
struct UninstallArgs {
    /// Kubeconfig to use; else as kubectl finds it.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long)]
    context: Option<String>,
    /// Where ironlb is installed.
    #[arg(long, default_value = "ironlb-system")]
    namespace: String,
    /// Leave the Services' addresses in their status (for another provider
    /// that adopts them, such as MetalLB); by default they are removed,
    /// since nothing announces them any more.
    #[arg(long)]
    keep_service_addresses: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

#[derive(Args)]
struct DemoArgs {
    /// Leave the lab up at the end and print how to explore it.
    #[arg(long)]
    keep: bool,
    /// Remove a lab left by --keep (or by a killed demo) and exit.
    #[arg(long)]
    clean: bool,
    /// Don't install missing Debian packages (nginx, iproute2); fail and name
    /// them instead.
    #[arg(long)]
    no_install: bool,
    /// Prefix of the namespaces' names.
    #[arg(long, default_value = "ilbdemo")]
    prefix: String,
    /// The BGP story: an FRR router in front of the nodes, every node
    /// advertising the address, BFD taking a node whose link is cut out.
    #[arg(long)]
    bgp: bool,
}

#[derive(Args)]
struct SpeakerArgs {
    /// Take addresses and peers from this YAML file instead of the cluster
    /// (hosts without Kubernetes, and the namespace lab).
    #[arg(long = "static", value_name = "FILE")]
    static_file: Option<String>,
    /// This node's name (default: the file's `node`, else the host name).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Where /healthz, /readyz and /metrics listen.
    #[arg(long, default_value = "0.0.0.0:9121")]
    metrics_addr: SocketAddr,
    /// Kubeconfig to use; else as kubectl finds it ($KUBECONFIG, a
    /// colon-separated list, else ~/.kube/config), else the in-cluster
    /// service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where this speaker gossips, `address:port`; the address must be this
    /// node's, reachable by the others (without --static).
    #[arg(long, env = "GOSSIP_LISTEN")]
    gossip_listen: Option<SocketAddr>,
    /// This node's gossip address alone, IPv4 or IPv6 without brackets (the
    /// pod IP), used with --gossip-port when --gossip-listen is not given.
    #[arg(long, env = "GOSSIP_ADDRESS")]
    gossip_address: Option<std::net::IpAddr>,
    /// The gossip port, with --gossip-address.
    #[arg(long, env = "GOSSIP_PORT", default_value_t = ironlb::membership::DEFAULT_PORT)]
    gossip_port: u16,
    /// Other speakers' gossip addresses, comma-separated (without --static).
    #[arg(long, env = "GOSSIP_SEEDS", value_delimiter = ',')]
    gossip_seeds: Vec<SocketAddr>,
    /// File holding the gossip group's shared secret (without --static).
    #[arg(long, env = "GOSSIP_SECRET_FILE")]
    gossip_secret_file: Option<PathBuf>,
    /// Serve Services that have no spec.loadBalancerClass (without --static).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    default_class: bool,
    /// Forward the routes of Gateways of ironlb's GatewayClasses, read from
    /// the Gateway API objects (without --static; it waits quietly while the
    /// Gateway API CRDs are not installed).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    gateway: bool,
    /// Gratuitous ARP / unsolicited NA packets sent on takeover (without --static).
    #[arg(long, default_value_t = ironlb::speaker::DEFAULT_ANNOUNCE_COUNT)]
    announce_count: u32,
    /// Milliseconds between them (without --static).
    #[arg(long, default_value_t = ironlb::speaker::DEFAULT_ANNOUNCE_INTERVAL_MS)]
    announce_interval_ms: u64,
    /// Seconds between re-announcements of owned addresses, 0 for never
    /// (without --static).
    #[arg(long, default_value_t = ironlb::speaker::DEFAULT_REANNOUNCE_SECONDS)]
    reannounce_seconds: u64,
    /// Unix socket where this speaker passes its sockets to a new speaker on
    /// the same node (an upgrade), and where it first asks an older one for
    /// its own: forwarded connections then survive the upgrade. Off when
    /// not given.
    #[arg(long, env = "HANDOVER_SOCKET")]
    handover_socket: Option<PathBuf>,
    #[command(flatten)]
    forward: ForwardArgs,
}

/// The embedded forwarder's limits and timeouts (without --static; a static
/// file has a `forwarder:` section).
#[derive(Args)]
struct ForwardArgs {
    /// Milliseconds a backend connect may take before the next is tried [default: 5000].
    #[arg(long)]
    forward_connect_timeout_ms: Option<u64>,
    /// Seconds a TCP connection may stay silent (no byte either way) after
    /// its backend connected, before it is closed [default: 10].
    #[arg(long)]
    forward_tcp_handshake_seconds: Option<u64>,
    /// Seconds without a byte before a TCP connection is closed [default: 900].
    #[arg(long)]
    forward_tcp_idle_seconds: Option<u64>,
    /// Seconds without a datagram before a UDP flow is forgotten (30 while
    /// its backend never replied) [default: 120].
    #[arg(long)]
    forward_udp_idle_seconds: Option<u64>,
    /// TCP connections at once per Service port; more are reset [default:
    /// as many as the open-file limit holds, as maxConnectionsTotal].
    #[arg(long)]
    forward_max_connections: Option<usize>,
    /// TCP connections at once on the node, over every Service [default:
    /// (the open-file limit - 256) / 2, two descriptors each].
    #[arg(long)]
    forward_max_connections_total: Option<usize>,
    /// TCP connections at once per client address and Service port; unset,
    /// no such limit (one address is often a NAT or a proxy of thousands).
    #[arg(long)]
    forward_max_connections_per_source: Option<usize>,
    /// UDP flows per Service port; a new client beyond evicts a flow never
    /// answered, else the least recently used [default: 8192].
    #[arg(long)]
    forward_max_flows: Option<usize>,
    /// UDP flows on the node, over every Service [default: 16384].
    #[arg(long)]
    forward_max_flows_total: Option<usize>,
    /// Clients whose backend sessionAffinity remembers, per Service port [default: 65536].
    #[arg(long)]
    forward_max_affinity_clients: Option<usize>,
    /// Seconds connections live on after their address is gone [default: 30].
    #[arg(long)]
    forward_drain_seconds: Option<u64>,
    /// Forward the Services that need nothing of user space in the kernel
    /// (nftables DNAT) [default: true]; false keeps every Service in the
    /// user-space forwarder, under its limits.
    #[arg(long)]
    forward_kernel_path: Option<bool>,
    /// TCP ports the node keeps for itself: never forwarded on a Service
    /// address, besides the kubelet's (10250) and ironlb's metrics port
    /// (comma-separated, e.g. 22,9100).
    #[arg(long, value_delimiter = ',')]
    forward_reserved_tcp_ports: Vec<u16>,
    /// UDP ports the node keeps for itself, besides ironlb's gossip port.
    #[arg(long, value_delimiter = ',')]
    forward_reserved_udp_ports: Vec<u16>,
}

impl ForwardArgs {
    fn tuning(&self) -> ironlb::forwarder::Tuning {
        ironlb::forwarder::Tuning {
            connect_timeout_ms: self.forward_connect_timeout_ms,
            tcp_handshake_seconds: self.forward_tcp_handshake_seconds,
            tcp_idle_seconds: self.forward_tcp_idle_seconds,
            udp_idle_seconds: self.forward_udp_idle_seconds,
            max_connections: self.forward_max_connections,
            max_connections_total: self.forward_max_connections_total,
            max_connections_per_source: self.forward_max_connections_per_source,
            max_flows: self.forward_max_flows,
            max_flows_total: self.forward_max_flows_total,
            max_affinity_clients: self.forward_max_affinity_clients,
            drain_seconds: self.forward_drain_seconds,
            kernel_path: self.forward_kernel_path,
            reserved_tcp_ports: self.forward_reserved_tcp_ports.clone(),
            reserved_udp_ports: self.forward_reserved_udp_ports.clone(),
        }
    }
}

#[derive(Args)]
struct InterfacesArgs {
    /// The address to decide for.
    #[arg(long)]
    address: Option<std::net::IpAddr>,
    /// Interfaces named by the L2Advertisement (repeatable).
    #[arg(long = "interface")]
    interfaces: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ControllerArgs {
    /// Kubeconfig to use; else as kubectl finds it ($KUBECONFIG, a
    /// colon-separated list, else ~/.kube/config), else the in-cluster
    /// service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Serve Services that have no spec.loadBalancerClass (as well as those of class
    /// ironlb.dev/ironlb).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    default_class: bool,
    /// Implement GatewayClasses with controllerName ironlb.dev/gateway-controller
    /// (it waits quietly while the Gateway API CRDs are not installed).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    gateway: bool,
    /// Where /healthz, /readyz and /metrics listen.
    #[arg(long, default_value = "0.0.0.0:9120")]
    metrics_addr: SocketAddr,
    /// Namespace of the leader-election Lease (default: this pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ironlb-system")]
    lease_namespace: String,
    /// This replica's identity in the Lease and in events (default: the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader's lease lasts without renewal: how long a standby waits
    /// after the leader dies.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// The speakers' gossip Secret in the lease namespace, created with a random
    /// secret when missing (empty: don't).
    #[arg(long, default_value = "ironlb-gossip")]
    gossip_secret: String,
    /// Seconds before expiry at which the leader renews.
    #[arg(long, default_value_t = 5)]
    lease_grace_seconds: u64,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ironlb: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crds => print!("{}", ironlb::api::crds_yaml()?),
        Command::Version => println!("ironlb {}", env!("CARGO_PKG_VERSION")),
        Command::Interfaces(args) => runtime(false)?.block_on(interfaces(args))?,
        Command::Demo(args) => demo(args)?,
        Command::Status(args) => runtime(false)?.block_on(status(args))?,
        Command::Uninstall(args) => runtime(false)?.block_on(uninstall(args))?,
        Command::Migrate(MigrateFrom::Metallb(args)) => {
            runtime(false)?.block_on(migrate_metallb(args))?
        }
        Command::DemoUdpEcho { listen } => ironlb_lab::demo::udp_echo_server(listen)?,
        Command::Speaker(args) => {
            init_logs(cli.log_format);
            runtime(true)?.block_on(run_speaker(*args))?;
        }
        Command::Controller(args) => {
            init_logs(cli.log_format);
            runtime(true)?.block_on(run_controller(args))?;
        }
    }
    Ok(())
}

/// A Tokio runtime: a thread per core for the long-running components, one
/// thread for the short commands.
fn runtime(multi_thread: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build()
}

async fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let client = client(args.kubeconfig, args.context).await?;
    let done = ironlb::uninstall::prepare(client, &args.namespace, !args.keep_service_addresses)
        .await
        .context("preparing the uninstall")?;
    if done.controller_stopped {
        println!(
            "stopped the controller ({}/ironlb-controller scaled to 0)",
            args.namespace
        );
    }
    println!(
        "released {} pool(s): {}",
        done.pools_released.len(),
        done.pools_released.join(", ")
    );
    if args.keep_service_addresses {
        println!("left the Services' addresses in their status (--keep-service-addresses)");
    } else {
        println!(
            "took ironlb's address off {} Service(s): {}",
            done.services_cleaned.len(),
            done.services_cleaned.join(", ")
        );
    }
    println!("now: kubectl delete -k deploy/   (or the overlay you installed)");
    Ok(())
}

async fn migrate_metallb(args: MigrateArgs) -> anyhow::Result<()> {
    use ironlb::migrate;
    let needs_cluster = args.apply || args.files.is_empty();
    let client = if needs_cluster {
        Some(client(args.kubeconfig, args.context).await?)
    } else {
        None
    };
    let input = match (&client, args.files.is_empty()) {
        (Some(client), true) => migrate::cluster::read(client)
            .await
            .context("reading MetalLB's objects from the cluster")?,
        _ => {
            let mut all = Vec::new();
            for file in &args.files {
                let text = if file.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())?
                } else {
                    std::fs::read_to_string(file)
                        .with_context(|| format!("reading {}", file.display()))?
                };
                all.extend(
                    migrate::parse_objects(&text, &file.display().to_string())
                        .map_err(anyhow::Error::msg)?,
                );
            }
            all
        }
    };
    let options = migrate::Options {
        namespace: args.namespace,
        skip: args.skip.iter().cloned().collect(),
    };
    let migration = migrate::convert(&input, &options);
    eprint!("{}", migration.table());
    let unused: Vec<&String> = args
        .skip
        .iter()
        .filter(|s| {
            !migration
                .lines
                .iter()
                .any(|l| matches!(l.fate, migrate::Fate::Skipped(_)) && **s == l.skip_name())
        })
        .collect();
    if !unused.is_empty() {
        anyhow::bail!(
            "--skip {}: no refused field of that name; the table above names them as \
             KIND and FIELD (--skip BGPPeer.spec.vrf)",
            unused
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let refused = migration.refused();
    if !refused.is_empty() {
        let list: Vec<String> = refused
            .iter()
            .map(|l| match &l.fate {
                migrate::Fate::Refused(why) => format!("  {} {}: {why}", l.object, l.field),
                _ => unreachable!("refused() returns refused lines"),
            })
            .collect();
        anyhow::bail!(
            "nothing migrated: {} field(s) cannot keep their meaning in ironlb:\n{}\n\
             change them in MetalLB first, or leave them out with --skip KIND.FIELD",
            refused.len(),
            list.join("\n")
        );
    }
    match client.filter(|_| args.apply) {
        Some(client) => {
            for done in migrate::cluster::apply(&client, &migration).await? {
                println!("applied {done}");
            }
        }
        None => print!("{}", migration.yaml()?),
    }
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let status = ironlb::status::fetch(
        client(args.kubeconfig, args.context).await?,
        args.default_class,
    )
    .await
    .context("reading pools, Services and ServiceL2Statuses")?;
    match args.output {
        OutputFormat::Table => print!("{}", ironlb::status::table(&status)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
    }
    Ok(())
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    use ironlb_lab::Cleanup;
    use ironlb_lab::demo::{Options, clean, run_demo};
    if args.clean {
        let n = clean(&args.prefix)?;
        println!("removed {n} namespaces");
        return Ok(());
    }
    let opts = Options {
        prefix: args.prefix,
        keep: args.keep,
        install: !args.no_install,
        bgp: args.bgp,
    };
    println!(
        "ironlb demo: one Service address, three nodes, a client and two backends, \
         in network namespaces on this machine"
    );
    let cleanup = Cleanup::default();
    let result = runtime(false)?.block_on(async {
        let (c, o) = (cleanup.clone(), opts.clone());
        let task = tokio::task::spawn_blocking(move || run_demo(&o, &c));
        tokio::select! {
            r = task => r.map_err(anyhow::Error::from).and_then(|r| r),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    cleanup.run();
    let summary = result?;
    println!("{summary}");
    Ok(())
}

fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_lease_manager=warn".into()),
        )
        // Colour codes only where a person reads them: `kubectl logs` and
        // files would show them as garbage.
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// A token cancelled by SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let on_signal = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        info!("shutting down");
        on_signal.cancel();
    });
    token
}

async fn run_speaker(args: SpeakerArgs) -> anyhow::Result<()> {
    if let Err(e) = ironlb::forwarder::raise_fd_limit() {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let hostname = || {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    // Before binding anything: an older speaker of this node may hold the
    // ports, and pass them on.
    let mut handover = match &args.handover_socket {
        Some(path) => Some(ironlb::handover::Handover {
            path: path.clone(),
            taken: ironlb::handover::take_over(path)
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "cannot take over from the previous speaker; starting afresh"))
                .ok()
                .flatten(),
        }),
        None => None,
    };
    let listener = match handover
        .as_mut()
        .and_then(|h| h.taken.as_mut())
        .and_then(|t| t.metrics.take())
    {
        Some(fd) => {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)?
        }
        None => ironlb::http::bind(args.metrics_addr)
            .await
            .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?,
    };
    if let Some(file) = &args.static_file {
        let config = ironlb::speaker::StaticConfig::load(file)?;
        let node = args
            .node
            .or_else(|| config.node.clone())
            .unwrap_or_else(hostname);
        ironlb::speaker::run_static(
            config,
            Some(file.clone()),
            node,
            Some(listener),
            shutdown_on_signal(),
            handover,
        )
        .await?;
        return Ok(());
    }
    let listen = ironlb::membership::listen_address(
        args.gossip_listen,
        args.gossip_address,
        args.gossip_port,
    )
    .map_err(anyhow::Error::msg)?;
    let secret_file = args
        .gossip_secret_file
        .context("--gossip-secret-file (or GOSSIP_SECRET_FILE) is required without --static")?;
    let secret = std::fs::read(&secret_file)
        .with_context(|| format!("reading --gossip-secret-file {}", secret_file.display()))?;
    let node = args.node.unwrap_or_else(hostname);
    let gossip = ironlb::membership::Config::lan(
        node.clone(),
        ironlb::membership::keys_from(&secret),
        args.gossip_seeds,
    );
    let speaker = ironlb::speaker::Speaker {
        node,
        listen,
        gossip,
        timing: ironlb::speaker::Timing {
            announce_count: args.announce_count,
            announce_interval: Duration::from_millis(args.announce_interval_ms),
            reannounce: Duration::from_secs(args.reannounce_seconds),
        },
        forwarding: args
            .forward
            .tuning()
            .settings(ironlb::forwarder::open_file_limit()),
    };
    ironlb::speaker::run_kubernetes(
        client(args.kubeconfig, None).await?,
        speaker,
        ironlb::speaker::ClusterOptions {
            default_class: args.default_class,
            gateway: args.gateway,
        },
        Some(listener),
        shutdown_on_signal(),
        handover,
    )
    .await?;
    Ok(())
}

async fn interfaces(args: InterfacesArgs) -> anyhow::Result<()> {
    let links = ironlb::netlink::links().await?;
    let verdicts: Vec<(String, Option<String>)> = match args.address {
        Some(address) => {
            let (chosen, skipped) =
                ironlb::netlink::announcing_links(&links, address, &args.interfaces);
            let mut v: Vec<(String, Option<String>)> =
                chosen.iter().map(|l| (l.name.clone(), None)).collect();
            v.extend(
                skipped
                    .iter()
                    .map(|(l, why)| (l.name.clone(), Some(why.to_string()))),
            );
            v
        }
        None => Vec::new(),
    };
    let verdict = |name: &str| {
        verdicts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, why)| why.clone())
    };
    if args.json {
        let rows: Vec<serde_json::Value> = links
            .iter()
            .map(|l| {
                let mut row = serde_json::to_value(l).unwrap_or_default();
                if let Some(why) = verdict(&l.name) {
                    row["announces"] = serde_json::json!(why.is_none());
                    row["reason"] = serde_json::json!(why);
                }
                row
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:<5} {:<18} {:<32} ANNOUNCES",
        "NAME", "KIND", "UP", "MAC", "ADDRESSES"
    );
    for l in &links {
        let nets: Vec<String> = l.networks.iter().map(ToString::to_string).collect();
        let announces = match verdict(&l.name) {
            None => "-".to_string(),
            Some(None) => "yes".to_string(),
            Some(Some(why)) => format!("no: {why}"),
        };
        println!(
            "{:<16} {:<8} {:<5} {:<18} {:<32} {announces}",
            l.name,
            l.kind.as_deref().unwrap_or("-"),
            if l.up { "yes" } else { "no" },
            l.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            nets.join(","),
        );
    }
    Ok(())
}

/// A client as kubectl would make it: `--kubeconfig`, else `$KUBECONFIG` (a
/// colon-separated list, merged), else `~/.kube/config`, else the Pod's
/// service account; `context` picks a kubeconfig context.
async fn client(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> anyhow::Result<kube::Client> {
    let options = KubeConfigOptions {
        context,
        ..Default::default()
    };
    let config = match &kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => match kubectl_kubeconfig()? {
            Some(kc) => kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .context("using the kubeconfig from $KUBECONFIG or ~/.kube/config")?,
            None => kube::Config::incluster().map_err(|_| {
                anyhow::anyhow!(
                    "no kubeconfig: none given with --kubeconfig, none in $KUBECONFIG or at \
                     ~/.kube/config, and this is not a Pod with a service account"
                )
            })?,
        },
    };
    Ok(kube::Client::try_from(config)?)
}

/// The kubeconfig kubectl would use: the files `$KUBECONFIG` lists that
/// exist, merged in order (kubectl skips missing ones, which kube's own
/// reader refuses), else `~/.kube/config`; `None` when there is neither.
fn kubectl_kubeconfig() -> anyhow::Result<Option<Kubeconfig>> {
    let paths: Vec<PathBuf> = match std::env::var_os("KUBECONFIG") {
        Some(list) => std::env::split_paths(&list).collect(),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".kube/config"))
            .into_iter()
            .collect(),
    };
    let mut merged: Option<Kubeconfig> = None;
    for path in paths.iter().filter(|p| p.is_file()) {
        let kc = Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        merged = Some(match merged {
            Some(m) => m.merge(kc)?,
            None => kc,
        });
    }
    Ok(merged)
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let client = client(args.kubeconfig, None).await?;
    if !args.gossip_secret.is_empty() {
        match controller::ensure_gossip_secret(
            client.clone(),
            &args.lease_namespace,
            &args.gossip_secret,
        )
        .await
        {
            Ok(true) => info!(namespace = %args.lease_namespace, name = %args.gossip_secret,
                              "created the speakers' gossip Secret"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, name = %args.gossip_secret,
                                     "cannot read or create the gossip Secret; speakers wait for it"),
        }
    }
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let config = control_plane::Config {
        service: controller::Config {
            default_class: args.default_class,
            identity,
            ..Default::default()
        },
        gateway: args.gateway,
        lease_namespace: args.lease_namespace,
        lease_duration: Duration::from_secs(args.lease_duration_seconds),
        lease_grace: Duration::from_secs(args.lease_grace_seconds),
    };
    let shutdown = shutdown_on_signal();
    let metrics = Arc::new(metrics::Metrics::default());
    let listener = ironlb::http::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
    info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    let http = tokio::spawn(ironlb::http::serve(
        listener,
        metrics.clone(),
        shutdown.clone(),
    ));
    let result =
        control_plane::run_with_leader_election(client, config, metrics, shutdown.clone()).await;
    shutdown.cancel();
    let _ = http.await;
    result?;
    Ok(())
}
