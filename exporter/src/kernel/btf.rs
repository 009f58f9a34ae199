//! Struct member offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`), for programs
//! that read kernel structs (TCP byte counters, the block raw tracepoints' `struct request`,
//! `pt_regs` for the raw syscall programs): passed as load-time globals, like the tracefs field
//! offsets, never hard-coded.
//!
//! The lookups walk the raw BTF bytes (format: `Documentation/bpf/btf.rst`) with one `u32` index
//! entry per type. A general BTF library builds a typed model of all ~150k kernel types first;
//! that took ~38 MB of peak memory per family at startup, more than the daemon's whole budget
//! (design: < 30 MB), for the dozen offsets Periscope needs.

const MAGIC: u16 = 0xeb9f;
const HEADER: usize = 24;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_TYPE_TAG: u32 = 18;
/// Anonymous structs/unions nest rarely more than twice; a bound keeps a corrupt blob finite.
const MAX_NESTING: u32 = 8;

/// The kernel's BTF: its bytes and where each type starts.
pub struct KernelBtf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Byte position of type id `i + 1` (ids start at 1; 0 is `void`).
    types: Vec<u32>,
}

/// Sizes only: the bytes are megabytes.
impl std::fmt::Debug for KernelBtf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelBtf")
            .field("bytes", &self.data.len())
            .field("types", &self.types.len())
            .finish()
    }
}

impl KernelBtf {
    pub fn load() -> Result<Self, String> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|e| format!("/sys/kernel/btf/vmlinux: {e} (kernel without BTF)"))?;
        Self::parse(data).map_err(|e| format!("BTF: {e}"))
    }

    /// Indexes a BTF blob (native endianness, as the kernel exposes it).
    pub fn parse(data: Vec<u8>) -> Result<Self, String> {
        let word = |at: usize| read_u32(&data, at).ok_or("truncated header");
        if data.len() < HEADER || u16::from_ne_bytes([data[0], data[1]]) != MAGIC {
            return Err("not a BTF blob (bad magic)".into());
        }
        let header_len = word(4)? as usize;
        let section = |offset: usize, len: usize| -> Result<std::ops::Range<usize>, String> {
            let start = header_len + word(offset)? as usize;
            let end = start + word(len)? as usize;
            if end > data.len() {
                return Err("a section runs past the end".into());
            }
            Ok(start..end)
        };
        let type_section = section(8, 12)?;
        let strings = section(16, 20)?;
        let mut types = Vec::new();
        let mut at = type_section.start;
        while at < type_section.end {
            types.push(at as u32);
            at += type_len(&data, at).ok_or("a type runs past the end")?;
        }
        if at != type_section.end {
            return Err("the last type runs past the type section".into());
        }
        Ok(Self {
            data,
            strings,
            types,
        })
    }

    /// Byte offset of `member` in `struct name`, looking into anonymous struct/union members
    /// (as `pt_regs.cs`, inside a union since FRED).
    pub fn offset(&self, name: &str, member: &str) -> Result<u32, String> {
        let id = self
            .struct_named(name)
            .ok_or_else(|| format!("BTF has no struct {name}"))?;
        match self.member_bits(id, member, 0) {
            Some((bits, false)) if bits % 8 == 0 => Ok(bits / 8),
            Some((bits, _)) => Err(format!("{name}.{member}: a bit field (bit {bits})")),
            None => Err(format!("BTF struct {name} has no member {member}")),
        }
    }

    /// The globals of the eBPF `sock` module, which every program on a kernel function reads a
    /// socket with: offsets in `struct sock_common` of the port pair, family, state and peer
    /// addresses.
    pub fn sock_offsets(&self) -> Result<Vec<(&'static str, u32)>, String> {
        Ok(vec![
            ("SK_PORTPAIR", self.offset("sock_common", "skc_portpair")?),
            ("SK_FAMILY", self.offset("sock_common", "skc_family")?),
            ("SK_STATE", self.offset("sock_common", "skc_state")?),
            ("SK_DADDR", self.offset("sock_common", "skc_daddr")?),
            ("SK_V6_DADDR", self.offset("sock_common", "skc_v6_daddr")?),
        ])
    }

    /// The parameter names of kernel function `name` (from its `FUNC_PROTO`), in order: what an
    /// `fexit` program's context holds before the return value. `None` when BTF has no such
    /// function (renamed, removed, or inlined everywhere).
    pub fn function_params(&self, name: &str) -> Option<Vec<String>> {
        let func = (1..=self.types.len() as u32).find(|&id| {
            let (kind, name_off) = self.kind_and_name(id);
            kind == KIND_FUNC && self.string(name_off) == Some(name.as_bytes())
        })?;
        let proto = read_u32(&self.data, self.position(func)? + 8)?;
        let at = self.position(proto)?;
        let (kind, _) = self.kind_and_name(proto);
        if kind != KIND_FUNC_PROTO {
            return None;
        }
        let info = read_u32(&self.data, at + 4)?;
        (0..vlen(info))
            .map(|i| {
                let name_off = read_u32(&self.data, at + 12 + 8 * i)?;
                Some(String::from_utf8_lossy(self.string(name_off)?).into_owned())
            })
            .collect()
    }

    /// The first struct (not a forward declaration) called `name`.
    fn struct_named(&self, name: &str) -> Option<u32> {
        (1..=self.types.len() as u32).find(|&id| {
            let (kind, name_off) = self.kind_and_name(id);
            kind == KIND_STRUCT && self.string(name_off) == Some(name.as_bytes())
        })
    }

    /// Bit offset of `member` inside composite type `id` (searched through anonymous members)
    /// and whether it is a bit field.
    fn member_bits(&self, id: u32, member: &str, depth: u32) -> Option<(u32, bool)> {
        let at = self.position(id)?;
        let info = read_u32(&self.data, at + 4)?;
        let bitfields = info >> 31 == 1;
        for i in 0..vlen(info) {
            let m = at + 12 + 12 * i;
            let name_off = read_u32(&self.data, m)?;
            let ty = read_u32(&self.data, m + 4)?;
            let raw = read_u32(&self.data, m + 8)?;
            // With kind_flag, the top 8 bits hold a bit field's size.
            let (bits, field_size) = if bitfields {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            if name_off == 0 {
                if depth < MAX_NESTING
                    && let Some(inner) = self.composite(ty)
                    && let Some((found, bitfield)) = self.member_bits(inner, member, depth + 1)
                {
                    return Some((bits + found, bitfield));
                }
            } else if self.string(name_off) == Some(member.as_bytes()) {
                return Some((bits, field_size != 0));
            }
        }
        None
    }

    /// `id` itself if it is a struct or union, through typedefs and qualifiers.
    fn composite(&self, mut id: u32) -> Option<u32> {
        for _ in 0..MAX_NESTING {
            let (kind, _) = self.kind_and_name(id);
            match kind {
                KIND_STRUCT | KIND_UNION => return Some(id),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = read_u32(&self.data, self.position(id)? + 8)?;
                }
                _ => return None,
            }
        }
        None
    }

    fn position(&self, id: u32) -> Option<usize> {
        let index = id.checked_sub(1)? as usize;
        self.types.get(index).map(|&at| at as usize)
    }

    /// (kind, name offset) of type `id`; kind 0 for `void` or an unknown id.
    fn kind_and_name(&self, id: u32) -> (u32, u32) {
        let Some(at) = self.position(id) else {
            return (0, 0);
        };
        let name_off = read_u32(&self.data, at).unwrap_or(0);
        let info = read_u32(&self.data, at + 4).unwrap_or(0);
        ((info >> 24) & 0x1f, name_off)
    }

    /// The NUL-terminated string at `offset` of the string section.
    fn string(&self, offset: u32) -> Option<&[u8]> {
        let start = self.strings.start + offset as usize;
        let rest = self.data.get(start..self.strings.end)?;
        rest.iter().position(|&b| b == 0).map(|end| &rest[..end])
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at + 4)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

fn vlen(info: u32) -> usize {
    (info & 0xffff) as usize
}

/// Bytes taken by the type at `at`: the 12-byte `struct btf_type` and what its kind appends.
fn type_len(data: &[u8], at: usize) -> Option<usize> {
    let info = read_u32(data, at + 4)?;
    let n = vlen(info);
    let extra = match (info >> 24) & 0x1f {
        1 | 14 | 17 => 4,          // INT encoding, VAR linkage, DECL_TAG component
        3 => 12,                   // ARRAY
        4 | 5 | 15 | 19 => 12 * n, // STRUCT/UNION members, DATASEC vars, ENUM64 values
        6 | 13 => 8 * n,           // ENUM values, FUNC_PROTO params
        2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
        _ => return None,
    };
    let end = at + 12 + extra;
    (end <= data.len()).then_some(12 + extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob built by hand: `struct outer { int a; union { long b; int c; }; int d:3; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0c\0int\0d\0long\0";
        let s = |name: &str| {
            let at = strings
                .windows(name.len() + 2)
                .position(|w| {
                    w[0] == 0 && &w[1..=name.len()] == name.as_bytes() && w[name.len() + 1] == 0
                })
                .unwrap();
            (at + 1) as u32
        };
        let mut types: Vec<u32> = Vec::new();
        // 1: int (INT, size 4, encoding word)
        types.extend([s("int"), 1 << 24, 4, 32]);
        // 2: long
        types.extend([s("long"), 1 << 24, 8, 64]);
        // 3: anonymous union { long b; int c; }
        types.extend([0, (5 << 24) | 2, 8, s("b"), 2, 0, s("c"), 1, 0]);
        // 4: struct outer, kind_flag (bit fields): a at 0, the union at 64, d:3 at 128
        types.extend([s("outer"), (1 << 31) | (4 << 24) | 3, 24]);
        types.extend([s("a"), 1, 0, 0, 3, 64, s("d"), 1, (3 << 24) | 128]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = Vec::new();
        out.extend(MAGIC.to_ne_bytes());
        out.extend([1, 0]);
        for word in [
            HEADER as u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(word.to_ne_bytes());
        }
        out.extend(type_bytes);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_members_directly_and_inside_anonymous_unions() {
        let btf = KernelBtf::parse(blob()).unwrap();
        assert_eq!(btf.offset("outer", "a"), Ok(0));
        assert_eq!(btf.offset("outer", "b"), Ok(8));
        assert_eq!(btf.offset("outer", "c"), Ok(8));
        assert_eq!(
            btf.offset("outer", "e"),
            Err("BTF struct outer has no member e".into())
        );
        assert_eq!(
            btf.offset("inner", "a"),
            Err("BTF has no struct inner".into())
        );
    }

    /// This kernel's `tcp_sendmsg` and `tcp_recvmsg`, as the `fentry` HTTP programs expect them.
    #[test]
    fn function_parameters_of_this_kernel() {
        let btf = KernelBtf::load().unwrap();
        assert_eq!(
            btf.function_params("tcp_sendmsg"),
            Some(vec!["sk".into(), "msg".into(), "size".into()])
        );
        let recv = btf.function_params("tcp_recvmsg").unwrap();
        assert_eq!(recv[0], "sk");
        assert!(recv.iter().any(|p| p == "flags"), "{recv:?}");
        assert_eq!(btf.function_params("no_such_function_here"), None);
    }

    #[test]
    fn a_bit_field_is_refused() {
        let btf = KernelBtf::parse(blob()).unwrap();
        assert!(btf.offset("outer", "d").unwrap_err().contains("bit field"));
    }

    #[test]
    fn truncated_or_foreign_bytes_are_errors_not_panics() {
        let whole = blob();
        for len in 0..whole.len() {
            let _ = KernelBtf::parse(whole[..len].to_vec());
        }
        assert!(KernelBtf::parse(whole[..whole.len() - 3].to_vec()).is_err());
        assert!(KernelBtf::parse(vec![0; 64]).is_err());
    }

    /// The running kernel's BTF, against the general-purpose btfparse crate, for every member
    /// Periscope reads.
    #[test]
    fn agrees_with_btfparse_on_this_kernel() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            panic!("/sys/kernel/btf/vmlinux is missing: Periscope's test machines have BTF");
        };
        let ours = KernelBtf::parse(data.clone()).unwrap();
        let theirs = btfparse::TypeInformation::new(&reference::Bytes(data)).unwrap();
        for (name, member) in [
            ("pt_regs", "di"),
            ("pt_regs", "si"),
            ("pt_regs", "dx"),
            ("pt_regs", "cs"),
            ("pt_regs", "orig_ax"),
            ("request", "q"),
            ("request", "cmd_flags"),
            ("request", "__data_len"),
            ("request_queue", "disk"),
            ("gendisk", "major"),
            ("gendisk", "first_minor"),
            ("task_struct", "pid"),
            ("tcp_sock", "bytes_acked"),
            ("tcp_sock", "bytes_received"),
            ("sock_common", "skc_portpair"),
            ("sock_common", "skc_family"),
            ("sock_common", "skc_state"),
            ("sock_common", "skc_daddr"),
            ("sock_common", "skc_v6_daddr"),
        ] {
            let id = theirs.id_of(name).unwrap();
            let Ok((_, btfparse::Offset::ByteOffset(expected))) = theirs.offset_of(id, member)
            else {
                panic!("btfparse: no byte offset for {name}.{member}");
            };
            assert_eq!(ours.offset(name, member), Ok(expected), "{name}.{member}");
        }
    }

    mod reference {
        pub struct Bytes(pub Vec<u8>);

        impl btfparse::Readable for Bytes {
            fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
                let start = offset as usize;
                match self.0.get(start..start + buffer.len()) {
                    Some(bytes) => {
                        buffer.copy_from_slice(bytes);
                        Ok(())
                    }
                    None => Err(btfparse::Error::new(
                        btfparse::ErrorKind::EOF,
                        "past the end",
                    )),
                }
            }
        }
    }
}
