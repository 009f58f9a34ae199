//! HTTP/2 (RFC 9113) as an observer sees it: one [`Connection`] per TCP (or TLS) connection
//! turns each direction's bytes into frames ([`frame`]), decodes header blocks with a
//! dynamic table per direction ([`hpack`]), and follows client-initiated streams into one
//! [`Exchange`] each ([`stream`]).
//!
//! Pure and below the tracker: it is fed the kernel's frame walk ([`Connection::on_walked`]:
//! every frame header, and every payload but DATA's), raw transfers
//! ([`Connection::on_transfer`]: the bytes of a read or write, of which only the first may be
//! captured; what the kernel sends once a walk has lost its place, after
//! [`Connection::on_lost`]), or frames cut by someone else ([`Connection::on_frame`]).

pub mod frame;
pub mod hpack;
pub mod stream;

pub use frame::{FrameHeader, PREFACE};
pub use stream::{End, Exchange, Headers, Outcome, Side, Value};

use frame::{Event, Framer, Kind, Walked};
use hpack::{Decoder, MAX_HEADER_BLOCK};
use stream::Streams;

/// Who sent the HEADERS frame that a walk joined midway starts with (the kernel opens one at a
/// transfer that starts that way on a connection it saw no start of): its pseudo-headers say
/// a request (the client) or a response (the server). `None`: not a HEADERS frame, or its
/// block does not say.
pub fn midway_sender(walked: &[u8]) -> Option<Side> {
    let header = FrameHeader::parse(walked.first_chunk::<{ frame::HEADER_LEN }>()?);
    if header.kind != Kind::Headers {
        return None;
    }
    let end = walked.len().min(frame::HEADER_LEN + header.len as usize);
    let block = frame::block_fragment(&header, &walked[frame::HEADER_LEN..end])?;
    Some(match hpack::head_of(block)? {
        hpack::Head::Request => Side::Client,
        hpack::Head::Response => Side::Server,
    })
}

/// Whether Periscope saw the connection open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From its first byte: the client preface comes first, both tables are empty.
    Beginning,
    /// Opened before Periscope followed it: frame boundaries and tables are unknown.
    Midway,
}

/// One read or write: `len` bytes, of which the first `captured.len()` are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer<'a> {
    /// The time its frames are stamped with (the tracker's choice per side, as for HTTP/1).
    pub time_ns: u64,
    pub len: u64,
    pub captured: &'a [u8],
}

/// One frame delivered whole by a frame-aware capture: its header, and the first bytes of its
/// payload (all of them when `payload.len() == header.len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRecord<'a> {
    pub time_ns: u64,
    pub header: FrameHeader,
    pub payload: &'a [u8],
}

/// A header block being assembled from HEADERS (or PUSH_PROMISE) and CONTINUATION frames.
#[derive(Debug, Clone)]
struct Block {
    stream: u32,
    /// PUSH_PROMISE blocks are decoded only for their effect on the table.
    push: bool,
    end_stream: bool,
    start_ns: u64,
    bytes: Vec<u8>,
    /// Some of its bytes were not captured (or its frame was malformed): not decodable.
    missing: bool,
    /// Over [`MAX_HEADER_BLOCK`]: not decoded, and counted invalid.
    oversized: bool,
}

/// What one direction (one sender) holds.
#[derive(Debug, Clone)]
struct Direction {
    framer: Framer,
    /// Frames from a frame-walking capture ([`Connection::on_walked`]).
    walked: Walked,
    /// Decodes the blocks this side sends.
    decoder: Decoder,
    block: Option<Block>,
}

/// One HTTP/2 connection: both directions' framing and tables, and its streams.
#[derive(Debug, Clone)]
pub struct Connection {
    client: Direction,
    server: Direction,
    streams: Streams,
}

impl Connection {
    pub fn new(start: Start) -> Self {
        let (client, server, decoder) = match start {
            Start::Beginning => (
                Framer::client_at_start(),
                Framer::server_at_start(),
                Decoder::at_start(),
            ),
            Start::Midway => (Framer::midway(), Framer::midway(), Decoder::midway()),
        };
        let direction = |framer| Direction {
            framer,
            walked: Walked::default(),
            decoder: decoder.clone(),
            block: None,
        };
        Self {
            client: direction(client),
            server: direction(server),
            streams: Streams::default(),
        }
    }

    /// Streams waiting for their response's end.
    pub fn open_streams(&self) -> usize {
        self.streams.open()
    }

    /// Bytes held for partial frames, header blocks and tables (bounded by the limits of
    /// [`hpack`] and [`frame`]).
    pub fn buffered(&self) -> usize {
        [&self.client, &self.server]
            .iter()
            .map(|d| {
                d.framer.buffered()
                    + d.walked.buffered()
                    + d.block.as_ref().map_or(0, |b| b.bytes.len())
                    + d.decoder.table_size()
            })
            .sum()
    }

    /// Whether `from`'s frame boundaries are known.
    pub fn in_sync(&self, from: Side) -> bool {
        self.direction(from).framer.in_sync()
    }

    /// The bytes of one read or write sent by `from`.
    pub fn on_transfer(&mut self, from: Side, transfer: Transfer<'_>, out: &mut Vec<Outcome>) {
        // The framer lends its kept payload to the frame's handler, which needs the rest of
        // the connection: it is taken out for the call (an empty framer allocates nothing).
        let mut framer = std::mem::replace(&mut self.direction_mut(from).framer, Framer::midway());
        framer.feed(transfer.captured, transfer.len, &mut |event| {
            self.on_event(from, transfer.time_ns, event, out)
        });
        self.direction_mut(from).framer = framer;
    }

    /// One frame sent by `from`, cut by a frame-aware capture.
    pub fn on_frame(&mut self, from: Side, record: FrameRecord<'_>, out: &mut Vec<Outcome>) {
        let header = record.header;
        let kept = record.payload.len().min(header.len as usize);
        self.on_event(
            from,
            record.time_ns,
            Event::Frame {
                header,
                payload: &record.payload[..kept],
                missing: kept < header.len as usize,
            },
            out,
        );
    }

    /// The next bytes `from` sent, as a frame-walking capture gives them (see [`Walked`]),
    /// stamped `time_ns`.
    pub fn on_walked(&mut self, from: Side, time_ns: u64, bytes: &[u8], out: &mut Vec<Outcome>) {
        let mut walked = std::mem::take(&mut self.direction_mut(from).walked);
        walked.feed(bytes, &mut |header, payload| {
            self.on_frame(
                from,
                FrameRecord {
                    time_ns,
                    header,
                    payload,
                },
                out,
            )
        });
        self.direction_mut(from).walked = walked;
    }

    /// Records of `from`'s bytes or frames were lost: what they said is unknown.
    pub fn on_lost(&mut self, from: Side, out: &mut Vec<Outcome>) {
        self.direction_mut(from).walked.clear();
        let mut framer = std::mem::replace(&mut self.direction_mut(from).framer, Framer::midway());
        framer.lose(&mut |event| self.on_event(from, 0, event, out));
        self.direction_mut(from).framer = framer;
        // A frame-fed connection has no framer state to lose, but its tables are unknown.
        self.on_gap(from);
    }

    /// The connection closed (or its process exited).
    pub fn on_close(&mut self, time_ns: u64, out: &mut Vec<Outcome>) {
        self.streams.on_close(time_ns, out);
    }

    fn direction(&self, side: Side) -> &Direction {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }

    fn direction_mut(&mut self, side: Side) -> &mut Direction {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    fn on_event(&mut self, from: Side, time_ns: u64, event: Event<'_>, out: &mut Vec<Outcome>) {
        match event {
            Event::Frame {
                header,
                payload,
                missing,
            } => self.on_frame_event(from, time_ns, header, payload, missing, out),
            Event::Preface => self.on_preface(),
            Event::Desync => self.on_gap(from),
            Event::Invalid => {
                out.push(Outcome::Invalid("framing"));
                self.on_gap(from);
            }
            Event::Resync => {}
        }
    }

    /// The client preface went by: a table not known before is known empty now (a server
    /// sends no header block before the first request). One known already is kept, with the
    /// table sizes its peer's settings allowed.
    fn on_preface(&mut self) {
        for direction in [&mut self.client, &mut self.server] {
            if !direction.decoder.is_complete() {
                direction.decoder = Decoder::at_start();
                direction.block = None;
            }
        }
    }

    /// Bytes or frames of `from` were missed: its table and any block being assembled are
    /// unknown, and so are the trailers of streams it was answering.
    fn on_gap(&mut self, from: Side) {
        let direction = self.direction_mut(from);
        direction.decoder.lose();
        direction.block = None;
        if from == Side::Server {
            self.streams.on_server_gap();
        }
    }

    fn on_frame_event(
        &mut self,
        from: Side,
        time_ns: u64,
        header: FrameHeader,
        payload: &[u8],
        missing: bool,
        out: &mut Vec<Outcome>,
    ) {
        if self.direction(from).block.is_some() && header.kind != Kind::Continuation {
            // RFC 9113 §6.10: nothing may come between a block's frames.
            out.push(Outcome::Invalid("interrupted_header_block"));
            self.on_gap(from);
        }
        match header.kind {
            Kind::Headers | Kind::PushPromise => {
                self.start_block(from, time_ns, &header, payload, missing, out)
            }
            Kind::Continuation => {
                self.continue_block(from, time_ns, &header, payload, missing, out)
            }
            Kind::Data if header.has(frame::END_STREAM) => {
                self.streams.on_data_end(from, header.stream, time_ns, out)
            }
            Kind::RstStream => {
                if let Some(code) = frame::rst_stream(payload) {
                    self.streams
                        .on_reset(from, header.stream, code, time_ns, out);
                }
            }
            Kind::GoAway => {
                if let Some((last, code)) = frame::goaway(payload) {
                    self.streams.on_goaway(from, last, code, time_ns, out);
                }
            }
            Kind::Settings if !header.has(frame::ACK) => self.on_settings(from, payload),
            _ => {}
        }
    }

    /// `from`'s settings bound what the other side may send it.
    fn on_settings(&mut self, from: Side, payload: &[u8]) {
        let other = self.direction_mut(match from {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        });
        for (id, value) in frame::settings(payload) {
            match id {
                frame::SETTINGS_HEADER_TABLE_SIZE => other.decoder.allow_table_size(value),
                frame::SETTINGS_MAX_FRAME_SIZE => other.framer.allow_frame_size(value),
                _ => {}
            }
        }
    }

    fn start_block(
        &mut self,
        from: Side,
        time_ns: u64,
        header: &FrameHeader,
        payload: &[u8],
        missing: bool,
        out: &mut Vec<Outcome>,
    ) {
        let mut block = Block {
            stream: header.stream,
            push: header.kind == Kind::PushPromise,
            end_stream: header.kind == Kind::Headers && header.has(frame::END_STREAM),
            start_ns: time_ns,
            bytes: Vec::new(),
            missing,
            oversized: false,
        };
        if header.len as usize > MAX_HEADER_BLOCK {
            block.oversized = true;
        } else if !missing {
            match frame::block_fragment(header, payload) {
                Some(fragment) => block.append(fragment, header.len),
                None => {
                    out.push(Outcome::Invalid("header_frame"));
                    block.missing = true;
                }
            }
        }
        self.direction_mut(from).block = Some(block);
        if header.has(frame::END_HEADERS) {
            self.end_block(from, time_ns, out);
        }
    }

    fn continue_block(
        &mut self,
        from: Side,
        time_ns: u64,
        header: &FrameHeader,
        payload: &[u8],
        missing: bool,
        out: &mut Vec<Outcome>,
    ) {
        let Some(block) = self.direction_mut(from).block.as_mut() else {
            // A CONTINUATION without its HEADERS: the table state it changes is unknown.
            out.push(Outcome::Invalid("stray_continuation"));
            self.on_gap(from);
            return;
        };
        if block.stream != header.stream {
            out.push(Outcome::Invalid("interrupted_header_block"));
            self.on_gap(from);
            return;
        }
        block.missing |= missing;
        if !block.missing {
            block.append(payload, header.len);
        }
        if header.has(frame::END_HEADERS) {
            self.end_block(from, time_ns, out);
        }
    }

    /// A block is complete: decoded into the fields streams use, or, when it cannot be
    /// decoded, every field unknown (and the table with it).
    fn end_block(&mut self, from: Side, time_ns: u64, out: &mut Vec<Outcome>) {
        let direction = self.direction_mut(from);
        let Some(block) = direction.block.take() else {
            return;
        };
        let mut headers = Headers::default();
        if block.oversized {
            out.push(Outcome::Invalid("header_block_too_large"));
        }
        if block.missing || block.oversized {
            direction.decoder.lose();
            headers = Headers::undecoded();
        } else if direction
            .decoder
            .decode(&block.bytes, |field| headers.add(field))
            .is_err()
        {
            out.push(Outcome::Invalid("hpack"));
            headers = Headers::undecoded();
        }
        if block.push {
            return;
        }
        // A request starts when its first HEADERS went by; a response ends with its last frame.
        let at = match from {
            Side::Client => block.start_ns,
            Side::Server => time_ns,
        };
        self.streams
            .on_headers(from, block.stream, headers, block.end_stream, at, out);
    }
}

impl Block {
    /// Appends a fragment of a frame of `frame_len` bytes, up to the block limit.
    fn append(&mut self, fragment: &[u8], frame_len: u32) {
        if frame_len as usize > MAX_HEADER_BLOCK
            || self.bytes.len() + fragment.len() > MAX_HEADER_BLOCK
        {
            self.oversized = true;
            self.bytes = Vec::new();
        } else if !self.oversized {
            self.bytes.extend_from_slice(fragment);
        }
    }
}

#[cfg(test)]
pub(crate) mod testenc;
#[cfg(test)]
mod tests;
