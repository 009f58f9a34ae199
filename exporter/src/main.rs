//! `periscope`: the node agent. `run` is the daemon, `check` the preflight.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use periscope::{
    check,
    config::Config,
    export,
    families::{self, Probes, TaskContext},
    kernel::{privileges, tracefs},
    model::{resource::node_name, span::SpanQueue},
    process::kubernetes,
    profile,
    telemetry::Telemetry,
    triage,
};

/// Kernel and HTTP telemetry for every process on this node, as OpenTelemetry metrics, with no
/// code change: eBPF programs aggregate in the kernel; Periscope exports the histograms over OTLP
/// and on a Prometheus endpoint.
#[derive(Parser)]
#[command(name = "periscope", version, about, long_about = None)]
#[command(after_help = "Examples:\n  \
  periscope check                       # what can attach here, and why not\n  \
  periscope run                         # Prometheus on 127.0.0.1:9464/metrics\n  \
  OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 periscope run\n  \
  periscope run --config /etc/periscope/periscope.yaml --duration 5m\n  \
  periscope profile --duration 30s -o cpu.svg   # a CPU flame graph of the node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: attach the probes and export until SIGINT/SIGTERM or --duration.
    Run {
        /// YAML config file (default: the embedded config/periscope.yaml).
        #[arg(long, short, env = "PERISCOPE_CONFIG")]
        config: Option<PathBuf>,
        /// Stop cleanly after this long (e.g. 30s, 5m): final export, detach, exit 0.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Preflight: kernel, BTF, tracefs, capabilities, and per probe family the attach mechanism
    /// or why it cannot attach. Exits non-zero only when no probe family can run.
    Check {
        /// YAML config file (default: the embedded config/periscope.yaml).
        #[arg(long, short, env = "PERISCOPE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The 60-second incident triage in the terminal: execs, run-queue, disk, TCP, syscalls
    /// and HTTP over a window, with a verdict naming the layer that stands out.
    Triage(triage::Args),
    /// CPU or off-CPU flame graphs (SVG, folded stacks or pprof) of every process, or of one,
    /// from stacks sampled and aggregated in the kernel.
    Profile(profile::Args),
    /// USDT probes (`.note.stapsdt`).
    #[command(subcommand)]
    Usdt(UsdtCommand),
}

#[derive(Subcommand)]
enum UsdtCommand {
    /// The USDT probes a binary or library ships: provider:name, address, semaphore and
    /// argument specs (what `bpftrace -l 'usdt:PATH:*'` lists).
    List {
        /// The executable or shared library (a bare library name is looked up in the
        /// standard library directories).
        path: String,
    },
}

/// `periscope usdt list PATH`: one line per probe address.
fn usdt_list(path: &str) -> anyhow::Result<()> {
    let (file, probes) = families::usdt::list(path).map_err(anyhow::Error::msg)?;
    let file = file.display();
    for p in &probes {
        let semaphore = match (p.semaphore, p.semaphore_offset) {
            (0, _) => "none".to_string(),
            (addr, Some(offset)) => format!("{addr:#x} (file offset {offset:#x})"),
            (addr, None) => format!("{addr:#x} (not in the file)"),
        };
        let args = if p.args_text.is_empty() {
            "-"
        } else {
            &p.args_text
        };
        println!(
            "usdt:{file}:{}:{}  address {:#x}  semaphore {semaphore}  args {args}",
            p.provider, p.name, p.address
        );
    }
    Ok(())
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    config.apply_env(|name| std::env::var(name).ok())?;
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = config.log.clone().unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("invalid log filter {filter:?} ({e}); using info");
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, duration } => load_config(config.as_deref()).and_then(|c| {
            init_logging(&c);
            run(c, duration)
        }),
        Command::Triage(args) => triage::run(args),
        Command::Profile(args) => profile::run(args),
        Command::Usdt(UsdtCommand::List { path }) => usdt_list(&path),
        Command::Check { config } => load_config(config.as_deref()).map(|c| {
            if !check::run(&c) {
                std::process::exit(1);
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("periscope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The privileged part runs first, on the main thread alone: attach every probe and bind the
/// endpoint, then drop the capabilities the daemon no longer needs, and only then start the
/// runtime, whose threads inherit the reduced sets.
fn run(config: Config, duration: Option<Duration>) -> anyhow::Result<()> {
    privileges::require()?;
    let tracefs = match tracefs::Tracefs::locate_or_mount() {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %e, "tracepoint probes cannot attach");
            None
        }
    };
    let probes = Probes::start(&config.probes, tracefs.as_ref())?;
    if !probes.statuses.iter().any(|s| s.attached()) {
        anyhow::bail!(
            "no probe family could attach (see the warnings above, or run `periscope check`)"
        );
    }
    let prometheus = if config.prometheus.listen.is_empty() {
        None
    } else {
        Some(export::prometheus::bind_std(&config.prometheus.listen)?)
    };
    // Loading the object (ELF parsing, BTF, relocations) allocates megabytes that are freed by
    // now; give them back to the system instead of keeping them in the allocator's arenas.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    privileges::drop_after_attach(probes.attaches_later());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(run_daemon(config, duration, probes, prometheus));
    // A task that did not stop must not hold the exit either.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run_daemon(
    config: Config,
    duration: Option<Duration>,
    mut probes: Probes,
    prometheus: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    if config.kubernetes.enabled {
        watch_pods().await;
    }
    let profile_stats = Arc::new(periscope::families::profile::continuous::ProfileStats::default());
    let profiler = continuous_profiler(&config, &mut probes, profile_stats.clone());
    let mut telemetry = Telemetry::new(
        probes,
        config.service.resource(),
        config.histograms.layouts(),
    );
    telemetry.profiler = profiler.clone();
    telemetry.profiles = profile_stats;
    let telemetry = Arc::new(telemetry);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(profiler) = profiler {
        let client = match &config.otlp.endpoint {
            Some(_) => Some(export::otlp::OtlpClient::new(&config.otlp)?),
            None => None,
        };
        tracing::info!(
            otlp = client.is_some(),
            interval = ?config.otlp.interval,
            "continuous profiles on (pprof at /debug/pprof/profile)"
        );
        tasks.push(tokio::spawn(export::profiles::run(
            profiler,
            telemetry.profiles.clone(),
            client,
            config.otlp.interval,
            stopped.clone(),
        )));
    }

    if let Some(listener) = prometheus {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "Prometheus endpoint serving /metrics");
        tasks.push(tokio::spawn(export::prometheus::serve(
            listener,
            telemetry.clone(),
            stopped.clone(),
        )));
    }
    if config.otlp.endpoint.is_some() {
        let exporter = export::otlp::OtlpExporter::new(&config.otlp)?;
        tracing::info!(
            endpoint = config.otlp.endpoint.as_deref().unwrap_or_default(),
            protocol = ?config.otlp.protocol,
            interval = ?config.otlp.interval,
            "OTLP metrics export on"
        );
        tasks.push(tokio::spawn(
            exporter.run(telemetry.clone(), stopped.clone()),
        ));
    }

    let spans = match &config.otlp.endpoint {
        Some(_) if config.probes.http.spans => {
            let (queue, rx) =
                SpanQueue::new(config.probes.http.span_queue, telemetry.spans.clone());
            tasks.push(tokio::spawn(export::spans::export(
                export::otlp::OtlpClient::new(&config.otlp)?,
                rx,
                telemetry.spans.clone(),
                config.otlp.timeout,
            )));
            tracing::info!("OTLP span export on");
            Some(queue)
        }
        _ => None,
    };
    let ctx = TaskContext {
        config: &config.probes,
        stopped: stopped.clone(),
        spans,
    };
    // Spawned first among the tasks awaited at shutdown: the span exporter ends only when the
    // capture loops (its last senders) are gone.
    for (i, task) in telemetry.family_tasks(&ctx)?.into_iter().enumerate() {
        tasks.insert(i, tokio::spawn(task));
    }
    drop(ctx);
    for (family, every) in telemetry.rescans() {
        tasks.push(tokio::spawn(rescan(
            telemetry.clone(),
            family,
            every,
            stopped.clone(),
        )));
    }

    tasks.push(tokio::spawn(sweep_stale_entries(
        telemetry.clone(),
        stopped.clone(),
    )));
    wait_for_stop(duration).await;
    tracing::info!("stopping: final export, then detaching probes");
    let _ = stop.send(true);
    // Every task ends at the stop (the OTLP flush within its timeout); should one not, the
    // daemon still detaches and exits rather than hang its service manager until SIGKILL.
    let grace = config.otlp.timeout + SHUTDOWN_MARGIN;
    let all_done = async {
        for task in tasks {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        tracing::error!(
            ?grace,
            "some tasks did not stop in time; detaching the probes and exiting anyway"
        );
    }
    // Dropping the probes closes every link and program: nothing stays attached.
    match Arc::try_unwrap(telemetry) {
        Ok(t) => drop(t.into_probes()),
        Err(_) => tracing::warn!("telemetry still shared at exit; the kernel detaches on exit"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long the daemon waits for the first list of this node's pods before it reads any
/// process: a process whose resource is built before its pod is known keeps `k8s.pod.uid` only.
/// The list of one node's pods is one small request; the ring buffers hold the kernel's events
/// meanwhile (what overflows them is lost and counted, as at any stall).
const FIRST_POD_LIST_WAIT: Duration = Duration::from_secs(2);

/// `kubernetes.enabled`: starts the watch of this node's pods (not awaited at shutdown: it
/// holds nothing to flush), then gives its first list a moment to land.
async fn watch_pods() {
    // The config was refused without a node name (Config::apply_env).
    let Some(node) = node_name() else { return };
    let Some((pods, watch)) = kubernetes::start(node).await else {
        return;
    };
    tokio::spawn(watch);
    if !pods.wait_synced(FIRST_POD_LIST_WAIT).await {
        tracing::warn!(
            wait = ?FIRST_POD_LIST_WAIT,
            "no list of this node's pods yet; processes read before it lands keep k8s.pod.uid only"
        );
    }
}

/// The profile family's maps, when `probes.profile` is on and it attached.
fn continuous_profiler(
    config: &Config,
    probes: &mut Probes,
    stats: Arc<periscope::families::profile::continuous::ProfileStats>,
) -> Option<periscope::families::profile::continuous::Profiler> {
    if !config.probes.profile.enabled {
        return None;
    }
    if let Some(error) = probes
        .statuses
        .iter()
        .find(|s| s.family == "profile")
        .and_then(|s| s.error.as_ref())
    {
        tracing::warn!(%error, "continuous profiles are off: the profile family did not attach");
        return None;
    }
    let spawned = probes
        .take_profile()
        .map_err(anyhow::Error::from)
        .and_then(|reader| {
            periscope::families::profile::continuous::Profiler::spawn(
                reader,
                &config.probes.profile,
                stats,
            )
            .map_err(anyhow::Error::from)
        });
    match spawned {
        Ok(profiler) => Some(profiler),
        Err(e) => {
            tracing::warn!(error = %e, "continuous profiles are off: the profile family did not attach");
            None
        }
    }
}

/// How long shutdown may take beyond the final OTLP export's own timeout.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// Periodically removes start-time map entries whose end event was lost.
async fn sweep_stale_entries(telemetry: Arc<Telemetry>, mut stopped: watch::Receiver<bool>) {
    // A short series TTL (PERISCOPE_EXITED_SERIES_TTL) is honoured within one TTL, not 30 s.
    let every = families::SWEEP_INTERVAL.min(*periscope::process::EXITED_SERIES_TTL);
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let t = telemetry.clone();
                let _ = tokio::task::spawn_blocking(move || t.sweep()).await;
            }
            _ = stopped.changed() => return,
        }
    }
}

/// Runs `family`'s rescan every `interval` (processes started since: selection, libraries).
async fn rescan(
    telemetry: Arc<Telemetry>,
    family: &'static str,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let t = telemetry.clone();
                let _ = tokio::task::spawn_blocking(move || t.rescan(family)).await;
            }
            _ = stopped.changed() => return,
        }
    }
}

async fn wait_for_stop(duration: Option<Duration>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGTERM");
            return std::future::pending().await;
        }
    };
    let timer = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = timer => tracing::info!("--duration elapsed"),
    }
}
