//! The README's examples do what it shows: its configuration runs the real binary, and each
//! curl command marked `<!-- readme-test -->` is sent to it, in order, its answer compared
//! with the output printed under it: the status, the content type, and the body line by
//! line (for streams, the SSE lines shown, comments aside), with event ids mapped one to one
//! between the README and the run. A README id used in a later command (a resume) is
//! replaced by the id it stood for, so a resume from an id the reader never had would fail.

use crate::support::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Response, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
const CI: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run"));

/// The fenced block that starts after the first line of `text` beginning with "```":
/// its info string and its content; and the text after it.
fn next_block(text: &str) -> (&str, &str, &str) {
    let start = text.find("```").expect("a fenced block");
    let after = &text[start + 3..];
    let (info, body) = after.split_once('\n').unwrap();
    let end = body.find("\n```").expect("a closing fence");
    let content = &body[..end + 1];
    let rest = &body[end + 4..];
    (info.trim(), content, rest)
}

/// A README example: a curl command and the output shown under it.
struct Example {
    command: String,
    output: String,
}

/// The configuration and the marked examples, in order.
fn examples() -> (String, Vec<Example>) {
    let (_, config_part) = README
        .split_once("<!-- readme-test: config -->")
        .expect("the README marks its configuration");
    let (info, config, _) = next_block(config_part);
    assert_eq!(info, "yaml");
    let mut out = Vec::new();
    for part in README.split("<!-- readme-test -->").skip(1) {
        let (info, command, rest) = next_block(part);
        assert_eq!(info, "sh", "a marked example is a sh block");
        let (info, output, _) = next_block(rest);
        assert_eq!(
            info, "http",
            "an example's output follows it in an http block"
        );
        out.push(Example {
            command: command.to_owned(),
            output: output.to_owned(),
        });
    }
    (config.to_owned(), out)
}

/// Splits a shell command line as sh would for the quoting the README uses: single and
/// double quotes, and backslash-newline continuations.
fn shell_words(command: &str) -> Vec<String> {
    let text = command.replace("\\\n", " ");
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// What a curl command line asks for.
struct Curl {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    /// `-N`: a stream, read as it arrives.
    stream: bool,
}

fn parse_curl(command: &str) -> Curl {
    let words = shell_words(command);
    assert_eq!(words[0], "curl", "{command}");
    let mut curl = Curl {
        method: String::new(),
        url: String::new(),
        headers: Vec::new(),
        body: None,
        stream: false,
    };
    let mut args = words[1..].iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-s" | "-i" => {}
            "-N" => curl.stream = true,
            "-X" => curl.method.clone_from(args.next().unwrap()),
            "-H" => {
                let (k, v) = args.next().unwrap().split_once(':').unwrap();
                curl.headers
                    .push((k.trim().to_owned(), v.trim().to_owned()));
            }
            "-d" => curl.body = Some(args.next().unwrap().clone()),
            flag if flag.starts_with('-') => panic!("unsupported curl flag {flag}: {command}"),
            url => curl.url = url.to_owned(),
        }
    }
    if curl.method.is_empty() {
        curl.method = if curl.body.is_some() { "POST" } else { "GET" }.to_owned();
    }
    curl
}

/// The event ids (`<ms>-<seq>`) in a line, with their byte ranges.
fn ids(line: &str) -> Vec<(usize, usize)> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits >= 10 && b.get(i + digits) == Some(&b'-') {
            let seq = b[i + digits + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if seq > 0 {
                out.push((i, i + digits + 1 + seq));
                i += digits + 1 + seq;
                continue;
            }
        }
        i += digits.max(1);
    }
    out
}

/// README ids ↔ ids of this run, one to one.
#[derive(Default)]
struct IdMap {
    to_real: HashMap<String, String>,
    to_readme: HashMap<String, String>,
}

impl IdMap {
    /// Compares a README line with a line of the run, ids aside, recording each id pair.
    fn same(&mut self, readme: &str, real: &str, context: &str) {
        let (want, got) = (ids(readme), ids(real));
        let blank = |line: &str, ranges: &[(usize, usize)]| {
            let mut s = line.to_owned();
            for (a, b) in ranges.iter().rev() {
                s.replace_range(a..b, "<id>");
            }
            s
        };
        assert_eq!(blank(readme, &want), blank(real, &got), "{context}");
        for ((a, b), (c, d)) in want.iter().zip(&got) {
            let (readme_id, real_id) = (&readme[*a..*b], &real[*c..*d]);
            let known = self
                .to_real
                .entry(readme_id.to_owned())
                .or_insert_with(|| real_id.to_owned());
            assert_eq!(known, real_id, "{context}: README id {readme_id}");
            let known = self
                .to_readme
                .entry(real_id.to_owned())
                .or_insert_with(|| readme_id.to_owned());
            assert_eq!(known, readme_id, "{context}: id {real_id}");
        }
    }

    /// `text` with every README id replaced by the id it stands for in this run.
    fn substitute(&self, text: &str) -> String {
        let mut s = text.to_owned();
        for (a, b) in ids(text).into_iter().rev() {
            let readme_id = &text[a..b];
            let real = self.to_real.get(readme_id).unwrap_or_else(|| {
                panic!("{text:?} uses the id {readme_id}, which no earlier example produced")
            });
            s.replace_range(a..b, real);
        }
        s
    }
}

/// An output block: its status code, its content type and its body lines.
fn expected(output: &str) -> (StatusCode, String, Vec<String>) {
    let (head, body) = output.split_once("\n\n").unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let content_type = lines
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap()
        .to_owned();
    let mut body: Vec<String> = body.lines().map(str::to_owned).collect();
    while body.last().is_some_and(String::is_empty) {
        body.pop();
    }
    (StatusCode::from_u16(status).unwrap(), content_type, body)
}

/// A stream being read, and what it has sent so far.
struct OpenStream {
    resp: Response<Incoming>,
    raw: Vec<u8>,
}

impl OpenStream {
    /// Its first `n` lines, comments aside (a heartbeat block leaves no blank line behind),
    /// reading until it has sent them.
    async fn lines(&mut self, n: usize) -> Vec<String> {
        loop {
            let text = String::from_utf8(self.raw.clone()).unwrap();
            let complete = text.rfind('\n').map_or("", |end| &text[..end]);
            let mut lines: Vec<String> = Vec::new();
            for line in complete.split('\n').filter(|l| !l.starts_with(':')) {
                if !(line.is_empty() && lines.last().is_some_and(String::is_empty)) {
                    lines.push(line.to_owned());
                }
            }
            if !complete.is_empty() && lines.len() >= n {
                lines.truncate(n);
                return lines;
            }
            let frame = tokio::time::timeout(DEADLINE, self.resp.body_mut().frame())
                .await
                .unwrap_or_else(|_| panic!("no more of the stream within {DEADLINE:?}: {text}"))
                .unwrap_or_else(|| panic!("the stream ended early: {text}"))
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.raw.extend_from_slice(&data);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_give_the_output_shown() {
    let (config, examples) = examples();
    assert!(examples.len() >= 4, "{} marked examples", examples.len());
    let app = upstream(|_req| async { Response::new(full("app")) }).await;
    assert!(config.contains("http://127.0.0.1:3000"), "{config}");
    let config = format!(
        "{}listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n",
        config.replace("127.0.0.1:3000", &app.addr.to_string())
    );
    let ssegate = Binary::start(&config, "").await;
    let address = |url: &str| -> (SocketAddr, String) {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let addr = match host {
            "127.0.0.1:8080" => ssegate.proxy,
            "127.0.0.1:8081" => ssegate.admin,
            other => panic!("{url}: an address the README does not configure: {other}"),
        };
        (addr, path.to_owned())
    };

    let mut id_map = IdMap::default();
    // Streams are compared once the examples after them (the publishes they show) have run.
    let mut open: Vec<(OpenStream, Vec<String>, String)> = Vec::new();
    for example in &examples {
        let curl = parse_curl(&example.command);
        let context = example.command.trim().to_owned();
        let (status, content_type, body) = expected(&example.output);
        let (addr, path) = address(&id_map.substitute(&curl.url));
        let headers: Vec<(String, String)> = curl
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), id_map.substitute(v)))
            .collect();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let req_body = Bytes::from(curl.body.clone().unwrap_or_default());
        if curl.stream {
            for (mut stream, lines, context) in open.drain(..) {
                let got = stream.lines(lines.len()).await;
                for (want, got) in lines.iter().zip(&got) {
                    id_map.same(want, got, &context);
                }
            }
        }
        let resp = send(addr, request(&curl.method, &path, &headers, req_body)).await;
        assert_eq!(resp.status(), status, "{context}");
        assert_eq!(
            header(resp.headers(), "content-type"),
            Some(content_type.as_str()),
            "{context}"
        );
        if curl.stream {
            // Subscribed once its head is here: what later examples publish reaches it.
            open.push((
                OpenStream {
                    resp,
                    raw: Vec::new(),
                },
                body,
                context,
            ));
        } else {
            let got = body_bytes(resp).await;
            let got = String::from_utf8(got.to_vec()).unwrap();
            let got: Vec<&str> = got.lines().collect();
            assert_eq!(got.len(), body.len(), "{context}: {got:?}");
            for (want, got) in body.iter().zip(got) {
                id_map.same(want, got, &context);
            }
        }
    }
    for (mut stream, lines, context) in open {
        let got = stream.lines(lines.len()).await;
        for (want, got) in lines.iter().zip(&got) {
            id_map.same(want, got, &context);
        }
    }
}

#[test]
fn readme_starts_with_the_demo_then_the_test_command_ci_runs() {
    let commands: Vec<&str> = README
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .collect();
    let demo = commands
        .iter()
        .position(|c| *c == "cargo run --release -- demo")
        .expect("the demo command");
    let test = commands
        .iter()
        .position(|c| *c == "cargo test")
        .expect("the test command");
    assert!(demo < test, "the demo comes first");
    let ci_last = CI
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap();
    assert_eq!(ci_last, "cargo test", "CI runs the README's test command");
    assert!(
        README.contains("1.88"),
        "the minimum Rust version is stated"
    );
}
