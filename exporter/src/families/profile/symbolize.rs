//! Addresses to function names, with blazesym: ELF symbol tables and DWARF of each mapped
//! file, read through `/proc/PID/root` (so binaries in another mount namespace, such as a
//! container's, resolve) or the descriptor [`ProcessMaps`] holds, perf maps
//! (`/tmp/perf-PID.map`, written by JIT runtimes such as Node with `--perf-basic-prof`), the
//! vDSO from Periscope's own, and kernel addresses from `/proc/kallsyms`. A process's maps are
//! read when its stacks are named, or, once it is gone, taken from [`ProcessMaps`].
//!
//! Resolved frames are cached by what they are in the file, (device, inode, file offset), so a
//! thousand processes of one binary cost one lookup per address; each file is parsed once
//! whichever process maps it, opened through the `/proc/PID/root` of the first process seen
//! with it. At most [`MAX_CACHED_FRAMES`] frames per cache and [`MAX_FILES`] parsed files are
//! kept: past that the cache is cleared (the symbolizer, and the files it holds, replaced),
//! so many short-lived processes cannot grow it without bound. An address no symbol covers
//! (a stripped binary) becomes `[module+0xoffset]`, never an error.

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use blazesym::{
    MaybeDefault, Pid,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Elf, Kernel, Process, Source},
    },
};

use super::process_maps::{FileId, ProcessMaps};

/// How `/proc/PID/maps` names the vDSO.
pub const VDSO: &str = "[vdso]";

/// Frames kept in each cache (user, kernel) before it is cleared.
pub const MAX_CACHED_FRAMES: usize = 200_000;
/// Files (device, inode) one blazesym symbolizer holds parsed before it is replaced.
pub const MAX_FILES: usize = 256;

/// One resolved frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    /// The function (demangled), or `[module+0xoffset]` when no symbol covers the address.
    pub name: String,
    /// The file the code is in (its file name), `[kernel]`, or `[unknown]`.
    pub module: String,
    pub kernel: bool,
}

/// A file-backed mapping of a process, from `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    /// Mapped executable (`x` in its permissions): where code runs.
    pub executable: bool,
    /// `major:minor` of the device, and the inode: the file's identity across processes.
    pub dev: String,
    pub inode: u64,
    pub path: String,
}

/// The mappings of one `/proc/PID/maps` text; lines that do not parse are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?.parse().ok()?;
    let path = fields.collect::<Vec<_>>().join(" ");
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        executable: perms.contains('x'),
        dev: dev.to_string(),
        inode,
        path,
    })
}

/// The mapping that holds `addr`.
pub fn mapping_of(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    maps.iter().find(|m| m.start <= addr && addr < m.end)
}

/// What an address is, independent of the process: the file and the offset in it.
type FileAddr = (String, u64, u64);

pub struct Symbols {
    blaze: Symbolizer,
    /// The files the symbolizer holds, by (device, inode): the path it opened each one by.
    files: HashMap<FileId, OpenedFile>,
    user: HashMap<FileAddr, Frame>,
    kernel: HashMap<u64, Frame>,
    /// Memory maps read in this round, per process.
    maps: HashMap<u32, Arc<Vec<Mapping>>>,
    /// Whether each process has a perf map, looked up in this round.
    perf_maps: HashMap<u32, bool>,
    /// Where Periscope's own vDSO is mapped, once looked up.
    own_vdso: Option<Option<u64>>,
}

/// A file the symbolizer opened, and what keeps its path valid.
struct OpenedFile {
    path: PathBuf,
    /// The file as [`ProcessMaps`] opened it, when the path is its descriptor
    /// (`/proc/self/fd/N`): held as long as the symbolizer may open that path again, so that
    /// the number is not reused for another file meanwhile.
    _held: Option<Arc<File>>,
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbols {
    pub fn new() -> Self {
        Self {
            blaze: symbolizer(),
            files: HashMap::new(),
            user: HashMap::new(),
            kernel: HashMap::new(),
            maps: HashMap::new(),
            perf_maps: HashMap::new(),
            own_vdso: None,
        }
    }

    /// Frames cached right now (user, kernel): bounded by [`MAX_CACHED_FRAMES`] each.
    pub fn cached(&self) -> (usize, usize) {
        (self.user.len(), self.kernel.len())
    }

    /// Forgets the processes' memory maps read so far: call once per round of naming, so a
    /// process's map is read once per round, not once per stack.
    pub fn new_round(&mut self) {
        self.maps.clear();
        self.perf_maps.clear();
    }

    /// The maps of `pid` now, or, once it is gone, those read when the kernel announced it.
    fn maps_of(&mut self, pid: u32, processes: &ProcessMaps) -> Arc<Vec<Mapping>> {
        self.maps
            .entry(pid)
            .or_insert_with(|| {
                let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
                let live = parse_maps(&text);
                match processes.maps(pid) {
                    Some(read) if live.is_empty() => read,
                    _ => Arc::new(live),
                }
            })
            .clone()
    }

    /// The frames of a user stack of process `pid` (`ips` innermost first, as the kernel gives
    /// them), innermost first.
    pub fn user_stack(&mut self, pid: u32, ips: &[u64], processes: &ProcessMaps) -> Vec<Frame> {
        let maps = self.maps_of(pid, processes);
        // Callers' addresses are return addresses, one past the call: step back into it, or a
        // call that ends its function would be named after the next one.
        ips.iter()
            .enumerate()
            .map(|(i, ip)| if i == 0 { *ip } else { ip.saturating_sub(1) })
            .map(
                |addr| match mapping_of(&maps, addr).filter(|m| in_file(m)) {
                    Some(m) => self.file_frame(pid, m, addr, processes),
                    None => self.anonymous_frame(pid, addr, &maps),
                },
            )
            .collect()
    }

    /// [`Symbols::user_stack`]'s frames as addresses only (`[module+0xoffset]`): no file is
    /// read, only the process's maps.
    pub fn user_addresses(&mut self, pid: u32, ips: &[u64], processes: &ProcessMaps) -> Vec<Frame> {
        let maps = self.maps_of(pid, processes);
        ips.iter()
            .enumerate()
            .map(|(i, ip)| if i == 0 { *ip } else { ip.saturating_sub(1) })
            .map(|addr| unknown(addr, &maps))
            .collect()
    }

    /// An address in a mapped file: named from the file itself (its ELF symbols and DWARF),
    /// parsed once whichever process maps it, opened as [`ProcessMaps`] holds it open, else
    /// through `/proc/PID/root` (so that a container's file is the one read).
    fn file_frame(&mut self, pid: u32, m: &Mapping, addr: u64, processes: &ProcessMaps) -> Frame {
        let offset = addr - m.start + m.offset;
        let key = (m.dev.clone(), m.inode, offset);
        if let Some(frame) = self.user.get(&key) {
            return frame.clone();
        }
        let file = (m.dev.clone(), m.inode);
        if !self.files.contains_key(&file) && self.files.len() >= MAX_FILES {
            // A fresh symbolizer: the parsed files the old one held are freed.
            self.blaze = symbolizer();
            self.files.clear();
        }
        let path = self
            .files
            .entry(file)
            .or_insert_with_key(|id| match processes.file(id) {
                Some((held, path)) => OpenedFile {
                    path,
                    _held: Some(held),
                },
                None => OpenedFile {
                    path: format!("/proc/{pid}/root{}", m.path).into(),
                    _held: None,
                },
            })
            .path
            .clone();
        let source = Source::Elf(Elf::new(path));
        let frame = match self
            .blaze
            .symbolize_single(&source, Input::FileOffset(offset))
        {
            Ok(Symbolized::Sym(sym)) => Frame {
                name: sym.name.to_string(),
                module: file_name(&m.path),
                kernel: false,
            },
            // No symbol there (a stripped file): that will not change.
            Ok(Symbolized::Unknown(_)) => unknown(addr, std::slice::from_ref(m)),
            Err(_) => {
                // The file could not be read by that path (its process gone): the next
                // address in it tries again, perhaps through another process or one held open.
                self.files.remove(&(m.dev.clone(), m.inode));
                return unknown(addr, std::slice::from_ref(m));
            }
        };
        remember(&mut self.user, key, frame.clone());
        frame
    }

    /// An address outside any file: in the vDSO, or JIT code named from the process's perf
    /// map, if it writes one (`/tmp/perf-PID.map`).
    fn anonymous_frame(&mut self, pid: u32, addr: u64, maps: &[Mapping]) -> Frame {
        if let Some(m) = mapping_of(maps, addr).filter(|m| m.path == VDSO)
            && let Some(frame) = self.vdso_frame(addr - m.start)
        {
            return frame;
        }
        // Asking blazesym reads the process's whole maps again, for every such address: most
        // are no JIT code but where a frame-pointer walk went astray (code built without
        // them), and most processes write no perf map.
        let has_perf_map = *self
            .perf_maps
            .entry(pid)
            .or_insert_with(|| perf_map_path(pid).is_some_and(|p| p.exists()));
        if !has_perf_map {
            return unknown(addr, maps);
        }
        let source = Source::Process(Process::new(Pid::from(pid)));
        match self.blaze.symbolize_single(&source, Input::AbsAddr(addr)) {
            Ok(Symbolized::Sym(sym)) => Frame {
                name: sym.name.to_string(),
                module: "[perf-map]".into(),
                kernel: false,
            },
            _ => unknown(addr, maps),
        }
    }

    /// The function at `offset` in the vDSO, read from Periscope's own: every (64-bit)
    /// process has the same image from this kernel, and the one of a process gone can no
    /// longer be read.
    fn vdso_frame(&mut self, offset: u64) -> Option<Frame> {
        let key = (VDSO.to_string(), 0, offset);
        if let Some(frame) = self.user.get(&key) {
            return Some(frame.clone());
        }
        let own = *self.own_vdso.get_or_insert_with(|| {
            let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
            parse_maps(&text)
                .iter()
                .find(|m| m.path == VDSO)
                .map(|m| m.start)
        });
        let source = Source::Process(Process::new(Pid::Slf));
        let Ok(Symbolized::Sym(sym)) = self
            .blaze
            .symbolize_single(&source, Input::AbsAddr(own? + offset))
        else {
            return None;
        };
        let frame = Frame {
            name: sym.name.to_string(),
            module: VDSO.into(),
            kernel: false,
        };
        remember(&mut self.user, key, frame.clone());
        Some(frame)
    }

    /// [`Symbols::kernel_stack`] from the names already known, addresses for the rest.
    pub fn kernel_addresses(&self, ips: &[u64]) -> Vec<Frame> {
        ips.iter()
            .map(|ip| {
                self.kernel
                    .get(ip)
                    .cloned()
                    .unwrap_or_else(|| kernel_address(*ip))
            })
            .collect()
    }

    /// The frames of a kernel stack, innermost first.
    pub fn kernel_stack(&mut self, ips: &[u64]) -> Vec<Frame> {
        let missing: Vec<u64> = ips
            .iter()
            .copied()
            .filter(|ip| !self.kernel.contains_key(ip))
            .collect();
        if !missing.is_empty() {
            // /proc/kallsyms alone: searching for a vmlinux image costs more than it brings
            // for function names.
            let kernel = Kernel {
                vmlinux: MaybeDefault::None,
                ..Default::default()
            };
            let found = self
                .blaze
                .symbolize(&Source::Kernel(kernel), Input::AbsAddr(&missing))
                .unwrap_or_default();
            for (i, ip) in missing.iter().enumerate() {
                let frame = match found.get(i) {
                    Some(Symbolized::Sym(sym)) => Frame {
                        name: sym.name.to_string(),
                        module: "[kernel]".into(),
                        kernel: true,
                    },
                    _ => kernel_address(*ip),
                };
                remember(&mut self.kernel, *ip, frame);
            }
        }
        self.kernel_addresses(ips)
    }
}

/// Where process `pid` writes its perf map, as blazesym looks for it: `/tmp/perf-N.map` in
/// the process's own root, N the pid it sees itself as (its innermost `NStgid`). `None` when
/// the process is gone.
fn perf_map_path(pid: u32) -> Option<PathBuf> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let own = status
        .lines()
        .find_map(|l| l.strip_prefix("NStgid:"))
        .and_then(|ids| ids.split_ascii_whitespace().last()?.parse::<u32>().ok())
        .unwrap_or(pid);
    Some(format!("/proc/{pid}/root/tmp/perf-{own}.map").into())
}

/// A kernel address no symbol names.
fn kernel_address(ip: u64) -> Frame {
    Frame {
        name: format!("[kernel 0x{ip:x}]"),
        module: "[kernel]".into(),
        kernel: true,
    }
}

/// A symbolizer that keeps each file it parsed without looking at its path again: files are
/// told apart by (device, inode) here, and the path they were opened by (through a process's
/// root) stops working when that process exits.
fn symbolizer() -> Symbolizer {
    Symbolizer::builder().enable_auto_reload(false).build()
}

fn remember<K: std::hash::Hash + Eq>(cache: &mut HashMap<K, Frame>, key: K, frame: Frame) {
    if cache.len() >= MAX_CACHED_FRAMES {
        cache.clear();
    }
    cache.insert(key, frame);
}

/// Whether a mapping is backed by a file Periscope can open (not `[heap]`, `[vdso]`, JIT
/// code or a deleted file).
pub(super) fn in_file(m: &Mapping) -> bool {
    m.inode != 0 && m.path.starts_with('/') && !m.path.ends_with(" (deleted)")
}

/// `[module+0xoffset]` for an address no symbol covers, or `[unknown 0xaddr]` outside any file.
fn unknown(addr: u64, maps: &[Mapping]) -> Frame {
    match mapping_of(maps, addr).filter(|m| !m.path.is_empty()) {
        Some(m) => {
            let module = file_name(&m.path);
            Frame {
                name: format!("[{module}+0x{:x}]", addr - m.start + m.offset),
                module,
                kernel: false,
            }
        }
        None => Frame {
            name: format!("[unknown 0x{addr:x}]"),
            module: "[unknown]".into(),
            kernel: false,
        },
    }
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_give_the_file_and_offset_of_an_address() {
        let maps = parse_maps(
            "55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1234 /usr/bin/x y\n\
             55d0c0a01000-55d0c0a05000 r-xp 00001000 08:01 1234 /usr/bin/x y\n\
             7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n\
             garbage\n",
        );
        assert_eq!(maps.len(), 3);
        let m = mapping_of(&maps, 0x55d0c0a01234).expect("mapped");
        assert_eq!((m.inode, m.path.as_str()), (1234, "/usr/bin/x y"));
        assert_eq!(0x55d0c0a01234 - m.start + m.offset, 0x1234);
        assert!(mapping_of(&maps, 0x1000).is_none());
    }

    #[test]
    fn an_address_without_a_symbol_names_its_module_and_offset() {
        let maps = parse_maps("1000-3000 r-xp 00002000 08:01 9 /opt/app/stripped\n");
        assert_eq!(unknown(0x1010, &maps).name, "[stripped+0x2010]");
        assert_eq!(unknown(0x9999, &maps).name, "[unknown 0x9999]");
    }

    #[test]
    fn a_stack_out_of_budget_gets_its_addresses_and_the_same_shape() {
        // This test's own code: named by a full pass, addresses only past a budget.
        let here =
            a_stack_out_of_budget_gets_its_addresses_and_the_same_shape as fn() as usize as u64;
        let processes = ProcessMaps::default();
        let mut symbols = Symbols::new();
        let pid = std::process::id();
        let named = symbols.user_stack(pid, &[here], &processes);
        let addressed = symbols.user_addresses(pid, &[here], &processes);
        assert_eq!(named.len(), addressed.len());
        assert!(named[0].name.contains("out_of_budget"), "{named:?}");
        let module = named[0].module.clone();
        assert!(
            addressed[0].name.starts_with(&format!("[{module}+0x")),
            "{addressed:?}"
        );
        assert_eq!(addressed[0].module, module);
        assert_eq!(
            symbols.kernel_addresses(&[0xffff_ffff_8100_0000])[0].name,
            "[kernel 0xffffffff81000000]"
        );
    }

    #[test]
    fn the_perf_map_is_looked_for_in_the_process_own_tmp() {
        let pid = std::process::id();
        // Not in a PID namespace of its own here: the pid it sees is its pid.
        assert_eq!(
            perf_map_path(pid),
            Some(format!("/proc/{pid}/root/tmp/perf-{pid}.map").into())
        );
        assert_eq!(perf_map_path(u32::MAX), None);
    }

    #[test]
    fn the_frame_cache_is_bounded() {
        let mut cache = HashMap::new();
        for i in 0..(MAX_CACHED_FRAMES as u64 + 10) {
            remember(&mut cache, i, unknown(i, &[]));
        }
        assert!(cache.len() <= MAX_CACHED_FRAMES);
    }
}
