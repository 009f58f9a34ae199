//! tracefs: where tracepoints are described. Periscope reads each tracepoint's `format` file to
//! learn the field offsets of this kernel (never hard-coded) and mounts tracefs when a fresh
//! machine has not.

use std::path::{Path, PathBuf};

const MOUNT_POINT: &str = "/sys/kernel/tracing";
const LEGACY_MOUNT_POINT: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at {MOUNT_POINT} failed: {error}; \
         mount it yourself with `mount -t tracefs tracefs {MOUNT_POINT}` (needs CAP_SYS_ADMIN), \
         or run Periscope with CAP_SYS_ADMIN once"
    )]
    Mount { error: std::io::Error },
    #[error("tracepoint {category}:{name} does not exist on this kernel ({path}: {error})")]
    MissingTracepoint {
        category: String,
        name: String,
        path: String,
        error: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field {field:?} on this kernel")]
    MissingField { tracepoint: String, field: String },
    #[error("tracepoint {tracepoint}: field {field:?} is {actual} bytes wide, expected {expected}")]
    FieldSize {
        tracepoint: String,
        field: String,
        actual: u32,
        expected: u32,
    },
}

#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds a mounted tracefs, mounting it at /sys/kernel/tracing when none is.
    pub fn locate_or_mount() -> Result<Self, TracefsError> {
        if let Some(found) = Self::locate() {
            return Ok(found);
        }
        mount_tracefs().map_err(|error| TracefsError::Mount { error })?;
        tracing::info!(path = MOUNT_POINT, "mounted tracefs");
        Ok(Self {
            root: MOUNT_POINT.into(),
        })
    }

    /// A mounted tracefs, if there is one.
    pub fn locate() -> Option<Self> {
        [MOUNT_POINT, LEGACY_MOUNT_POINT]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("events").is_dir())
            .map(|root| Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parsed `format` file of `category:name`.
    pub fn format(&self, category: &str, name: &str) -> Result<TracepointFormat, TracefsError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text =
            std::fs::read_to_string(&path).map_err(|error| TracefsError::MissingTracepoint {
                category: category.into(),
                name: name.into(),
                path: path.display().to_string(),
                error,
            })?;
        Ok(TracepointFormat::parse(
            &format!("{category}:{name}"),
            &text,
        ))
    }
}

fn mount_tracefs() -> std::io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in constant");
    let (source, target, fstype) = (c("tracefs"), c(MOUNT_POINT), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint's record, as its format file lists them.
#[derive(Debug, Clone)]
pub struct TracepointFormat {
    tracepoint: String,
    pub fields: Vec<Field>,
}

impl TracepointFormat {
    /// Parses lines like `field:unsigned int bytes; offset:28; size:4; signed:0;`.
    pub fn parse(tracepoint: &str, text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.trim().split(';').map(str::trim);
                let decl = parts.next()?.strip_prefix("field:")?;
                let mut offset = None;
                let mut size = None;
                for part in parts {
                    if let Some(v) = part.strip_prefix("offset:") {
                        offset = v.parse().ok();
                    } else if let Some(v) = part.strip_prefix("size:") {
                        size = v.parse().ok();
                    }
                }
                // The name is the last word of the declaration, without any array suffix.
                let name = decl
                    .split_whitespace()
                    .last()?
                    .split('[')
                    .next()?
                    .to_string();
                Some(Field {
                    name,
                    offset: offset?,
                    size: size?,
                })
            })
            .collect();
        Self {
            tracepoint: tracepoint.to_string(),
            fields,
        }
    }

    /// The field called `name`, if this kernel's tracepoint has one.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Offset of `field`, checking that it is `size` bytes wide (0: any size).
    pub fn offset(&self, field: &str, size: u32) -> Result<u32, TracefsError> {
        let found = self
            .fields
            .iter()
            .find(|f| f.name == field)
            .ok_or_else(|| TracefsError::MissingField {
                tracepoint: self.tracepoint.clone(),
                field: field.into(),
            })?;
        if size != 0 && found.size != size {
            return Err(TracefsError::FieldSize {
                tracepoint: self.tracepoint.clone(),
                field: field.into(),
                actual: found.size,
                expected: size,
            });
        }
        Ok(found.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK_RQ_ISSUE: &str = "name: block_rq_issue
ID: 2104
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int bytes;\toffset:28;\tsize:4;\tsigned:0;
\tfield:char rwbs[10];\toffset:34;\tsize:10;\tsigned:0;
\tfield:__data_loc char[] cmd;\toffset:60;\tsize:4;\tsigned:0;

print fmt: \"%d,%d %s %u (%s) %llu + %u %s [%s]\", ...
";

    #[test]
    fn parses_offsets_and_sizes() {
        let f = TracepointFormat::parse("block:block_rq_issue", BLOCK_RQ_ISSUE);
        assert_eq!(f.offset("dev", 4).unwrap(), 8);
        assert_eq!(f.offset("sector", 8).unwrap(), 16);
        assert_eq!(f.offset("rwbs", 0).unwrap(), 34);
        assert_eq!(f.offset("cmd", 4).unwrap(), 60);
    }

    #[test]
    fn missing_and_mis_sized_fields_are_errors() {
        let f = TracepointFormat::parse("block:block_rq_issue", BLOCK_RQ_ISSUE);
        assert_eq!(
            f.offset("error", 4).unwrap_err().to_string(),
            "tracepoint block:block_rq_issue has no field \"error\" on this kernel"
        );
        assert_eq!(
            f.offset("dev", 8).unwrap_err().to_string(),
            "tracepoint block:block_rq_issue: field \"dev\" is 4 bytes wide, expected 8"
        );
    }

    #[test]
    fn reads_this_kernels_format_files() {
        // The real kernel's files (`make test` mounts tracefs first).
        let tracefs = Tracefs::locate().expect("tracefs is mounted");
        let f = tracefs.format("sched", "sched_switch").unwrap();
        assert!(f.offset("prev_state", 8).is_ok());
        assert!(f.offset("next_pid", 4).is_ok());
    }
}
