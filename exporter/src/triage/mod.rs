//! `periscope triage`: the 60-second incident triage of the reference article (execsnoop,
//! runqlat, biolatency, tcpretrans, syscount -L) in one command, on the probe families the
//! daemon uses, without a collector or a Prometheus endpoint.
//!
//! It attaches the families as the daemon does (`Probes::start`, plus the exec counter and the
//! syscall family for the chosen scope), snapshots their cumulative histograms and counters
//! every second and subtracts the first snapshot: the window. While it collects, stderr shows a
//! live screen (a TTY) or a progress line every few seconds (a log); at the end (or on Ctrl-C)
//! stdout gets the summary, or `--json` the same report as JSON
//! (`exporter/triage.schema.json`).

pub mod collect;
pub mod render;
pub mod report;
pub mod verdict;

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use collect::{Scope, Session};

/// How often the window is recomputed (and the live screen redrawn).
const REFRESH: Duration = Duration::from_secs(1);
/// How often a progress line is written when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The 60-second incident triage: new processes, run-queue latency, block IO latency per
/// device, TCP retransmits and resets, top syscalls by latency, HTTP RED per service, and a
/// verdict naming the layer that stands out.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
What it shows (over the window, from the daemon's own probes):
  new processes per command (exec storms), run-queue latency (CPU), block IO latency per
  device (disk), TCP retransmits and resets (network), top syscalls by total latency, HTTP
  RED per service; latency histograms drawn as bcc's log2 rows with the mode, p99, max and a
  bimodality hint; then a one-line verdict naming the layer that stands out.

While it runs: a live screen on a terminal, a progress line every 5 s otherwise (stderr).
Ctrl-C stops early and prints the summary so far (exit 0). Needs CAP_BPF + CAP_PERFMON;
without CAP_SYS_ADMIN HTTPS (OpenSSL uprobes) is skipped and the output says so.

Examples:
  periscope triage                          # 60 s, every process
  periscope triage --duration 10s           # a shorter window
  periscope triage --comm postgres          # syscalls, TCP and HTTP of postgres only
  periscope triage --pid 4242 --duration 30s
  periscope triage --container 3f4e5d6c     # a container (id prefix)
  periscope triage --json > triage.json     # for machines (schema: exporter/triage.schema.json)
  periscope triage 2> progress.log          # progress as plain lines, summary on stdout")]
pub struct Args {
    /// How long to collect (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Only this process in the syscall, TCP and HTTP sections (CPU, disk and execs stay
    /// node-wide).
    #[arg(long, conflicts_with_all = ["comm", "container"])]
    pub pid: Option<u32>,
    /// Only processes with this name (comm or executable name) in the per-process sections.
    #[arg(long, conflicts_with = "container")]
    pub comm: Option<String>,
    /// Only processes of this container (id or id prefix) in the per-process sections.
    #[arg(long)]
    pub container: Option<String>,
    /// Print the report as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(triage(args))
}

/// The alternate screen of a terminal, left on drop (also on error).
struct LiveScreen {
    on: bool,
}

impl LiveScreen {
    fn enter() -> Self {
        let mut err = std::io::stderr();
        let _ = write!(err, "\x1b[?1049h\x1b[?25l");
        let _ = err.flush();
        Self { on: true }
    }

    fn draw(&self, text: &str) {
        let mut frame = String::from("\x1b[H");
        for line in text.lines() {
            frame.push_str(line);
            frame.push_str("\x1b[K\n");
        }
        frame.push_str("\x1b[J");
        let mut err = std::io::stderr();
        let _ = err.write_all(frame.as_bytes());
        let _ = err.flush();
    }

    fn leave(&mut self) {
        if self.on {
            let mut err = std::io::stderr();
            let _ = write!(err, "\x1b[?25h\x1b[?1049l");
            let _ = err.flush();
            self.on = false;
        }
    }
}

impl Drop for LiveScreen {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Rows and columns of the terminal on stderr.
fn terminal_size() -> (usize, usize) {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills a winsize; stderr is a valid fd.
    let rc = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) };
    if rc != 0 || size.ws_row == 0 {
        return (24, 80);
    }
    (usize::from(size.ws_row), usize::from(size.ws_col))
}

fn report(
    session: &Session,
    requested: Duration,
    interrupted: bool,
) -> (report::Report, collect::Window) {
    let window = session.window();
    let attached = |family: &str| session.attached(family);
    let mut r = report::build(report::Inputs {
        window: &window,
        scope: &session.scope,
        requested_seconds: requested.as_secs_f64(),
        interrupted,
        attached: &attached,
        unavailable: &session.unavailable,
    });
    r.verdict = verdict::judge(&r);
    (r, window)
}

async fn triage(args: Args) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed first, so that Ctrl-C during attach already ends cleanly.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let scope = Scope {
        pid: args.pid,
        comm: args.comm.clone(),
        container: args.container.clone(),
        skip: Vec::new(),
    };
    let tty = std::io::stderr().is_terminal();
    if !tty {
        eprintln!("periscope triage: attaching the probes");
    }
    let session = Session::start(scope)?;
    let deadline = tokio::time::Instant::from_std(session.started() + args.duration);
    let mut screen = tty.then(LiveScreen::enter);
    if !tty {
        eprintln!(
            "periscope triage: collecting for {} (Ctrl-C stops early and prints the summary so far)",
            humantime::format_duration(args.duration)
        );
    }
    let mut ticker = tokio::time::interval(REFRESH);
    let mut last_log = Instant::now();
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                // Every snapshot reads every map: only when something shows it.
                match &screen {
                    Some(s) => {
                        let (r, _) = report(&session, args.duration, false);
                        let (rows, cols) = terminal_size();
                        s.draw(&render::live_screen(&r, rows, cols));
                    }
                    None if last_log.elapsed() >= LOG_EVERY => {
                        let (r, _) = report(&session, args.duration, false);
                        eprintln!("{}", render::progress_line(&r));
                        last_log = Instant::now();
                    }
                    None => {}
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
            _ = interrupt.recv() => { interrupted = true; break }
            _ = terminate.recv() => { interrupted = true; break }
        }
    }
    let (r, _) = report(&session, args.duration, interrupted);
    if let Some(s) = &mut screen {
        s.leave();
    }
    let text = if args.json {
        serde_json::to_string_pretty(&r)? + "\n"
    } else {
        render::summary(&r)
    };
    let mut stdout = std::io::stdout();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    session.stop().await;
    Ok(())
}
