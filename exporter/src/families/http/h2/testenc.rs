//! A reference HPACK encoder and frame builder for the tests: it keeps its own dynamic table
//! (RFC 7541 eviction) and names what it can by index, so decoded blocks exercise indexed
//! fields, indexed names, literals, Huffman strings and size updates.

use std::collections::VecDeque;

use super::frame;

/// How the encoder writes one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Indexed when the whole field is in a table, else a literal added to the table.
    Index,
    /// A literal not added to the table (name indexed when possible).
    NoIndex,
}

#[derive(Debug, Clone)]
pub struct Encoder {
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    max: usize,
    pub huffman: bool,
}

const STATIC: [(&str, &str); 14] = [
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
];

impl Default for Encoder {
    fn default() -> Self {
        Self {
            table: VecDeque::new(),
            max: 4096,
            huffman: false,
        }
    }
}

fn size(entry: &(Vec<u8>, Vec<u8>)) -> usize {
    entry.0.len() + entry.1.len() + 32
}

impl Encoder {
    /// Emits a dynamic table size update.
    pub fn resize(&mut self, max: usize, out: &mut Vec<u8>) {
        self.max = max;
        self.evict();
        integer(max, 5, 0x20, out);
    }

    fn evict(&mut self) {
        while self.table.iter().map(size).sum::<usize>() > self.max {
            self.table.pop_back();
        }
    }

    fn find(&self, name: &[u8], value: &[u8]) -> (Option<usize>, Option<usize>) {
        let statics = STATIC
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .enumerate()
            .map(|(i, e)| (i + 1, e));
        let dynamic = self
            .table
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .enumerate()
            .map(|(i, e)| (i + 62, e));
        let mut name_at = None;
        for (index, (n, v)) in statics.chain(dynamic) {
            if n == name {
                if v == value {
                    return (Some(index), Some(index));
                }
                name_at = name_at.or(Some(index));
            }
        }
        (None, name_at)
    }

    pub fn field(&mut self, name: &str, value: &str, mode: Mode, out: &mut Vec<u8>) {
        let (name, value) = (name.as_bytes(), value.as_bytes());
        let (whole, name_at) = self.find(name, value);
        match (mode, whole) {
            (Mode::Index, Some(index)) => integer(index, 7, 0x80, out),
            (Mode::Index, None) => {
                integer(name_at.unwrap_or(0), 6, 0x40, out);
                if name_at.is_none() {
                    self.string(name, out);
                }
                self.string(value, out);
                let entry = (name.to_vec(), value.to_vec());
                if size(&entry) > self.max {
                    self.table.clear();
                } else {
                    self.table.push_front(entry);
                    self.evict();
                }
            }
            (Mode::NoIndex, _) => {
                integer(name_at.unwrap_or(0), 4, 0x00, out);
                if name_at.is_none() {
                    self.string(name, out);
                }
                self.string(value, out);
            }
        }
    }

    /// A whole block of fields, each indexed where possible.
    pub fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            self.field(name, value, Mode::Index, &mut out);
        }
        out
    }

    fn string(&self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.huffman {
            let mut coded = Vec::new();
            httlib_huffman::encode(bytes, &mut coded).expect("huffman encode");
            integer(coded.len(), 7, 0x80, out);
            out.extend(coded);
        } else {
            integer(bytes.len(), 7, 0, out);
            out.extend(bytes);
        }
    }
}

/// An HPACK integer (RFC 7541 §5.1) with its first byte's high bits set to `flags`.
pub fn integer(mut value: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

pub fn headers(stream: u32, end_stream: bool, block: &[u8]) -> Vec<u8> {
    let flags = frame::END_HEADERS | if end_stream { frame::END_STREAM } else { 0 };
    frame(1, flags, stream, block)
}

pub fn data(stream: u32, end_stream: bool, payload: &[u8]) -> Vec<u8> {
    frame(
        0,
        if end_stream { frame::END_STREAM } else { 0 },
        stream,
        payload,
    )
}

pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = pairs
        .iter()
        .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
        .collect();
    frame(4, 0, 0, &payload)
}

/// What the kernel's frame walk sends of each chunk (`IO_H2` records): the frames of each
/// direction, past the client preface, with their payloads unless elided (DATA, or too large),
/// each byte in the record of the chunk it came in. Chunks that carried only elided payload
/// send nothing.
pub fn walked(chunks: &[(super::Side, Vec<u8>)]) -> Vec<(super::Side, Vec<u8>, u64)> {
    let mut kept: Vec<Vec<u8>> = vec![Vec::new(); chunks.len()];
    for side in [super::Side::Client, super::Side::Server] {
        let bytes: Vec<(usize, u8)> = chunks
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| *s == side)
            .flat_map(|(i, (_, b))| b.iter().map(move |x| (i, *x)))
            .collect();
        let plain: Vec<u8> = bytes.iter().map(|b| b.1).collect();
        let mut at = if plain.starts_with(super::PREFACE) {
            24
        } else {
            0
        };
        while at + super::frame::HEADER_LEN <= bytes.len() {
            let header = super::FrameHeader::parse(plain[at..at + 9].try_into().unwrap());
            let elided = periscope_common::http::h2_payload_elided(plain[at + 3], header.len);
            let end = (at + 9 + header.len as usize).min(bytes.len());
            let copied = if elided { at + 9 } else { end };
            for &(chunk, byte) in &bytes[at..copied] {
                kept[chunk].push(byte);
            }
            at = end;
        }
    }
    chunks
        .iter()
        .zip(kept)
        .enumerate()
        .filter(|(_, (_, k))| !k.is_empty())
        .map(|(i, ((side, _), k))| (*side, k, (i as u64 + 1) * 100))
        .collect()
}
