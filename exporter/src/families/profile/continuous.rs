//! Continuous profiles in the daemon (`probes.profile.enabled`): the kernel keeps counting
//! per (process, stacks) as for `periscope profile`; every export interval the daemon takes
//! what was counted since the previous window, names it, and hands it to the exporters (OTLP
//! profiles, and pprof on the Prometheus endpoint).
//!
//! Stacks are named every few seconds within a time budget, so that a short-lived process
//! is named while its maps are still readable; what is left is named when the window closes,
//! within a budget too (an export or a pprof request waits for it): stacks still unnamed then
//! go out with addresses as their frames, and are named at the next pass.
//! The kernel's maps hold at most `max_stacks` stacks: when the counts reach three-quarters
//! of that, the daemon empties them after reading (a full map would keep no new stack), and
//! the counts a key gains between that read and its removal are lost.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use periscope_common::profile::ProfileKey;
use tokio::sync::oneshot;

use super::{
    ProfileConfig, ProfileReader, StackCount,
    collect::{Collector, Filter, Kind, Stack},
};

/// How often new stacks are named between windows.
pub const NAME_EVERY: Duration = Duration::from_secs(5);
/// Time spent naming per [`Continuous::name_new_stacks`]: at most 2% of a core at
/// [`NAME_EVERY`].
const NAMING_BUDGET: Duration = Duration::from_millis(100);

/// What the kernel counted in one window, named, per process.
#[derive(Debug, Clone)]
pub struct Window {
    pub start: SystemTime,
    pub end: SystemTime,
    pub kind: Kind,
    /// Per process (tgid), its stacks and their values in this window.
    pub processes: Vec<(u32, Vec<Stack>)>,
}

impl Window {
    /// Every process's stacks together (pprof has no per-process resources: the thread name
    /// at the root of each stack tells them apart).
    pub fn all_stacks(&self) -> Vec<Stack> {
        self.processes
            .iter()
            .flat_map(|(_, stacks)| stacks.iter().cloned())
            .collect()
    }

    pub fn duration(&self) -> Duration {
        self.end.duration_since(self.start).unwrap_or_default()
    }
}

/// Time spent naming what is left of a window when it closes (an export, or a pprof request
/// someone waits for); stacks still unnamed then go out as addresses and are named later.
const FINISH_BUDGET: Duration = Duration::from_secs(2);

/// What became of the windows, for the `periscope.*` self-metrics.
#[derive(Debug, Default)]
pub struct ProfileStats {
    pub exported: AtomicU64,
    pub export_failed: AtomicU64,
    pub empty: AtomicU64,
    pub maps_emptied: AtomicU64,
    /// Stacks given addresses only: naming a window ran past [`FINISH_BUDGET`].
    pub stacks_addressed: AtomicU64,
}

/// Counts as of a read: value and events per key.
pub type Snapshot = HashMap<ProfileKey, (u64, u64)>;

/// What the profiler thread is asked to do.
enum Request {
    NameNewStacks,
    TakeWindow(oneshot::Sender<Window>),
    Snapshot(oneshot::Sender<Snapshot>),
    Since(Snapshot, SystemTime, oneshot::Sender<Window>),
}

/// The continuous profiler as the daemon's tasks share it: a thread of its own owns the maps
/// and the symbol caches (blazesym's are not `Send`), and answers requests in turn. The thread
/// ends when the last handle is dropped.
#[derive(Clone)]
pub struct Profiler {
    requests: std::sync::mpsc::Sender<Request>,
    pub kind: Kind,
}

impl Profiler {
    pub fn spawn(
        reader: ProfileReader,
        config: &ProfileConfig,
        stats: Arc<ProfileStats>,
    ) -> std::io::Result<Self> {
        let (requests, inbox) = std::sync::mpsc::channel();
        let config = config.clone();
        let kind = kind_of(&config);
        std::thread::Builder::new()
            .name("profiler".into())
            .spawn(move || {
                let mut profiler = Continuous::new(reader, &config, stats);
                for request in inbox {
                    match request {
                        Request::NameNewStacks => profiler.name_new_stacks(),
                        Request::TakeWindow(reply) => {
                            let _ = reply.send(profiler.take_window());
                        }
                        Request::Snapshot(reply) => {
                            let _ = reply.send(profiler.snapshot());
                        }
                        Request::Since(before, start, reply) => {
                            let _ = reply.send(profiler.since(&before, start));
                        }
                    }
                }
            })?;
        Ok(Self { requests, kind })
    }

    /// Names the stacks seen since the last call (within a budget), in the background.
    pub fn name_new_stacks(&self) {
        let _ = self.requests.send(Request::NameNewStacks);
    }

    /// See [`Continuous::take_window`]; `None` when the profiler thread is gone.
    pub async fn take_window(&self) -> Option<Window> {
        self.ask(Request::TakeWindow).await
    }

    /// See [`Continuous::snapshot`].
    pub async fn snapshot(&self) -> Option<Snapshot> {
        self.ask(Request::Snapshot).await
    }

    /// See [`Continuous::since`].
    pub async fn since(&self, before: Snapshot, start: SystemTime) -> Option<Window> {
        self.ask(|reply| Request::Since(before, start, reply)).await
    }

    async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> Request) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(request(reply)).ok()?;
        answer.await.ok()
    }
}

fn kind_of(config: &ProfileConfig) -> Kind {
    if config.off_cpu {
        Kind::OffCpu
    } else {
        Kind::OnCpu {
            frequency: config.frequency,
        }
    }
}

pub struct Continuous {
    reader: ProfileReader,
    collector: Collector,
    kind: Kind,
    /// Keys at which the maps are emptied after a window is read.
    clear_at: usize,
    /// Counts at the end of the previous window.
    previous: Snapshot,
    window_start: SystemTime,
    stats: Arc<ProfileStats>,
}

impl Continuous {
    pub fn new(reader: ProfileReader, config: &ProfileConfig, stats: Arc<ProfileStats>) -> Self {
        Self {
            reader,
            collector: Collector::new(Filter::default()),
            kind: kind_of(config),
            clear_at: (config.max_stacks as usize * 3 / 4).max(1),
            previous: Snapshot::new(),
            window_start: SystemTime::now(),
            stats,
        }
    }

    /// Names the stacks seen since the last call, for at most a short budget.
    pub fn name_new_stacks(&mut self) {
        self.collector.refresh(&self.reader, Some(NAMING_BUDGET));
    }

    /// The kernel's counts now, per key.
    pub fn snapshot(&self) -> Snapshot {
        snapshot_of(&self.reader.counts())
    }

    /// What was counted since `before` (a [`Continuous::snapshot`]), named; used by the pprof
    /// endpoint for its own `seconds`.
    pub fn since(&mut self, before: &Snapshot, start: SystemTime) -> Window {
        let counts = self.reader.counts();
        let deltas = deltas(&counts, before);
        self.named_window(deltas, start)
    }

    /// What was counted since the previous window (or the start), named; then, when the maps
    /// are three-quarters full, empties them.
    pub fn take_window(&mut self) -> Window {
        let counts = self.reader.counts();
        let deltas = deltas(&counts, &self.previous);
        let window = self.named_window(deltas, self.window_start);
        self.window_start = window.end;
        self.previous = snapshot_of(&counts);
        if counts.len() >= self.clear_at {
            self.reader.clear();
            self.collector.forget_keys();
            self.previous.clear();
            self.stats.maps_emptied.fetch_add(1, Ordering::Relaxed);
        }
        window
    }

    fn named_window(&mut self, deltas: Vec<StackCount>, start: SystemTime) -> Window {
        let addressed = self
            .collector
            .finish(&self.reader, deltas, Some(FINISH_BUDGET));
        self.stats
            .stacks_addressed
            .fetch_add(addressed as u64, Ordering::Relaxed);
        Window {
            start,
            end: SystemTime::now(),
            kind: self.kind,
            processes: self.collector.stacks_by_process(),
        }
    }
}

fn snapshot_of(counts: &[StackCount]) -> Snapshot {
    counts
        .iter()
        .map(|c| (c.key, (c.value, c.events)))
        .collect()
}

/// Per key, what `counts` holds beyond `before`; keys that gained nothing are left out. A key
/// whose count went down was emptied and counted again: all of it is new.
fn deltas(counts: &[StackCount], before: &Snapshot) -> Vec<StackCount> {
    counts
        .iter()
        .filter_map(|c| {
            let (value, events) = match before.get(&c.key) {
                Some(&(v, e)) if c.value >= v && c.events >= e => (c.value - v, c.events - e),
                _ => (c.value, c.events),
            };
            (events > 0).then_some(StackCount {
                key: c.key,
                value,
                events,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(tgid: u32, value: u64, events: u64) -> StackCount {
        StackCount {
            key: ProfileKey {
                tgid,
                ..ProfileKey::ZERO
            },
            value,
            events,
        }
    }

    #[test]
    fn a_window_holds_only_what_each_stack_gained_since_the_previous() {
        let before = snapshot_of(&[count(1, 10, 10), count(2, 5, 5)]);
        let now = [count(1, 14, 14), count(2, 5, 5), count(3, 2, 2)];
        let got = deltas(&now, &before);
        assert_eq!(got, vec![count(1, 4, 4), count(3, 2, 2)]);
    }

    #[test]
    fn a_count_that_went_down_was_emptied_and_counts_whole() {
        let before = snapshot_of(&[count(1, 10, 10)]);
        assert_eq!(deltas(&[count(1, 3, 3)], &before), vec![count(1, 3, 3)]);
    }
}
