//! Reading JSONL text records, with errors that name the line.

use std::io::Read;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// One input record: `{"id"?, "text"}`.
#[derive(Debug, Clone)]
pub struct TextRecord {
    /// The record's `id` as given (a string or number), or its 1-based line number as a string.
    pub id: Value,
    /// The text to encode.
    pub text: String,
}

/// Reads the whole input (a file, or stdin for `None`) as bytes.
pub fn read_input(path: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match path {
        Some(p) => {
            bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        }
        None => {
            std::io::stdin()
                .lock()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
        }
    }
    Ok(bytes)
}

/// Parses JSONL text records. Blank lines are skipped. Fails on the first bad line with its
/// number and what is wrong, counting any further bad lines.
pub fn parse_records(input: &[u8], source: &str) -> anyhow::Result<Vec<TextRecord>> {
    let mut records = Vec::new();
    let mut first_error = None;
    let mut bad = 0usize;
    for (n, line) in input.split(|&b| b == b'\n').enumerate() {
        let line_no = n + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(line, line_no) {
            Ok(record) => records.push(record),
            Err(reason) => {
                bad += 1;
                first_error.get_or_insert(format!("{source} line {line_no}: {reason}"));
            }
        }
    }
    if let Some(first) = first_error {
        if bad > 1 {
            bail!("{first} (and {} more bad lines)", bad - 1);
        }
        bail!("{first}");
    }
    Ok(records)
}

fn parse_line(line: &[u8], line_no: usize) -> Result<TextRecord, String> {
    let line = std::str::from_utf8(line).map_err(|e| format!("not valid UTF-8 ({e})"))?;
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(mut object) = value else {
        return Err("not a JSON object".into());
    };
    let text = match object.remove("text") {
        Some(Value::String(text)) => text,
        Some(other) => return Err(format!("\"text\" must be a string, got {}", kind(&other))),
        None => return Err("no \"text\" field".into()),
    };
    let id = match object.remove("id") {
        None | Some(Value::Null) => Value::String(line_no.to_string()),
        Some(id @ (Value::String(_) | Value::Number(_))) => id,
        Some(other) => {
            return Err(format!(
                "\"id\" must be a string or number, got {}",
                kind(&other)
            ));
        }
    };
    Ok(TextRecord { id, text })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &[u8]) -> String {
        match parse_records(input, "input") {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn good_lines_parse_and_blank_lines_are_skipped() -> anyhow::Result<()> {
        let records = parse_records(
            b"{\"id\":\"a\",\"text\":\"x\"}\n\n{\"text\":\"y\"}\n{\"id\":7,\"text\":\"\"}\n",
            "input",
        )?;
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].id, Value::from("a"));
        assert_eq!(
            records[1].id,
            Value::from("3"),
            "missing id defaults to the line number"
        );
        assert_eq!(records[2].id, Value::from(7));
        assert_eq!(records[2].text, "");
        Ok(())
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            err(b"{\"text\":\"ok\"}\nnot json\n"),
            format!("input line 2: not JSON (expected ident at line 1 column 2)")
        );
        assert_eq!(err(b"[1]\n"), "input line 1: not a JSON object");
        assert_eq!(err(b"{\"id\":\"x\"}\n"), "input line 1: no \"text\" field");
        assert_eq!(
            err(b"{\"text\":3}\n"),
            "input line 1: \"text\" must be a string, got a number"
        );
        assert!(err(b"{\"text\":\"\xff\"}\n").starts_with("input line 1: not valid UTF-8"));
        assert_eq!(
            err(b"x\n{}\n{\"text\":\"fine\"}\n"),
            "input line 1: not JSON (expected value at line 1 column 1) (and 1 more bad lines)"
        );
    }
}
