//! HTTP/2 framing (RFC 9113 §3.4, §4, §6): the client connection preface, the 9-byte frame
//! header, the payload fields an observer needs, and a [`Framer`] that cuts one direction's
//! bytes into frames however they were split into transfers, skips bytes known to be missing
//! (a transfer longer than its capture) by count, and resynchronises conservatively when a
//! gap swallowed a frame header.

use periscope_common::http::{H2_MAX_KEPT, h2_payload_elided};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's default: a larger frame needs the receiver's permission.
pub const DEFAULT_MAX_FRAME: u32 = 16_384;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

/// Payload buffer capacity a framer keeps between frames.
const IDLE_CAPACITY: usize = 1024;

/// SETTINGS identifiers read here.
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Data,
    Headers,
    Priority,
    RstStream,
    Settings,
    PushPromise,
    Ping,
    GoAway,
    WindowUpdate,
    Continuation,
    /// Extension frames (RFC 9113 §5.5): ignored.
    Unknown(u8),
}

impl Kind {
    fn from_u8(kind: u8) -> Self {
        match kind {
            0 => Self::Data,
            1 => Self::Headers,
            2 => Self::Priority,
            3 => Self::RstStream,
            4 => Self::Settings,
            5 => Self::PushPromise,
            6 => Self::Ping,
            7 => Self::GoAway,
            8 => Self::WindowUpdate,
            9 => Self::Continuation,
            other => Self::Unknown(other),
        }
    }

    /// Payload bytes an observer keeps: header blocks (up to one byte past the block limit, to
    /// tell an oversized one), settings, and the fixed fields of RST_STREAM and GOAWAY.
    fn keep(self) -> usize {
        match self {
            Self::Headers | Self::PushPromise | Self::Continuation => {
                super::hpack::MAX_HEADER_BLOCK + 1
            }
            Self::Settings => 6 * 64,
            Self::RstStream => 4,
            Self::GoAway => 8,
            _ => 0,
        }
    }
}

/// A frame header (RFC 9113 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: Kind,
    pub flags: u8,
    pub stream: u32,
    /// The reserved bit before the stream id (must be zero).
    pub reserved: bool,
}

impl FrameHeader {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Self {
        let id = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        Self {
            len: u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]),
            kind: Kind::from_u8(bytes[3]),
            flags: bytes[4],
            stream: id & 0x7fff_ffff,
            reserved: id & 0x8000_0000 != 0,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Whether a well-behaved peer could send this header: a known type, only its defined
    /// flags (senders leave the others unset, RFC 9113 §4.1), a stream id of zero exactly for
    /// connection frames, the fixed lengths, and a length the receiver allows. Used to find
    /// frame boundaries again after a gap; CONTINUATION is refused there, since its HEADERS
    /// was lost.
    pub fn plausible(&self, max_frame: u32) -> bool {
        let (flags, on_stream, len_ok) = match self.kind {
            Kind::Data => (END_STREAM | PADDED, true, true),
            Kind::Headers => (END_STREAM | END_HEADERS | PADDED | PRIORITY, true, true),
            Kind::Priority => (0, true, self.len == 5),
            Kind::RstStream => (0, true, self.len == 4),
            Kind::Settings => (ACK, false, self.len.is_multiple_of(6)),
            Kind::PushPromise => (END_HEADERS | PADDED, true, self.len >= 4),
            Kind::Ping => (ACK, false, self.len == 8),
            Kind::GoAway => (0, false, self.len >= 8),
            Kind::WindowUpdate => (0, self.stream != 0, self.len == 4),
            Kind::Continuation | Kind::Unknown(_) => return false,
        };
        !self.reserved
            && self.flags & !flags == 0
            && (self.stream != 0) == on_stream
            && len_ok
            && self.len <= max_frame
    }
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload: padding, priority and
/// the promised stream id taken off (RFC 9113 §6.2, §6.6). `None`: malformed.
pub fn block_fragment<'a>(header: &FrameHeader, payload: &'a [u8]) -> Option<&'a [u8]> {
    let mut rest = payload;
    let mut pad = 0usize;
    if header.has(PADDED) && matches!(header.kind, Kind::Headers | Kind::PushPromise) {
        let (&n, tail) = rest.split_first()?;
        pad = n as usize;
        rest = tail;
    }
    let skip = match header.kind {
        Kind::Headers if header.has(PRIORITY) => 5,
        Kind::PushPromise => 4,
        _ => 0,
    };
    let rest = rest.get(skip..)?;
    rest.get(..rest.len().checked_sub(pad)?)
}

/// The settings of a SETTINGS payload (identifier, value).
pub fn settings(payload: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    payload.chunks_exact(6).map(|s| {
        (
            u16::from_be_bytes([s[0], s[1]]),
            u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
        )
    })
}

/// A GOAWAY's last stream id and error code.
pub fn goaway(payload: &[u8]) -> Option<(u32, u32)> {
    let last = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) & 0x7fff_ffff;
    let code = u32::from_be_bytes(payload.get(4..8)?.try_into().ok()?);
    Some((last, code))
}

/// An RST_STREAM's error code.
pub fn rst_stream(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?))
}

/// What the framer found in a direction's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A frame, once all its bytes went by. `payload` is what was kept of it (see
    /// [`Kind`]); `missing`: some of its payload bytes were not captured.
    Frame {
        header: FrameHeader,
        payload: &'a [u8],
        missing: bool,
    },
    /// The client preface, at the start of a transfer.
    Preface,
    /// Frame boundaries were lost (a gap swallowed a frame header): whatever the lost frames
    /// said is unknown. Bytes are dropped until [`Event::Resync`].
    Desync,
    /// Frame boundaries were found again at the start of a transfer.
    Resync,
    /// Bytes that break the framing (a bad preface, a reserved bit, an oversized frame): the
    /// direction is out of sync from here, as after a gap.
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the client preface; this many of its bytes matched.
    Preface(usize),
    /// Reading a frame header; `have` bytes of it are in `head`.
    Header,
    Payload {
        header: FrameHeader,
        left: u32,
        missing: bool,
    },
    OutOfSync,
}

/// Frames from a frame-walking capture (the kernel's HTTP/2 records): each frame's header
/// followed by its payload, unless the capture left the payload out (`h2_payload_elided`:
/// DATA, or a payload too large to be a header block), running on across records. Holds at
/// most one frame's header and kept payload between records.
#[derive(Debug, Clone, Default)]
pub struct Walked {
    pending: Vec<u8>,
}

impl Walked {
    /// The next bytes of the capture: calls `on` with each frame they complete (its header, and
    /// its payload, empty when left out).
    pub fn feed(&mut self, bytes: &[u8], on: &mut impl FnMut(FrameHeader, &[u8])) {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        while let Some((header, end)) = walked_frame(&self.pending[at..]) {
            on(header, &self.pending[at + HEADER_LEN..at + end]);
            at += end;
        }
        self.pending.drain(..at);
        if self.pending.is_empty() && self.pending.capacity() > IDLE_CAPACITY {
            self.pending = Vec::new();
        }
    }

    /// Forgets a frame in progress (the capture lost its place).
    pub fn clear(&mut self) {
        self.pending = Vec::new();
    }

    /// Bytes held for the frame in progress: under [`MAX_WALKED`] between feeds.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }
}

/// Most bytes a [`Walked`] holds between feeds: one frame's header and kept payload.
pub const MAX_WALKED: usize = HEADER_LEN + H2_MAX_KEPT as usize;

/// The frame at the start of walked bytes, and where it ends in them, when they hold all of it.
fn walked_frame(bytes: &[u8]) -> Option<(FrameHeader, usize)> {
    let head: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    let header = FrameHeader::parse(head);
    let kept = if h2_payload_elided(head[3], header.len) {
        0
    } else {
        header.len as usize
    };
    let end = HEADER_LEN + kept;
    (bytes.len() >= end).then_some((header, end))
}

/// Cuts one direction's bytes into frames.
#[derive(Debug, Clone)]
pub struct Framer {
    state: State,
    head: [u8; HEADER_LEN],
    have: usize,
    /// The kept payload of the frame being read.
    payload: Vec<u8>,
    /// The largest frame the receiving peer allows (its SETTINGS_MAX_FRAME_SIZE).
    max_frame: u32,
}

impl Framer {
    /// The client's direction, from the connection's start: the preface comes first.
    pub fn client_at_start() -> Self {
        Self::with_state(State::Preface(0))
    }

    /// The server's direction, from the connection's start: frames from the first byte.
    pub fn server_at_start() -> Self {
        Self::with_state(State::Header)
    }

    /// Either direction, joined mid-connection: out of sync until a transfer starts with
    /// frame headers (or the preface).
    pub fn midway() -> Self {
        Self::with_state(State::OutOfSync)
    }

    fn with_state(state: State) -> Self {
        Self {
            state,
            head: [0; HEADER_LEN],
            have: 0,
            payload: Vec::new(),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// The receiving peer allowed frames up to `size` (SETTINGS_MAX_FRAME_SIZE).
    pub fn allow_frame_size(&mut self, size: u32) {
        self.max_frame = self.max_frame.max(size.min(0xff_ffff));
    }

    /// Payload bytes kept of the frame being read.
    pub fn buffered(&self) -> usize {
        self.payload.len()
    }

    pub fn in_sync(&self) -> bool {
        self.state != State::OutOfSync
    }

    /// Forgets where frames start (records were lost before the next transfer).
    pub fn lose(&mut self, on: &mut impl FnMut(Event<'_>)) {
        if self.state != State::OutOfSync {
            self.state = State::OutOfSync;
            self.payload.clear();
            on(Event::Desync);
        }
    }

    /// One transfer of `len` bytes, of which the first `captured` are known.
    pub fn feed(&mut self, captured: &[u8], len: u64, on: &mut impl FnMut(Event<'_>)) {
        let captured = &captured[..captured.len().min(len as usize)];
        if self.state == State::OutOfSync {
            self.resync(captured, len, on);
        }
        let mut rest = captured;
        while !rest.is_empty() {
            rest = match self.state {
                State::Preface(matched) => self.preface(matched, rest, on),
                State::Header => self.header(rest, on),
                State::Payload { .. } => self.payload(rest, on),
                State::OutOfSync => break,
            };
        }
        self.skip(len - captured.len() as u64, on);
    }

    /// Out of sync: takes the transfer as the start of frames when it begins with the
    /// preface, or with frame headers that are all plausible as far as its captured bytes go
    /// (at least one whole header). Otherwise the transfer is dropped.
    fn resync(&mut self, captured: &[u8], len: u64, on: &mut impl FnMut(Event<'_>)) {
        if captured.starts_with(PREFACE) {
            self.state = State::Preface(0);
            on(Event::Resync);
        } else if plausible_frames(captured, len, self.max_frame) {
            self.state = State::Header;
            self.have = 0;
            on(Event::Resync);
        }
    }

    fn preface<'b>(
        &mut self,
        matched: usize,
        rest: &'b [u8],
        on: &mut impl FnMut(Event<'_>),
    ) -> &'b [u8] {
        let take = rest.len().min(PREFACE.len() - matched);
        if rest[..take] != PREFACE[matched..matched + take] {
            self.state = State::OutOfSync;
            on(Event::Invalid);
            return &[];
        }
        if matched + take == PREFACE.len() {
            self.state = State::Header;
            self.have = 0;
            on(Event::Preface);
        } else {
            self.state = State::Preface(matched + take);
        }
        &rest[take..]
    }

    fn header<'b>(&mut self, rest: &'b [u8], on: &mut impl FnMut(Event<'_>)) -> &'b [u8] {
        let take = rest.len().min(HEADER_LEN - self.have);
        self.head[self.have..self.have + take].copy_from_slice(&rest[..take]);
        self.have += take;
        if self.have == HEADER_LEN {
            self.have = 0;
            let header = FrameHeader::parse(&self.head);
            if header.reserved || header.len > self.max_frame {
                self.state = State::OutOfSync;
                on(Event::Invalid);
                return &[];
            }
            self.payload.clear();
            self.state = State::Payload {
                header,
                left: header.len,
                missing: false,
            };
            self.end_if_done(on);
        }
        &rest[take..]
    }

    fn payload<'b>(&mut self, rest: &'b [u8], on: &mut impl FnMut(Event<'_>)) -> &'b [u8] {
        let State::Payload {
            header,
            left,
            missing,
        } = self.state
        else {
            return &[];
        };
        let take = rest.len().min(left as usize);
        let room = header.kind.keep().saturating_sub(self.payload.len());
        self.payload.extend_from_slice(&rest[..take.min(room)]);
        self.state = State::Payload {
            header,
            left: left - take as u32,
            missing,
        };
        self.end_if_done(on);
        &rest[take..]
    }

    /// Emits the frame being read when no payload byte is left.
    fn end_if_done(&mut self, on: &mut impl FnMut(Event<'_>)) {
        if let State::Payload {
            header,
            left: 0,
            missing,
        } = self.state
        {
            self.state = State::Header;
            on(Event::Frame {
                header,
                payload: &self.payload,
                missing,
            });
            if self.payload.capacity() > IDLE_CAPACITY {
                // A large header frame went by: an idle connection keeps no large buffer.
                self.payload = Vec::new();
            }
        }
    }

    /// `n` bytes that were not captured: skipped by count inside a payload; anywhere else
    /// they hide where the next frame starts.
    fn skip(&mut self, n: u64, on: &mut impl FnMut(Event<'_>)) {
        if n == 0 {
            return;
        }
        match self.state {
            State::Payload { header, left, .. } if n <= u64::from(left) => {
                self.state = State::Payload {
                    header,
                    left: left - n as u32,
                    missing: true,
                };
                self.end_if_done(on);
            }
            State::OutOfSync => {}
            _ => self.lose(on),
        }
    }
}

/// Whether `captured` (the first bytes of a `len`-byte transfer) is a chain of plausible
/// frame headers: walking from frame to frame, every whole header within the captured bytes
/// passes [`FrameHeader::plausible`], there is at least one, and when the whole transfer was
/// captured its frames end exactly at its end. A transfer that starts inside a payload (a
/// large frame written in pieces) would need its bytes to pass all of that by chance; one
/// whose last frame goes on into the next transfer is passed over too, which only delays the
/// resync to a later transfer.
pub fn plausible_frames(captured: &[u8], len: u64, max_frame: u32) -> bool {
    let mut at = 0u64;
    let mut headers = 0;
    while let Some(bytes) = captured.get(at as usize..at as usize + HEADER_LEN) {
        let Ok(head) = <&[u8; HEADER_LEN]>::try_from(bytes) else {
            return false;
        };
        let header = FrameHeader::parse(head);
        if !header.plausible(max_frame) {
            return false;
        }
        headers += 1;
        at += (HEADER_LEN as u64) + u64::from(header.len);
        if at >= len {
            break;
        }
    }
    let whole = captured.len() as u64 == len;
    headers > 0 && (!whole || at == len)
}

#[cfg(test)]
mod tests;
