//! Kernel plumbing shared by every family: attach mechanisms and what the kernel allows, BTF
//! offsets, tracefs formats, program attach, map helpers, privileges. Nothing here names a
//! family.

pub mod btf;
pub mod elf;
pub mod maps;
pub mod mechanism;
pub mod privileges;
pub mod programs;
pub mod tracefs;

use tracefs::TracefsError;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("{0}")]
    Mechanism(String),
    #[error("loading eBPF program {program}: {source}")]
    Program {
        program: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {map}: {reason}")]
    Map { map: &'static str, reason: String },
}

impl ProbeError {
    /// A map the family needs is not in the eBPF object (a build mismatch, never the user's).
    pub fn missing_map(map: &'static str) -> Self {
        Self::Map {
            map,
            reason: "missing from the eBPF object".into(),
        }
    }

    /// A program the family needs is not in the eBPF object.
    pub fn missing_program(program: &'static str) -> Self {
        Self::Map {
            map: program,
            reason: "program missing from the eBPF object".into(),
        }
    }
}
