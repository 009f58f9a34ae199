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
