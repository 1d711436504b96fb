//! Python compatibility for chat templates: what Jinja2 under transformers prints and computes
//! where minijinja on its own would differ — Python's `str()` / `repr()` of values, `json.dumps`
//! (the `tojson` filter), `str.strip` (the `trim` filter), Jinja2's `sequence` test and
//! `datetime.now().strftime` (the `strftime_now` function). [`super::chat`] registers them.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Error, ErrorKind, State, Value};

/// Python's `str()` of a float: shortest round-trip digits, `1.0` rather than `1`, and
/// scientific notation outside 1e-4 <= |x| < 1e16 (`1e-05`, `1e+16`).
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    let scientific = format!("{x:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if x == 0.0 || (-4..16).contains(&exponent) {
        let plain = format!("{x}");
        if plain.contains('.') {
            plain
        } else {
            plain + ".0"
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
    }
}

/// Output formatter: what Jinja2 prints, Python's `str()` (`None`, `True`, `1e-05`,
/// `['a', 1]`, `{'k': None}`), for everything but strings and undefined values.
pub(super) fn python_formatter(
    out: &mut minijinja::Output,
    state: &State,
    value: &Value,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None
        | ValueKind::Bool
        | ValueKind::Number
        | ValueKind::Seq
        | ValueKind::Map
        | ValueKind::Iterable => out.write_str(&python_str(value))?,
        _ => minijinja::escape_formatter(out, state, value)?,
    }
    Ok(())
}

/// Python's `str()` of a value: strings as they are, containers as their `repr`.
fn python_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        _ => {
            let mut out = String::new();
            python_repr(&mut out, value);
            out
        }
    }
}

/// Appends Python's `repr()` of a value. Lists and tuples (which minijinja does not tell
/// apart) are written as lists, maps as dicts.
fn python_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(x) => out.push_str(&python_float(x)),
            Err(_) => out.push_str(&value.to_string()),
        },
        ValueKind::String => python_string_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python_repr(out, &item);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python_repr(out, &key);
                    out.push_str(": ");
                    python_repr(out, &value.get_item(&key).unwrap_or_default());
                }
            }
            out.push('}');
        }
        _ => out.push_str(&value.to_string()),
    }
}

/// Appends Python's `repr()` of a string: single quotes unless the text has a single quote
/// and no double quote, backslash escapes for the quote, `\\`, `\n`, `\r`, `\t` and for
/// characters Python does not consider printable.
fn python_string_repr(out: &mut String, text: &str) {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !python_printable(c) => {
                let code = u32::from(c);
                let _ = match code {
                    0..=0xff => write!(out, "\\x{code:02x}"),
                    0x100..=0xffff => write!(out, "\\u{code:04x}"),
                    _ => write!(out, "\\U{code:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable()` for one character: false for controls, separators other than
/// the space, and the common format and private-use characters. (Python also escapes
/// unassigned code points, which would need the Unicode tables.)
fn python_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(
        u32::from(c),
        0xad | 0x600..=0x605
            | 0x61c
            | 0x6dd
            | 0x70f
            | 0x180e
            | 0x200b..=0x200f
            | 0x202a..=0x202e
            | 0x2060..=0x2064
            | 0x2066..=0x206f
            | 0xe000..=0xf8ff
            | 0xfeff
            | 0xfff9..=0xfffb
            | 0xfffe..=0xffff
            | 0xf0000..
    )
}

/// The `string` filter: Python's `str()`.
pub(super) fn string_filter(value: &Value) -> Value {
    match value.kind() {
        ValueKind::String => value.clone(),
        _ => Value::from(python_str(value)),
    }
}

/// Jinja2's `sequence` test: true for anything with a length and items (strings too).
pub(super) fn is_sequence(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::String | ValueKind::Seq | ValueKind::Map | ValueKind::Bytes
    )
}

/// Python's `str.isspace()` (Unicode White_Space plus the ASCII separators U+001C..U+001F).
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Jinja2's `trim(value, chars=None)`: Python's `str.strip(chars)`.
pub(super) fn trim_filter(value: &Value, chars: Option<String>) -> Result<Value, Error> {
    let text = python_str(value);
    Ok(Value::from(match chars {
        Some(chars) => text.trim_matches(|c| chars.contains(c)).to_string(),
        None => text.trim_matches(python_space).to_string(),
    }))
}

/// How `tojson` writes JSON: Python's `json.dumps` arguments.
struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

/// The `tojson` filter of transformers: Python's
/// `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, taking
/// those arguments positionally or by name. Unlike minijinja's own filter it does not escape
/// `<`, `>`, `&` and `'`, and it spaces separators as Python does (`", "` and `": "`).
pub(super) fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments (ensure_ascii, indent, separators, sort_keys)",
        ));
    }
    let mut params: [Option<Value>; 4] = Default::default();
    for (i, name) in NAMES.iter().enumerate() {
        let by_name: Option<Value> = kwargs.get(name)?;
        params[i] = match (args.get(i), by_name) {
            (Some(_), Some(_)) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson got multiple values for argument '{name}'"),
                ))
            }
            (Some(positional), None) => Some(positional.clone()),
            (None, by_name) => by_name,
        };
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = params;
    let indent = match indent {
        None => None,
        Some(indent) if indent.is_none() || indent.is_undefined() => None,
        Some(indent) => Some(match indent.as_str() {
            Some(text) => text.to_string(),
            None => match indent.kind() {
                ValueKind::Bool => " ".repeat(usize::from(indent.is_true())),
                _ => {
                    let width = i64::try_from(indent.clone()).map_err(|_| {
                        Error::new(
                            ErrorKind::InvalidOperation,
                            format!("tojson indent must be an integer or a string, not {indent}"),
                        )
                    })?;
                    " ".repeat(usize::try_from(width).unwrap_or(0))
                }
            },
        }),
    };
    let (item_separator, key_separator) = match separators {
        Some(separators) if !separators.is_none() && !separators.is_undefined() => {
            let parts: Vec<Value> = separators.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] => match (item.as_str(), key.as_str()) {
                    (Some(item), Some(key)) => (item.to_string(), key.to_string()),
                    _ => return Err(separators_error()),
                },
                _ => return Err(separators_error()),
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        ensure_ascii: ensure_ascii.is_some_and(|flag| flag.is_true()),
        indent,
        item_separator,
        key_separator,
        sort_keys: sort_keys.is_some_and(|flag| flag.is_true()),
    };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from(out))
}

/// The error for a `separators` argument that is not a pair of strings.
fn separators_error() -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        "tojson separators must be a pair of strings (item_separator, key_separator)",
    )
}

/// Writes `value` as Python's `json.dumps` would.
fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => {
            let _ = write!(out, "{value}");
        }
        ValueKind::Number => {
            let x = f64::try_from(value.clone())?;
            out.push_str(&json_float(x));
        }
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default(), style),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), style, depth, |out, i| {
                write_json(out, &items[i], style, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, '{', '}', entries.len(), style, depth, |out, i| {
                let (key, item) = &entries[i];
                write_json_string(out, key, style);
                out.push_str(&style.key_separator);
                write_json(out, item, style, depth + 1)
            })?;
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {} is not JSON serializable", value.kind()),
            ))
        }
    }
    Ok(())
}

/// Writes a list or object: brackets, separators and, with an indent, one item per line.
fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    style: &JsonStyle,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        if i > 0 {
            out.push_str(&style.item_separator);
        }
        if let Some(indent) = &style.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth + 1));
        }
        item(out, i)?;
    }
    if let Some(indent) = &style.indent {
        out.push('\n');
        out.push_str(&indent.repeat(depth));
    }
    out.push(close);
    Ok(())
}

/// A JSON object key as Python's `json.dumps` converts it (strings as they are, numbers,
/// booleans and none spelled as JSON).
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::None => Ok("null".to_string()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_string()),
        ValueKind::Number if key.is_integer() => Ok(key.to_string()),
        ValueKind::Number => Ok(json_float(f64::try_from(key.clone())?)),
        other => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("keys must be str, int, float, bool or None, not {other}"),
        )),
    }
}

/// Python's `json.dumps` of a float: like `repr`, with `NaN` / `Infinity` / `-Infinity`.
fn json_float(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else {
        python_float(x)
    }
}

/// Writes a JSON string literal with Python's escapes: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`,
/// `\f`, `\u00XX` for other control characters, and with `ensure_ascii` `\uXXXX` (surrogate
/// pairs beyond the BMP) for everything outside printable ASCII.
fn write_json_string(out: &mut String, text: &str, style: &JsonStyle) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if style.ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `strftime_now(format)`: the local time formatted as Python's
/// `datetime.now().strftime(format)`.
pub(super) fn strftime_now(format: String) -> Result<String, Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|err| Error::new(ErrorKind::InvalidOperation, err.to_string()))?;
    let seconds = libc::time_t::try_from(now.as_secs())
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, "the clock is out of range"))?;
    // SAFETY: `tm` is plain old data for which all-zero bytes are a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the thread-safe variant and
    // only writes into `tm`.
    let converted = unsafe { libc::localtime_r(&seconds, &mut tm) };
    if converted.is_null() {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "cannot convert the current time to local time",
        ));
    }
    format_time(&tm, now.subsec_micros(), &format)
}

/// Python's `datetime.strftime` of a naive local time: `%f` is the microseconds, `%z`, `%:z`
/// and `%Z` are empty (no time zone), the rest goes to the C library's `strftime` (which Python
/// also uses; the process runs in the "C" locale, so names are English).
fn format_time(tm: &libc::tm, micros: u32, format: &str) -> Result<String, Error> {
    let mut c_format = String::with_capacity(format.len());
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            c_format.push(c);
            continue;
        }
        match chars.next() {
            Some('f') => {
                let _ = write!(c_format, "{micros:06}");
            }
            Some('z') | Some('Z') => {}
            Some(':') if chars.peek() == Some(&'z') => {
                chars.next();
            }
            Some(other) => {
                c_format.push('%');
                c_format.push(other);
            }
            None => c_format.push('%'),
        }
    }
    if c_format.is_empty() {
        return Ok(String::new());
    }
    let c_format = std::ffi::CString::new(c_format).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            "strftime_now format must not contain NUL characters",
        )
    })?;
    // Python retries with a larger buffer until 256 × the format length; so do we.
    let limit = 256 * c_format.as_bytes().len().max(1);
    let mut size = 64;
    loop {
        let mut buffer = vec![0u8; size];
        // SAFETY: `buffer` has `size` writable bytes, `c_format` is NUL-terminated and `tm`
        // is a valid struct; strftime writes at most `size` bytes and returns how many.
        let written = unsafe {
            libc::strftime(
                buffer.as_mut_ptr().cast::<libc::c_char>(),
                size,
                c_format.as_ptr(),
                tm,
            )
        };
        if written > 0 || size >= limit {
            buffer.truncate(written);
            return Ok(String::from_utf8_lossy(&buffer).into_owned());
        }
        size = (size * 4).min(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::chat::test_support::{render_source, template_from_source};
    use crate::text::chat::Message;

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        // Keys in sorted order, so that the result is the same whether or not serde_json
        // preserves insertion order.
        let extra = serde_json::json!({"x": {
            "b": [true, false], "e": {}, "f": 1.0, "g": 1e-5, "h": 1e16, "i": -3,
            "k": 123456789.125, "l": [], "n": null,
            "s": "<a href='x'>&amp;</a> \"q\" \\ é 東京 🎉 \u{7f}\u{1}\u{8}\u{c}\n\r\t",
            "z": -0.0
        }});
        let rendered = render_source("{{ x | tojson }}", extra.clone()).expect("render");
        // Python: json.dumps(x, ensure_ascii=False) on the same dict.
        // (DEL, U+007F, is not escaped by Python without ensure_ascii.)
        let python = concat!(
            r#"{"b": [true, false], "e": {}, "f": 1.0, "g": 1e-05, "h": 1e+16, "i": -3, "#,
            r#""k": 123456789.125, "l": [], "n": null, "s": "<a href='x'>&amp;</a> \"q\" "#,
            "\\\\ é 東京 🎉 \u{7f}",
            r#"\u0001\b\f\n\r\t", "z": -0.0}"#
        );
        assert_eq!(rendered, python);
        let ascii =
            render_source("{{ x.s | tojson(ensure_ascii=true) }}", extra.clone()).expect("render");
        assert_eq!(
            ascii,
            r#""<a href='x'>&amp;</a> \"q\" \\ \u00e9 \u6771\u4eac \ud83c\udf89 \u007f\u0001\b\f\n\r\t""#
        );
        let indented = render_source(
            "{{ x.b | tojson(indent=2) }}|{{ x.e | tojson(indent=2) }}",
            extra.clone(),
        )
        .expect("render");
        assert_eq!(indented, "[\n  true,\n  false\n]|{}");
        let custom = render_source(
            "{{ x.b | tojson(separators=(',', ':')) }}|{{ {'b': 1, 'a': [2]} | tojson(sort_keys=true, indent='\t') }}",
            extra,
        )
        .expect("render");
        assert_eq!(
            custom,
            "[true,false]|{\n\t\"a\": [\n\t\t2\n\t],\n\t\"b\": 1\n}"
        );
    }

    #[test]
    fn python_spelling_of_scalars() {
        let out = render_source(
            "{{ none }} {{ true }} {{ false }} {{ 1.0 }} {{ 0.00001 }} {{ 3 }} {{ none|string }} {{ true|string }}",
            serde_json::Value::Null,
        )
        .expect("render");
        assert_eq!(out, "None True False 1.0 1e-05 3 None True");
        assert_eq!(python_float(1e15), "1000000000000000.0");
        assert_eq!(python_float(0.1), "0.1");
        assert_eq!(python_float(-2.5e-7), "-2.5e-07");
        assert_eq!(python_float(1.5e300), "1.5e+300");
        assert_eq!(python_float(0.0001), "0.0001");
    }

    #[test]
    fn containers_print_as_python_reprs() {
        let out = render_source(
            "{{ [1, 'a', none, true, 1.5, \"it's\", '\\\\', '\\n\\x01\\xa0é'] }}|{{ {'k': [none]} }}|\
             {{ messages[0] }}|{{ {'a': ['x']} | string }}|{{ 'x' is sequence }}|{{ 3 is sequence }}",
            serde_json::Value::Null,
        )
        .expect("render");
        // Python: str([1, 'a', None, True, 1.5, "it's", '\\', '\n\x01\xa0é']) and so on.
        assert_eq!(
            out,
            r#"[1, 'a', None, True, 1.5, "it's", '\\', '\n\x01\xa0é']|{'k': [None]}|{'role': 'user', 'content': 'hi'}|{'a': ['x']}|True|False"#
        );
    }

    #[test]
    fn trim_uses_python_whitespace() {
        let out = render_source(
            "[{{ x | trim }}][{{ 'xxhixx' | trim('x') }}]",
            serde_json::json!({"x": "\u{1c}\u{a0} hi \u{3000}\n"}),
        )
        .expect("render");
        assert_eq!(out, "[hi][hi]");
    }

    #[test]
    fn python_string_methods_work() {
        let source = "{{ messages[0].content.strip().upper() }}|{{ 'a,b'.split(',') | join('+') }}|\
                      {{ 'xyz'.startswith('x') }}|{% for k, v in {'k': 1}.items() %}{{ k }}={{ v }}{% endfor %}|\
                      {{ ('\\n\\nt\\n').lstrip('\\n') }}|{{ [1, 2, 3][::-1] }}";
        let (_dir, template) = template_from_source(source);
        let out = template
            .render(&[Message::new("user", "  hi  ")], false)
            .expect("render");
        assert_eq!(out, "HI|a+b|True|k=1|t\n|[3, 2, 1]");
    }

    #[test]
    fn strftime_now_formats_like_python() {
        // SAFETY: all-zero bytes are a valid `tm`.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        tm.tm_year = 124;
        tm.tm_mon = 6;
        tm.tm_mday = 26;
        tm.tm_hour = 13;
        tm.tm_min = 5;
        tm.tm_sec = 9;
        tm.tm_wday = 5;
        tm.tm_yday = 207;
        // Python: datetime(2024, 7, 26, 13, 5, 9, 42).strftime(...)
        assert_eq!(
            format_time(&tm, 42, "%d %b %Y").expect("format"),
            "26 Jul 2024"
        );
        assert_eq!(
            format_time(&tm, 42, "%A %B %j %H:%M:%S.%f%z%Z%:z %% %y-%m-%d %a %p").expect("format"),
            "Friday July 208 13:05:09.000042 % 24-07-26 Fri PM"
        );
        assert_eq!(format_time(&tm, 0, "").expect("format"), "");
        let e = format_time(&tm, 0, "a\0b").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidOperation);
        assert!(e.to_string().contains("must not contain NUL"), "{e}");

        let out = render_source("{{ strftime_now('%d %b %Y') }}", serde_json::Value::Null)
            .expect("render");
        let parts: Vec<&str> = out.split(' ').collect();
        assert_eq!(parts.len(), 3, "{out}");
        assert!(
            parts[0].len() == 2 && parts[0].chars().all(|c| c.is_ascii_digit()),
            "{out}"
        );
        assert!(
            ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
                .contains(&parts[1]),
            "{out}"
        );
        assert!(
            parts[2].len() == 4 && parts[2].chars().all(|c| c.is_ascii_digit()),
            "{out}"
        );
    }
}
