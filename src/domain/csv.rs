//! A strict CSV reader (RFC 4180, as PostgreSQL's `COPY … WITH CSV HEADER` writes it):
//! fields separated by commas, records by LF or CRLF; a field in double quotes may hold
//! commas, line breaks and doubled quotes (`""` = `"`). A UTF-8 byte order mark is
//! skipped, blank lines and a missing or present final line break are accepted. Anything
//! else (an unterminated quote, a quote inside an unquoted field, text after a closing
//! quote, a lone CR, a record with another number of fields than the header) is an
//! error naming its line: a file is read whole or not at all.

/// One record and the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvError {
    pub line: usize,
    pub message: String,
}

fn fail<T>(line: usize, message: &str) -> Result<T, CsvError> {
    Err(CsvError { line, message: message.to_string() })
}

/// Every record of `text`, blank lines skipped.
pub fn records(text: &str) -> Result<Vec<Record>, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let b = text.as_bytes();
    let (mut i, mut line) = (0, 1);
    let mut out = Vec::new();
    while i < b.len() {
        let (start, start_line) = (i, line);
        let mut fields = Vec::new();
        loop {
            let mut field = String::new();
            if b.get(i) == Some(&b'"') {
                let open = line;
                i += 1;
                let mut from = i;
                loop {
                    match b.get(i) {
                        None => return fail(open, "unterminated quoted field"),
                        Some(b'"') => {
                            field.push_str(&text[from..i]);
                            i += 1;
                            if b.get(i) != Some(&b'"') {
                                break;
                            }
                            from = i;
                            i += 1;
                        }
                        Some(c) => {
                            line += usize::from(*c == b'\n');
                            i += 1;
                        }
                    }
                }
                if !matches!(b.get(i), None | Some(b',' | b'\n' | b'\r')) {
                    return fail(line, "text after a closing quote");
                }
            } else {
                let from = i;
                while let Some(c) = b.get(i) {
                    match c {
                        b',' | b'\n' | b'\r' => break,
                        b'"' => return fail(line, "a quote inside an unquoted field"),
                        _ => i += 1,
                    }
                }
                field.push_str(&text[from..i]);
            }
            fields.push(field);
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'\r') if b.get(i + 1) != Some(&b'\n') => {
                    return fail(line, "a carriage return without a line feed")
                }
                Some(c) => {
                    i += 1 + usize::from(*c == b'\r');
                    line += 1;
                    break;
                }
                None => break,
            }
        }
        // A blank line is one empty, unquoted field.
        if fields.len() > 1 || !fields[0].is_empty() || b[start] == b'"' {
            out.push(Record { line: start_line, fields });
        }
    }
    Ok(out)
}

/// A file with a header row: the records after it, each with as many fields as the
/// header, and for each of `columns` its position in a record.
pub struct Table {
    /// The header, then the records.
    all: Vec<Record>,
    index: Vec<usize>,
}

impl Table {
    /// Reads `text`, whose header must name every one of `columns` (in any order, once;
    /// other columns are ignored). A header name is compared trimmed, ASCII case ignored.
    pub fn read(text: &str, columns: &[&str]) -> Result<Table, CsvError> {
        let all = records(text)?;
        let Some(header) = all.first() else { return fail(1, "the file is empty (a header row is required)") };
        let mut index = Vec::with_capacity(columns.len());
        for c in columns {
            let mut found = None;
            for (k, name) in header.fields.iter().enumerate() {
                if name.trim().eq_ignore_ascii_case(c) {
                    if found.is_some() {
                        return fail(header.line, &format!("the header names `{c}` twice"));
                    }
                    found = Some(k);
                }
            }
            match found {
                Some(k) => index.push(k),
                None => return fail(header.line, &format!("the header has no column `{c}`")),
            }
        }
        let width = header.fields.len();
        for r in &all[1..] {
            if r.fields.len() != width {
                return fail(r.line, &format!("{} fields where the header has {width}", r.fields.len()));
            }
        }
        Ok(Table { all, index })
    }

    /// The records after the header.
    pub fn rows(&self) -> &[Record] {
        &self.all[1..]
    }

    /// Field `column` (a position in the `columns` given to `read`) of `row`.
    pub fn get<'r>(&self, row: &'r Record, column: usize) -> &'r str {
        &row.fields[self.index[column]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<Vec<String>> {
        records(text).unwrap().into_iter().map(|r| r.fields).collect()
    }

    fn err(text: &str) -> (usize, String) {
        let e = records(text).unwrap_err();
        (e.line, e.message)
    }

    #[test]
    fn plain_records_with_lf_crlf_and_with_or_without_a_final_line_break() {
        let want = vec![vec!["a", "b"], vec!["1", ""]];
        for text in ["a,b\n1,\n", "a,b\r\n1,\r\n", "a,b\n1,", "a,b\r\n1,"] {
            assert_eq!(fields(text), want, "{text:?}");
        }
        assert_eq!(fields(""), Vec::<Vec<String>>::new());
        assert_eq!(fields(",\n"), vec![vec!["", ""]]);
    }

    #[test]
    fn quoted_fields_hold_commas_line_breaks_and_doubled_quotes() {
        let text = "id,note\n1,\"a, b\"\n2,\"line one\nline two\r\nthree\"\n3,\"say \"\"hi\"\"\"\n4,\"\"\n5,\"\"\"\"\n";
        assert_eq!(
            fields(text),
            vec![
                vec!["id", "note"],
                vec!["1", "a, b"],
                vec!["2", "line one\nline two\r\nthree"],
                vec!["3", "say \"hi\""],
                vec!["4", ""],
                vec!["5", "\""],
            ]
        );
        let lines: Vec<usize> = records(text).unwrap().iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 6, 7, 8], "a record's line is where it starts");
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_blank_lines_are_ignored() {
        assert_eq!(fields("\u{feff}id,x\n1,2\n"), vec![vec!["id", "x"], vec!["1", "2"]]);
        let r = records("id\n\n1\r\n\r\n2\n\n").unwrap();
        assert_eq!(
            r.iter().map(|r| (r.line, r.fields[0].as_str())).collect::<Vec<_>>(),
            [(1, "id"), (3, "1"), (5, "2")]
        );
        assert_eq!(fields("é,\"ü\"\n"), vec![vec!["é", "ü"]]);
    }

    #[test]
    fn malformed_text_is_refused_with_the_line_of_the_fault() {
        assert_eq!(err("a,b\n1,\"open\n2,3\n"), (2, "unterminated quoted field".into()));
        assert_eq!(err("a,b\n1,\"x\"y\n"), (2, "text after a closing quote".into()));
        assert_eq!(err("a,b\n1,\"x\ny\"z\n"), (3, "text after a closing quote".into()));
        assert_eq!(err("a,b\n1,2\n3,x\"y\n"), (3, "a quote inside an unquoted field".into()));
        assert_eq!(err("a,b\n1,2\r3,4\n"), (2, "a carriage return without a line feed".into()));
    }

    #[test]
    fn a_table_finds_its_columns_in_any_order_and_checks_every_record_against_the_header() {
        let t = Table::read("B , a,extra\n2,1,x\n\"4\",3,y\n", &["a", "b"]).unwrap();
        let got: Vec<(&str, &str)> = t.rows().iter().map(|r| (t.get(r, 0), t.get(r, 1))).collect();
        assert_eq!(got, [("1", "2"), ("3", "4")]);
        let e = Table::read("a,b\n1,2\n3\n5,6\n", &["a", "b"]).err().unwrap();
        assert_eq!((e.line, e.message.as_str()), (3, "1 fields where the header has 2"));
        let e = Table::read("a,b\n1,2,3\n", &["a", "b"]).err().unwrap();
        assert_eq!(e.line, 2);
        let e = Table::read("\n\nid,email\n", &["id", "balance"]).err().unwrap();
        assert_eq!((e.line, e.message.as_str()), (3, "the header has no column `balance`"));
        let e = Table::read("id,ID\n", &["id"]).err().unwrap();
        assert_eq!(e.message, "the header names `id` twice");
        assert_eq!(Table::read("", &["id"]).err().unwrap().line, 1);
        assert!(Table::read("id\n", &["id"]).unwrap().rows().is_empty());
    }
}
