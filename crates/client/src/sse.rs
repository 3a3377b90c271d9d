//! A Server-Sent Events parser (the WHATWG event-stream format): enough for
//! `GET /v1/jobs/{id}/events`, with `id`, `event`, multi-line `data` and comments.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Feeds bytes in, takes complete events out.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<RawEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        // A line ends at LF, CRLF or a lone CR (a CR at the very end may be half of a
        // CRLF: wait for more).
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n' || *b == b'\r') {
            if self.buffer[end] == b'\r' && end + 1 == self.buffer.len() {
                break;
            }
            let skip = if self.buffer[end] == b'\r' && self.buffer.get(end + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            let line: Vec<u8> = self.buffer.drain(..end + skip).take(end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<RawEvent> {
        if line.is_empty() {
            let data = self.data.take()?;
            return Some(RawEvent {
                id: self.id.clone(),
                event: self.event.take().unwrap_or_else(|| "message".into()),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_are_parsed_whole() {
        let stream = b": keep-alive\r\n\r\nid: 7\r\nevent: state\r\ndata: {\"a\":\ndata: 1}\r\n\r\nid:8\nevent:progress\ndata:x\n\n";
        for cut in 0..stream.len() {
            let mut parser = Parser::default();
            let mut events = parser.push(&stream[..cut]);
            events.extend(parser.push(&stream[cut..]));
            assert_eq!(
                events,
                vec![
                    RawEvent {
                        id: Some("7".into()),
                        event: "state".into(),
                        data: "{\"a\":\n1}".into()
                    },
                    RawEvent {
                        id: Some("8".into()),
                        event: "progress".into(),
                        data: "x".into()
                    },
                ],
                "cut at {cut}"
            );
        }
    }
}
