//! From the kernel's aggregated counts to named stacks. Each (process, stacks) key is
//! symbolized once, the first time it is read, while the process is most likely still alive
//! (its `/proc/PID/maps` is what turns addresses into functions; for a process gone by then,
//! the maps read when the kernel first announced it, see [`super::process_maps`]); later reads
//! only update the counts. `--comm` and `--container` are decided per process at first sight
//! too.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::families::profile::{ProfileReader, StackCount};
use periscope_common::profile::ProfileKey;

use super::symbolize::{Frame, Symbols};

/// Which processes a profile keeps besides the kernel-side `--pid` filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub comm: Option<String>,
    pub container: Option<String>,
}

impl Filter {
    fn keeps(&self, key: &ProfileKey) -> bool {
        if let Some(comm) = &self.comm {
            let thread = comm_text(&key.comm);
            let process =
                std::fs::read_to_string(format!("/proc/{}/comm", key.tgid)).unwrap_or_default();
            if thread != *comm && process.trim_end() != comm {
                return false;
            }
        }
        if let Some(id) = &self.container {
            let cgroups =
                std::fs::read_to_string(format!("/proc/{}/cgroup", key.tgid)).unwrap_or_default();
            let inside = crate::process::cgroup::CgroupIdentity::from_proc_cgroup(&cgroups)
                .container_id
                .is_some_and(|c| c.starts_with(id.as_str()));
            if !inside {
                return false;
            }
        }
        true
    }
}

/// Frames of the tracing machinery that runs the profile's own program.
fn is_tracing_glue(name: &str) -> bool {
    const PREFIXES: [&str; 6] = [
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "perf_trace_",
        "trace_call_bpf",
        "__traceiter_",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// What the values of a profile are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Samples at this frequency (Hz) on every CPU.
    OnCpu { frequency: u64 },
    /// Nanoseconds blocked.
    OffCpu,
}

impl Kind {
    /// The value written in folded and SVG output: samples, or microseconds blocked.
    pub fn folded_value(self, value: u64) -> u64 {
        match self {
            Kind::OnCpu { .. } => value,
            Kind::OffCpu => value / 1000,
        }
    }
}

pub fn comm_text(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// One named stack, root first (the thread's name, then user frames outermost first, then
/// kernel frames), and its value: samples on-CPU, nanoseconds off-CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    pub frames: Vec<Frame>,
    pub value: u64,
    /// Samples (on-CPU) or blocks (off-CPU) the value is made of.
    pub events: u64,
}

pub struct Collector {
    filter: Filter,
    symbols: Symbols,
    /// Per key seen: its frames, or `None` when the filter drops it.
    named: HashMap<ProfileKey, Option<Vec<Frame>>>,
    /// Keys given addresses only when a budget ran out: named again at the next pass.
    addressed: HashSet<ProfileKey>,
    /// Keys whose user frames are named (their root and user frames, root first, are in
    /// `named`) and whose kernel frames wait for [`Collector::finish`]: kernel names do not
    /// depend on a process being alive, so loading `/proc/kallsyms` and naming them need not
    /// take CPU from the workload while it is profiled. The kernel stack's addresses,
    /// innermost first, read when the user frames were named.
    kernel_pending: HashMap<ProfileKey, Vec<u64>>,
    /// The latest counts read.
    counts: Vec<StackCount>,
}

/// What a naming pass does with the stacks left when its budget runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rest {
    /// Leaves them for the next pass.
    Wait,
    /// Gives them addresses (`[module+0xoffset]`, `[kernel 0x...]`) now, and names them at
    /// the next pass.
    Addresses,
}

impl Collector {
    pub fn new(filter: Filter) -> Self {
        Self {
            filter,
            symbols: Symbols::new(),
            named: HashMap::new(),
            addressed: HashSet::new(),
            kernel_pending: HashMap::new(),
            counts: Vec::new(),
        }
    }

    /// Reads the kernel's counts and names the stacks not seen before, for at most `budget`
    /// (the rest wait for the next call); `None` names them all.
    pub fn refresh(&mut self, reader: &ProfileReader, budget: Option<std::time::Duration>) {
        self.counts = reader.counts();
        self.name_new(reader, budget, Rest::Wait);
    }

    /// The final counts (read when sampling stopped); every stack not named yet is named,
    /// within `budget` when one is given (the daemon's windows and pprof requests, which
    /// someone waits for), past which the rest get addresses instead of names. How many
    /// stacks got addresses only.
    pub fn finish(
        &mut self,
        reader: &ProfileReader,
        counts: Vec<StackCount>,
        budget: Option<std::time::Duration>,
    ) -> usize {
        self.counts = counts;
        self.name_new(reader, budget, Rest::Addresses)
    }

    /// Names the stacks not named yet (and those given addresses only before); how many were
    /// given addresses only this time.
    fn name_new(
        &mut self,
        reader: &ProfileReader,
        budget: Option<std::time::Duration>,
        rest: Rest,
    ) -> usize {
        let started = std::time::Instant::now();
        self.symbols.new_round();
        for key in self.addressed.drain() {
            self.named.remove(&key);
        }
        if rest == Rest::Addresses {
            self.name_kernel_frames();
        }
        let new: Vec<ProfileKey> = self
            .counts
            .iter()
            .map(|c| c.key)
            .filter(|key| !self.named.contains_key(key))
            .collect();
        let mut pending = HashSet::new();
        for key in new {
            if budget.is_some_and(|b| started.elapsed() > b) {
                pending.insert(key.tgid);
                if rest == Rest::Addresses {
                    let frames = self
                        .filter
                        .keeps(&key)
                        .then(|| self.addresses(reader, &key));
                    self.named.insert(key, frames);
                    self.addressed.insert(key);
                }
                continue;
            }
            let frames = match rest {
                Rest::Wait => self.filter.keeps(&key).then(|| {
                    self.kernel_pending
                        .insert(key, reader.stack(key.kernel_stack));
                    self.name_user(reader, &key)
                }),
                Rest::Addresses => self.filter.keeps(&key).then(|| self.name(reader, &key)),
            };
            self.named.insert(key, frames);
        }
        // The maps read of a process gone are needed until its last stacks are named.
        reader.processes().expire(reader.counted_at(), &pending);
        self.addressed.len()
    }

    /// A stack with its frames as addresses: no symbol file read, only the process's maps.
    fn addresses(&mut self, reader: &ProfileReader, key: &ProfileKey) -> Vec<Frame> {
        let user = self.symbols.user_addresses(
            key.tgid,
            &reader.stack(key.user_stack),
            reader.processes(),
        );
        let kernel = self
            .symbols
            .kernel_addresses(&reader.stack(key.kernel_stack));
        self.root_first(key, user, kernel)
    }

    fn name(&mut self, reader: &ProfileReader, key: &ProfileKey) -> Vec<Frame> {
        let mut frames = self.name_user(reader, key);
        frames.extend(self.kernel_frames(&reader.stack(key.kernel_stack)));
        frames
    }

    /// The thread's name and the user frames, outermost first.
    fn name_user(&mut self, reader: &ProfileReader, key: &ProfileKey) -> Vec<Frame> {
        let user =
            self.symbols
                .user_stack(key.tgid, &reader.stack(key.user_stack), reader.processes());
        self.root_first(key, user, Vec::new())
    }

    /// The kernel frames of a stack (`ips` innermost first), outermost first.
    fn kernel_frames(&mut self, ips: &[u64]) -> impl Iterator<Item = Frame> + use<> {
        let mut kernel = self.symbols.kernel_stack(ips);
        // Off-CPU stacks are taken inside the sched_switch tracepoint: its own frames (the
        // program, the tracepoint glue) are not where the task blocked.
        let glue = kernel
            .iter()
            .take_while(|f| is_tracing_glue(&f.name))
            .count();
        kernel.drain(..glue);
        kernel.into_iter().rev()
    }

    /// Adds their kernel frames to the keys named without them.
    fn name_kernel_frames(&mut self) {
        for (key, ips) in std::mem::take(&mut self.kernel_pending) {
            let kernel: Vec<Frame> = self.kernel_frames(&ips).collect();
            if let Some(Some(frames)) = self.named.get_mut(&key) {
                frames.extend(kernel);
            }
        }
    }

    /// The thread's name, then `user` and `kernel` (innermost first) outermost first.
    fn root_first(&self, key: &ProfileKey, user: Vec<Frame>, kernel: Vec<Frame>) -> Vec<Frame> {
        let root = Frame {
            name: comm_text(&key.comm),
            module: String::new(),
            kernel: false,
        };
        std::iter::once(root)
            .chain(user.into_iter().rev())
            .chain(kernel.into_iter().rev())
            .collect()
    }

    /// Events (samples, or blocks off-CPU) and value over the kept stacks.
    pub fn totals(&self) -> (u64, u64, usize) {
        let kept = self.kept();
        let events = kept.iter().map(|(c, _)| c.events).sum();
        let value = kept.iter().map(|(c, _)| c.value).sum();
        (events, value, kept.len())
    }

    fn kept(&self) -> Vec<(&StackCount, &Vec<Frame>)> {
        self.counts
            .iter()
            .filter_map(|c| Some((c, self.named.get(&c.key)?.as_ref()?)))
            .collect()
    }

    /// The named stacks, identical stacks merged, in a stable order.
    pub fn stacks(&self) -> Vec<Stack> {
        let mut merged: BTreeMap<Vec<Frame>, (u64, u64)> = BTreeMap::new();
        for (count, frames) in self.kept() {
            let entry = merged.entry(frames.clone()).or_default();
            entry.0 += count.value;
            entry.1 += count.events;
        }
        merged
            .into_iter()
            .map(|(frames, (value, events))| Stack {
                frames,
                value,
                events,
            })
            .collect()
    }

    /// The named stacks of each process (tgid), identical stacks merged, processes in pid
    /// order.
    pub fn stacks_by_process(&self) -> Vec<(u32, Vec<Stack>)> {
        let mut merged: BTreeMap<u32, BTreeMap<Vec<Frame>, (u64, u64)>> = BTreeMap::new();
        for (count, frames) in self.kept() {
            let entry = merged
                .entry(count.key.tgid)
                .or_default()
                .entry(frames.clone())
                .or_default();
            entry.0 += count.value;
            entry.1 += count.events;
        }
        merged
            .into_iter()
            .map(|(tgid, stacks)| {
                let stacks = stacks
                    .into_iter()
                    .map(|(frames, (value, events))| Stack {
                        frames,
                        value,
                        events,
                    })
                    .collect();
                (tgid, stacks)
            })
            .collect()
    }

    /// Forgets every named key: after the kernel's maps were emptied, a stack id can come back
    /// for another stack.
    pub fn forget_keys(&mut self) {
        self.named.clear();
        self.addressed.clear();
        self.kernel_pending.clear();
        self.counts.clear();
    }

    /// Frames the symbol caches hold (user, kernel).
    pub fn cached_frames(&self) -> (usize, usize) {
        self.symbols.cached()
    }
}
