//! `periscope profile`: where the time goes, as a flame graph. On-CPU, a perf event on every
//! CPU samples the running task's user and kernel stacks at a frequency (`profile -F 99`,
//! `perf record -F 99 -a -g`); off-CPU (`--off-cpu`), each block from switch-out to wakeup is
//! timed with the stacks it blocked in (`offcputime`). The kernel aggregates per (process,
//! stacks); this command names the stacks (blazesym) and writes an SVG flame graph (inferno),
//! folded stacks or pprof.
//!
//! It attaches the `profile` family alone (`Probes::start` with every other family off),
//! reads the kernel's counts every second to name new stacks while their processes live,
//! writes progress on stderr like `triage`, and on the end of `--duration` or on Ctrl-C
//! writes what it has.

use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::export::profile_formats as output;
use crate::families::profile::collect::{Collector, Filter, Kind};
use crate::{
    families::{Probes, ProbesConfig, profile::ProfileConfig},
    kernel::{privileges, tracefs::Tracefs},
};

/// How often the kernel's counts are read (and new stacks named).
const REFRESH: Duration = Duration::from_secs(1);
/// Time spent naming new stacks per refresh (once a second): the rest wait, so that a node
/// full of new stacks (compilers...) neither holds the end of the profile back nor takes more
/// than a tenth of a CPU from the workload being profiled.
const NAMING_BUDGET: Duration = Duration::from_millis(100);
/// How often a progress line is written on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An interactive flame graph (open it in a browser: click to zoom, Ctrl-F to search).
    Svg,
    /// Folded stacks, one line per stack: `comm;outer;...;leaf value`, for flamegraph.pl.
    Folded,
    /// pprof's gzip-compressed protobuf, for `go tool pprof`, Pyroscope or Parca.
    Pprof,
}

/// CPU (or off-CPU) flame graphs of every process on this node, or of one, with no code change.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
How to read a flame graph: each box is a function; the box under it is its caller, so stacks
grow upwards from the process name at the bottom. Width is the share of the samples (on-CPU:
the time spent running there; off-CPU: the time spent blocked there). Look for the widest
boxes near the top: that is where the time goes; walk down to see why it was called. Kernel
frames end in _[k]. Colours mean nothing beyond kernel vs user (on-CPU) and are random shades
of blue off-CPU.

On-CPU: every CPU is sampled --frequency times a second (default 99 Hz, off-beat with timer
ticks); a sample counts the stack running at that moment. Off-CPU (--off-cpu): each time a
thread blocks (sleep, IO, lock, pipe, socket) the time until it is woken is added to the
stacks it blocked in; waiting for a CPU after the wakeup is left out (that is run-queue
latency, the sched family's metric). Values are microseconds in folded and SVG output.

User stacks are walked by frame pointers: code built without them (-fomit-frame-pointer, the
default of most C compilers at -O2) shows short or broken stacks. Symbols come from the
binaries' symbol tables and DWARF (also inside containers), perf maps (/tmp/perf-PID.map, e.g.
node --perf-basic-prof) and /proc/kallsyms; a stripped binary shows [module+0xoffset].

Needs root, or CAP_BPF + CAP_PERFMON (+ CAP_SYS_ADMIN to read other processes' map_files
for symbols). Ctrl-C stops early and writes what was collected (exit 0).

Examples:
  periscope profile -o cpu.svg                       # 30 s, every process, 99 Hz
  periscope profile --pid 4242 --duration 10s -o app.svg
  periscope profile --off-cpu --comm postgres -o offcpu.svg
  periscope profile --format folded > out.folded     # then: flamegraph.pl out.folded > cpu.svg
  periscope profile --format pprof -o cpu.pb.gz      # then: go tool pprof -http=: cpu.pb.gz
  periscope profile --container 3f4e5d6c -o c.svg   # a container (id prefix)")]
pub struct Args {
    /// How long to sample (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Samples per second on each CPU (on-CPU profiles).
    #[arg(long, short = 'F', default_value_t = 99)]
    pub frequency: u64,
    /// Time blocked off-CPU instead of samples on-CPU.
    #[arg(long)]
    pub off_cpu: bool,
    /// With --off-cpu, leave out blocks shorter than this (e.g. 1ms).
    #[arg(long, default_value = "1us", value_parser = humantime::parse_duration)]
    pub min_block: Duration,
    /// Only this process (filtered in the kernel).
    #[arg(long, conflicts_with_all = ["comm", "container"])]
    pub pid: Option<u32>,
    /// Only processes or threads with this name (comm, at most 15 characters).
    #[arg(long, conflicts_with = "container")]
    pub comm: Option<String>,
    /// Only processes of this container (id or id prefix, from their cgroup).
    #[arg(long)]
    pub container: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Svg)]
    pub format: Format,
    /// Write the profile here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Distinct stacks kept by the kernel maps (more cost ~1 KiB each while profiling).
    #[arg(long, default_value_t = 16384)]
    pub max_stacks: u32,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let filter = std::env::var("PERISCOPE_LOG").unwrap_or_else(|_| "error".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(profile(args))
}

/// The probe configuration: every family off but `profile`.
fn probes_config(args: &Args) -> ProbesConfig {
    let mut config = ProbesConfig::default();
    config.block.enabled = false;
    config.sched.enabled = false;
    config.http.enabled = false;
    config.tcp.enabled = false;
    config.uprobe.enabled = false;
    config.syscall.enabled = false;
    config.profile = ProfileConfig {
        enabled: true,
        frequency: args.frequency,
        off_cpu: args.off_cpu,
        min_block_us: u32::try_from(args.min_block.as_micros()).unwrap_or(u32::MAX),
        tgid: args.pid,
        max_stacks: args.max_stacks,
    };
    config
}

fn what(args: &Args) -> String {
    let scope = match (&args.pid, &args.comm, &args.container) {
        (Some(pid), _, _) => format!("process {pid}"),
        (_, Some(comm), _) => format!("processes named {comm}"),
        (_, _, Some(id)) => format!("container {id}"),
        _ => "every process".into(),
    };
    if args.off_cpu {
        format!("off-CPU time of {scope}")
    } else {
        format!("on-CPU samples of {scope} at {} Hz", args.frequency)
    }
}

async fn profile(args: Args) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let config = probes_config(&args);
    config.validate().map_err(|e| anyhow::anyhow!(e))?;
    if let Some(pid) = args.pid
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    {
        anyhow::bail!("--pid {pid}: no such process");
    }
    privileges::require()?;
    let tracefs = Tracefs::locate_or_mount();
    if args.off_cpu
        && let Err(e) = &tracefs
    {
        anyhow::bail!("off-CPU profiles need the sched tracepoints, but {e}");
    }
    let mut probes = Probes::start(&config, tracefs.ok().as_ref())?;
    if let Some(status) = probes.statuses.iter().find(|s| s.family == "profile")
        && let Some(error) = &status.error
    {
        anyhow::bail!("the profile probe could not attach: {error}");
    }
    let reader = probes.take_profile()?;
    let mut collector = Collector::new(Filter {
        comm: args.comm.clone(),
        container: args.container.clone(),
    });
    eprintln!(
        "periscope profile: sampling {} for {} (Ctrl-C stops early and writes what it has)",
        what(&args),
        humantime::format_duration(args.duration)
    );
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut ticker = tokio::time::interval(REFRESH);
    let mut last_progress = Instant::now();
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                collector.refresh(&reader, Some(NAMING_BUDGET));
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                if last_progress.elapsed() >= PROGRESS_EVERY {
                    eprintln!("{}", progress_line(&collector, &args, started.elapsed()));
                    last_progress = Instant::now();
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
            _ = interrupt.recv() => { interrupted = true; break }
            _ = terminate.recv() => { interrupted = true; break }
        }
    }
    // Sampling stops here (the programs detached); the stacks not named yet are named now.
    let counts = reader.counts();
    let elapsed = started.elapsed();
    let lost = profile_counter(&probes, &["stack_lost", "sample_map_full"]);
    let unseen = profile_counter(&probes, &["wakeup_unseen"]);
    drop(probes);
    collector.finish(&reader, counts, None);
    write_profile(&args, &collector, elapsed)?;
    let (events, _, stacks) = collector.totals();
    let unit = if args.off_cpu { "blocks" } else { "samples" };
    let mut summary = format!(
        "periscope profile: {} {unit} in {stacks} stacks over {:.1} s{}",
        events,
        elapsed.as_secs_f64(),
        if interrupted { " (interrupted)" } else { "" }
    );
    if lost > 0 {
        summary.push_str(&format!(
            "; {lost} stacks not kept (stack-map collisions or full maps: raise --max-stacks)"
        ));
    }
    if unseen > 0 {
        summary.push_str(&format!(
            "; {unseen} wakeups the kernel did not trace (those blocks end at the switch-in)"
        ));
    }
    if let Some(path) = &args.output {
        summary.push_str(&format!("; written to {}", path.display()));
    }
    eprintln!("{summary}");
    Ok(())
}

fn progress_line(collector: &Collector, args: &Args, elapsed: Duration) -> String {
    let (events, value, stacks) = collector.totals();
    let (user, kernel) = collector.cached_frames();
    let amount = if args.off_cpu {
        format!("{events} blocks, {:.2} s blocked", value as f64 / 1e9)
    } else {
        format!("{events} samples")
    };
    format!(
        "periscope profile: {:.0} s of {}: {amount} in {stacks} stacks ({user} user and {kernel} kernel frames named)",
        elapsed.as_secs_f64(),
        humantime::format_duration(args.duration),
    )
}

/// The sum of the profile's self-telemetry counters `kinds`.
fn profile_counter(probes: &Probes, kinds: &[&str]) -> u64 {
    probes
        .counters()
        .iter()
        .filter(|(probe, kind, _)| *probe == "profile" && kinds.contains(kind))
        .map(|(_, _, n)| n)
        .sum()
}

fn write_profile(args: &Args, collector: &Collector, elapsed: Duration) -> anyhow::Result<()> {
    let kind = if args.off_cpu {
        Kind::OffCpu
    } else {
        Kind::OnCpu {
            frequency: args.frequency,
        }
    };
    let stacks = collector.stacks();
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match args.format {
        Format::Folded => output::write_folded(&stacks, kind, &mut out)?,
        Format::Svg => {
            let title = if args.off_cpu {
                "Off-CPU time (periscope profile --off-cpu)"
            } else {
                "CPU samples (periscope profile)"
            };
            output::write_svg(&stacks, kind, title, &mut out)?
        }
        Format::Pprof => {
            let profile = output::pprof_profile(&stacks, kind, elapsed.as_nanos() as i64);
            output::write_pprof(&profile, &mut out)?
        }
    }
    out.flush()?;
    Ok(())
}
