//! HTTPS through Go's own TLS (`crypto/tls`): Go executables are recognised by their build info;
//! `crypto/tls.(*Conn).Read` gets a uprobe at its entry and one at every `RET` instruction of its
//! body, `crypto/tls.(*Conn).Write` one at its entry (`ebpf/periscope-ebpf/src/http/gotls.rs`
//! sends their plaintext as records, like OpenSSL's). No uretprobes: a uretprobe rewrites the
//! return address on the stack, and Go's runtime moves goroutine stacks. A write is sent at its
//! entry, not its return: Go reads and writes a connection on different goroutines, and a
//! client's response can be read (and its record sent) before the goroutine that wrote the
//! request reaches its `RET`; user space would then see the response first and match it to no
//! request. Entry probes go past the prologue's stack check ([`after_stack_check`]).
//!
//! What a binary needs: Go 1.17 or later on amd64 (the register ABI the programs read), the two
//! functions found in `.symtab` or, in a stripped binary, in `.gopclntab` (Go 1.18+ layout), and
//! the offsets that lead from a `*tls.Conn` to its socket's fd. Those are load-time constants of
//! the programs ([`KNOWN`], the same in every Go release from 1.17 on); a binary with DWARF has
//! them checked against its own types and is refused when they differ, one without DWARF is
//! accepted for the releases whose sources they were read from ([`KNOWN_RELEASES`]).

use std::{fs::File, io::Read, path::Path};

use object::{Object, ObjectSection, ObjectSymbol, ReadCache, ReadRef};

/// Entry programs and the program at every `RET`.
pub const READ_PROGRAM: &str = "http_go_tls_read";
pub const WRITE_PROGRAM: &str = "http_go_tls_write";
pub const RETURN_PROGRAM: &str = "http_go_tls_return";
pub const PROGRAMS: [&str; 3] = [READ_PROGRAM, WRITE_PROGRAM, RETURN_PROGRAM];

pub const READ_SYMBOL: &str = "crypto/tls.(*Conn).Read";
pub const WRITE_SYMBOL: &str = "crypto/tls.(*Conn).Write";

/// The offsets from a `*tls.Conn` to its socket's fd, as the programs read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// `crypto/tls.Conn.conn` (a `net.Conn` interface) + 8: its data word, a `*net.TCPConn`.
    pub conn_data: u32,
    /// `net.conn.fd` (embedded in `net.TCPConn`): the `*net.netFD`.
    pub conn_fd: u32,
    /// `net.netFD.pfd` + `internal/poll.FD.Sysfd`.
    pub fd_sysfd: u32,
}

impl Offsets {
    /// The programs' load-time constants.
    pub fn globals(&self) -> [(&'static str, u32); 3] {
        [
            ("HTTP_GO_CONN_DATA", self.conn_data),
            ("HTTP_GO_CONN_FD", self.conn_fd),
            ("HTTP_GO_FD_SYSFD", self.fd_sysfd),
        ]
    }
}

/// The offsets of every Go release from 1.17 (the register ABI) on: `conn` is `tls.Conn`'s first
/// field, `fd` `net.conn`'s only one, `pfd` `netFD`'s first, and `Sysfd` follows `poll.FD`'s
/// 16-byte `fdMutex` (read from the 1.19 sources on the build machine; unchanged since).
pub const KNOWN: Offsets = Offsets {
    conn_data: 8,
    conn_fd: 0,
    fd_sysfd: 16,
};

/// Go minor releases whose offsets are [`KNOWN`] without DWARF to check them against.
pub const KNOWN_RELEASES: std::ops::RangeInclusive<u32> = 17..=25;

/// One probed function: the file offsets of its entry probe (past the prologue's stack check:
/// [`after_stack_check`]) and of each `RET` in its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub entry: u64,
    pub rets: Vec<u64>,
}

/// A Go executable ready to probe.
#[derive(Debug, Clone)]
pub struct GoBinary {
    /// `go1.19.8`, from the build info.
    pub version: String,
    pub read: Function,
    pub write: Function,
    /// Where the functions were found: `.symtab` or `.gopclntab` (stripped).
    pub symbols_from: &'static str,
    /// Where the offsets were checked: `DWARF`, or `known for go1.N`.
    pub offsets_from: String,
}

impl GoBinary {
    /// One line for `check` and the log.
    pub fn describe(&self) -> String {
        format!(
            "{}: Read (entry + {} RET) and Write (entry) from {}, offsets {}",
            self.version,
            self.read.rets.len(),
            self.symbols_from,
            self.offsets_from
        )
    }
}

/// What a file is, for the Go TLS probes.
#[derive(Debug)]
pub enum Inspected {
    /// No Go build info.
    NotGo,
    /// A Go executable that does not link `crypto/tls`.
    NoTls {
        version: String,
    },
    /// A Go executable with `crypto/tls` that cannot be probed, and why.
    Refused {
        version: String,
        reason: String,
    },
    Probe(GoBinary),
}

/// The Go build info magic at the start of `.go.buildinfo`.
const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";

/// Looks at `path`: a Go executable using `crypto/tls`, and whether it can be probed.
pub fn inspect(path: &Path) -> Inspected {
    let Ok(file) = File::open(path) else {
        return Inspected::NotGo;
    };
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return Inspected::NotGo;
    };
    let Some(version) = build_version(&elf) else {
        return Inspected::NotGo;
    };
    match probe_plan(&elf, &version) {
        Ok(Some(binary)) => Inspected::Probe(binary),
        Ok(None) => Inspected::NoTls { version },
        Err(reason) => Inspected::Refused { version, reason },
    }
}

/// The Go version from `.go.buildinfo`: inline after the header since Go 1.18 (flag bit 2),
/// before that through a pointer to a Go string. `None`: not a Go executable.
pub fn build_version<'data, R: ReadRef<'data>>(elf: &object::File<'data, R>) -> Option<String> {
    let section = elf.section_by_name(".go.buildinfo")?;
    let data = section.data().ok()?;
    if data.len() < 32 || !data.starts_with(BUILDINFO_MAGIC) {
        return None;
    }
    let (ptr_size, flags) = (data[14] as usize, data[15]);
    let big_endian = flags & 1 != 0;
    if flags & 2 != 0 {
        let (len, used) = uvarint(&data[32..])?;
        let start = 32 + used;
        let bytes = data.get(start..start.checked_add(len as usize)?)?;
        return Some(String::from_utf8_lossy(bytes).into_owned());
    }
    // Go 1.13-1.17: two pointers (version, module info) to Go strings (pointer, length).
    if big_endian || !(ptr_size == 4 || ptr_size == 8) {
        return None;
    }
    let word = |at: u64| -> Option<u64> {
        let bytes = read_at(elf, at, ptr_size)?;
        Some(if ptr_size == 8 {
            u64::from_le_bytes(bytes.try_into().ok()?)
        } else {
            u32::from_le_bytes(bytes.try_into().ok()?) as u64
        })
    };
    let header = section.address() + 16;
    let string = word(header)?;
    let (ptr, len) = (word(string)?, word(string + ptr_size as u64)?);
    if len == 0 || len > 64 {
        return None;
    }
    let bytes = read_at(elf, ptr, len as usize)?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// `len` bytes at virtual address `address`, from the section holding them.
fn read_at<'data, R: ReadRef<'data>>(
    elf: &object::File<'data, R>,
    address: u64,
    len: usize,
) -> Option<Vec<u8>> {
    let section = elf.sections().find(|s| {
        s.address() <= address && address + len as u64 <= s.address() + s.size() && s.size() > 0
    })?;
    let data = section.data_range(address, len as u64).ok().flatten()?;
    Some(data.to_vec())
}

/// A little-endian base-128 varint: (value, bytes used).
fn uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in data.iter().enumerate().take(10) {
        value |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// `go1.19.8` -> 19 (`go1.21rc2` -> 21); `None` for a development build.
pub fn minor_release(version: &str) -> Option<u32> {
    let rest = version.strip_prefix("go1.")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The functions, their `RET`s and the offsets' check; `None` when the binary has no
/// `crypto/tls`.
fn probe_plan<'data, R: ReadRef<'data>>(
    elf: &object::File<'data, R>,
    version: &str,
) -> Result<Option<GoBinary>, String> {
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(format!(
            "{:?}: the Go TLS probes read Go's amd64 register ABI only",
            elf.architecture()
        ));
    }
    let minor = minor_release(version);
    if minor.is_some_and(|m| m < 17) {
        return Err(format!(
            "{version}: Go passes arguments in registers since 1.17, which the probes read"
        ));
    }
    let (ranges, symbols_from) = match symtab_functions(elf) {
        Some(found) => (found, ".symtab"),
        // A position-independent executable keeps it in `.data.rel.ro.gopclntab`.
        None => match elf
            .section_by_name(".gopclntab")
            .or_else(|| elf.section_by_name(".data.rel.ro.gopclntab"))
        {
            Some(section) => {
                let data = section
                    .data()
                    .map_err(|e| format!(".gopclntab: cannot read it: {e}"))?;
                let text = elf.section_by_name(".text").map_or(0, |s| s.address());
                (
                    pclntab_functions(data, text, &[READ_SYMBOL, WRITE_SYMBOL])?,
                    ".gopclntab",
                )
            }
            None => {
                return Err("neither .symtab nor a .gopclntab names crypto/tls's functions".into());
            }
        },
    };
    let (Some(read), Some(write)) = (ranges[0], ranges[1]) else {
        return Ok(None);
    };
    let offsets_from = match dwarf_offsets(elf)? {
        Some(found) if found == KNOWN => "DWARF".to_string(),
        Some(found) => {
            return Err(format!(
                "{version}: its DWARF puts the fd at {found:?}, the probes read it at {KNOWN:?}"
            ));
        }
        None => match minor {
            Some(m) if KNOWN_RELEASES.contains(&m) => format!("known for go1.{m}"),
            _ => {
                return Err(format!(
                    "{version}: no DWARF, and the offsets of tls.Conn, net.netFD and poll.FD are known \
                     for go1.{}-go1.{} only (build without -w to keep DWARF)",
                    KNOWN_RELEASES.start(),
                    KNOWN_RELEASES.end()
                ));
            }
        },
    };
    Ok(Some(GoBinary {
        version: version.to_string(),
        read: function(elf, READ_SYMBOL, read, true)?,
        write: function(elf, WRITE_SYMBOL, write, false)?,
        symbols_from,
        offsets_from,
    }))
}

/// [address, end) of each wanted function.
type Ranges = [Option<(u64, u64)>; 2];

/// The two functions from `.symtab`; `None` unless it has both (stripped, or stripped of some
/// symbols only: `.gopclntab` still names every function).
fn symtab_functions<'data, R: ReadRef<'data>>(elf: &object::File<'data, R>) -> Option<Ranges> {
    let mut out: Ranges = [None, None];
    for symbol in elf.symbols() {
        let Ok(name) = symbol.name() else { continue };
        let slot = match name {
            READ_SYMBOL => 0,
            WRITE_SYMBOL => 1,
            _ => continue,
        };
        if symbol.is_definition() && symbol.size() > 0 {
            out[slot] = Some((symbol.address(), symbol.address() + symbol.size()));
        }
    }
    (out[0].is_some() && out[1].is_some()).then_some(out)
}

/// Functions by name from a Go 1.18+ `.gopclntab` (`runtime/symtab.go`'s `pcHeader`,
/// `functab` and `_func`): [entry, next function's entry) of each of `wanted`. `text` is the
/// `.text` address, used when the header's `textStart` is 0 (filled by a relocation).
pub fn pclntab_functions(data: &[u8], text: u64, wanted: &[&str; 2]) -> Result<Ranges, String> {
    // Every offset is the file's (untrusted: any process's executable): sums are checked, and
    // names are compared in place rather than searched for their end.
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            data.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let magic = u32_at(0).ok_or(".gopclntab: too short")?;
    if magic != 0xffff_fff0 && magic != 0xffff_fff1 {
        return Err(format!(
            ".gopclntab: magic {magic:#x}, not the Go 1.18+ layout the probes read (no .symtab to use instead)"
        ));
    }
    let ptr = *data.get(7).ok_or(".gopclntab: too short")? as usize;
    if ptr != 8 {
        return Err(format!(".gopclntab: pointer size {ptr}"));
    }
    let word = |i: usize| -> Option<u64> {
        let at = 8 + i * ptr;
        Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
    };
    let bad = || ".gopclntab: truncated header".to_string();
    let nfunc = word(0).ok_or_else(bad)? as usize;
    let text_start = match word(2).ok_or_else(bad)? {
        0 => text,
        at => at,
    };
    let funcnames = word(3).ok_or_else(bad)? as usize;
    let functab = word(7).ok_or_else(bad)? as usize;
    // A function table longer than the section cannot be: refuse it before looping over it.
    if nfunc > data.len() / 8 {
        return Err(format!(
            ".gopclntab: {nfunc} functions in {} bytes",
            data.len()
        ));
    }
    let is_named = |at: usize, name: &str| {
        let end = at.checked_add(name.len());
        end.and_then(|end| data.get(at..=end))
            .is_some_and(|bytes| &bytes[..name.len()] == name.as_bytes() && bytes[name.len()] == 0)
    };
    let mut out: Ranges = [None, None];
    for i in 0..nfunc {
        let out_of_bounds = || format!(".gopclntab: functab entry {i} out of bounds");
        let entry_at = functab.checked_add(8 * i).ok_or_else(out_of_bounds)?;
        let (Some(entry), Some(func_off), Some(next)) = (
            u32_at(entry_at),
            entry_at.checked_add(4).and_then(u32_at),
            entry_at.checked_add(8).and_then(u32_at),
        ) else {
            return Err(out_of_bounds());
        };
        let name_off = functab
            .checked_add(func_off as usize)
            .and_then(|at| at.checked_add(4))
            .and_then(u32_at);
        let Some(name_at) = name_off.and_then(|off| funcnames.checked_add(off as usize)) else {
            continue;
        };
        if let Some(slot) = wanted.iter().position(|w| is_named(name_at, w))
            && let (Some(start), Some(end)) = (
                text_start.checked_add(entry as u64),
                text_start.checked_add(next as u64),
            )
            && start < end
        {
            out[slot] = Some((start, end));
        }
    }
    Ok(out)
}

/// A function's entry probe and (`with_rets`) `RET`s as file offsets, from its body
/// disassembled.
fn function<'data, R: ReadRef<'data>>(
    elf: &object::File<'data, R>,
    name: &str,
    (start, end): (u64, u64),
    with_rets: bool,
) -> Result<Function, String> {
    let section = elf
        .sections()
        .find(|s| s.address() <= start && end <= s.address() + s.size())
        .ok_or_else(|| format!("{name}: [{start:#x}, {end:#x}) is in no section"))?;
    let (file_offset, _) = section
        .file_range()
        .ok_or_else(|| format!("{name}: its section has no file data"))?;
    let code = section
        .data_range(start, end - start)
        .ok()
        .flatten()
        .ok_or_else(|| format!("{name}: cannot read its code"))?;
    let to_file = |address: u64| address - section.address() + file_offset;
    let rets = if with_rets {
        ret_addresses(code, start)
    } else {
        Vec::new()
    };
    if with_rets && rets.is_empty() {
        return Err(format!("{name}: no RET instruction found in its body"));
    }
    Ok(Function {
        entry: to_file(after_stack_check(code, start)),
        rets: rets.into_iter().map(to_file).collect(),
    })
}

/// Where a function's entry probe goes: right after its prologue's stack-bound check
/// (`CMPQ SP, 16(R14); JBE morestack`, or through R12 for a large frame), when it has one,
/// else its first instruction. A goroutine whose stack must grow takes the `JBE` to
/// `runtime.morestack`, which copies the stack and jumps back to the function's first
/// instruction: a probe there would fire twice for that call (a write sent twice), one past the
/// check fires once. The check leaves the argument registers and R14 as they were.
pub fn after_stack_check(code: &[u8], address: u64) -> u64 {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, Register};
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut compared = false;
    for instruction in decoder.iter().take(3) {
        match instruction.mnemonic() {
            Mnemonic::Cmp if instruction.memory_base() == Register::R14 => compared = true,
            Mnemonic::Jbe if compared => return instruction.next_ip(),
            Mnemonic::Lea | Mnemonic::Cmp => {}
            _ => break,
        }
    }
    address
}

/// The address of every `RET` in `code` (at `address`), decoded instruction by instruction from
/// the start (the only way to find instruction boundaries on x86). Padding after the body
/// (`INT3`s up to the next function) decodes as instructions too, never as a `RET`.
pub fn ret_addresses(code: &[u8], address: u64) -> Vec<u64> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut out = Vec::new();
    for instruction in &mut decoder {
        if instruction.mnemonic() == Mnemonic::Ret {
            out.push(instruction.ip());
        }
    }
    out
}

/// The offsets from the binary's DWARF: `None` when it has none (built with `-w`, or stripped).
fn dwarf_offsets<'data, R: ReadRef<'data>>(
    elf: &object::File<'data, R>,
) -> Result<Option<Offsets>, String> {
    if elf.section_by_name(".debug_info").is_none() && elf.section_by_name(".zdebug_info").is_none()
    {
        return Ok(None);
    }
    // Not the location lists, which the struct lookup never reads and which are among a large
    // binary's biggest sections (the line program is read: gimli parses its header per unit).
    let load = |id: gimli::SectionId| -> Result<Vec<u8>, String> {
        match id {
            gimli::SectionId::DebugLoc | gimli::SectionId::DebugLocLists => Ok(Vec::new()),
            _ => debug_section(elf, id.name()),
        }
    };
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
    // (struct, member) -> offset.
    const WANTED: [(&str, &str); 4] = [
        ("crypto/tls.Conn", "conn"),
        ("net.conn", "fd"),
        ("net.netFD", "pfd"),
        ("internal/poll.FD", "Sysfd"),
    ];
    let mut found: [Option<u64>; 4] = [None; 4];
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut entries = unit.entries();
        let mut current: Option<&str> = None;
        let mut struct_depth = 0isize;
        while let Ok(Some(entry)) = entries.next_dfs() {
            let depth = entry.depth();
            if current.is_some() && depth <= struct_depth {
                current = None;
            }
            let name = |e: &gimli::DebuggingInformationEntry<_>| {
                e.attr_value(gimli::DW_AT_name)
                    .and_then(|v| dwarf.attr_string(&unit, v).ok())
                    .map(|s| s.to_string_lossy().into_owned())
            };
            if entry.tag() == gimli::DW_TAG_structure_type {
                current = name(entry).and_then(|n| WANTED.iter().map(|w| w.0).find(|w| *w == n));
                struct_depth = depth;
            } else if entry.tag() == gimli::DW_TAG_member
                && let Some(structure) = current
                && let Some(member) = name(entry)
                && let Some(i) = WANTED
                    .iter()
                    .position(|w| *w == (structure, member.as_str()))
                && let Some(gimli::AttributeValue::Udata(at)) =
                    entry.attr_value(gimli::DW_AT_data_member_location)
            {
                found[i] = Some(at);
            }
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    let missing: Vec<String> = WANTED
        .iter()
        .zip(found)
        .filter(|(_, f)| f.is_none())
        .map(|(w, _)| format!("{}.{}", w.0, w.1))
        .collect();
    if !missing.is_empty() {
        return Err(format!("its DWARF has no {}", missing.join(", ")));
    }
    let [conn, fd, pfd, sysfd] = found.map(|f| f.unwrap_or(0) as u32);
    Ok(Some(Offsets {
        conn_data: conn + 8,
        conn_fd: fd,
        fd_sysfd: pfd + sysfd,
    }))
}

/// A DWARF section's bytes, decompressed: `.zdebug_*` (Go before 1.20: "ZLIB" and a big-endian
/// size, then a zlib stream), `SHF_COMPRESSED` (a 24-byte `Elf64_Chdr`, then zlib), or plain.
fn debug_section<'data, R: ReadRef<'data>>(
    elf: &object::File<'data, R>,
    name: &str,
) -> Result<Vec<u8>, String> {
    let zname = name.replacen(".debug_", ".zdebug_", 1);
    let (section, zdebug) = match elf.section_by_name(name) {
        Some(s) => (s, false),
        None => match elf.section_by_name(&zname) {
            Some(s) => (s, true),
            None => return Ok(Vec::new()),
        },
    };
    let data = section
        .data()
        .map_err(|e| format!("{name}: cannot read it: {e}"))?;
    let compressed = matches!(
        section.flags(),
        object::SectionFlags::Elf { sh_flags } if sh_flags & u64::from(object::elf::SHF_COMPRESSED) != 0
    );
    let (stream, size) = if zdebug && data.starts_with(b"ZLIB") && data.len() >= 12 {
        let size = u64::from_be_bytes(data[4..12].try_into().unwrap_or_default());
        (&data[12..], size)
    } else if compressed && data.len() >= 24 {
        if u32::from_le_bytes(data[0..4].try_into().unwrap_or_default())
            != object::elf::ELFCOMPRESS_ZLIB
        {
            return Err(format!("{name}: compressed with other than zlib"));
        }
        let size = u64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
        (&data[24..], size)
    } else {
        return Ok(data.to_vec());
    };
    // The file is untrusted (any process's executable): a size field that lies, or a zlib bomb,
    // must not take the daemon's memory. Past the cap the binary is refused.
    if size > MAX_DEBUG_SECTION {
        return Err(format!(
            "{name}: {size} bytes uncompressed, over the {MAX_DEBUG_SECTION}-byte cap"
        ));
    }
    let mut out = Vec::with_capacity(size as usize);
    flate2::read::ZlibDecoder::new(stream)
        .take(MAX_DEBUG_SECTION + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{name}: {e}"))?;
    if out.len() as u64 > MAX_DEBUG_SECTION {
        return Err(format!(
            "{name}: decompresses past the {MAX_DEBUG_SECTION}-byte cap"
        ));
    }
    Ok(out)
}

/// The largest debug section decompressed: far more than the type information of a Go program
/// needs; a larger one is refused, with the reason in `periscope check`.
const MAX_DEBUG_SECTION: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(minor_release("go1.19.8"), Some(19));
        assert_eq!(minor_release("go1.21rc2"), Some(21));
        assert_eq!(minor_release("go1.17"), Some(17));
        assert_eq!(minor_release("devel go1.22-abc"), None);
    }

    #[test]
    fn varints() {
        assert_eq!(uvarint(&[0x08, 0xff]), Some((8, 1)));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80]), None);
    }

    #[test]
    fn rets_are_found_by_decoding_not_by_byte() {
        // mov eax, 0xc3 (b8 c3 00 00 00: a C3 byte that is no RET); ret; int3; ret 8; int3.
        let code = [0xb8, 0xc3, 0, 0, 0, 0xc3, 0xcc, 0xc2, 0x08, 0x00, 0xcc];
        assert_eq!(ret_addresses(&code, 0x1000), vec![0x1005, 0x1007]);
    }

    #[test]
    fn entry_probes_go_past_the_stack_check() {
        // cmp 0x10(%r14),%rsp; jbe +0x3c2; sub $0x68,%rsp (crypto/tls.(*Conn).Read, Go 1.19).
        let small = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0xc2, 0x03, 0x00, 0x00, 0x48, 0x83, 0xec, 0x68,
        ];
        assert_eq!(after_stack_check(&small, 0x1000), 0x100a);
        // lea -0x68(%rsp),%r12; cmp 0x10(%r14),%r12; jbe +0x764 (a large frame: Write).
        let large = [
            0x4c, 0x8d, 0x64, 0x24, 0x98, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x64, 0x07, 0x00,
            0x00, 0x48, 0x81, 0xec, 0xe8, 0x00, 0x00, 0x00,
        ];
        assert_eq!(after_stack_check(&large, 0x2000), 0x200f);
        // No check (a NOSPLIT function): its first instruction.
        assert_eq!(
            after_stack_check(&[0x48, 0x83, 0xec, 0x68, 0xc3], 0x3000),
            0x3000
        );
    }

    #[test]
    fn pclntab_rejects_other_layouts() {
        let mut data = vec![0u8; 64];
        data[0..4].copy_from_slice(&0xffff_fffau32.to_le_bytes());
        assert!(
            pclntab_functions(&data, 0, &[READ_SYMBOL, WRITE_SYMBOL])
                .unwrap_err()
                .contains("1.18+")
        );
    }

    #[test]
    fn other_files_are_not_go() {
        assert!(matches!(inspect(Path::new("/bin/sh")), Inspected::NotGo));
    }
}

/// Against real Go binaries built here from `tests/workloads/go_https_server` by the Debian Go
/// toolchain (`bash .ci/setup.sh` installs it), with and without `-ldflags=-s -w`.
#[cfg(test)]
mod go_binaries {
    use super::*;
    use std::path::PathBuf;

    fn build(dir: &Path, name: &str, ldflags: &str) -> PathBuf {
        let source =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workloads/go_https_server");
        let out = dir.join(name);
        let status = std::process::Command::new("go")
            .args(["build", "-trimpath", &format!("-ldflags={ldflags}"), "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&source)
            .env("GOPROXY", "off")
            .env("GOFLAGS", "")
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("gopath"))
            .status()
            .expect("go (bash .ci/setup.sh installs golang-go)");
        assert!(status.success());
        out
    }

    fn probe(path: &Path) -> GoBinary {
        match inspect(path) {
            Inspected::Probe(binary) => binary,
            other => panic!("{}: {other:?}", path.display()),
        }
    }

    #[test]
    fn symtab_pclntab_and_dwarf_agree() {
        let dir = tempfile_dir();
        let full = build(&dir, "full", "");
        let stripped = build(&dir, "stripped", "-s -w");
        let go = String::from_utf8(
            std::process::Command::new("go")
                .arg("version")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let full_binary = probe(&full);
        assert!(go.contains(&full_binary.version), "{go} vs {full_binary:?}");
        assert_eq!(full_binary.symbols_from, ".symtab");
        assert_eq!(
            full_binary.offsets_from, "DWARF",
            "DWARF matches the known offsets"
        );
        assert!(!full_binary.read.rets.is_empty() && full_binary.write.rets.is_empty());
        let stripped_binary = probe(&stripped);
        assert_eq!(stripped_binary.symbols_from, ".gopclntab");
        assert!(stripped_binary.offsets_from.starts_with("known for go1."));
        assert_eq!(stripped_binary.version, full_binary.version);
        assert_eq!(
            stripped_binary.read.rets.len(),
            full_binary.read.rets.len(),
            "same code, same RETs"
        );
        // The pclntab of the unstripped binary finds the functions where .symtab puts them.
        let file = std::fs::read(&full).unwrap();
        let elf = object::File::parse(&*file).unwrap();
        let pcln = elf.section_by_name(".gopclntab").unwrap();
        let text = elf.section_by_name(".text").unwrap().address();
        let from_pcln =
            pclntab_functions(pcln.data().unwrap(), text, &[READ_SYMBOL, WRITE_SYMBOL]).unwrap();
        let from_symtab = symtab_functions(&elf).unwrap();
        for i in 0..2 {
            let (p, s) = (from_pcln[i].unwrap(), from_symtab[i].unwrap());
            assert_eq!(p.0, s.0, "entry");
            assert!(p.1 >= s.1, "the next function starts at or after the end");
        }
        // A position-independent executable: the same, addresses relative to its load address.
        let pie = build(&dir, "pie", "-s -w");
        let pie_full = build(&dir, "pie_full", "");
        for path in [&pie, &pie_full] {
            let status = std::process::Command::new("go")
                .args(["build", "-buildmode=pie", "-o"])
                .arg(path)
                .arg(if path == &pie {
                    "-ldflags=-s -w"
                } else {
                    "-ldflags="
                })
                .arg(".")
                .current_dir(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../tests/workloads/go_https_server"),
                )
                .env("GOPROXY", "off")
                .env("GOFLAGS", "")
                .env("GOCACHE", dir.join("cache"))
                .env("GOPATH", dir.join("gopath"))
                .status()
                .unwrap();
            assert!(status.success());
        }
        let (pie, pie_full) = (probe(&pie), probe(&pie_full));
        assert_eq!(pie.symbols_from, ".gopclntab");
        assert_eq!(pie_full.symbols_from, ".symtab");
        assert_eq!(pie.read.rets.len(), full_binary.read.rets.len());
        let file = std::fs::read(dir.join("pie_full")).unwrap();
        let elf = object::File::parse(&*file).unwrap();
        let pcln = elf.section_by_name(".data.rel.ro.gopclntab").unwrap();
        let text = elf.section_by_name(".text").unwrap().address();
        let from_pcln =
            pclntab_functions(pcln.data().unwrap(), text, &[READ_SYMBOL, WRITE_SYMBOL]).unwrap();
        let from_symtab = symtab_functions(&elf).unwrap();
        assert_eq!(
            from_pcln[0].unwrap().0,
            from_symtab[0].unwrap().0,
            "PIE: Read's entry"
        );
        assert_eq!(
            from_pcln[1].unwrap().0,
            from_symtab[1].unwrap().0,
            "PIE: Write's entry"
        );
        // The errors `check` shows: a release whose offsets are not known, without DWARF to read
        // them from, and one from before the register ABI.
        let file = std::fs::read(&stripped).unwrap();
        let elf = object::File::parse(&*file).unwrap();
        let unknown = probe_plan(&elf, "go1.99.1").unwrap_err();
        assert_eq!(
            unknown,
            "go1.99.1: no DWARF, and the offsets of tls.Conn, net.netFD and poll.FD are known \
             for go1.17-go1.25 only (build without -w to keep DWARF)"
        );
        let old = probe_plan(&elf, "go1.16.15").unwrap_err();
        assert!(old.contains("registers since 1.17"), "{old}");
        // With DWARF, the version does not matter: the offsets are read, not assumed.
        let file = std::fs::read(&full).unwrap();
        let elf = object::File::parse(&*file).unwrap();
        assert!(probe_plan(&elf, "go1.99.1").unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("periscope-gotls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
