//! HTTPS through OpenSSL: uprobes on `SSL_read`, `SSL_read_ex`, `SSL_write`, `SSL_write_ex` and
//! `SSL_do_handshake` (and a uretprobe on each), and `SSL_free` in every file that exports them, so processes using OpenSSL (its
//! shared `libssl`, or a copy linked into the executable, as in Node.js) get the same HTTP
//! capture as plaintext (`ebpf/periscope-ebpf/src/http/tls.rs` sends their plaintext as records).
//!
//! Files are found from `/proc/PID/maps` (through `/proc/PID/root`, so containers' own
//! libraries count) plus the host's `libssl.so*`, and re-scanned periodically for processes
//! started later. A uprobe is on a file, not a process: attaching once covers every process
//! that maps that file, now or later. Symbol offsets are read from the ELF dynamic symbol
//! table with reads of only the parts needed (executables can be 100 MB). A mapped file that is
//! not OpenSSL may be a Go executable: [`super::gotls`] looks at it, and its `crypto/tls` gets
//! the Go probes from here (same scan, same attach bookkeeping, same `check` section).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use object::{Object, ObjectSymbol, ReadCache};

use super::gotls;
use crate::families::{CheckLine, CheckLines, ProbeError};

/// (symbol, entry program); all but `SSL_free` also get [`RETURN_PROGRAM`].
pub const SYMBOLS: [(&str, &str); 6] = [
    ("SSL_free", "http_ssl_free"),
    ("SSL_do_handshake", "http_ssl_handshake"),
    ("SSL_read", "http_ssl_read"),
    ("SSL_read_ex", "http_ssl_read_ex"),
    ("SSL_write", "http_ssl_write"),
    ("SSL_write_ex", "http_ssl_write_ex"),
];
pub const RETURN_PROGRAM: &str = "http_ssl_return";

/// Every process whose mapped size changed has its maps read again this often (new processes are
/// read at the first scan after they start).
const FULL_RESCAN: Duration = Duration::from_secs(60);

/// A file's identity: (device major, device minor, inode).
type FileId = (u64, u64, u64);

/// The TLS plaintext probes (OpenSSL's, and Go's `crypto/tls`: [`super::gotls`]): which files
/// were examined and which carry them.
pub struct Tls {
    examined: HashSet<FileId>,
    /// Processes whose maps were read, with their mapped size (pages) at that read.
    scanned: HashMap<u32, u64>,
    last_full_scan: Option<Instant>,
    /// The last pid the kernel handed out, at the last scan (`/proc/loadavg`).
    last_pid: Option<u32>,
    /// Files the OpenSSL probes are attached to.
    pub attached: Vec<PathBuf>,
    /// Go executables the Go TLS probes are attached to, with what was found in each.
    pub go_attached: Vec<(PathBuf, gotls::GoBinary)>,
    /// Why the Go TLS programs did not load (they are then not attached anywhere).
    pub go_unavailable: Option<String>,
    /// Attach failures (file: reason), reported by `check`.
    pub errors: Vec<String>,
}

/// Loads the OpenSSL probes and attaches them to the files processes map now, adding their
/// programs to the HTTP family's `status`. `None` (logged) when they cannot load.
pub fn start(ebpf: &mut Ebpf, status: &mut crate::families::ProbeStatus) -> Option<Tls> {
    match load(ebpf) {
        Ok(mut tls) => {
            tls.scan(ebpf);
            status.programs.extend(SYMBOLS.iter().map(|s| s.1));
            status.programs.push(RETURN_PROGRAM);
            if tls.go_unavailable.is_none() {
                status.programs.extend(gotls::PROGRAMS);
            }
            Some(tls)
        }
        Err(e) => {
            tracing::warn!(error = %e, "HTTPS capture (OpenSSL probes) is off");
            None
        }
    }
}

/// Loads the programs (the HTTP family's plan decided it can run): the OpenSSL ones must load;
/// the Go ones are loaded too, even before any Go executable runs (so that `check` and the
/// kernel matrix see the verifier accept them), and their failure only turns Go TLS off.
pub fn load(ebpf: &mut Ebpf) -> Result<Tls, ProbeError> {
    for program in SYMBOLS.iter().map(|s| s.1).chain([RETURN_PROGRAM]) {
        uprobe(ebpf, program)?
            .load()
            .map_err(|source| ProbeError::Program { program, source })?;
    }
    let go_unavailable = load_go(ebpf).err().map(|e| e.to_string());
    if let Some(e) = &go_unavailable {
        tracing::warn!(error = %e, "HTTPS capture of Go's crypto/tls is off");
    }
    Ok(Tls {
        examined: HashSet::new(),
        scanned: HashMap::new(),
        last_full_scan: None,
        last_pid: None,
        attached: Vec::new(),
        go_attached: Vec::new(),
        go_unavailable,
        errors: Vec::new(),
    })
}

fn load_go(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(ProbeError::Mechanism(
            "the Go TLS probes read Go's amd64 register ABI only".into(),
        ));
    }
    for program in gotls::PROGRAMS {
        uprobe(ebpf, program)?
            .load()
            .map_err(|source| ProbeError::Program { program, source })?;
    }
    Ok(())
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut UProbe, ProbeError> {
    ebpf.program_mut(program)
        .ok_or_else(|| ProbeError::missing_program(program))?
        .try_into()
        .map_err(|source| ProbeError::Program { program, source })
}

impl Tls {
    /// Attaches to files not examined yet: what new processes map, and once a minute the host's
    /// libssl and the maps of every process whose mapped size changed. (Globbing the library
    /// directories, thousands of entries, at every scan was a quarter of an idle daemon's CPU,
    /// 30-31 vs 22-23 clock ticks in 30 s with the default config; a library a new process
    /// loads is found in its maps.) When no pid was handed out since the last scan, no process
    /// is new and /proc is not listed at all.
    pub fn scan(&mut self, ebpf: &mut Ebpf) {
        let full = self
            .last_full_scan
            .is_none_or(|at| at.elapsed() >= FULL_RESCAN);
        let last_pid = last_pid();
        if !full && last_pid.is_some() && last_pid == self.last_pid {
            return;
        }
        self.last_pid = last_pid;
        let mut candidates = Vec::new();
        if full {
            self.last_full_scan = Some(Instant::now());
            candidates = host_libssl();
        }
        candidates.extend(mapped_files(&mut self.scanned, full));
        for (id, path) in candidates {
            if !self.examined.insert(id) {
                continue;
            }
            let Some(offsets) = ssl_offsets(&path) else {
                if self.go_unavailable.is_none() {
                    self.go(ebpf, path);
                }
                continue;
            };
            match attach(ebpf, &path, &offsets) {
                Ok(()) => {
                    tracing::info!(path = shown(&path), "HTTPS: OpenSSL probes attached");
                    self.attached.push(path);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "HTTPS: cannot probe OpenSSL");
                    self.errors.push(format!("{}: {e}", path.display()));
                }
            }
        }
    }
}

impl Tls {
    /// A file that is not OpenSSL: when it is a Go executable with `crypto/tls`, the Go probes.
    fn go(&mut self, ebpf: &mut Ebpf, path: PathBuf) {
        match gotls::inspect(&path) {
            gotls::Inspected::NotGo => {}
            gotls::Inspected::NoTls { version } => {
                tracing::debug!(
                    path = shown(&path),
                    version,
                    "Go executable without crypto/tls"
                );
            }
            gotls::Inspected::Refused { version, reason } => {
                tracing::warn!(
                    path = shown(&path),
                    version,
                    reason,
                    "HTTPS: cannot probe Go's crypto/tls"
                );
                self.errors
                    .push(format!("{} (Go {version}): {reason}", shown(&path)));
            }
            gotls::Inspected::Probe(binary) => match attach_go(ebpf, &path, &binary) {
                Ok(()) => {
                    tracing::info!(
                        path = shown(&path),
                        found = binary.describe(),
                        "HTTPS: Go crypto/tls probes attached"
                    );
                    self.go_attached.push((path, binary));
                }
                Err(e) => {
                    tracing::warn!(path = shown(&path), error = %e, "HTTPS: cannot probe Go's crypto/tls");
                    self.errors
                        .push(format!("{} (Go {}): {e}", shown(&path), binary.version));
                }
            },
        }
    }

    /// `periscope check`'s lines: every file probed (OpenSSL or Go), and every one refused.
    pub fn check_lines(&self) -> CheckLines {
        let mut lines: Vec<CheckLine> = self
            .attached
            .iter()
            .map(|path| CheckLine {
                ok: true,
                what: "OpenSSL".into(),
                detail: shown(path),
            })
            .collect();
        lines.extend(self.go_attached.iter().map(|(path, binary)| CheckLine {
            ok: true,
            what: "Go crypto/tls".into(),
            detail: format!("{}: {}", shown(path), binary.describe()),
        }));
        if let Some(why) = &self.go_unavailable {
            lines.push(CheckLine {
                ok: false,
                what: "Go crypto/tls".into(),
                detail: format!("programs not loaded: {why}"),
            });
        }
        lines.extend(self.errors.iter().map(|e| CheckLine {
            ok: false,
            what: "TLS probe".into(),
            detail: e.clone(),
        }));
        if lines.is_empty() {
            lines.push(CheckLine {
                ok: true,
                what: "TLS libraries".into(),
                detail: "none running now: processes started later are probed as they appear"
                    .into(),
            });
        }
        CheckLines {
            title: "HTTPS plaintext probes (OpenSSL, Go crypto/tls)",
            lines,
        }
    }
}

/// Go's `crypto/tls.(*Conn).Read`/`Write`: an entry program each, and the return program at
/// every `RET` of `Read` (a write is sent at its entry: [`gotls`]). All or nothing: the `RET`s
/// first, then the entries (a `RET` without its entry sends nothing), and on a failure every
/// link already made is detached, so a refused file leaves no probe behind.
fn attach_go(ebpf: &mut Ebpf, path: &Path, binary: &gotls::GoBinary) -> Result<(), ProbeError> {
    let mut points: Vec<(&'static str, u64)> = binary
        .read
        .rets
        .iter()
        .map(|ret| (gotls::RETURN_PROGRAM, *ret))
        .collect();
    points.push((gotls::READ_PROGRAM, binary.read.entry));
    points.push((gotls::WRITE_PROGRAM, binary.write.entry));
    let mut attached = Vec::new();
    for (program, offset) in points {
        let link = uprobe(ebpf, program).and_then(|p| {
            p.attach(
                UProbeAttachLocation::AbsoluteOffset(offset),
                path,
                UProbeScope::AllProcesses,
            )
            .map_err(|source| ProbeError::Program { program, source })
        });
        match link {
            Ok(link) => attached.push((program, link)),
            Err(e) => {
                for (program, link) in attached {
                    if let Ok(p) = uprobe(ebpf, program) {
                        let _ = p.detach(link);
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// A probed file's path as its processes see it (without the `/proc/PID/root` it was opened by).
pub fn shown(path: &Path) -> String {
    let text = path.to_string_lossy();
    text.strip_prefix("/proc/")
        .and_then(|rest| rest.split_once("/root"))
        .map(|(_, inside)| inside.to_string())
        .unwrap_or_else(|| text.into_owned())
}

fn attach(ebpf: &mut Ebpf, path: &Path, offsets: &[(&str, u64)]) -> Result<(), ProbeError> {
    for (symbol, offset) in offsets {
        let entry = SYMBOLS
            .iter()
            .find(|s| s.0 == *symbol)
            .map(|s| s.1)
            .expect("offsets only hold SYMBOLS");
        let programs: &[&'static str] = if *symbol == "SSL_free" {
            &[entry]
        } else {
            &[entry, RETURN_PROGRAM]
        };
        for &program in programs {
            uprobe(ebpf, program)?
                .attach(
                    UProbeAttachLocation::AbsoluteOffset(*offset),
                    path,
                    UProbeScope::AllProcesses,
                )
                .map_err(|source| ProbeError::Program { program, source })?;
        }
    }
    Ok(())
}

/// The host's `libssl.so*` in the usual library directories (so processes started later that
/// load it are covered from their first call).
fn host_libssl() -> Vec<(FileId, PathBuf)> {
    let mut out = Vec::new();
    for pattern in [
        "/usr/lib/x86_64-linux-gnu/libssl.so*",
        "/usr/lib/aarch64-linux-gnu/libssl.so*",
        "/usr/lib64/libssl.so*",
        "/usr/lib/libssl.so*",
        "/lib/x86_64-linux-gnu/libssl.so*",
    ] {
        for path in glob::glob(pattern).into_iter().flatten().flatten() {
            if let Some(id) = file_id(&path) {
                out.push((id, path));
            }
        }
    }
    out
}

fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let dev = meta.dev();
    Some((
        u64::from(libc::major(dev)),
        u64::from(libc::minor(dev)),
        meta.ino(),
    ))
}

/// The most recent pid the kernel handed out (a process or a thread): the last field of
/// `/proc/loadavg`, one small read.
fn last_pid() -> Option<u32> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// A process's mapped size in pages (`/proc/PID/statm`, first field): it changes when the
/// process maps a library, and reading it costs far less than reading its maps.
fn mapped_pages(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Executable file mappings, as paths through their root, of processes not scanned yet and,
/// on a `full` scan, of those whose mapped size changed since they were; `scanned` forgets
/// processes that are gone.
fn mapped_files(scanned: &mut HashMap<u32, u64>, full: bool) -> Vec<(FileId, PathBuf)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let live: HashSet<u32> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect();
    scanned.retain(|pid, _| live.contains(pid));
    let mut out = Vec::new();
    let mut seen: HashSet<FileId> = HashSet::new();
    for pid in live {
        if pid == std::process::id() {
            continue;
        }
        let pages = match scanned.get(&pid) {
            Some(_) if !full => continue,
            Some(before) => match mapped_pages(pid) {
                Some(now) if now == *before => continue,
                now => now,
            },
            None => mapped_pages(pid),
        };
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        scanned.insert(pid, pages.unwrap_or(0));
        for (id, path) in maps.lines().filter_map(executable_mapping) {
            if seen.insert(id) {
                out.push((id, PathBuf::from(format!("/proc/{pid}/root{path}"))));
            }
        }
    }
    out
}

/// `(file id, path)` of an executable file mapping line of /proc/PID/maps.
fn executable_mapping(line: &str) -> Option<(FileId, &str)> {
    let mut cols = line.split_whitespace();
    let (_range, perms, _offset, dev, inode) = (
        cols.next()?,
        cols.next()?,
        cols.next()?,
        cols.next()?,
        cols.next()?,
    );
    let path = cols.next()?;
    if !perms.contains('x') || !path.starts_with('/') {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let id = (
        u64::from_str_radix(major, 16).ok()?,
        u64::from_str_radix(minor, 16).ok()?,
        inode.parse().ok().filter(|i| *i != 0)?,
    );
    Some((id, path))
}

/// File offsets of the OpenSSL functions a file exports, when it exports `SSL_read` and
/// `SSL_write` (the `_ex` forms exist since OpenSSL 1.1.1; the handshake only tells fds).
pub fn ssl_offsets(path: &Path) -> Option<Vec<(&'static str, u64)>> {
    let file = File::open(path).ok()?;
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let mut out = Vec::new();
    for symbol in elf.dynamic_symbols() {
        let Some(name) = SYMBOLS
            .iter()
            .map(|s| s.0)
            .find(|s| symbol.name() == Ok(*s))
        else {
            continue;
        };
        if !symbol.is_definition() {
            continue;
        }
        out.push((name, crate::kernel::elf::file_offset(&elf, &symbol)?));
    }
    let has = |name: &str| out.iter().any(|(n, _)| *n == name);
    (has("SSL_read") && has("SSL_write")).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_paths() {
        assert_eq!(
            shown(Path::new("/proc/42/root/usr/bin/node")),
            "/usr/bin/node"
        );
        assert_eq!(
            shown(Path::new("/usr/lib/libssl.so.3")),
            "/usr/lib/libssl.so.3"
        );
    }

    #[test]
    fn maps_lines() {
        let line = "7f1c2a000000-7f1c2a0a0000 r-xp 00022000 fd:01 1234567    /usr/lib/x86_64-linux-gnu/libssl.so.3";
        assert_eq!(
            executable_mapping(line),
            Some(((0xfd, 1, 1234567), "/usr/lib/x86_64-linux-gnu/libssl.so.3"))
        );
        let data = "7f1c2a0a0000-7f1c2a0b0000 rw-p 000c2000 fd:01 1234567    /usr/lib/x86_64-linux-gnu/libssl.so.3";
        assert_eq!(executable_mapping(data), None);
        assert_eq!(
            executable_mapping("7ffd-7ffe r-xp 00000000 00:00 0  [vdso]"),
            None
        );
    }

    #[test]
    fn the_host_libssl_exports_the_functions() {
        // Debian's libssl3 (curl and python3 depend on it).
        let (_, path) = host_libssl()
            .into_iter()
            .find(|(_, p)| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("libssl.so."))
            })
            .expect("a host libssl.so.*");
        let offsets = ssl_offsets(&path).expect("libssl exports SSL_read and SSL_write");
        assert_eq!(offsets.len(), 6, "{offsets:?}");
        assert!(offsets.iter().all(|(_, off)| *off > 0));
        assert!(ssl_offsets(Path::new("/bin/sh")).is_none());
    }
}
