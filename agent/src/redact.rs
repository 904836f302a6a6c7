//! Redaction of credentials in command lines, applied where argv bytes
//! enter tyrd (exec records, /proc/PID/cmdline) so that events, discovered
//! agents' fingerprints and identities, the spool and the state files only
//! ever hold the redacted form.
//!
//! Flag and variable names stay (`--openai-api-key [REDACTED]`), so
//! detection and operators still see what was passed; only values go:
//! - the value of a flag, variable or label whose name says it is a secret
//!   (`--api-key V`, `--token=V`, `OPENAI_API_KEY=V`, `Authorization: Bearer V`,
//!   `"api_key": V`, `?access_token=V&`);
//! - the password of a URL (`https://user:[REDACTED]@host`);
//! - anything shaped like a well-known credential (`sk-…`, `ghp_…`,
//!   `xoxb-…`, `AKIA…`, `AIza…`, JWTs, …), wherever it stands.
//!
//! One left-to-right pass over the bytes with a constant-size table: time
//! is linear in the input, whatever it holds. Single-letter flags (`-p`,
//! `-u user:pass`) are not redacted: their meaning depends on the program.

/// What a redacted value is replaced by.
pub const REDACTED: &str = "[REDACTED]";

/// A credential shape: a prefix and at least `min_body` bytes of `body`.
struct TokenShape {
    prefix: &'static [u8],
    min_body: usize,
    body: fn(u8) -> bool,
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn alnum_dash_underscore(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn upper_digit(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

fn jwt(b: u8) -> bool {
    alnum_dash_underscore(b) || b == b'.'
}

/// Credential shapes recognised anywhere in a word (case-sensitive). The
/// minimum bodies keep ordinary names like `/usr/bin/sk-tool` intact.
const TOKEN_SHAPES: &[TokenShape] = &[
    // OpenAI (`sk-…`, `sk-proj-…`), Anthropic (`sk-ant-…`) and the many
    // providers that copied the shape.
    TokenShape { prefix: b"sk-", min_body: 16, body: alnum_dash_underscore },
    TokenShape { prefix: b"github_pat_", min_body: 20, body: alnum_dash_underscore },
    TokenShape { prefix: b"ghp_", min_body: 20, body: alnum },
    TokenShape { prefix: b"gho_", min_body: 20, body: alnum },
    TokenShape { prefix: b"ghu_", min_body: 20, body: alnum },
    TokenShape { prefix: b"ghs_", min_body: 20, body: alnum },
    TokenShape { prefix: b"ghr_", min_body: 20, body: alnum },
    TokenShape { prefix: b"glpat-", min_body: 20, body: alnum_dash_underscore },
    TokenShape { prefix: b"xoxb-", min_body: 10, body: alnum_dash_underscore },
    TokenShape { prefix: b"xoxp-", min_body: 10, body: alnum_dash_underscore },
    TokenShape { prefix: b"xoxa-", min_body: 10, body: alnum_dash_underscore },
    TokenShape { prefix: b"xoxr-", min_body: 10, body: alnum_dash_underscore },
    TokenShape { prefix: b"xoxs-", min_body: 10, body: alnum_dash_underscore },
    TokenShape { prefix: b"AKIA", min_body: 16, body: upper_digit },
    TokenShape { prefix: b"ASIA", min_body: 16, body: upper_digit },
    TokenShape { prefix: b"AIza", min_body: 30, body: alnum_dash_underscore },
    TokenShape { prefix: b"hf_", min_body: 30, body: alnum },
    TokenShape { prefix: b"npm_", min_body: 30, body: alnum },
    TokenShape { prefix: b"eyJ", min_body: 20, body: jwt },
];

/// The first bytes of [`TOKEN_SHAPES`]' prefixes: most positions of a
/// word start none, and are passed over at the cost of one lookup.
const TOKEN_STARTS: [bool; 256] = {
    let mut starts = [false; 256];
    let mut i = 0;
    while i < TOKEN_SHAPES.len() {
        starts[TOKEN_SHAPES[i].prefix[0] as usize] = true;
        i += 1;
    }
    starts
};

/// Name words (lowercase) that make a name a secret's.
const SECRET_WORDS: &[&str] = &["auth", "authorization", "pass", "pwd", "creds", "cookie"];
/// Name parts (lowercase) that make any word containing them a secret's.
const SECRET_PARTS: &[&str] = &["token", "secret", "passw", "passphrase", "credential"];
/// Last name words that say the value is about a secret, not the secret
/// (`--api-key-file PATH`, `--token-url URL`, `AWS_ACCESS_KEY_ID=…`).
const NOT_THE_VALUE: &[&str] = &[
    "file", "path", "dir", "env", "var", "name", "id", "type", "size", "len", "length", "helper", "cmd", "command",
    "sock", "socket", "fd", "url", "uri", "host", "port", "endpoint", "header", "mode", "format", "method",
];
/// Authorization schemes that precede the credential (`Bearer V`).
const AUTH_SCHEMES: &[&str] = &["bearer", "basic", "token", "digest"];
/// A URL user name without a password this long is taken for a token
/// (`https://TOKEN@host`); shorter ones (`git@`, `deploy@`) are kept.
const USERINFO_TOKEN_MIN: usize = 20;

/// Whether `name` (a flag, variable, label or query parameter, dashes and
/// quotes already stripped) names a secret.
pub fn is_secret_name(name: &[u8]) -> bool {
    // Case-insensitive comparisons on the words, without allocating: this
    // runs for every flag and `=` of every exec, and most names are not
    // secrets' (checked first, the exceptions after).
    let is_secret_word = |word: &[u8]| {
        ends_with_ignore_case(word, b"key")
            || ends_with_ignore_case(word, b"keys")
            || SECRET_WORDS.iter().any(|w| word.eq_ignore_ascii_case(w.as_bytes()))
            || SECRET_PARTS.iter().any(|part| contains_ignore_case(word, part.as_bytes()))
    };
    let mut words = name.split(|b| !b.is_ascii_alphanumeric()).filter(|w| w.len() >= 2);
    if name.len() < 3 || !words.clone().any(is_secret_word) {
        return false;
    }
    let first = words.next().unwrap_or_default();
    let last = words.next_back().unwrap_or(first);
    // `--no-auth` is a switch; `--api-key-file PATH` names no secret value.
    !first.eq_ignore_ascii_case(b"no") && !NOT_THE_VALUE.iter().any(|w| last.eq_ignore_ascii_case(w.as_bytes()))
}

fn ends_with_ignore_case(word: &[u8], suffix: &[u8]) -> bool {
    word.len() >= suffix.len() && word[word.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// Whether `haystack` contains `needle` (lowercase ASCII), ignoring case.
fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window.eq_ignore_ascii_case(needle))
}

/// Word separators, copied through unchanged: NUL between arguments,
/// whitespace inside one (`sh -c "curl -H 'Authorization: Bearer V'"`).
fn is_separator(b: u8) -> bool {
    b == 0 || b.is_ascii_whitespace()
}

/// Bytes a name may hold in `NAME=value`.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// Whether `word` is a flag (`-x…`, `--x…`, possibly `=value`) naming a secret.
fn secret_flag(word: &[u8]) -> bool {
    let Some(flag) = word.strip_prefix(b"--").or_else(|| word.strip_prefix(b"-")) else { return false };
    let name = flag.split(|&b| b == b'=').next().unwrap_or(flag);
    name.first().is_some_and(u8::is_ascii_alphabetic) && is_secret_name(name)
}

/// `word` without the quotes and brackets around it.
fn bare(word: &[u8]) -> &[u8] {
    let is_wrapper = |b: &u8| matches!(b, b'"' | b'\'' | b'`' | b'(' | b')' | b'{' | b'}' | b'[' | b']' | b',' | b';');
    let start = word.iter().position(|b| !is_wrapper(b)).unwrap_or(word.len());
    let end = word.iter().rposition(|b| !is_wrapper(b)).map_or(start, |p| p + 1);
    &word[start..end]
}

/// The redacting pass: output so far, and whether the next word is a
/// secret value (it follows `--token`, `Authorization:` or `Bearer`).
struct Pass {
    out: Vec<u8>,
    pending: bool,
}

/// Redacts an argument block (arguments separated by NUL, as exec records
/// and /proc/PID/cmdline hold them); the result has the same separators.
/// `cut`: the block was cut at a bound, so its last word may be the start
/// of a credential and is redacted on its prefix alone.
pub fn argv(block: &[u8], cut: bool) -> Vec<u8> {
    let mut pass = Pass { out: Vec::with_capacity(block.len() + REDACTED.len()), pending: false };
    let mut i = 0;
    while i < block.len() {
        if is_separator(block[i]) {
            pass.out.push(block[i]);
            i += 1;
            continue;
        }
        let end = block[i..].iter().position(|&b| is_separator(b)).map_or(block.len(), |p| i + p);
        pass.word(&block[i..end], cut && end == block.len());
        i = end;
    }
    pass.out
}

/// Redacts free text (a command line joined with spaces, a log field).
pub fn text(text: &str) -> String {
    String::from_utf8_lossy(&argv(text.as_bytes(), false)).into_owned()
}

impl Pass {
    fn redacted(&mut self) {
        self.out.extend_from_slice(REDACTED.as_bytes());
    }

    fn word(&mut self, word: &[u8], cut: bool) {
        let bare = bare(word);
        let secret_flag = secret_flag(word);
        if self.pending {
            self.pending = false;
            if AUTH_SCHEMES.iter().any(|s| bare.eq_ignore_ascii_case(s.as_bytes())) {
                // `Authorization: Bearer V`: the scheme stays, V goes.
                self.out.extend_from_slice(word);
                self.pending = true;
                return;
            }
            if !secret_flag {
                self.redacted();
                return;
            }
            // `--auth --api-key V` (the first was a switch): the second
            // flag is no value, and its own value follows it.
        }
        if secret_flag && !word.contains(&b'=') {
            // `--api-key V`: the value is the next word.
            self.out.extend_from_slice(word);
            self.pending = true;
            return;
        }
        if let Some(label) = bare.strip_suffix(b":")
            && is_secret_name(self::bare(label))
        {
            // `Authorization: V`, `"api_key": V`, `password: V`.
            self.out.extend_from_slice(word);
            self.pending = true;
            return;
        }
        if bare.eq_ignore_ascii_case(b"bearer") {
            self.out.extend_from_slice(word);
            self.pending = true;
            return;
        }
        self.scan(word, cut);
    }

    /// Redacts `NAME=value` assignments, URL passwords and credential
    /// shapes inside one word. Each byte is looked at a bounded number of
    /// times: name runs before `=` are disjoint, and a URL authority is
    /// skipped once read.
    fn scan(&mut self, word: &[u8], cut: bool) {
        let (mut i, mut copied) = (0, 0);
        while i < word.len() {
            if word[i] == b'=' {
                let start = word[..i].iter().rposition(|&b| !is_name_byte(b)).map_or(0, |p| p + 1);
                let name = word[start..i].trim_ascii_start();
                let name = &name[name.iter().position(|&b| b != b'-').unwrap_or(name.len())..];
                if is_secret_name(name) {
                    // Found only for a secret's name: the scan then jumps past the value.
                    let end = word[i + 1..].iter().position(|&b| b == b'&').map_or(word.len(), |p| i + 1 + p);
                    if end > i + 1 {
                        self.out.extend_from_slice(&word[copied..=i]);
                        self.redacted();
                        (i, copied) = (end, end);
                        continue;
                    }
                }
                i += 1;
                continue;
            }
            if word[i..].starts_with(b"://") {
                let authority = i + 3;
                let end = word[authority..]
                    .iter()
                    .position(|b| matches!(b, b'/' | b'?' | b'#'))
                    .map_or(word.len(), |p| authority + p);
                if let Some(at) = word[authority..end].iter().rposition(|&b| b == b'@').map(|p| authority + p) {
                    let userinfo = &word[authority..at];
                    let secret = match userinfo.iter().position(|&b| b == b':') {
                        Some(colon) => Some(authority + colon + 1),
                        None if userinfo.len() >= USERINFO_TOKEN_MIN => Some(authority),
                        None => None,
                    };
                    if let Some(from) = secret.filter(|&from| from < at) {
                        self.out.extend_from_slice(&word[copied..from]);
                        self.redacted();
                        copied = at;
                    }
                    i = at + 1;
                } else {
                    i = authority;
                }
                continue;
            }
            let boundary = i == 0 || !word[i - 1].is_ascii_alphanumeric();
            if boundary
                && TOKEN_STARTS[usize::from(word[i])]
                && let Some(len) = token_len(&word[i..], cut)
            {
                self.out.extend_from_slice(&word[copied..i]);
                self.redacted();
                i += len;
                copied = i;
                continue;
            }
            i += 1;
        }
        self.out.extend_from_slice(&word[copied..]);
    }
}

/// The length of the credential `rest` starts with, if it starts with one.
/// `cut`: `rest` ends where the input was cut, so a credential running to
/// its end may have lost the rest of its body.
fn token_len(rest: &[u8], cut: bool) -> Option<usize> {
    TOKEN_SHAPES.iter().find_map(|shape| {
        let body = rest.strip_prefix(shape.prefix)?;
        let len = body.iter().position(|&b| !(shape.body)(b)).unwrap_or(body.len());
        let to_the_end = len == body.len();
        (len >= shape.min_body || (cut && to_the_end)).then_some(shape.prefix.len() + len)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redacts space-separated text (NUL-separated arguments are covered below).
    fn r(input: &str) -> String {
        text(input)
    }

    const OPENAI: &str = "sk-proj-AAAAbbbbCCCCdddd1234_-xyz";

    #[test]
    fn secret_flags_keep_their_name_and_lose_their_value() {
        assert_eq!(r(&format!("agent --openai-api-key {OPENAI} run")), "agent --openai-api-key [REDACTED] run");
        assert_eq!(r("agent --api-key=hunter2 run"), "agent --api-key=[REDACTED] run");
        assert_eq!(r("agent --token tok123"), "agent --token [REDACTED]");
        assert_eq!(
            r("agent --password p --secret s --auth a"),
            "agent --password [REDACTED] --secret [REDACTED] --auth [REDACTED]"
        );
        assert_eq!(r("agent --anthropic-api-key=x"), "agent --anthropic-api-key=[REDACTED]");
        assert_eq!(
            r("agent -apikey v --accessToken v --clientSecret v"),
            "agent -apikey [REDACTED] --accessToken [REDACTED] --clientSecret [REDACTED]"
        );
        assert_eq!(r("java -Dapi.key=v -jar x.jar"), "java -Dapi.key=[REDACTED] -jar x.jar");
        assert_eq!(r("db --db-passwd v --credentials v"), "db --db-passwd [REDACTED] --credentials [REDACTED]");
    }

    #[test]
    fn a_secret_flag_after_a_switch_is_not_taken_for_its_value() {
        assert_eq!(r("agent --auth --api-key v --verbose"), "agent --auth --api-key [REDACTED] --verbose");
        assert_eq!(r("agent --auth --token=v"), "agent --auth --token=[REDACTED]");
        assert_eq!(r("agent --token --verbose"), "agent --token [REDACTED]", "a value is assumed");
    }

    #[test]
    fn values_about_a_secret_and_switches_stay() {
        assert_eq!(
            r("agent --api-key-file /etc/key --token-url https://x/t"),
            "agent --api-key-file /etc/key --token-url https://x/t"
        );
        assert_eq!(r("agent --no-auth run"), "agent --no-auth run");
        assert_eq!(r("AWS_ACCESS_KEY_ID=ID123 x"), "AWS_ACCESS_KEY_ID=ID123 x");
    }

    #[test]
    fn ordinary_arguments_are_untouched() {
        for plain in [
            "ls -la --verbose /home/u",
            "/usr/bin/sk-tool --max 3",
            "python3 -c import sys; print(sys.argv)",
            "node /usr/lib/node_modules/@anthropic-ai/claude-code/cli.js --print hello",
            "git clone ssh://git@github.com/org/repo.git",
            "curl https://example.com/path?q=1&page=2",
            "sort -k 2 -t , file.csv",
            "make -j4 CC=gcc",
            "author --author Alice",
            "ask-questions desk-lamp",
            "code --keyboard-layout us",
        ] {
            assert_eq!(r(plain), plain);
        }
    }

    #[test]
    fn credential_shapes_are_redacted_anywhere() {
        let cases = [
            (format!("agent {OPENAI}"), "agent [REDACTED]"),
            ("x sk-ant-api03-abcdefghijklmnopqrstuv".to_owned(), "x [REDACTED]"),
            (
                "git push https://ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/o/r".to_owned(),
                "git push https://[REDACTED]@github.com/o/r",
            ),
            ("gh github_pat_11ABCDEFG0123456789_abcdef".to_owned(), "gh [REDACTED]"),
            ("slack xoxb-1234567890-abcdef".to_owned(), "slack [REDACTED]"),
            ("slack xoxp-1234567890-abcdef".to_owned(), "slack [REDACTED]"),
            ("aws AKIAIOSFODNN7EXAMPLE".to_owned(), "aws [REDACTED]"),
            ("g AIzaSyA1234567890abcdefghijklmnopqrstu".to_owned(), "g [REDACTED]"),
            ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig".to_owned(), "jwt [REDACTED]"),
            (format!("--header=X-Key:{OPENAI}"), "--header=X-Key:[REDACTED]"),
            (format!("'{OPENAI}'"), "'[REDACTED]'"),
        ];
        for (input, expected) in cases {
            assert_eq!(r(&input), expected, "{input}");
        }
    }

    #[test]
    fn authorization_headers_and_labels() {
        assert_eq!(r("curl -H Authorization: Bearer abc.def"), "curl -H Authorization: Bearer [REDACTED]");
        assert_eq!(r("Bearer xyz123"), "Bearer [REDACTED]");
        assert_eq!(r("-H 'Authorization: Basic dXNlcjpwYXNz'"), "-H 'Authorization: Basic [REDACTED]");
        assert_eq!(r(r#"{"api_key": "v", "model": "m"}"#), r#"{"api_key": [REDACTED] "model": "m"}"#);
        assert_eq!(r("x-api-key: v"), "x-api-key: [REDACTED]");
    }

    #[test]
    fn assignments_urls_and_queries() {
        assert_eq!(r(&format!("env OPENAI_API_KEY={OPENAI} claude")), "env OPENAI_API_KEY=[REDACTED] claude");
        assert_eq!(r("env GITHUB_TOKEN=abc PGPASSWORD=p cmd"), "env GITHUB_TOKEN=[REDACTED] PGPASSWORD=[REDACTED] cmd");
        assert_eq!(r("psql postgres://app:s3cr3t@db:5432/x"), "psql postgres://app:[REDACTED]@db:5432/x");
        assert_eq!(r("curl https://h/v1?access_token=abc&x=1"), "curl https://h/v1?access_token=[REDACTED]&x=1");
        assert_eq!(r("curl https://u:p@ss@h/"), "curl https://u:[REDACTED]@h/");
    }

    #[test]
    fn argument_blocks_keep_their_separators() {
        let block = format!("agent\0--openai-api-key\0{OPENAI}\0--token=ghp_x\0Bearer xyz987\0--verbose\0");
        let redacted = argv(block.as_bytes(), false);
        assert_eq!(
            redacted,
            b"agent\0--openai-api-key\0[REDACTED]\0--token=[REDACTED]\0Bearer [REDACTED]\0--verbose\0"
        );
        // The value of a flag at the very end has nothing to redact.
        assert_eq!(argv(b"agent\0--token\0", false), b"agent\0--token\0");
        assert_eq!(argv(b"", false), b"");
    }

    #[test]
    fn a_cut_block_loses_a_credential_prefix_too() {
        assert_eq!(argv(b"agent\0sk-proj-AB", true), b"agent\0[REDACTED]");
        assert_eq!(argv(b"agent\0sk-proj-AB", false), b"agent\0sk-proj-AB");
        assert_eq!(argv(b"agent\0sk-proj-AB\0", true), b"agent\0sk-proj-AB\0", "complete: not cut");
    }

    #[test]
    fn non_utf8_is_passed_through() {
        let block = b"\xff\xfe --token \xff\xfe";
        assert_eq!(argv(block, false), b"\xff\xfe --token [REDACTED]");
    }

    #[test]
    fn redacting_twice_changes_nothing() {
        let once = r(&format!("a --api-key {OPENAI} KEY=v https://u:p@h Bearer t"));
        assert_eq!(r(&once), once);
    }

    proptest::proptest! {
        /// A credential placed among arbitrary arguments, in any of the
        /// forms tyrd redacts, never survives, and redaction never panics.
        #[test]
        fn an_inserted_credential_never_survives(
            before in proptest::collection::vec("[ -~]{0,12}", 0..6),
            after in proptest::collection::vec("[ -~]{0,12}", 0..6),
            body in "[A-Za-z0-9]{24,40}",
            form in 0usize..7,
            cut in proptest::bool::ANY,
        ) {
            let inserted = match form {
                0 => vec![format!("sk-proj-{body}")],
                1 => vec!["--openai-api-key".to_owned(), body.clone()],
                2 => vec![format!("--token={body}")],
                3 => vec![format!("OPENAI_API_KEY={body}")],
                4 => vec![format!("Bearer {body}")],
                5 => vec![format!("https://user:{body}@example.com/")],
                _ => vec!["Authorization:".to_owned(), "Bearer".to_owned(), body.clone()],
            };
            let args: Vec<String> = before.into_iter().chain(inserted).chain(after).collect();
            let block: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
            let redacted = argv(&block, cut);
            let leaked = redacted.windows(body.len()).any(|w| w == body.as_bytes());
            proptest::prop_assert!(!leaked, "{}", String::from_utf8_lossy(&redacted));
        }
    }
}
