//! Taking maps out of the loaded object, and the kernel clock their timestamps use.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
};

use super::ProbeError;

/// Takes a per-CPU hash map out of the object.
pub fn take_per_cpu_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<PerCpuHashMap<MapData, K, V>, ProbeError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| ProbeError::missing_map(name))?;
    PerCpuHashMap::try_from(map).map_err(|e| ProbeError::Map {
        map: name,
        reason: e.to_string(),
    })
}

/// Takes a per-CPU histogram map (series id to histogram values) out of the object.
pub fn take_histogram_map<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<PerCpuHashMap<MapData, u64, V>, ProbeError> {
    take_per_cpu_map(ebpf, name)
}

/// Takes a plain hash map out of the object.
pub fn take_hash_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<aya::maps::HashMap<MapData, K, V>, ProbeError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| ProbeError::missing_map(name))?;
    aya::maps::HashMap::try_from(map).map_err(|e| ProbeError::Map {
        map: name,
        reason: e.to_string(),
    })
}

/// `bpf_ktime_get_ns()` as user space sees it: CLOCK_MONOTONIC.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Deletes entries of a hash map whose start (`started_ns`) is before `cutoff_ns`; returns how
/// many. O(entries).
pub fn sweep_older_than<K: aya::Pod, V: aya::Pod>(
    map: &mut aya::maps::HashMap<MapData, K, V>,
    cutoff_ns: u64,
    started_ns: impl Fn(&V) -> u64,
) -> u64 {
    let stale: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| started_ns(v) < cutoff_ns)
        .map(|(k, _)| k)
        .collect();
    stale.iter().filter(|k| map.remove(k).is_ok()).count() as u64
}

/// When a ring buffer's reader drains. Two modes, chosen by the rate of records over the last
/// second:
/// - batching (many records): the kernel wakes the reader only now and then (see the family's
///   eBPF side) and the reader drains every `busy` period as well;
/// - parked (few or none): the reader tells the kernel through the family's `*_READER_PARKED`
///   flag, the kernel then wakes it at every record, and it sleeps `parked` between housekeeping
///   rounds.
///
/// A quiet node costs a wakeup every few seconds instead of tens per second, and a record there
/// is read as soon as it is written; a busy one is read in batches. A parked reader pays about a
/// wakeup per record (fewer in bursts), a batching one a wakeup per tick: the reader parks below
/// three quarters of its tick rate and stops parking above one and a half times it (the gap
/// keeps a rate near the limit from switching modes every second).
pub struct Cadence {
    flag: aya::maps::Array<MapData, u32>,
    family: &'static str,
    busy: std::time::Duration,
    parked_period: std::time::Duration,
    window_start: std::time::Instant,
    window_records: usize,
    parked: bool,
}

/// How long the record rate is measured over before the reader changes mode.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

impl Cadence {
    pub fn new(
        flag: aya::maps::Array<MapData, u32>,
        family: &'static str,
        busy: std::time::Duration,
        parked_period: std::time::Duration,
    ) -> Self {
        Self {
            flag,
            family,
            busy,
            parked_period,
            window_start: std::time::Instant::now(),
            window_records: 0,
            parked: false,
        }
    }

    /// How long to sleep before the next timed drain.
    pub fn period(&self) -> std::time::Duration {
        if self.parked {
            self.parked_period
        } else {
            self.busy
        }
    }

    /// Counts the records a drain handled.
    pub fn drained(&mut self, records: usize) {
        self.window_records += records;
    }

    /// Once per [`RATE_WINDOW`]: parks the reader or stops parking it, by the rate of records.
    /// True when it just parked: the caller must then drain once more, since a record written
    /// before the kernel saw the flag did not wake it.
    pub fn adapt(&mut self) -> bool {
        let elapsed = self.window_start.elapsed();
        if elapsed < RATE_WINDOW {
            return false;
        }
        let rate = self.window_records as f64 / elapsed.as_secs_f64();
        self.window_start = std::time::Instant::now();
        self.window_records = 0;
        let ticks_per_second = 1.0 / self.busy.as_secs_f64();
        if !self.parked && rate < 0.75 * ticks_per_second {
            self.set_flag(true);
            return self.parked;
        }
        if self.parked && rate > 1.5 * ticks_per_second {
            self.set_flag(false);
        }
        false
    }

    fn set_flag(&mut self, parked: bool) {
        match self.flag.set(0, u32::from(parked), 0) {
            Ok(()) => {
                tracing::debug!(probe = self.family, parked, "ring buffer reader");
                self.parked = parked;
            }
            // Batching is always correct, only dearer when records are few.
            Err(e) => tracing::debug!(probe = self.family, error = %e, "ring reader flag not set"),
        }
    }
}

/// Takes a family's `*_READER_PARKED` flag (see [`Cadence`]) out of the object.
pub fn take_reader_flag(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<aya::maps::Array<MapData, u32>, ProbeError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| ProbeError::missing_map(name))?;
    aya::maps::Array::try_from(map).map_err(|e| ProbeError::Map {
        map: name,
        reason: e.to_string(),
    })
}
