//! A small blocking HTTP client over `wasi:http/outgoing-handler`, for
//! executors that call a model server. The host decides which hosts are
//! reachable: a call to any other fails with `HttpRequestDenied`.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme, http_error_code,
};
use wasip2::io::streams::StreamError;

/// The most a single write to an output stream may carry.
const WRITE_CHUNK: usize = 4096;

/// A response: its status and whole body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a request produced no response.
#[derive(Debug)]
pub enum Error {
    /// The URL is not `http://` or `https://` followed by a host.
    BadUrl(String),
    /// The host refused or failed the request.
    Http(ErrorCode),
    /// Anything else, described.
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::BadUrl(url) => write!(f, "not an http(s) URL: {url:?}"),
            Error::Http(ErrorCode::HttpRequestDenied) => {
                write!(
                    f,
                    "request denied: the host is not on this plugin's allow-list"
                )
            }
            Error::Http(code) => write!(f, "http error: {code:?}"),
            Error::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

/// Sends one request and reads the whole response.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::BadUrl(url.to_owned()))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(Error::BadUrl(url.to_owned())),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(Error::BadUrl(url.to_owned()));
    }
    let fields = Fields::new();
    let length = body.map(|b| b.len().to_string());
    let length_header = length.as_deref().map(|l| ("content-length", l));
    for (name, value) in headers.iter().chain(length_header.iter()) {
        fields
            .append(name, value.as_bytes())
            .map_err(|e| Error::Other(format!("header {name}: {e:?}")))?;
    }
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_owned()),
    };
    let set = |ok: Result<(), ()>, what: &str| ok.map_err(|()| Error::Other(format!("bad {what}")));
    set(request.set_method(&method), "method")?;
    set(request.set_scheme(Some(&scheme)), "scheme")?;
    set(request.set_authority(Some(authority)), "authority")?;
    set(request.set_path_with_query(Some(path)), "path")?;
    let outgoing = request
        .body()
        .map_err(|()| Error::Other("request body taken twice".into()))?;
    if let Some(body) = body {
        let stream = outgoing
            .write()
            .map_err(|()| Error::Other("request body stream taken twice".into()))?;
        for chunk in body.chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| Error::Other(format!("writing the request body: {e:?}")))?;
        }
        drop(stream);
    }
    let pending = outgoing_handler::handle(request, None).map_err(Error::Http)?;
    OutgoingBody::finish(outgoing, None).map_err(Error::Http)?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or_else(|| Error::Other("response not ready".into()))?
        .map_err(|()| Error::Other("response taken twice".into()))?
        .map_err(Error::Http)?;
    let status = response.status();
    let incoming = response
        .consume()
        .map_err(|()| Error::Other("response body taken twice".into()))?;
    let stream = incoming
        .stream()
        .map_err(|()| Error::Other("response body stream taken twice".into()))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                if let Some(code) = http_error_code(&e) {
                    return Err(Error::Http(code));
                }
                return Err(Error::Other(format!(
                    "reading the response body: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
    Ok(Response { status, body })
}
