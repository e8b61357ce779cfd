//! A small incremental `text/event-stream` parser for the CLI's followers (and the tests).

/// One parsed SSE event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub name: Option<String>,
    pub data: String,
}

/// An incremental `text/event-stream` parser (the HTML5 rules that Herald's frames use:
/// `id`, `event`, `data`, comments, blank-line dispatch; lines end in CRLF, LF or a lone CR).
#[derive(Debug, Default)]
pub struct SseReader {
    buffer: Vec<u8>,
    current: SseEvent,
    has_data: bool,
    /// The last chunk ended in CR: an LF starting the next one belongs to that line end.
    after_cr: bool,
    /// The stream's last event id, set at every dispatch that had an `id:` (one without
    /// data too, as EventSource does: Herald starts a live stream with its head that way).
    last_id: Option<u64>,
}

impl SseReader {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut chunk = chunk;
        if self.after_cr {
            self.after_cr = false;
            chunk = chunk.strip_prefix(b"\n").unwrap_or(chunk);
        }
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(at) = self.buffer[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let end = start + at;
            let line = String::from_utf8_lossy(&self.buffer[start..end]).into_owned();
            start = end + 1;
            if self.buffer[end] == b'\r' {
                match self.buffer.get(start) {
                    Some(b'\n') => start += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.line(&line, &mut out);
        }
        self.buffer.drain(..start);
        out
    }

    /// Where a reconnect should resume: the last id the stream gave.
    pub fn last_id(&self) -> Option<u64> {
        self.last_id
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.current.id.is_some() {
                self.last_id = self.current.id;
            }
            if self.has_data {
                out.push(std::mem::take(&mut self.current));
            } else {
                self.current = SseEvent::default();
            }
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.current.id = value.parse().ok(),
            "event" => self.current.name = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_reader_splits_frames_across_chunks() {
        let mut r = SseReader::default();
        assert!(r.push(b"retry: 2000\n\nid: 4\nevent: t\nda").is_empty());
        let got = r.push(b"ta: {\"a\":1}\n\n: heartbeat\n\ndata: x\n\n");
        assert_eq!(
            got,
            vec![
                SseEvent {
                    id: Some(4),
                    name: Some("t".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    id: None,
                    name: None,
                    data: "x".into()
                },
            ]
        );
    }

    #[test]
    fn sse_reader_takes_every_line_ending() {
        let mut r = SseReader::default();
        let got = r.push(b"id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r");
        assert_eq!(got.len(), 1);
        let got2 = r.push(b"\ndata: c\n\n");
        assert_eq!(
            got2[0].data, "b\nc",
            "a CR then LF across chunks is one line end"
        );
        assert_eq!((got[0].id, got2[0].id), (Some(1), Some(2)));
    }
}
