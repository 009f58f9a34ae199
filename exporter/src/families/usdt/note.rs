//! The USDT probes an ELF file ships: its `.note.stapsdt` notes (what `<sys/sdt.h>` emits,
//! `readelf -n` shows and `bpftrace -l 'usdt:PATH:*'` lists), each turned into a file offset
//! where a uprobe attaches, the semaphore's file offset (the kernel's uprobe `ref_ctr_offset`),
//! and decoded x86-64 argument specs (`-4@%edi`, `8@-8(%rbp)`, `-4@$5`).
//!
//! Every byte here comes from a file another party built: nothing panics on malformed input
//! (the fuzz target `usdt_note` holds it to that); a bad note is skipped with its reason.

use object::{Object, ObjectSection, ObjectSegment};
use periscope_common::usdt::{UsdtArg, arg_kind};

/// The note's owner name and type (`NT_STAPSDT`).
const OWNER: &[u8] = b"stapsdt";
const NT_STAPSDT: u32 = 3;

/// One probe of a binary, as its note describes it after the `.stapsdt.base` adjustment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsdtProbe {
    pub provider: String,
    pub name: String,
    /// Virtual address of the probe's `nop`.
    pub address: u64,
    /// Its offset in the file: where the uprobe attaches.
    pub offset: u64,
    /// Virtual address of the semaphore (`0`: none).
    pub semaphore: u64,
    /// Its offset in the file (the kernel's `ref_ctr_offset`), when there is one.
    pub semaphore_offset: Option<u64>,
    /// The argument specs as written in the note.
    pub args_text: String,
    /// The decoded specs, or why one cannot be decoded.
    pub args: Result<Vec<UsdtArg>, String>,
}

/// Errors reading a file's probes: each names the file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    #[error("{0}: not an ELF object: {1}")]
    NotElf(String, String),
    #[error("{0}: has no .note.stapsdt section (no USDT probes; built without <sys/sdt.h>?)")]
    NoNotes(String),
    #[error("{0}: .note.stapsdt: {1}")]
    Malformed(String, String),
}

/// The probes of the ELF image `data` (read from `file`, which only names it in errors).
pub fn probes(file: &str, data: &[u8]) -> Result<Vec<UsdtProbe>, NoteError> {
    let elf =
        object::File::parse(data).map_err(|e| NoteError::NotElf(file.into(), e.to_string()))?;
    let notes = elf
        .section_by_name(".note.stapsdt")
        .ok_or_else(|| NoteError::NoNotes(file.into()))?;
    let bytes = notes
        .data()
        .map_err(|e| NoteError::Malformed(file.into(), e.to_string()))?;
    // Prelinked or relocated objects: the note's `base` is the link-time address of
    // `.stapsdt.base`; the difference to the section's address now moves every address.
    let base_section = elf.section_by_name(".stapsdt.base").map(|s| s.address());
    let little = elf.is_little_endian();
    let is_64 = elf.is_64();
    let mut probes = Vec::new();
    for note in parse_notes(bytes, little) {
        let note = note.map_err(|e| NoteError::Malformed(file.into(), e))?;
        if note.owner != OWNER || note.kind != NT_STAPSDT {
            continue;
        }
        let Some(raw) = parse_desc(note.desc, little, is_64) else {
            return Err(NoteError::Malformed(
                file.into(),
                "a probe's description is truncated".into(),
            ));
        };
        let adjust = |addr: u64| match base_section {
            Some(section) if raw.base != 0 && addr != 0 => {
                addr.wrapping_add(section).wrapping_sub(raw.base)
            }
            _ => addr,
        };
        let address = adjust(raw.pc);
        let semaphore = adjust(raw.semaphore);
        let Some(offset) = file_offset(&elf, address).filter(|o| *o < data.len() as u64) else {
            return Err(NoteError::Malformed(
                file.into(),
                format!(
                    "probe {}:{} at {address:#x} lies in no loaded segment",
                    raw.provider, raw.name
                ),
            ));
        };
        probes.push(UsdtProbe {
            provider: raw.provider.into(),
            name: raw.name.into(),
            address,
            offset,
            semaphore,
            semaphore_offset: (semaphore != 0)
                .then(|| file_offset(&elf, semaphore))
                .flatten(),
            args_text: raw.args.into(),
            args: parse_args(raw.args),
        });
    }
    Ok(probes)
}

/// The file offset of virtual address `address`: through the loadable segment holding it
/// (address - segment address + segment file offset), else through the section holding it.
pub fn file_offset(elf: &object::File<'_>, address: u64) -> Option<u64> {
    let within = |start: u64, size: u64| address >= start && address - start < size;
    for segment in elf.segments() {
        let (file_start, file_size) = segment.file_range();
        if file_size > 0 && within(segment.address(), file_size) {
            return file_start.checked_add(address - segment.address());
        }
    }
    elf.sections().find_map(|section| {
        let (file_start, _) = section.file_range()?;
        within(section.address(), section.size())
            .then(|| file_start.checked_add(address - section.address()))
            .flatten()
    })
}

/// One ELF note.
struct Note<'a> {
    owner: &'a [u8],
    kind: u32,
    desc: &'a [u8],
}

/// The notes of a note section: `namesz`, `descsz`, `type`, then name and desc, each padded to
/// 4 bytes.
fn parse_notes(mut bytes: &[u8], little: bool) -> impl Iterator<Item = Result<Note<'_>, String>> {
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || bytes.is_empty() {
            return None;
        }
        let word = |b: &[u8], at: usize| -> Option<u32> {
            let raw: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
            Some(if little {
                u32::from_le_bytes(raw)
            } else {
                u32::from_be_bytes(raw)
            })
        };
        let note = (|| {
            let namesz = word(bytes, 0)? as usize;
            let descsz = word(bytes, 4)? as usize;
            let kind = word(bytes, 8)?;
            let name_end = 12usize.checked_add(namesz)?;
            let desc_start = name_end.checked_add(3)? & !3;
            let desc_end = desc_start.checked_add(descsz)?;
            let next = desc_end.checked_add(3)? & !3;
            let owner = bytes.get(12..name_end)?;
            let desc = bytes.get(desc_start..desc_end)?;
            // The owner name is NUL-terminated.
            let owner = owner.strip_suffix(&[0]).unwrap_or(owner);
            let rest = bytes.get(next..).unwrap_or(&[]);
            Some((Note { owner, kind, desc }, rest))
        })();
        match note {
            Some((note, rest)) => {
                bytes = rest;
                Some(Ok(note))
            }
            None => {
                failed = true;
                Some(Err("a note runs past the end of the section".into()))
            }
        }
    })
}

/// A probe's description: three addresses, then provider, name and arguments, NUL-terminated.
struct RawProbe<'a> {
    pc: u64,
    base: u64,
    semaphore: u64,
    provider: &'a str,
    name: &'a str,
    args: &'a str,
}

fn parse_desc(desc: &[u8], little: bool, is_64: bool) -> Option<RawProbe<'_>> {
    let width = if is_64 { 8 } else { 4 };
    let addr = |at: usize| -> Option<u64> {
        let b = desc.get(at..at + width)?;
        let mut raw = [0u8; 8];
        if little {
            raw[..width].copy_from_slice(b);
            Some(u64::from_le_bytes(raw))
        } else {
            raw[8 - width..].copy_from_slice(b);
            Some(u64::from_be_bytes(raw))
        }
    };
    let (pc, base, semaphore) = (addr(0)?, addr(width)?, addr(2 * width)?);
    let mut strings = desc.get(3 * width..)?.split(|b| *b == 0);
    let mut next = || std::str::from_utf8(strings.next()?).ok();
    let (provider, name) = (next()?, next()?);
    // Probes without arguments may end right after the name.
    let args = next().unwrap_or("");
    Some(RawProbe {
        pc,
        base,
        semaphore,
        provider,
        name,
        args,
    })
}

/// Decodes a note's argument specs, separated by spaces: `SIZE@OPERAND`, SIZE one of 1, 2, 4,
/// 8 (negative: signed), OPERAND a register (`%edi`), a constant (`$5`) or memory at a register
/// plus a displacement (`-8(%rbp)`). Indexed and symbolic (`sym(%rip)`) operands are refused
/// with the reason.
pub fn parse_args(text: &str) -> Result<Vec<UsdtArg>, String> {
    text.split_ascii_whitespace().map(parse_arg).collect()
}

fn parse_arg(spec: &str) -> Result<UsdtArg, String> {
    let bad = |why: &str| format!("argument {spec:?}: {why}");
    let (size, operand) = spec
        .split_once('@')
        .ok_or_else(|| bad("no size (SIZE@OPERAND)"))?;
    let (signed, width) = match size.strip_prefix('-') {
        Some(w) => (true, w),
        None => (false, size),
    };
    let size = match width {
        "1" => 1,
        "2" => 2,
        "4" => 4,
        "8" => 8,
        _ => return Err(bad("size must be 1, 2, 4 or 8 bytes")),
    };
    let mut arg = UsdtArg {
        size,
        signed: signed.into(),
        ..UsdtArg::default()
    };
    if let Some(constant) = operand.strip_prefix('$') {
        arg.kind = arg_kind::CONST;
        arg.value = parse_int(constant).ok_or_else(|| bad("constant is not an integer"))?;
    } else if let Some(name) = operand.strip_prefix('%') {
        arg.kind = arg_kind::REG;
        arg.reg = register(name).ok_or_else(|| bad("unknown register"))?;
    } else if let Some((disp, rest)) = operand.split_once('(') {
        let inner = rest
            .strip_suffix(')')
            .ok_or_else(|| bad("memory operand without ')'"))?;
        if inner.contains(',') {
            return Err(bad("indexed memory operands are not supported"));
        }
        let name = inner
            .strip_prefix('%')
            .ok_or_else(|| bad("memory operand without a base register"))?;
        arg.kind = arg_kind::MEM;
        arg.reg = register(name).ok_or_else(|| bad("unknown register"))?;
        arg.value = if disp.is_empty() {
            0
        } else {
            parse_int(disp).ok_or_else(|| {
                bad("displacement is not an integer (symbolic operands are not supported)")
            })?
        };
    } else {
        return Err(bad(
            "operand is neither %register, $constant nor disp(%register)",
        ));
    }
    Ok(arg)
}

/// A decimal or `0x` hexadecimal integer, optionally negative.
fn parse_int(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text),
    };
    let value = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()? as i64,
        None => digits.parse::<u64>().ok()? as i64,
    };
    Some(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

/// The x86-64 register named `name` (any width), as its index in `struct pt_regs` in 8-byte
/// words. High-byte registers (`%ah`) are not supported.
fn register(name: &str) -> Option<u8> {
    // pt_regs: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs flags
    // rsp ss.
    const LEGACY: [(&[&str], u8); 8] = [
        (&["rax", "eax", "ax", "al"], 10),
        (&["rbx", "ebx", "bx", "bl"], 5),
        (&["rcx", "ecx", "cx", "cl"], 11),
        (&["rdx", "edx", "dx", "dl"], 12),
        (&["rsi", "esi", "si", "sil"], 13),
        (&["rdi", "edi", "di", "dil"], 14),
        (&["rbp", "ebp", "bp", "bpl"], 4),
        (&["rsp", "esp", "sp", "spl"], 19),
    ];
    if let Some((_, index)) = LEGACY.iter().find(|(names, _)| names.contains(&name)) {
        return Some(*index);
    }
    if name == "rip" {
        return Some(16);
    }
    let number = name.strip_prefix('r')?;
    let digits = number.trim_end_matches(['d', 'w', 'b']);
    if number.len() - digits.len() > 1 {
        return None;
    }
    match digits.parse::<u8>().ok()? {
        n @ 8..=15 => Some([9, 8, 7, 6, 3, 2, 1, 0][(n - 8) as usize]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(size: u8, signed: bool, reg: u8) -> UsdtArg {
        UsdtArg {
            kind: arg_kind::REG,
            size,
            signed: signed.into(),
            reg,
            ..UsdtArg::default()
        }
    }

    #[test]
    fn decodes_registers_constants_and_memory_as_gcc_writes_them() {
        let args = parse_args("-4@%edi 8@%rsi 8@-8(%rbp) -4@$5 2@%r9w 1@16(%r12) 8@%rax").unwrap();
        assert_eq!(args[0], reg(4, true, 14));
        assert_eq!(args[1], reg(8, false, 13));
        assert_eq!(
            args[2],
            UsdtArg {
                kind: arg_kind::MEM,
                size: 8,
                reg: 4,
                value: -8,
                ..UsdtArg::default()
            }
        );
        assert_eq!(
            args[3],
            UsdtArg {
                kind: arg_kind::CONST,
                size: 4,
                signed: 1,
                value: 5,
                ..UsdtArg::default()
            }
        );
        assert_eq!(args[4], reg(2, false, 8));
        assert_eq!(
            (args[5].kind, args[5].reg, args[5].value),
            (arg_kind::MEM, 3, 16)
        );
        assert_eq!(args[6], reg(8, false, 10));
        assert_eq!(parse_args("").unwrap(), Vec::new());
    }

    #[test]
    fn every_register_width_maps_to_its_pt_regs_slot() {
        for (names, slot) in [
            (["r8", "r8d", "r8w", "r8b"], 9),
            (["r15", "r15d", "r15w", "r15b"], 0),
            (["rdi", "edi", "di", "dil"], 14),
            (["rsp", "esp", "sp", "spl"], 19),
        ] {
            for name in names {
                assert_eq!(register(name), Some(slot), "{name}");
            }
        }
        for name in ["ah", "r16", "r7", "xmm0", "r8dd", ""] {
            assert_eq!(register(name), None, "{name}");
        }
    }

    #[test]
    fn unsupported_specs_say_which_argument_and_why() {
        assert_eq!(
            parse_args("-4@%edi 3@%esi").unwrap_err(),
            "argument \"3@%esi\": size must be 1, 2, 4 or 8 bytes"
        );
        assert!(
            parse_args("8@(%rax,%rbx,8)")
                .unwrap_err()
                .contains("indexed memory operands")
        );
        assert!(
            parse_args("4@counter(%rip)")
                .unwrap_err()
                .contains("symbolic operands")
        );
        assert!(parse_args("%edi").unwrap_err().contains("no size"));
        assert!(
            parse_args("4@%xmm0")
                .unwrap_err()
                .contains("unknown register")
        );
    }

    /// A note as `<sys/sdt.h>` lays it out on x86-64.
    fn note(pc: u64, base: u64, sema: u64, text: &str) -> Vec<u8> {
        let mut desc = Vec::new();
        for a in [pc, base, sema] {
            desc.extend_from_slice(&a.to_le_bytes());
        }
        desc.extend_from_slice(text.as_bytes());
        let mut out = Vec::new();
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(b"stapsdt\0");
        out.extend_from_slice(&desc);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    #[test]
    fn reads_consecutive_notes_and_stops_at_a_truncated_one() {
        let mut bytes = note(0x1139, 0x2004, 0x4010, "app\0tick\0-4@%edi 8@%rsi\0");
        bytes.extend(note(0x1150, 0x2004, 0, "app\0start\0\0"));
        let notes: Vec<_> = parse_notes(&bytes, true).collect::<Result<_, _>>().unwrap();
        assert_eq!(notes.len(), 2);
        let first = parse_desc(notes[0].desc, true, true).unwrap();
        assert_eq!(
            (
                first.pc,
                first.base,
                first.semaphore,
                first.provider,
                first.name,
                first.args
            ),
            (0x1139, 0x2004, 0x4010, "app", "tick", "-4@%edi 8@%rsi")
        );
        let second = parse_desc(notes[1].desc, true, true).unwrap();
        assert_eq!(
            (second.name, second.args, second.semaphore),
            ("start", "", 0)
        );
        bytes.truncate(bytes.len() - 6);
        let results: Vec<_> = parse_notes(&bytes, true).collect();
        assert_eq!(results.len(), 2);
        assert!(results[1].is_err());
    }

    proptest::proptest! {
        /// What the fuzz target `usdt_note` checks, on every `cargo test`: arbitrary note
        /// sections and argument text never panic, and decoded arguments are in range.
        #[test]
        fn arbitrary_notes_and_specs_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            text in "[-@%$()0-9a-z, ]{0,40}",
        ) {
            for note in parse_notes(&bytes, true) {
                let Ok(note) = note else { break };
                let _ = parse_desc(note.desc, true, true);
                let _ = parse_desc(note.desc, false, false);
            }
            let _ = probes("fuzz", &bytes);
            if let Ok(args) = parse_args(&text) {
                for arg in args {
                    proptest::prop_assert!(matches!(arg.size, 1 | 2 | 4 | 8) && arg.reg <= 20);
                }
            }
        }
    }

    #[test]
    fn a_file_without_notes_names_the_file() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let name = exe.display().to_string();
        match probes(&name, &data) {
            Err(NoteError::NoNotes(file)) => assert_eq!(file, name),
            // A test binary linked against a libc with probes would still have none itself.
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            probes("x", b"not elf"),
            Err(NoteError::NotElf(..))
        ));
    }

    #[test]
    fn libc_probes_decode_and_land_inside_the_file() {
        // Debian's glibc ships probes (libc:setjmp, libc:memory_*...).
        let Ok(data) = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6") else {
            return;
        };
        let Ok(found) = probes("libc.so.6", &data) else {
            return;
        };
        for p in &found {
            assert!(p.offset < data.len() as u64, "{p:?}");
            assert_eq!(p.provider, "libc");
        }
        assert!(found.iter().any(|p| p.name == "setjmp" && p.args.is_ok()));
    }
}
