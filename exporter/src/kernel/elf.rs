//! ELF symbols as uprobes need them: a symbol's address turned into the offset in its file
//! that `perf_event_open`'s uprobe takes (address - section address + section file offset).

use object::{Object, ObjectSection, ObjectSymbol};

/// The file offset of a defined `symbol` of `elf`, or `None` when it has no section with file
/// data or its address lies outside its section.
pub fn file_offset<'data, O: Object<'data>>(elf: &O, symbol: &O::Symbol<'_>) -> Option<u64> {
    let section = elf.section_by_index(symbol.section_index()?).ok()?;
    let (section_offset, _) = section.file_range()?;
    Some(symbol.address().checked_sub(section.address())? + section_offset)
}
