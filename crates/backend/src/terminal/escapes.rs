//! What of the agent's output may reach the user's terminal.
//!
//! The agent writes to the user's terminal through the relay (and, for a
//! detached bottle, through `bot-bottle logs --agent`). A terminal acts on
//! escape sequences, and some of them reach past the screen:
//!
//! - **Clipboard** (OSC 52, iTerm2's OSC 1337 `CopyToClipboard`, kitty's
//!   OSC 5522): a write puts a command in the user's clipboard for the next
//!   paste; a query answers with what the clipboard holds (a password the
//!   user just copied) into the agent's input.
//! - **Answerbacks whose text the agent chose**: the window title report
//!   (`CSI 21 t`, after the agent set the title), DECRQSS and XTGETTCAP
//!   (`DCS $ q`, `DCS + q`, which some terminals echo), font queries
//!   (OSC 50). An answer is typed into the terminal's input: the agent's
//!   while it runs, the user's shell once bot-bottle has returned (or
//!   always, for `logs`, and for an agent on pipes whose stdout is the
//!   terminal), which then runs it.
//! - **Programming the terminal**: user-defined keys (DECUDK, a DCS) make a
//!   function key type the agent's text later; file transfer and graphics
//!   protocols (iTerm2's OSC 1337 `File=`, kitty's OSC 5113 and APC
//!   graphics, which can read a path on the host) and terminal logging
//!   (OSC 46) touch the user's files; tmux's DCS passthrough reaches the
//!   terminal around tmux's own filtering.
//!
//! So this filter keeps what a coding agent's interface needs — text,
//! colours and cursor movement (CSI, other than window operations), the
//! title, colour palette, working directory, hyperlinks and prompt marks
//! (OSC 0–2, 4, 7, 8, 10–19, 104, 110–119, 133) — and drops every other
//! OSC, every DCS, APC, PM and SOS string, every window operation (`CSI …
//! t`: the title report among them, and resizing or moving the window),
//! reports of what the screen holds (DECRQCRA checksums, which read the
//! user's earlier output back cell by cell; XTREPORTSGR), and C1 controls (raw 8-bit, or UTF-8 encoded as U+0080–U+009F) but as
//! the introducer of a sequence that is then judged the same way.
//!
//! Where a terminal and this parser could disagree on where a sequence
//! ends, the filter errs on the safe side: a dropped string ends only at
//! its unambiguous terminator (BEL for OSC, `ESC \`), and a passed one ends
//! at the first byte any terminal might end it at (every control), so no
//! byte it passes can be read by a terminal as part of a dropped sequence.

/// OSC numbers that pass: window and icon title, palette and dynamic
/// colours (set, query and reset; their answers are colour values, never
/// the agent's text), the working directory, hyperlinks and prompt marks.
fn osc_allowed(n: u32) -> bool {
    matches!(n, 0..=2 | 4 | 7 | 8 | 10..=19 | 104 | 110..=119 | 133)
}

/// Control sequences that are dropped: window operations (`CSI … t`:
/// reports, the title's among them, and resizing, moving, raising), and
/// reports of what the screen shows — a checksum of any rectangle of it
/// (DECRQCRA, `CSI … * y`, which read cell by cell gives the agent the text
/// the user had on screen before it started) and its attributes
/// (XTREPORTSGR, `CSI … # |`). Everything else passes.
fn csi_refused(held: &[u8], last: u8) -> bool {
    let has = |i: u8| held.contains(&i);
    last == b't' || (last == b'y' && has(b'*')) || (last == b'|' && has(b'#'))
}

/// The longest CSI kept while its final byte is awaited; longer is dropped
/// (no program needs it, and it bounds what is held).
const CSI_MAX: usize = 256;

const BEL: u8 = 0x07;
const CAN: u8 = 0x18;
const SUB: u8 = 0x1a;
const ESC: u8 = 0x1b;
const DEL: u8 = 0x7f;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Text.
    Ground,
    /// After ESC (held).
    Esc,
    /// In a control sequence (held) until its final byte.
    Csi,
    /// After an OSC introducer (held), reading its number.
    OscNumber,
    /// In an allowed OSC's text, passing it on.
    Pass,
    /// In a dropped string (OSC when `osc`, else DCS, APC, PM or SOS).
    Drop { osc: bool },
    /// ESC inside a dropped string: `\` ends it, anything else does not.
    DropEsc { osc: bool },
}

/// A stateful filter over one output stream (sequences may be split across
/// reads). Bytes of a sequence not yet judged are held, never passed.
#[derive(Debug)]
pub(crate) struct EscapeFilter {
    state: State,
    held: Vec<u8>,
    /// UTF-8 continuation bytes still expected (text and passed OSC).
    need: u8,
    /// The least the next continuation byte may be: above 0x80 after the
    /// leads whose short forms are overlong (`E0 82 9D` is not U+009D,
    /// whatever a lenient decoder makes of it).
    lo: u8,
    /// A 0xC2 lead byte is held: with 0x80–0x9F after it, it is a C1 control.
    c2: bool,
    /// The number of the OSC being read.
    osc: u32,
}

impl Default for EscapeFilter {
    fn default() -> Self {
        EscapeFilter { state: State::Ground, held: Vec::new(), need: 0, lo: 0x80, c2: false, osc: 0 }
    }
}

impl EscapeFilter {
    /// Appends to `out` what of `input` may reach the terminal.
    pub(crate) fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.byte(b, out);
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Ground | State::Pass => self.text(b, out),
            State::Esc => self.esc(b, out),
            State::Csi => self.csi(b, out),
            State::OscNumber => self.osc_number(b, out),
            State::Drop { osc } => match b {
                BEL if osc => self.state = State::Ground,
                ESC => self.state = State::DropEsc { osc },
                _ => {}
            },
            State::DropEsc { osc } => {
                self.state = match b {
                    b'\\' => State::Ground,
                    ESC => State::DropEsc { osc },
                    BEL if osc => State::Ground,
                    _ => State::Drop { osc },
                }
            }
        }
    }

    /// Text, or an allowed OSC's text (`State::Pass`).
    fn text(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.c2 {
            self.c2 = false;
            if (0x80..=0x9f).contains(&b) {
                // U+0080–U+009F: a C1 control, UTF-8 encoded.
                self.need = 0;
                self.state = State::Ground;
                return self.c1(b, &[0xc2, b]);
            }
            out.push(0xc2);
            self.need = 0;
        }
        match b {
            // Any control may end an OSC for some terminal: end the pass.
            ESC => {
                self.need = 0;
                self.held = vec![ESC];
                self.state = State::Esc;
            }
            0x00..=0x1f | DEL => {
                self.need = 0;
                out.push(b);
                self.state = State::Ground;
            }
            0x80..=0xbf if self.need > 0 && b >= self.lo => {
                self.need -= 1;
                self.lo = 0x80;
                out.push(b);
            }
            // A stray C1 control (8-bit), or one that breaks off a UTF-8
            // sequence: judged as one, the sequence abandoned.
            0x80..=0x9f => {
                self.need = 0;
                self.lo = 0x80;
                self.state = State::Ground;
                self.c1(b, &[b]);
            }
            0xc2 => self.c2 = true,
            _ => {
                self.need = match b {
                    0xc3..=0xdf => 1,
                    0xe0..=0xef => 2,
                    0xf0..=0xf4 => 3,
                    _ => 0,
                };
                self.lo = match b {
                    0xe0 => 0xa0,
                    0xf0 => 0x90,
                    _ => 0x80,
                };
                out.push(b);
            }
        }
    }

    /// A C1 control `b` (its bytes as written: `raw`), outside any sequence.
    /// Nothing of it passes until it is judged.
    fn c1(&mut self, b: u8, raw: &[u8]) {
        self.held = raw.to_vec();
        self.state = match b {
            0x9b => State::Csi,
            0x9d => {
                self.osc = 0;
                State::OscNumber
            }
            0x90 | 0x98 | 0x9e | 0x9f => State::Drop { osc: false },
            // Any other C1 control (IND, NEL, ST, ...): nothing a terminal
            // needs from an agent in this form.
            _ => State::Ground,
        };
    }

    fn esc(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'[' => {
                self.held.push(b);
                self.state = State::Csi;
            }
            b']' => {
                self.held.push(b);
                self.osc = 0;
                self.state = State::OscNumber;
            }
            b'P' | b'X' | b'^' | b'_' => self.state = State::Drop { osc: false },
            // A change of coding system (`ESC % @` leaves UTF-8, after
            // which the terminal reads 0x80-0x9F as C1 controls inside
            // what this filter reads as UTF-8 text): dropped.
            b'%' => self.state = State::Ground,
            // ESC ESC: the first is abandoned.
            ESC => {}
            CAN | SUB => {
                out.push(b);
                self.state = State::Ground;
            }
            // A terminal runs a control inside an escape and goes on with
            // it; so does this filter, so that `ESC LF ]` is still an OSC.
            0x00..=0x1f => out.push(b),
            DEL => {}
            0x20..=0x7e => {
                out.extend_from_slice(&self.held);
                out.push(b);
                self.state = State::Ground;
            }
            // Not an escape a terminal agrees on: drop the ESC, judge the byte as text.
            _ => {
                self.state = State::Ground;
                self.text(b, out);
            }
        }
        if self.state != State::Csi && self.state != State::OscNumber && self.state != State::Esc {
            self.held.clear();
        }
    }

    fn csi(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            0x40..=0x7e => {
                if !csi_refused(&self.held, b) {
                    out.extend_from_slice(&self.held);
                    out.push(b);
                }
                self.held.clear();
                self.state = State::Ground;
            }
            ESC => {
                self.held = vec![ESC];
                self.state = State::Esc;
            }
            CAN | SUB => {
                self.held.clear();
                out.push(b);
                self.state = State::Ground;
            }
            DEL => {}
            0x00..=0x3f if self.held.len() < CSI_MAX => self.held.push(b),
            // Too long, or a byte no control sequence holds: dropped whole
            // (without its introducer what follows is text).
            _ => {
                self.held.clear();
                self.state = State::Ground;
                if b >= 0x80 {
                    self.text(b, out);
                }
            }
        }
    }

    fn osc_number(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'0'..=b'9' if self.held.len() < 8 => {
                self.held.push(b);
                self.osc = self.osc * 10 + u32::from(b - b'0');
            }
            b';' if osc_allowed(self.osc) && self.held.last().is_some_and(u8::is_ascii_digit) => {
                out.extend_from_slice(&self.held);
                out.push(b);
                self.held.clear();
                self.state = State::Pass;
            }
            // Anything else (a refused number, no number, a terminator):
            // the whole OSC is dropped.
            _ => {
                self.held.clear();
                self.state = State::Drop { osc: true };
                self.byte(b, out);
            }
        }
    }
}

/// `input` as it may reach a terminal, for a stream read whole.
pub fn filtered(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    EscapeFilter::default().filter(input, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8], expect: &[u8]) {
        let show = |b: &[u8]| b.escape_ascii().to_string();
        assert_eq!(show(&filtered(input)), show(expect), "input {}", show(input));
        // Split at every point, the same result.
        for at in 0..input.len() {
            let mut f = EscapeFilter::default();
            let mut out = Vec::new();
            f.filter(&input[..at], &mut out);
            f.filter(&input[at..], &mut out);
            assert_eq!(show(&out), show(expect), "input {} split at {at}", show(input));
        }
    }

    #[test]
    fn what_an_agents_interface_needs_passes() {
        let text = "plain text, üñíçødé “quotes” © 🍾\r\n".as_bytes();
        check(text, text);
        check(
            b"\x1b[1;31mred\x1b[0m \x1b[2J\x1b[H\x1b[?25l\x1b[?1049h",
            b"\x1b[1;31mred\x1b[0m \x1b[2J\x1b[H\x1b[?25l\x1b[?1049h",
        );
        check(b"\x1b[?2004h\x1b[6n\x1b[c\x1b[>c\x1b[?2026$p", b"\x1b[?2004h\x1b[6n\x1b[c\x1b[>c\x1b[?2026$p");
        check(b"\x1b]0;title\x07\x1b]2;t\x1b\\", b"\x1b]0;title\x07\x1b]2;t\x1b\\");
        check(
            b"\x1b]8;;https://example.com\x1b\\link\x1b]8;;\x1b\\",
            b"\x1b]8;;https://example.com\x1b\\link\x1b]8;;\x1b\\",
        );
        check(
            b"\x1b]11;?\x07\x1b]4;1;rgb:ff/00/00\x07\x1b]133;A\x07",
            b"\x1b]11;?\x07\x1b]4;1;rgb:ff/00/00\x07\x1b]133;A\x07",
        );
        check(b"\x1b(B\x1b7\x1b8\x1bM\x1b=", b"\x1b(B\x1b7\x1b8\x1bM\x1b=");
    }

    #[test]
    fn the_clipboard_answerbacks_and_terminal_programming_are_dropped() {
        // OSC 52 write and query, both terminators, and the UTF-8 and
        // 8-bit C1 spellings of OSC.
        check(b"a\x1b]52;c;ZWNobyBwd25lZAo=\x07b", b"ab");
        check(b"a\x1b]52;c;?\x1b\\b", b"ab");
        check(b"a\xc2\x9d52;c;ZWNobwo=\x07b", b"ab");
        check(b"a\x9d52;c;ZWNobwo=\x07b", b"ab");
        // Other OSCs that reach past the screen.
        check(b"a\x1b]1337;File=name=eA==:AAAA\x07b", b"ab");
        check(b"a\x1b]5113;ac=send\x1b\\b\x1b]50;?\x07\x1b]46;/tmp/log\x07\x1b]9;4;1\x07", b"ab");
        check(b"a\x1b]\x07b\x1b];x\x07c", b"abc");
        // Title report and every other window operation.
        check(b"a\x1b[21tb\x1b[20t\x1b[8;1;1t\x1b[3;0;0t\x9b21t\xc2\x9b21t", b"ab");
        // Screen contents read back: a checksum of one cell, SGR of a rectangle.
        check(b"a\x1b[1;1;1;1;1;1*yb\x1b[1;1;2;2#|", b"ab");
        check(b"\x1b[2*x\x1b[?1;2$y\x1b[1 q", b"\x1b[2*x\x1b[?1;2$y\x1b[1 q");
        // DECRQSS, XTGETTCAP, DECUDK, tmux passthrough, APC graphics, PM, SOS.
        check(b"a\x1bP$qm\x1b\\b\x1bP+q544e\x1b\\\x1bP0;1|17/6c73\x1b\\", b"ab");
        check(b"a\x1bPtmux;\x1b\x1b]52;c;eA==\x07\x1b\\b", b"ab");
        check(b"a\x1b_Ga=T,t=f;L2V0Yy9wYXNzd2Q=\x1b\\b\x1b^pm\x1b\\\x1bXsos\x1b\\", b"ab");
        check(b"a\xc2\x90$qm\xc2\x9c\x1b\\b", b"ab");
    }

    #[test]
    fn tricks_to_make_the_filter_and_the_terminal_disagree_fail() {
        // A control inside an escape is run, and the escape goes on.
        check(b"a\x1b\n]52;c;eA==\x07b", b"a\nb");
        check(b"a\x1b\x7f]52;c;eA==\x07b", b"ab");
        check(b"a\x1b[2\n1tb", b"ab");
        // A dropped string ends only at BEL or ESC \: not at CAN, a C1 ST
        // (raw or UTF-8) or an ESC starting something else.
        check(b"a\x1b]52;c;\x18eA==\x07b", b"ab");
        check(b"a\x1b]52;c;\xc2\x9ceA==\x07b", b"ab");
        check(b"a\x1b]52;c;\x9ceA==\x07b", b"ab");
        check(b"a\x1b]52;c;\x1b[meA==\x07b", b"ab");
        check(b"a\x1bP$q\x07\x1b]52;c;eA==\x07\x1b\\b", b"ab");
        // A passed OSC ends at any control or C1, so nothing inside it can
        // hide a sequence from the filter.
        check(b"\x1b]0;x\x1b]52;c;eA==\x07b", b"\x1b]0;xb");
        check(b"\x1b]0;x\xc2\x9d52;c;eA==\x07b", b"\x1b]0;xb");
        check(b"\x1b]0;x\x9d52;c;eA==\x07b", b"\x1b]0;xb");
        check(b"\x1b]0;x\nb\x1b[21t", b"\x1b]0;x\nb");
        // Numbers that wrap, or lead with a zero the allow list has.
        check(b"a\x1b]4294967348;c;eA==\x07b", b"ab");
        check(b"a\x1b]00052;c;eA==\x07b", b"ab");
        // Leaving UTF-8 (`ESC % @`) would make a UTF-8 letter's second
        // byte a C1 OSC or DCS to the terminal: the switch never passes.
        check(b"a\x1b%@\xc3\x9d52;c;ZWNobw==\x07b", b"a@\xc3\x9d52;c;ZWNobw==\x07b");
        check(b"\x1b%@\xc3\x90$qm\x1b\\", b"@\xc3\x90$qm\x1b\\");
        check(b"\x1b%8", b"8");
        // Overlong UTF-8 for a C1 control is no letter: judged as the C1.
        check(b"a\xe0\x82\x9d52;c;eA==\x07b", b"a\xe0b");
        check(b"a\xf0\x80\x82\x9d52;c;eA==\x07b", b"a\xf0b");
        // A CSI too long to hold is dropped whole.
        let long = filtered(format!("a\x1b[{}21tb", "1;".repeat(200)).as_bytes());
        assert!(!long.contains(&ESC) && long.starts_with(b"a") && long.ends_with(b"21tb"), "{long:?}");
    }
}
