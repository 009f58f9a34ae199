//! The memory maps of profiled processes, read while they live. A process's user frames are
//! named from its `/proc/PID/maps` (which file, at which offset, each address is in), but
//! stacks are named up to a second (five in the daemon) after they are counted: a process that
//! exits before then would leave nothing to name them from. So the kernel announces each
//! process the first time it is sampled or blocks (`PROFILE_PROCESSES`, see
//! `ebpf/periscope-ebpf/src/profile.rs`), and a thread of its own reads its executable
//! mappings at once and opens their files, which then stay readable after the process is gone
//! (and when they live only in its mount namespace).
//!
//! Bounded: at most [`MAX_PROCESSES`] processes and [`MAX_OPEN_FILES`] open files (one per
//! file, whichever processes map it). A process's maps go once it is gone (exited or exec'd,
//! as the kernel tells) and the stacks counted before are all named ([`ProcessMaps::expire`]).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use periscope_common::profile::{ProcessEvent, process_event};

use super::symbolize::{Mapping, parse_maps};

/// Processes whose maps are kept; past that the oldest read goes first.
pub const MAX_PROCESSES: usize = 4096;
/// Files kept open for processes' maps.
pub const MAX_OPEN_FILES: usize = 256;
/// How long the reader thread waits for events before it looks whether it should stop.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);

/// A file's identity across processes: `major:minor` of its device, and its inode.
pub type FileId = (String, u64);

/// The executable mappings of one process, as read when the kernel announced it.
struct Snapshot {
    maps: Arc<Vec<Mapping>>,
    /// The mapped files opened then (those under the open-file limit), held while needed.
    _files: Vec<Arc<File>>,
    read_at: Instant,
    /// When the kernel said its program is gone.
    gone_at: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    processes: HashMap<u32, Snapshot>,
    /// Every file opened, for whichever process maps it next; gone once no snapshot (and no
    /// symbolizer) holds it.
    files: HashMap<FileId, Weak<File>>,
}

/// The maps read so far, shared by the reader thread and whoever names stacks.
#[derive(Default)]
pub struct ProcessMaps {
    inner: Mutex<Inner>,
}

impl ProcessMaps {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kernel announced `tgid`: reads its executable mappings and opens their files.
    pub fn seen(&self, tgid: u32) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{tgid}/maps")) else {
            return;
        };
        // Files, and the vDSO (named from Periscope's own): anonymous code has no name a
        // process gone could still give.
        let maps: Vec<Mapping> = parse_maps(&text)
            .into_iter()
            .filter(|m| m.executable && !m.path.is_empty())
            .collect();
        if maps.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let files = open_files(&mut inner.files, tgid, &maps);
        if !inner.processes.contains_key(&tgid) && inner.processes.len() >= MAX_PROCESSES {
            evict_oldest(&mut inner.processes);
        }
        let snapshot = Snapshot {
            maps: Arc::new(maps),
            _files: files,
            read_at: Instant::now(),
            gone_at: None,
        };
        inner.processes.insert(tgid, snapshot);
    }

    /// The kernel said the program of `tgid` is gone.
    pub fn gone(&self, tgid: u32) {
        if let Some(snapshot) = self.lock().processes.get_mut(&tgid) {
            snapshot.gone_at.get_or_insert_with(Instant::now);
        }
    }

    /// The executable mappings of `tgid` as read when it was announced.
    pub fn maps(&self, tgid: u32) -> Option<Arc<Vec<Mapping>>> {
        Some(self.lock().processes.get(&tgid)?.maps.clone())
    }

    /// The file `id` if one is open, and a path that opens it again (while it is held).
    pub fn file(&self, id: &FileId) -> Option<(Arc<File>, std::path::PathBuf)> {
        let file = self.lock().files.get(id)?.upgrade()?;
        let path = format!("/proc/self/fd/{}", file.as_raw_fd()).into();
        Some((file, path))
    }

    /// Forgets the processes gone before `counted_at` (when the counts just named were read:
    /// every stack of theirs was in them) whose stacks are all named, i.e. not in `pending`.
    pub fn expire(&self, counted_at: Instant, pending: &HashSet<u32>) {
        let mut inner = self.lock();
        inner.processes.retain(|tgid, s| {
            s.gone_at.is_none_or(|at| at >= counted_at) || pending.contains(tgid)
        });
        inner.files.retain(|_, file| file.strong_count() > 0);
    }

    /// Processes and files held.
    pub fn held(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.processes.len(), inner.files.len())
    }
}

/// The files of `maps` not open yet, opened through the process's root (its own mount
/// namespace), as far as [`MAX_OPEN_FILES`] allows; returns every one of them that is open.
fn open_files(
    open: &mut HashMap<FileId, Weak<File>>,
    tgid: u32,
    maps: &[Mapping],
) -> Vec<Arc<File>> {
    let mut held: Vec<Arc<File>> = Vec::new();
    for m in maps.iter().filter(|m| super::symbolize::in_file(m)) {
        let id = (m.dev.clone(), m.inode);
        if let Some(file) = open.get(&id).and_then(Weak::upgrade) {
            if !held.iter().any(|h| Arc::ptr_eq(h, &file)) {
                held.push(file);
            }
            continue;
        }
        open.retain(|_, file| file.strong_count() > 0);
        if open.len() >= MAX_OPEN_FILES {
            continue;
        }
        if let Ok(file) = File::open(format!("/proc/{tgid}/root{}", m.path)) {
            let file = Arc::new(file);
            open.insert(id, Arc::downgrade(&file));
            held.push(file);
        }
    }
    held
}

/// Makes room: the processes gone go first, then the one read longest ago.
fn evict_oldest(processes: &mut HashMap<u32, Snapshot>) {
    let oldest = processes
        .iter()
        .min_by_key(|(_, s)| (s.gone_at.is_none(), s.read_at))
        .map(|(tgid, _)| *tgid);
    if let Some(tgid) = oldest {
        processes.remove(&tgid);
    }
}

/// The thread that reads `PROFILE_PROCESSES`; stopped when dropped.
pub struct Watcher {
    stop: Arc<AtomicBool>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts the thread that reads the kernel's process events into `maps`.
pub fn watch(mut events: RingBuf<MapData>, maps: Arc<ProcessMaps>) -> std::io::Result<Watcher> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("profile-maps".into())
        .spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                drain(&mut events, &maps);
                wait_readable(&events);
            }
        })?;
    Ok(Watcher { stop })
}

fn drain(events: &mut RingBuf<MapData>, maps: &ProcessMaps) {
    while let Some(record) = events.next() {
        if record.len() < size_of::<ProcessEvent>() {
            continue;
        }
        // SAFETY: the kernel writes whole ProcessEvent records; read unaligned from the ring.
        let event: ProcessEvent = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
        match event.kind {
            process_event::SEEN => maps.seen(event.tgid),
            process_event::EXITED => maps.gone(event.tgid),
            _ => {}
        }
    }
}

/// Waits until the ring buffer has records, or [`POLL_TIMEOUT`].
fn wait_readable(events: &RingBuf<MapData>) {
    use std::os::fd::{AsFd, AsRawFd};
    let mut poll = libc::pollfd {
        fd: events.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut poll, 1, POLL_TIMEOUT.as_millis() as i32) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maps_of_a_process_are_kept_until_it_is_gone_and_its_stacks_named() {
        let maps = ProcessMaps::default();
        let me = std::process::id();
        maps.seen(me);
        let mine = maps.maps(me).expect("this test's own maps were read");
        assert!(mine.iter().all(|m| m.executable && !m.path.is_empty()));
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let ours = mine
            .iter()
            .find(|m| std::path::Path::new(&m.path) == exe)
            .expect("the test binary is mapped");
        let (_, path) = maps.file(&(ours.dev.clone(), ours.inode)).expect("opened");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), {
            std::fs::metadata(&exe).unwrap().len()
        });

        let before = Instant::now();
        maps.expire(Instant::now(), &HashSet::new());
        assert!(maps.maps(me).is_some(), "alive: kept");
        maps.gone(me);
        maps.expire(before, &HashSet::new());
        assert!(
            maps.maps(me).is_some(),
            "gone after those counts were read: kept"
        );
        let after = Instant::now();
        maps.expire(after, &HashSet::from([me]));
        assert!(maps.maps(me).is_some(), "stacks still to name: kept");
        maps.expire(after, &HashSet::new());
        assert!(maps.maps(me).is_none());
        assert_eq!(maps.held(), (0, 0), "its files are closed with it");
    }

    #[test]
    fn processes_and_files_are_bounded() {
        let maps = ProcessMaps::default();
        let me = std::process::id();
        maps.seen(me);
        let mine = maps.maps(me).unwrap();
        let mut inner = maps.lock();
        for tgid in 0..(MAX_PROCESSES as u32 + 10) {
            let tgid = tgid + 1_000_000;
            if inner.processes.len() >= MAX_PROCESSES {
                evict_oldest(&mut inner.processes);
            }
            let snapshot = Snapshot {
                maps: mine.clone(),
                _files: Vec::new(),
                read_at: Instant::now(),
                gone_at: None,
            };
            inner.processes.insert(tgid, snapshot);
        }
        assert_eq!(inner.processes.len(), MAX_PROCESSES);
        assert!(!inner.processes.contains_key(&me), "the oldest went first");
        let file = mine.iter().find(|m| super::super::symbolize::in_file(m));
        let many: Vec<Mapping> = (0..MAX_OPEN_FILES as u64 + 10)
            .map(|i| Mapping {
                inode: i + 1,
                ..file.expect("a mapped file").clone()
            })
            .collect();
        let mut open = HashMap::new();
        let held = open_files(&mut open, me, &many);
        assert_eq!(held.len(), MAX_OPEN_FILES);
    }
}
