//! Connection strings as they may be shown: with every password replaced by `***`.

/// `conn` (a `postgres://` URL or a key=value string, as tokio-postgres parses them) with its
/// passwords replaced by `***`: the password of `scheme://user:password@host`, a `password`
/// query parameter, a `password=` key. When in doubt it hides more: everything between the
/// first `:` and the last `@` of a URL, or all of a key=value string it cannot parse.
pub(crate) fn redact(conn: &str) -> String {
    for prefix in ["postgres://", "postgresql://"] {
        if let Some(rest) = conn.strip_prefix(prefix) {
            return format!("{prefix}{}", redact_url(rest));
        }
    }
    redact_key_values(conn).unwrap_or_else(|| "*** (unparsable connection string)".to_owned())
}

fn redact_url(rest: &str) -> String {
    // tokio-postgres takes the credentials up to the first `@`; a password holding an unencoded
    // `@`, `/` or `?` is still hidden by going to the last one.
    let (credentials, after) = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@"),
                None => format!("{userinfo}@"),
            };
            (shown, &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    let Some((location, query)) = after.split_once('?') else {
        return format!("{credentials}{after}");
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if percent_decoded(key) == "password" => format!("{key}=***"),
            _ => param.to_owned(),
        })
        .collect();
    format!("{credentials}{location}?{}", params.join("&"))
}

/// `%XX` escapes decoded (tokio-postgres decodes parameter names); anything else kept.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Walks `key = value` pairs the way tokio-postgres does (a value is `'quoted'` or runs to the
/// next whitespace; `\` escapes the next character) and masks the value of `password`.
fn redact_key_values(conn: &str) -> Option<String> {
    let mut out = String::with_capacity(conn.len());
    let mut rest = conn;
    loop {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        rest = trimmed;
        if rest.is_empty() {
            return Some(out);
        }
        let key_end = rest.find(|c: char| c.is_whitespace() || c == '=')?;
        let key = &rest[..key_end];
        let after_key = rest[key_end..].trim_start();
        let after_eq = after_key.strip_prefix('=')?;
        let value_start = after_eq.trim_start();
        let value_len = value_len(value_start)?;
        out.push_str(&rest[..rest.len() - value_start.len()]);
        if key == "password" {
            out.push_str("***");
        } else {
            out.push_str(&value_start[..value_len]);
        }
        rest = &value_start[value_len..];
    }
}

/// The length in bytes of the value at the start of `s`, quotes included.
fn value_len(s: &str) -> Option<usize> {
    let quoted = s.starts_with('\'');
    let mut chars = s.char_indices().skip(usize::from(quoted));
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '\'' if quoted => return Some(i + 1),
            c if c.is_whitespace() && !quoted => return Some(i),
            _ => {}
        }
    }
    // An unterminated quote: hide it all.
    (!quoted && !s.is_empty()).then_some(s.len())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_masked_in_every_form() {
        for (conn, shown) in [
            (
                "postgres://app:s3cret@db:5432/x?sslmode=disable",
                "postgres://app:***@db:5432/x?sslmode=disable",
            ),
            (
                "postgresql://app:s3@cr@et@db/x",
                "postgresql://app:***@db/x",
            ),
            ("postgres://app:a/b?c@db/x", "postgres://app:***@db/x"),
            ("postgres://app@db/x", "postgres://app@db/x"),
            ("postgres://db/x", "postgres://db/x"),
            (
                "postgres://app@db/x?password=s3cret&application_name=a",
                "postgres://app@db/x?password=***&application_name=a",
            ),
            (
                "postgres://db/x?pass%77ord=s3cret",
                "postgres://db/x?pass%77ord=***",
            ),
            (
                "host=db user=app password=s3cret dbname=x",
                "host=db user=app password=*** dbname=x",
            ),
            (
                "host=db password = 's3 cr\\'et' dbname=x",
                "host=db password = *** dbname=x",
            ),
            ("password=s3\\ cret", "password=***"),
            ("host=db", "host=db"),
            ("", ""),
        ] {
            assert_eq!(redact(conn), shown, "{conn}");
        }
        for unparsable in ["host=db password='s3cret", "password", "host=db s3cret"] {
            assert!(!redact(unparsable).contains("s3cret"), "{unparsable}");
        }
    }
}
