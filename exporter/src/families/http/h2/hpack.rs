//! HPACK (RFC 7541) decoding for an observer that may have missed part of the conversation:
//! one [`Decoder`] per connection and direction, whose dynamic table can be *incomplete*
//! (entries older than what was seen are unknown). A field that refers into the unknown part
//! is reported as unknown, never guessed.
//!
//! Why references to the entries seen since a miss can be trusted: HPACK numbers dynamic
//! entries newest first (index 62 is the last one inserted), so the `k` entries inserted
//! since the miss sit at indices 62..62+k whatever came before them. Eviction drops the oldest
//! first, so if one of those `k` had been evicted every older entry would be gone too and a
//! valid encoder could not name its index. Dropping our own oldest known entries (to bound
//! memory, or evicting by a size that is too small) is therefore always safe: it turns a
//! reference into an unknown, never into a wrong value. Keeping an entry the encoder evicted is
//! safe too: a valid encoder never refers to it. Only a new miss shifts every index by an
//! unknown count, so a miss forgets all entries.
//!
//! The Huffman code is decoded by `httlib-huffman` (docs/http.md says why that crate).

use std::{collections::VecDeque, sync::Arc};

/// A header block larger than this is not decoded (counted invalid): bounded work and memory.
pub const MAX_HEADER_BLOCK: usize = 16 * 1024;
/// Dynamic-table bytes (RFC 7541 sizes) kept per direction; older entries beyond it are
/// forgotten (their references become unknown).
pub const MAX_TABLE_BYTES: usize = 16 * 1024;
/// The table size every HTTP/2 encoder starts with (SETTINGS_HEADER_TABLE_SIZE's default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// An entry's size beyond its name and value (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;
/// String literals remembered per direction with what they decode to ([`Decoder::string`]):
/// more than the literals of one block (nginx sends 9 per response; replaced oldest first, a
/// cycle of more than this many would never be found).
const RECENT_STRINGS: usize = 32;

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Why a header block could not be decoded. Any of them leaves the table unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    Integer,
    #[error("index 0 or beyond a table known to be complete")]
    Index,
    #[error("invalid Huffman string")]
    Huffman,
}

/// One decoded field: `None` where it refers into the unknown part of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// A dynamic-table entry; the name is unknown when it was indexed into the unknown part.
/// Shared bytes: the same name and value go into the table again and again (nginx inserts its
/// `server`, `date` and `content-type` fields into a table it never refers to, on every
/// response), and a shared string is a count to raise rather than bytes to copy.
#[derive(Debug, Clone)]
struct Entry {
    name: Option<Name>,
    value: Arc<[u8]>,
}

/// A field name: from the static table, or a literal.
#[derive(Debug, Clone)]
enum Name {
    Static(&'static [u8]),
    Literal(Arc<[u8]>),
}

impl Name {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Static(name) => name,
            Self::Literal(name) => name,
        }
    }
}

impl Entry {
    /// The RFC 7541 size, or a lower bound of it when the name is unknown.
    fn size(&self) -> usize {
        self.name.as_ref().map_or(0, |n| n.bytes().len()) + self.value.len() + ENTRY_OVERHEAD
    }
}

/// A string literal as it was sent (Huffman-coded or not) and what it decodes to.
#[derive(Debug, Clone)]
struct Recent {
    sent: Box<[u8]>,
    decoded: Arc<[u8]>,
}

/// The dynamic table of one direction, as far as it is known.
#[derive(Debug, Clone)]
struct Table {
    /// Newest first: `entries[0]` is index 62.
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes (lower bounds for those with an unknown name).
    size: usize,
    /// Whether `entries` is the whole table (no older unknown entries).
    complete: bool,
    /// A size the encoder's maximum is known not to exceed, if one is known.
    upper: Option<usize>,
}

/// Decodes the header blocks of one direction of one connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    table: Table,
    /// The last string literals decoded, oldest replaced first: a peer sends the same ones in
    /// block after block (a server's name, a content type, today's date), and Huffman decoding
    /// is most of what decoding a block costs.
    recent: Vec<Recent>,
    /// Where the next literal goes in `recent` once it is full.
    recent_next: usize,
}

impl Decoder {
    /// A decoder that saw the connection from its start: the table is empty and its maximum
    /// is the protocol's default until the peer's settings or a size update say otherwise.
    pub fn at_start() -> Self {
        Self {
            table: Table {
                entries: VecDeque::new(),
                size: 0,
                complete: true,
                upper: Some(DEFAULT_TABLE_SIZE),
            },
            recent: Vec::new(),
            recent_next: 0,
        }
    }

    /// A decoder that joined mid-connection: nothing of the table is known.
    pub fn midway() -> Self {
        let mut decoder = Self::at_start();
        decoder.lose();
        decoder
    }

    /// Bytes of this direction were missed: they may have inserted entries, which shifts
    /// every index by an unknown count, so nothing of the table is known any more.
    pub fn lose(&mut self) {
        self.table.entries.clear();
        self.table.size = 0;
        self.table.complete = false;
        self.table.upper = None;
    }

    /// Whether the whole table is known (every reference can be resolved).
    pub fn is_complete(&self) -> bool {
        self.table.complete
    }

    /// Bytes the table holds (RFC 7541 sizes, lower bounds where a name is unknown).
    pub fn table_size(&self) -> usize {
        self.table.size
    }

    /// The decoding peer advertised SETTINGS_HEADER_TABLE_SIZE: the encoder may grow its
    /// table up to it (with a size update), so a known bound rises to it.
    pub fn allow_table_size(&mut self, size: u32) {
        if let Some(upper) = &mut self.table.upper {
            *upper = (*upper).max(size as usize);
        }
    }

    /// Decodes one complete header block, handing each field to `field`. On error the fields
    /// already handed over must be discarded, and the table is unknown from then on.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(Field<'_>),
    ) -> Result<(), HpackError> {
        let result = self.decode_fields(block, &mut field);
        if result.is_err() {
            self.lose();
        }
        result
    }

    fn decode_fields(
        &mut self,
        mut rest: &[u8],
        field: &mut impl FnMut(Field<'_>),
    ) -> Result<(), HpackError> {
        while let Some(&first) = rest.first() {
            if first & 0x80 != 0 {
                let index = integer(&mut rest, 7)?;
                field(self.lookup(index)?);
            } else if first & 0xc0 == 0x40 {
                self.literal(&mut rest, 6, true, field)?;
            } else if first & 0xe0 == 0x20 {
                let size = integer(&mut rest, 5)?;
                self.table.resize(size);
            } else {
                // Without indexing (0000) or never indexed (0001): 4-bit name index.
                self.literal(&mut rest, 4, false, field)?;
            }
        }
        Ok(())
    }

    /// A literal field: its name indexed (or a literal string), its value a literal string.
    fn literal(
        &mut self,
        rest: &mut &[u8],
        prefix: u8,
        insert: bool,
        field: &mut impl FnMut(Field<'_>),
    ) -> Result<(), HpackError> {
        let index = integer(rest, prefix)?;
        let name = if index == 0 {
            Some(Name::Literal(self.string(rest)?))
        } else {
            self.name_at(index)?
        };
        let value = self.string(rest)?;
        field(Field {
            name: name.as_ref().map(Name::bytes),
            value: Some(&value),
        });
        if insert {
            self.table.insert(Entry { name, value });
        }
        Ok(())
    }

    /// A string literal (RFC 7541 §5.2), Huffman-decoded when flagged, advancing `rest`: one
    /// of the recent ones when it was sent the same way before.
    fn string(&mut self, rest: &mut &[u8]) -> Result<Arc<[u8]>, HpackError> {
        let start = *rest;
        skip_string(rest).ok_or(HpackError::Truncated)?;
        let sent = &start[..start.len() - rest.len()];
        if let Some(recent) = self.recent.iter().find(|r| *r.sent == *sent) {
            return Ok(recent.decoded.clone());
        }
        let decoded: Arc<[u8]> = string(&mut &sent[..])?.into();
        let recent = Recent {
            sent: sent.into(),
            decoded: decoded.clone(),
        };
        if self.recent.len() < RECENT_STRINGS {
            self.recent.push(recent);
        } else {
            self.recent[self.recent_next] = recent;
            self.recent_next = (self.recent_next + 1) % RECENT_STRINGS;
        }
        Ok(decoded)
    }

    /// The name at `index`, as an entry keeps it: `None` when it is unknown.
    fn name_at(&self, index: usize) -> Result<Option<Name>, HpackError> {
        if (1..=61).contains(&index) {
            return Ok(Some(Name::Static(STATIC_TABLE[index - 1].0.as_bytes())));
        }
        if let Some(entry) = index
            .checked_sub(62)
            .and_then(|i| self.table.entries.get(i))
        {
            return Ok(entry.name.clone());
        }
        // Index 0 or beyond the table: an error or an unknown name, as `lookup` says.
        self.lookup(index).map(|_| None)
    }

    /// The name and value at `index`: static, dynamic and known, or unknown (`None`s).
    fn lookup(&self, index: usize) -> Result<Field<'_>, HpackError> {
        match index {
            0 => Err(HpackError::Index),
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok(Field {
                    name: Some(name.as_bytes()),
                    value: Some(value.as_bytes()),
                })
            }
            _ => match self.table.entries.get(index - 62) {
                Some(entry) => Ok(Field {
                    name: entry.name.as_ref().map(Name::bytes),
                    value: Some(&entry.value),
                }),
                None if self.table.complete => Err(HpackError::Index),
                None => Ok(Field {
                    name: None,
                    value: None,
                }),
            },
        }
    }
}

impl Table {
    /// A dynamic table size update: the encoder's maximum is now exactly `size`.
    fn resize(&mut self, size: usize) {
        self.upper = Some(size);
        self.evict_to(size);
        if size < ENTRY_OVERHEAD {
            // No entry fits: the table is known to be empty, whatever it held.
            self.entries.clear();
            self.size = 0;
            self.complete = true;
        }
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if let Some(upper) = self.upper
            && size > upper
        {
            // RFC 7541 §4.4: an entry larger than the table empties it and is not added.
            // `size` is exact or a lower bound, `upper` an upper bound: this holds for sure.
            self.entries.clear();
            self.size = 0;
            self.complete = true;
            return;
        }
        self.entries.push_front(entry);
        self.size += size;
        if let Some(upper) = self.upper {
            self.evict_to(upper);
        }
        if self.size > MAX_TABLE_BYTES {
            // Our own bound: forgetting the oldest entries only makes them unknown.
            self.evict_to(MAX_TABLE_BYTES);
            self.complete = false;
        }
    }

    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            let Some(old) = self.entries.pop_back() else {
                break;
            };
            self.size -= old.size();
        }
    }
}

/// What a header block is, by its pseudo-header fields (RFC 9113 §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `:method`, `:path`, `:scheme`, `:authority` or `:protocol`.
    Request,
    /// `:status`.
    Response,
}

/// What the block is, read without a table (a connection joined midway): from the first field
/// named by a static index or a literal name that is a pseudo-header. Encoders name them that
/// way (the static table holds them all), though a value seen before may be a reference into
/// the unknown dynamic table: those fields are passed over. `None`: no field said.
pub fn head_of(mut rest: &[u8]) -> Option<Head> {
    while let Some(&first) = rest.first() {
        let (index, literal) = if first & 0x80 != 0 {
            (integer(&mut rest, 7).ok()?, false)
        } else if first & 0xc0 == 0x40 {
            (integer(&mut rest, 6).ok()?, true)
        } else if first & 0xe0 == 0x20 {
            integer(&mut rest, 5).ok()?;
            continue;
        } else {
            (integer(&mut rest, 4).ok()?, true)
        };
        let head = match index {
            0 if literal => {
                let name = string(&mut rest).ok()?;
                match name.as_slice() {
                    b":status" => Some(Head::Response),
                    [b':', ..] => Some(Head::Request),
                    _ => None,
                }
            }
            0 => return None,
            1..=7 => Some(Head::Request),
            8..=14 => Some(Head::Response),
            _ => None,
        };
        if head.is_some() {
            return head;
        }
        if literal {
            skip_string(&mut rest)?;
        }
    }
    None
}

/// Passes over a string literal without decoding it.
fn skip_string(rest: &mut &[u8]) -> Option<()> {
    let len = integer(rest, 7).ok()?;
    *rest = rest.get(len..)?;
    Some(())
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1), advancing `rest` past it. Values
/// beyond 2^28 are refused: no length or index of a bounded block is that large.
fn integer(rest: &mut &[u8], prefix: u8) -> Result<usize, HpackError> {
    let (&first, mut tail) = rest.split_first().ok_or(HpackError::Truncated)?;
    let mask = (1u16 << prefix) as usize - 1;
    let mut value = first as usize & mask;
    if value == mask {
        let mut shift = 0;
        loop {
            let (&byte, next) = tail.split_first().ok_or(HpackError::Truncated)?;
            tail = next;
            if shift > 21 {
                return Err(HpackError::Integer);
            }
            value += ((byte & 0x7f) as usize) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    *rest = tail;
    Ok(value)
}

/// A string literal (RFC 7541 §5.2), Huffman-decoded when flagged, advancing `rest`.
fn string(rest: &mut &[u8]) -> Result<Vec<u8>, HpackError> {
    let huffman = rest.first().is_some_and(|b| b & 0x80 != 0);
    let len = integer(rest, 7)?;
    if len > rest.len() {
        return Err(HpackError::Truncated);
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    if !huffman {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::with_capacity(len * 8 / 5);
    httlib_huffman::decode(bytes, &mut out, httlib_huffman::DecoderSpeed::FourBits)
        .map_err(|_| HpackError::Huffman)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
