//! One resource per process for whoever attributes series to processes (the syscall, tcp,
//! uprobe and usdt families, the profiles exporter): read from /proc the first time a pid is
//! seen, kept while the process lives and for [`EXITED_SERIES_TTL`] after it is found gone, so
//! that the last counts of a short-lived process are still exported under its own resource,
//! then forgotten, so that short-lived clients do not grow the cache forever.
//!
//! A process is told from a later one that took its pid by its start time (field 22 of
//! /proc/PID/stat): a reused pid marks the earlier process exited, as its exit would.
//!
//! What is held per process is a resource for most; the HTTP tracker holds the whole
//! [`ProcessInfo`] (its selectors match on the executable and environment), shared by the
//! processes of one service instance, and forgets a process at its exit record rather than by
//! expiry.

use std::{collections::HashMap, sync::Arc, time::Instant};

use super::{EXITED_SERIES_TTL, ProcessInfo, ProcessResource};

/// What is held for each process seen (`T`: its resource, or its [`ProcessInfo`]), per pid, and
/// since when each is known to be gone.
#[derive(Debug)]
pub struct ProcessCache<T = Arc<ProcessResource>> {
    /// `host.name`, read once.
    host: String,
    processes: HashMap<u32, Cached<T>>,
}

#[derive(Debug)]
struct Cached<T> {
    value: T,
    /// Its start time when first seen; `None`: it was gone by then.
    start_time: Option<u64>,
    exited_at: Option<Instant>,
}

impl<T: Clone> Default for ProcessCache<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessCache<Arc<ProcessResource>> {
    /// The resource of `pid`, read from /proc the first time it is seen. `comm_hint` names a
    /// process already gone by then (it is asked only then: it may cost a kernel-map lookup).
    pub fn resource(
        &mut self,
        pid: u32,
        comm_hint: impl FnOnce() -> String,
    ) -> Arc<ProcessResource> {
        if let Some(cached) = self.processes.get(&pid) {
            return cached.value.clone();
        }
        let resource = ProcessInfo::read(pid, &comm_hint(), &self.host, None).resource;
        self.insert(pid, resource.clone());
        // Gone before it was first seen: its TTL starts now, not at the next `mark_gone`.
        if self.processes[&pid].start_time.is_none() {
            self.mark_exited(pid, Instant::now());
        }
        resource
    }
}

impl<T: Clone> ProcessCache<T> {
    pub fn new() -> Self {
        Self {
            host: crate::model::resource::host_name(),
            processes: HashMap::new(),
        }
    }

    /// The `host.name` of the resources, for a caller that reads a process itself.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// What is held for `pid`, exited or not.
    pub fn get(&self, pid: u32) -> Option<&T> {
        self.processes.get(&pid).map(|cached| &cached.value)
    }

    /// The pids held, exited or not.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.processes.keys().copied()
    }

    /// How many processes are held.
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// Puts `new` in place of every value `same` matches (processes that share one value, such
    /// as the HTTP tracker's service instances, change together).
    pub fn replace_where(&mut self, same: impl Fn(&T) -> bool, new: &T) {
        for cached in self.processes.values_mut() {
            if same(&cached.value) {
                cached.value = new.clone();
            }
        }
    }

    /// Holds a value the caller read (a resource with a service name of its choosing, say) for
    /// `pid`, in place of any it held, as a live process until it is marked exited.
    pub fn insert(&mut self, pid: u32, value: T) {
        let cached = Cached {
            value,
            start_time: process_start_time(pid),
            exited_at: None,
        };
        self.processes.insert(pid, cached);
    }

    /// What is held for `pid` unless it is known to have exited.
    pub fn live(&self, pid: u32) -> Option<T> {
        self.processes
            .get(&pid)
            .filter(|cached| cached.exited_at.is_none())
            .map(|cached| cached.value.clone())
    }

    /// The pids of the processes not known to have exited.
    pub fn live_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.processes
            .iter()
            .filter(|(_, cached)| cached.exited_at.is_none())
            .map(|(pid, _)| *pid)
    }

    /// Marks `pid` exited at `now` (the first time only); its resource stays until
    /// [`ProcessCache::expire`] or [`ProcessCache::forget`].
    pub fn mark_exited(&mut self, pid: u32, now: Instant) {
        if let Some(cached) = self.processes.get_mut(&pid) {
            cached.exited_at.get_or_insert(now);
        }
    }

    /// Marks exited at `now` every process that is gone or whose pid a later process took.
    /// O(processes) reads of /proc/PID/stat.
    pub fn mark_gone(&mut self, now: Instant) {
        for (pid, cached) in &mut self.processes {
            let same_process =
                cached.start_time.is_some() && process_start_time(*pid) == cached.start_time;
            if cached.exited_at.is_none() && !same_process {
                cached.exited_at = Some(now);
            }
        }
    }

    /// Forgets the processes that exited more than [`EXITED_SERIES_TTL`] before `now`, and
    /// returns them (so their series and kernel entries can go too).
    pub fn expire(&mut self, now: Instant) -> Vec<(u32, T)> {
        let expired: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, cached)| {
                cached
                    .exited_at
                    .is_some_and(|at| now.duration_since(at) > *EXITED_SERIES_TTL)
            })
            .map(|(pid, _)| *pid)
            .collect();
        expired
            .into_iter()
            .filter_map(|pid| Some((pid, self.forget(pid)?)))
            .collect()
    }

    /// Forgets `pid` now, exited or not; returns what it held.
    pub fn forget(&mut self, pid: u32) -> Option<T> {
        self.processes.remove(&pid).map(|cached| cached.value)
    }

    /// Forgets every process marked exited, whatever its TTL.
    pub fn forget_exited(&mut self) {
        self.processes
            .retain(|_, cached| cached.exited_at.is_none());
    }
}

/// Start time of a process (clock ticks since boot, field 22 of /proc/PID/stat): a pid reused by
/// a later process has another one.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_tells_processes_apart() {
        let me = std::process::id();
        assert!(process_start_time(me).is_some());
        assert_eq!(process_start_time(me), process_start_time(me));
        assert_eq!(process_start_time(u32::MAX - 1), None);
    }

    #[test]
    fn a_live_process_keeps_its_resource_and_a_gone_one_expires() {
        let (me, gone) = (std::process::id(), u32::MAX - 1);
        let mut cache = ProcessCache::new();
        let mine = cache.resource(me, || "unused".into());
        let theirs = cache.resource(gone, || "departed".into());
        assert!(Arc::ptr_eq(&mine, &cache.resource(me, || unreachable!())));
        assert_eq!(theirs.service_name, "departed");
        // A process gone before it was first seen counts as exited from then.
        assert_eq!(cache.live_pids().collect::<Vec<_>>(), [me]);
        let now = Instant::now();
        cache.mark_gone(now);
        assert!(cache.live(me).is_some());
        let later = now + *EXITED_SERIES_TTL + std::time::Duration::from_secs(1);
        let expired = cache.expire(later);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, gone);
        assert!(Arc::ptr_eq(&expired[0].1, &theirs));
        assert!(cache.live(me).is_some());
    }

    #[test]
    fn an_exited_process_is_held_until_forgotten() {
        let me = std::process::id();
        let mut cache = ProcessCache::new();
        let mine = cache.resource(me, || "unused".into());
        cache.mark_exited(me, Instant::now());
        assert!(cache.live(me).is_none());
        assert!(Arc::ptr_eq(&mine, &cache.resource(me, || unreachable!())));
        cache.forget_exited();
        assert!(cache.forget(me).is_none());
    }
}
