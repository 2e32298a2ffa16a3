//! etcd's HTTP/JSON gateway (`/v3/...`) over plain HTTP/1.1, as `curl` uses
//! it. The shapes asserted here are etcd 3.4.23's answers to the same
//! requests (recorded by hand with curl; ids and revisions differ).

mod common;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use synod_etcd::Limits;

/// A connection that has sent one request (`extra`: more header lines).
fn send(addr: &str, method: &str, path: &str, body: &str, extra: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

/// One HTTP/1.1 exchange: (status, headers, body).
fn http(addr: &str, method: &str, path: &str, body: &str, extra: &str) -> (u16, String, String) {
    let close = format!("{extra}Connection: close\r\n");
    let mut s = send(addr, method, path, body, &close);
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (
        head[9..12].parse().unwrap(),
        head.to_lowercase(),
        body.to_string(),
    )
}

fn post(addr: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, _, body) = http(addr, "POST", path, body, "");
    (status, serde_json::from_str(&body).unwrap())
}

/// The header every answer carries, as the gateway writes it.
fn header(revision: &str) -> Value {
    json!({"cluster_id": "6005917680425500673", "member_id": "1", "revision": revision, "raft_term": "1"})
}

async fn server() -> String {
    common::serve(Limits::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_answer_protobufs_json_as_etcds_gateway_writes_it() {
    let addr = server().await;
    tokio::task::spawn_blocking(move || {
        // "foo" = "bar", in base64; 64-bit integers as strings; zero
        // values (more: false) left out.
        let (status, put) = post(&addr, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
        assert_eq!(status, 200);
        assert_eq!(put, json!({"header": header("2")}));
        let (_, range) = post(&addr, "/v3/kv/range", r#"{"key":"Zm9v"}"#);
        let kv = json!({"key": "Zm9v", "create_revision": "2", "mod_revision": "2", "version": "1", "value": "YmFy"});
        assert_eq!(
            range,
            json!({"header": header("2"), "kvs": [kv], "count": "1"})
        );
        // etcd 3.4 still serves the older prefix; enums by name or number,
        // integers as strings or numbers, unknown fields ignored.
        let (_, beta) = post(
            &addr,
            "/v3beta/kv/range",
            r#"{"key":"Zm9v","sort_order":"DESCEND","sort_target":2,"limit":"1","unknown":1}"#,
        );
        assert_eq!(beta, range);
        // Operations inside a transaction carry their revision alone, as the
        // operation saw the store: a read before the first write sees the
        // revision before the transaction.
        let (_, txn) = post(
            &addr,
            "/v3/kv/txn",
            r#"{"success":[{"request_range":{"key":"Zm9v","count_only":true}},{"request_put":{"key":"Zm9v","value":"YmF6"}},{"request_range":{"key":"Zm9v","count_only":true}}]}"#,
        );
        assert_eq!(
            txn,
            json!({"header": header("3"), "succeeded": true, "responses": [
                {"response_range": {"header": {"revision": "2"}, "count": "1"}},
                {"response_put": {"header": {"revision": "3"}}},
                {"response_range": {"header": {"revision": "3"}, "count": "1"}},
            ]})
        );
        let (_, grant) = post(&addr, "/v3/lease/grant", r#"{"TTL":60,"ID":77}"#);
        assert_eq!(grant, json!({"header": header("3"), "ID": "77", "TTL": "60"}));
        let (status, _) = post(&addr, "/v3/kv/lease/revoke", r#"{"ID":"77"}"#);
        assert_eq!(status, 200);
        // etcd's alarm answer has no header.
        let (_, alarms) = post(&addr, "/v3/maintenance/alarm", r#"{"action":"GET"}"#);
        assert_eq!(alarms, json!({}));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_answer_with_grpcs_code_and_the_gateways_http_status() {
    let addr = server().await;
    tokio::task::spawn_blocking(move || {
        let error =
            |message: &str, code: i32| json!({"error": message, "message": message, "code": code});
        let future = "etcdserver: mvcc: required revision is a future revision";
        assert_eq!(
            post(&addr, "/v3/kv/range", r#"{"key":"Zm9v","revision":100}"#),
            (400, error(future, 11))
        );
        // An empty body is an empty request.
        assert_eq!(
            post(&addr, "/v3/kv/range", ""),
            (400, error("etcdserver: key is not provided", 3))
        );
        assert_eq!(
            post(&addr, "/v3/lease/revoke", r#"{"ID":5}"#),
            (404, error("etcdserver: requested lease not found", 5))
        );
        // JSON that does not parse is InvalidArgument (etcd words it as Go's
        // decoder does).
        let (status, bad) = post(&addr, "/v3/kv/range", r#"{"key":"#);
        assert_eq!((status, &bad["code"]), (400, &json!(3)));
        let (status, head, body) = http(&addr, "POST", "/v3/nope", "{}", "");
        assert_eq!((status, body.as_str()), (404, "Not Found\n"));
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        let (status, _, _) = http(&addr, "GET", "/v3/kv/range", "", "");
        assert_eq!(status, 405);
        let (status, head, _) = http(&addr, "OPTIONS", "/v3/kv/range", "", "");
        assert_eq!(status, 200);
        assert!(head.contains("access-control-allow-methods: post, get, options, put, delete"));
    })
    .await
    .unwrap();
}

/// Reads `n` lines of a streamed answer, then closes the connection; runs
/// `meanwhile` once the first `after` have come.
fn stream_lines(
    addr: &str,
    path: &str,
    body: &str,
    (after, n): (usize, usize),
    meanwhile: impl FnOnce(),
) -> Vec<Value> {
    let mut r = BufReader::new(send(addr, "POST", path, body, ""));
    let mut line = String::new();
    // The status line and headers, up to the blank line.
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let mut out = Vec::new();
    let mut meanwhile = Some(meanwhile);
    while out.len() < n {
        // Chunked: a size line, then the chunk.
        line.clear();
        r.read_line(&mut line).unwrap();
        let size = usize::from_str_radix(line.trim(), 16).unwrap();
        let mut chunk = vec![0; size + 2];
        r.read_exact(&mut chunk).unwrap();
        let text = String::from_utf8(chunk).unwrap();
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push(serde_json::from_str(l).unwrap());
        }
        if out.len() >= after {
            if let Some(f) = meanwhile.take() {
                f();
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_answer_a_result_per_line_until_the_client_leaves() {
    let addr = server().await;
    tokio::task::spawn_blocking(move || {
        // Two watches created by one body; the stream stays open after it.
        let a = addr.clone();
        let lines = stream_lines(
            &addr,
            "/v3/watch",
            r#"{"create_request":{"key":"Zm9v"}}{"create_request":{"key":"YmFy","prev_kv":true}}"#,
            (2, 3),
            move || {
                post(&a, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
            },
        );
        assert_eq!(
            lines,
            [
                json!({"result": {"header": header("1"), "created": true}}),
                json!({"result": {"header": header("1"), "watch_id": "1", "created": true}}),
                json!({"result": {"header": header("2"), "events": [{"kv": {"key": "Zm9v", "create_revision": "2", "mod_revision": "2", "version": "1", "value": "YmFy"}}]}}),
            ]
        );
        // Keep-alives, one per request in the body; a lease that is gone
        // answers a TTL of 0 (left out) under a header.
        post(&addr, "/v3/lease/grant", r#"{"TTL":30,"ID":99}"#);
        let lines = stream_lines(
            &addr,
            "/v3/lease/keepalive",
            r#"{"ID":"99"}{"ID":5}"#,
            (0, 2),
            || {},
        );
        assert_eq!(
            lines,
            [
                json!({"result": {"header": header("2"), "ID": "99", "TTL": "30"}}),
                json!({"result": {"header": header("2"), "ID": "5"}}),
            ]
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_travels_in_the_authorization_header() {
    let addr = server().await;
    tokio::task::spawn_blocking(move || {
        for (path, body) in [
            ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#),
            ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
            ("/v3/auth/enable", "{}"),
        ] {
            assert_eq!(post(&addr, path, body).0, 200, "{path}");
        }
        // Without a token, as etcd 3.4 refuses it.
        let (status, denied) = post(&addr, "/v3/kv/put", r#"{"key":"YQ==","value":"Yg=="}"#);
        assert_eq!(
            (status, &denied["message"]),
            (400, &json!("etcdserver: user name is empty"))
        );
        let (_, auth) = post(
            &addr,
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"pw"}"#,
        );
        let token = auth["token"].as_str().unwrap();
        let (status, _, body) = http(
            &addr,
            "POST",
            "/v3/kv/put",
            r#"{"key":"YQ==","value":"Yg=="}"#,
            &format!("Authorization: {token}\r\n"),
        );
        assert_eq!(status, 200, "{body}");
    })
    .await
    .unwrap();
}
