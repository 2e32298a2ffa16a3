//! etcd's HTTP/JSON gateway: every method of the KV, Watch, Lease, Cluster,
//! Maintenance, Auth, Lock and Election services as a `POST` of JSON under
//! `/v3/` (and `/v3beta/`, which etcd 3.4 still serves), on the client port
//! beside gRPC, for clients without gRPC (`curl`, scripts, browsers).
//!
//! Answered as etcd 3.4's grpc-gateway answers:
//! * the JSON is protobuf's, with the proto field names: 64-bit integers as
//!   strings, bytes in base64, enums by name, zero values left out, unknown
//!   fields ignored, an empty body read as an empty request;
//! * an error is `{"error": m, "message": m, "code": c}` with gRPC's code `c`
//!   and the HTTP status grpc-gateway maps it to (InvalidArgument 400,
//!   NotFound 404, Unavailable 503, ...);
//! * a stream (watch, lease keep-alive, snapshot, observe) answers with one
//!   line per message, `{"result": ...}`; the body may carry several
//!   requests one after the other (watch creations, keep-alives), and the
//!   answer goes on until the client leaves, as over gRPC;
//! * the token of an authenticated user comes in the `Authorization` header
//!   (or `Grpc-Metadata-Token`), as grpc-gateway forwards it;
//! * CORS headers allow any origin, as etcd's defaults do.
//!
//! The calls go to the same service code as gRPC's: the gateway only
//! converts, so it answers what gRPC answers.

use crate::pb::etcdserverpb::{
    auth_server::Auth, cluster_server::Cluster, kv_server::Kv, lease_server::Lease,
    maintenance_server::Maintenance, watch_server::Watch,
};
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::{Backend, EtcdServer};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{any, post, MethodRouter};
use axum::Router;
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status, Streaming};

/// The prefixes etcd 3.4 serves its gateway under.
const PREFIXES: [&str; 2] = ["/v3/", "/v3beta/"];

/// gRPC's code as the HTTP status grpc-gateway (v1, etcd 3.4's) answers with.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn respond(status: StatusCode, content_type: Option<&'static str>, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Some(t) = content_type {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
    }
    r
}

async fn not_found() -> Response {
    let mut r = respond(
        StatusCode::NOT_FOUND,
        Some("text/plain; charset=utf-8"),
        Body::from("Not Found\n"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// An error answer: gRPC's code and message in grpc-gateway's shape.
fn error(code: Code, message: &str) -> Response {
    let m = serde_json::to_string(message).expect("a string serializes");
    let body = format!(r#"{{"error":{m},"message":{m},"code":{}}}"#, code as i32);
    respond(
        http_status(code),
        Some("application/json"),
        Body::from(body),
    )
}

fn json<T: Serialize>(msg: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(msg).map_err(|e| Status::internal(format!("synod: JSON of an answer: {e}")))
}

/// The request's body, whole, refused past `max` bytes as gRPC refuses a
/// message over its limit.
async fn body(req: Request, max: usize) -> Result<(HeaderMap, Bytes), Response> {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, max).await {
        Ok(b) => Ok((parts.headers, b)),
        Err(_) => Err(error(
            Code::ResourceExhausted,
            &format!("grpc: received message larger than max (more than {max})"),
        )),
    }
}

/// One request message: an empty body is an empty request. The error is
/// the answer to a body that is not one.
fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
}

/// The request's headers and its one message.
async fn one<Req: DeserializeOwned + Default>(
    req: Request,
    max: usize,
) -> Result<(HeaderMap, Req), Response> {
    let (headers, body) = body(req, max).await?;
    let msg = parse::<Req>(&body).map_err(unparsable)?;
    Ok((headers, msg))
}

/// Every request message in the body, one JSON value after another.
fn parse_all<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, serde_json::Error> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .collect()
}

fn unparsable(e: serde_json::Error) -> Response {
    error(Code::InvalidArgument, &e.to_string())
}

/// `msg` as a gRPC request with the metadata grpc-gateway forwards: the
/// `Authorization` header, and every `Grpc-Metadata-*` header without its
/// prefix.
fn grpc_request<T>(headers: &HeaderMap, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    let md = r.metadata_mut();
    for (name, value) in headers {
        let key = match name.as_str() {
            "authorization" => "authorization",
            n => match n.strip_prefix("grpc-metadata-") {
                Some(k) => k,
                None => continue,
            },
        };
        let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_bytes()),
        ) else {
            continue;
        };
        md.insert(key, value);
    }
    r
}

type Call<Req, Resp> = Box<
    dyn FnOnce(tonic::Request<Req>) -> Pin<Box<dyn Future<Output = Result<Resp, Status>> + Send>>
        + Send,
>;

/// A unary method: one request, one answer.
async fn unary<Req, Resp>(
    req: Request,
    max: usize,
    call: Call<Req, tonic::Response<Resp>>,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
{
    let (headers, msg) = match one::<Req>(req, max).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    match call(grpc_request(&headers, msg))
        .await
        .and_then(|r| json(r.get_ref()))
    {
        Ok(out) => respond(StatusCode::OK, Some("application/json"), Body::from(out)),
        Err(s) => error(s.code(), s.message()),
    }
}

/// A stream's answers, a line each: `{"result": ...}`, or at a failure
/// `{"error": ...}` in grpc-gateway's words, which ends it.
fn lines<Resp, S>(answers: S, keep: impl Send + 'static) -> Response
where
    Resp: Serialize,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    let mut failed = false;
    let out = answers
        .map_while(move |a| {
            // `keep` lives as long as the answer: see [`Feed`].
            let _ = &keep;
            if failed {
                return None;
            }
            let line = match a.and_then(|m| json(&m)) {
                Ok(m) => {
                    let mut line = Vec::with_capacity(m.len() + 12);
                    line.extend_from_slice(br#"{"result":"#);
                    line.extend_from_slice(&m);
                    line.extend_from_slice(b"}\n");
                    line
                }
                Err(s) => {
                    failed = true;
                    let code = s.code();
                    let http = http_status(code);
                    let m = serde_json::to_string(s.message()).expect("a string serializes");
                    format!(
                        r#"{{"error":{{"grpc_code":{},"http_code":{},"message":{m},"http_status":"{}"}}}}"#,
                        code as i32,
                        http.as_u16(),
                        http.canonical_reason().unwrap_or(""),
                    )
                    .into_bytes()
                }
            };
            Some(Ok::<_, std::convert::Infallible>(Bytes::from(line)))
        });
    respond(
        StatusCode::OK,
        Some("application/json"),
        Body::from_stream(out),
    )
}

/// A server stream (snapshot, observe): one request, answers until the
/// stream or the client ends.
async fn server_stream<Req, Resp, S>(
    req: Request,
    max: usize,
    call: Call<Req, tonic::Response<S>>,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    let (headers, msg) = match one::<Req>(req, max).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    match call(grpc_request(&headers, msg)).await {
        Ok(answers) => lines(answers.into_inner(), ()),
        Err(s) => error(s.code(), s.message()),
    }
}

/// A bidirectional stream (watch, keep-alive): the body's requests, then
/// answers until the client leaves.
async fn bidi_stream<Req, Resp, S>(
    req: Request,
    max: usize,
    call: Call<Streaming<Req>, tonic::Response<S>>,
) -> Response
where
    Req: DeserializeOwned + prost::Message + Default + Send + 'static,
    Resp: Serialize,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    let (headers, body) = match body(req, max).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let msgs = match parse_all::<Req>(&body) {
        Ok(m) => m,
        Err(e) => return unparsable(e),
    };
    let (feed, gone) = Feed::new(&msgs);
    let inbound = Streaming::new_request(
        tonic_prost::ProstDecoder::<Req>::default(),
        feed,
        None,
        None,
    );
    match call(grpc_request(&headers, inbound)).await {
        Ok(answers) => lines(answers.into_inner(), gone),
        Err(s) => error(s.code(), s.message()),
    }
}

/// A bidirectional stream's requests as the gRPC body they would have come
/// in: the messages framed, then nothing until the client leaves (its
/// answer, holding the sender, is dropped), when the body ends as a closed
/// gRPC stream does and the service lets its watchers go.
struct Feed {
    data: Option<Bytes>,
    gone: tokio::sync::oneshot::Receiver<()>,
}

impl Feed {
    fn new<T: prost::Message>(msgs: &[T]) -> (Feed, tokio::sync::oneshot::Sender<()>) {
        let mut data = BytesMut::new();
        for m in msgs {
            let len = m.encoded_len();
            data.put_u8(0);
            data.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
            m.encode(&mut data).expect("BytesMut grows");
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let feed = Feed {
            data: Some(data.freeze()).filter(|d| !d.is_empty()),
            gone: rx,
        };
        (feed, tx)
    }
}

impl http_body::Body for Feed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(d))));
        }
        match Pin::new(&mut self.gone).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(None),
        }
    }
}

/// `POST` (and the CORS preflight) at every prefix.
fn at<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    paths: &[&str],
    handler: MethodRouter<S>,
) -> Router<S> {
    let preflight = || async { respond(StatusCode::OK, None, Body::empty()) };
    let mut router = router;
    for prefix in PREFIXES {
        for path in paths {
            router = router.route(
                &format!("{prefix}{path}"),
                handler.clone().options(preflight),
            );
        }
    }
    router
}

/// Routes a method of one of the service traits through `handler`
/// (`unary`, `server_stream` or `bidi_stream`).
macro_rules! route {
    ($router:ident, $server:ident, $max:ident, $handler:ident, $trait:ident :: $method:ident, $($path:literal),+) => {{
        let s = $server.clone();
        $router = at($router, &[$($path),+], post(move |req: Request| {
            let s = s.clone();
            let call: Call<_, _> = Box::new(move |r| Box::pin(async move {
                <EtcdServer<B> as $trait>::$method(&s, r).await
            }));
            $handler(req, $max, call)
        }));
    }};
}

/// Routes a unary method.
macro_rules! unary {
    ($router:ident, $server:ident, $max:ident, $($rest:tt)+) => {
        route!($router, $server, $max, unary, $($rest)+)
    };
}

impl<B: Backend> EtcdServer<B> {
    /// The gateway's routes, to merge with the gRPC services' router.
    pub fn gateway(self) -> Router {
        let max = self.limits().max_request_bytes + crate::service::GRPC_OVERHEAD_BYTES;
        let s = self;
        let mut r = Router::new();
        unary!(r, s, max, Kv::range, "kv/range");
        unary!(r, s, max, Kv::put, "kv/put");
        unary!(r, s, max, Kv::delete_range, "kv/deleterange");
        unary!(r, s, max, Kv::txn, "kv/txn");
        unary!(r, s, max, Kv::compact, "kv/compaction");
        unary!(r, s, max, Lease::lease_grant, "lease/grant");
        unary!(
            r,
            s,
            max,
            Lease::lease_revoke,
            "lease/revoke",
            "kv/lease/revoke"
        );
        unary!(
            r,
            s,
            max,
            Lease::lease_time_to_live,
            "lease/timetolive",
            "kv/lease/timetolive"
        );
        unary!(
            r,
            s,
            max,
            Lease::lease_leases,
            "lease/leases",
            "kv/lease/leases"
        );
        unary!(r, s, max, Cluster::member_add, "cluster/member/add");
        unary!(r, s, max, Cluster::member_remove, "cluster/member/remove");
        unary!(r, s, max, Cluster::member_update, "cluster/member/update");
        unary!(r, s, max, Cluster::member_list, "cluster/member/list");
        unary!(r, s, max, Cluster::member_promote, "cluster/member/promote");
        unary!(r, s, max, Maintenance::alarm, "maintenance/alarm");
        unary!(r, s, max, Maintenance::status, "maintenance/status");
        unary!(r, s, max, Maintenance::defragment, "maintenance/defragment");
        // HashKV shares Hash's path in etcd's protos; etcd answers Hash there.
        unary!(r, s, max, Maintenance::hash, "maintenance/hash");
        unary!(
            r,
            s,
            max,
            Maintenance::move_leader,
            "maintenance/transfer-leadership"
        );
        unary!(r, s, max, Auth::auth_enable, "auth/enable");
        unary!(r, s, max, Auth::auth_disable, "auth/disable");
        unary!(r, s, max, Auth::authenticate, "auth/authenticate");
        unary!(r, s, max, Auth::user_add, "auth/user/add");
        unary!(r, s, max, Auth::user_get, "auth/user/get");
        unary!(r, s, max, Auth::user_list, "auth/user/list");
        unary!(r, s, max, Auth::user_delete, "auth/user/delete");
        unary!(r, s, max, Auth::user_change_password, "auth/user/changepw");
        unary!(r, s, max, Auth::user_grant_role, "auth/user/grant");
        unary!(r, s, max, Auth::user_revoke_role, "auth/user/revoke");
        unary!(r, s, max, Auth::role_add, "auth/role/add");
        unary!(r, s, max, Auth::role_get, "auth/role/get");
        unary!(r, s, max, Auth::role_list, "auth/role/list");
        unary!(r, s, max, Auth::role_delete, "auth/role/delete");
        unary!(r, s, max, Auth::role_grant_permission, "auth/role/grant");
        unary!(r, s, max, Auth::role_revoke_permission, "auth/role/revoke");
        unary!(r, s, max, Lock::lock, "lock/lock");
        unary!(r, s, max, Lock::unlock, "lock/unlock");
        unary!(r, s, max, Election::campaign, "election/campaign");
        unary!(r, s, max, Election::proclaim, "election/proclaim");
        unary!(r, s, max, Election::leader, "election/leader");
        unary!(r, s, max, Election::resign, "election/resign");

        route!(r, s, max, bidi_stream, Watch::watch, "watch");
        route!(
            r,
            s,
            max,
            bidi_stream,
            Lease::lease_keep_alive,
            "lease/keepalive"
        );
        route!(
            r,
            s,
            max,
            server_stream,
            Maintenance::snapshot,
            "maintenance/snapshot"
        );
        route!(
            r,
            s,
            max,
            server_stream,
            Election::observe,
            "election/observe"
        );
        // Any other path under the prefixes, as grpc-gateway answers it.
        for prefix in PREFIXES {
            r = r.route(&format!("{prefix}{{*rest}}"), any(not_found));
        }
        r
    }
}
