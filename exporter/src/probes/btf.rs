//! Struct member offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`), for programs
//! that read kernel structs (TCP byte counters, the block raw tracepoints' `struct request`):
//! passed as load-time globals, like the tracefs field offsets, never hard-coded.

/// The kernel's BTF, parsed.
pub struct KernelBtf(btfparse::TypeInformation);

impl KernelBtf {
    pub fn load() -> Result<Self, String> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|e| format!("/sys/kernel/btf/vmlinux: {e} (kernel without BTF)"))?;
        btfparse::TypeInformation::new(&Bytes(data))
            .map(Self)
            .map_err(|e| format!("BTF: {e:?}"))
    }

    /// Byte offset of `member` in `struct name` (a nested path such as `a.b` is not needed).
    pub fn offset(&self, name: &str, member: &str) -> Result<u32, String> {
        let id = self
            .0
            .id_of(name)
            .ok_or_else(|| format!("BTF has no struct {name}"))?;
        match self.0.offset_of(id, member) {
            Ok((_, btfparse::Offset::ByteOffset(offset))) => Ok(offset),
            other => Err(format!("{name}.{member}: {other:?}")),
        }
    }
}

/// A BTF blob in memory, for btfparse.
struct Bytes(Vec<u8>);

impl btfparse::Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(buffer.len());
        match self.0.get(start..end) {
            Some(bytes) => {
                buffer.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::EOF,
                "read past the end of the BTF data",
            )),
        }
    }
}
