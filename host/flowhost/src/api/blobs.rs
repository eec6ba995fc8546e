//! The blob routes: upload, streamed to the `BlobStore` a `CHUNK` at a time
//! and never held whole; download, streamed the same way, with single byte
//! ranges and an ETag that never goes stale (the id is the hash of the
//! bytes); delete, refused while a run or a cache entry holds the blob. An
//! upload that does not end well (too large, cut off, dropped) is aborted.

use std::pin::pin;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use flowhost_core::blob::retention::live_holds;
use flowhost_core::blob::{BlobId, BlobRef, BlobStore, BlobUpload, CHUNK};
use futures_util::{Stream, StreamExt};
use utoipa::ToSchema;

use super::limits::{body_error, is_multipart};
use super::{ApiError, AppState, ErrorBody, PathParams, forms};

/// A blob's reference, as every answer and input carries it.
#[derive(serde::Serialize, ToSchema)]
pub(super) struct BlobRefView {
    /// `blake3:` and the 64 hex digits of the hash of the bytes.
    #[serde(rename = "$blob")]
    #[schema(rename = "$blob", pattern = "^blake3:[0-9a-f]{64}$")]
    blob: String,
    size: u64,
    media_type: String,
}

impl From<&BlobRef> for BlobRefView {
    fn from(r: &BlobRef) -> Self {
        BlobRefView {
            blob: r.id.to_string(),
            size: r.size,
            media_type: r.media_type.clone(),
        }
    }
}

/// The answer to an upload: one reference for a raw body, one per part, in
/// order, for `multipart/form-data`.
#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum Uploaded {
    One(BlobRefView),
    Parts(Vec<BlobRefView>),
}

/// Store a blob.
///
/// The body is the blob, of the media type its Content-Type says
/// (`application/octet-stream` when absent); or `multipart/form-data`, each
/// part a blob (its own Content-Type, else one guessed from its file name),
/// answered as a list. The same bytes give the same reference. A blob
/// nothing refers to is removed `blobs.grace_seconds` after its upload.
#[utoipa::path(
    post,
    path = "/api/v1/blobs",
    request_body(description = "The bytes of the blob, or a form of them", content(
        ("application/octet-stream"),
        ("multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Stored: its reference (a list of them for a form)", body = Uploaded),
        (status = 400, description = "A malformed form or Content-Type, or a body cut off", body = ErrorBody),
        (status = 413, description = "The body is over blobs.max_bytes", body = ErrorBody),
        (status = 503, description = "The blob store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn upload(
    State(app): AppState,
    request: Request,
) -> Result<(StatusCode, HeaderMap, Json<Uploaded>), ApiError> {
    let mut headers = HeaderMap::new();
    if is_multipart(request.headers()) {
        let refs = forms::store_parts(&app, request).await?;
        let list = refs.iter().map(BlobRefView::from).collect();
        return Ok((StatusCode::CREATED, headers, Json(Uploaded::Parts(list))));
    }
    let media_type = media_type_of(request.headers())?;
    let pieces = request.into_body().into_data_stream();
    let max = app.config.blobs.max_bytes;
    let stored = store(app.blobs.as_ref(), &media_type, pieces, max, |e| {
        body_error(&e)
    })
    .await?;
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/blobs/{}", stored.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(Uploaded::One(BlobRefView::from(&stored))),
    ))
}

/// The media type of a raw upload: its Content-Type, checked.
fn media_type_of(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok("application/octet-stream".into());
    };
    let text = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 255 && t.contains('/'))
        .ok_or_else(|| {
            ApiError::BadBody(
                "Content-Type must be a media type such as image/png (at most 255 ASCII characters)"
                    .into(),
            )
        })?;
    Ok(text.to_owned())
}

/// The media type of a file by its name's extension, for files whose sender
/// did not say.
pub fn media_type_for(file_name: &str) -> &'static str {
    let extension = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

/// An upload under way, aborted if it is dropped unfinished (with the
/// request's future, when its connection goes), so that nothing it wrote
/// stays behind.
struct Pending(Option<Box<dyn BlobUpload>>);

impl Pending {
    async fn abort(mut self, why: &ApiError) {
        if let Some(upload) = self.0.take() {
            tracing::info!(reason = %why, bytes = upload.size(), "blob upload aborted");
            upload.abort().await;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(upload) = self.0.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tracing::info!(
                    reason = "the request went away",
                    bytes = upload.size(),
                    "blob upload aborted"
                );
                upload.abort().await;
            });
        }
    }
}

/// Stores `pieces` as one blob, written a `CHUNK` at a time; more than
/// `max` bytes, or a piece that fails (`fail` says how to answer it),
/// aborts the upload.
pub(super) async fn store<E>(
    blobs: &dyn BlobStore,
    media_type: &str,
    pieces: impl Stream<Item = Result<Bytes, E>>,
    max: u64,
    fail: impl Fn(E) -> ApiError,
) -> Result<BlobRef, ApiError> {
    let mut pending = Pending(Some(blobs.begin(media_type).await?));
    let mut pieces = pin!(pieces);
    let mut buffer = BytesMut::new();
    let mut received = 0u64;
    let outcome: Result<(), ApiError> = async {
        let upload = pending.0.as_mut().expect("the upload is pending");
        while let Some(piece) = pieces.next().await {
            let piece = piece.map_err(&fail)?;
            received += piece.len() as u64;
            if received > max {
                return Err(ApiError::BlobTooLarge(max));
            }
            buffer.extend_from_slice(&piece);
            while buffer.len() >= CHUNK {
                upload.write(&buffer.split_to(CHUNK)).await?;
            }
        }
        if !buffer.is_empty() {
            upload.write(&buffer).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        pending.abort(&e).await;
        return Err(e);
    }
    let upload = pending.0.take().expect("the upload is pending");
    Ok(upload.finish().await?)
}

/// The blob of a path segment: `blake3:HEX` or the bare hex digits.
fn blob_id(raw: &str) -> Result<BlobId, ApiError> {
    raw.parse().map_err(ApiError::BadBlobId)
}

/// Read a blob.
///
/// Streams the bytes with the media type they were stored with. A single
/// `Range` (`bytes=A-B`, `bytes=A-`, `bytes=-N`) is answered 206 with the
/// part; several ranges, or one that is not well formed, get the whole
/// blob. `If-None-Match` with the ETag answers 304. HEAD answers the same
/// headers without the bytes.
#[utoipa::path(
    get,
    path = "/api/v1/blobs/{id}",
    params(
        ("id" = String, Path, description = "The blob's id: blake3:HEX or the bare hex digits",
            example = "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. bytes=0-1023"),
        ("If-None-Match" = Option<String>, Header, description = "The ETag of a copy already held"),
    ),
    responses(
        (status = 200, description = "The blob", content_type = "*/*", body = [u8], headers(
            ("ETag" = String, description = "\"blake3:HEX\": the blob's id"),
            ("Accept-Ranges" = String),
            ("Cache-Control" = String),
        )),
        (status = 206, description = "The range asked for", content_type = "*/*", body = [u8], headers(
            ("Content-Range" = String, description = "bytes A-B/SIZE"),
            ("ETag" = String),
        )),
        (status = 304, description = "Not modified: the ETag matches (a blob never changes)"),
        (status = 400, description = "Not a blob id", body = ErrorBody),
        (status = 404, description = "No such blob", body = ErrorBody),
        (status = 416, description = "The range starts past the end; Content-Range says the size", body = ErrorBody),
        (status = 503, description = "The blob store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn download(
    State(app): AppState,
    PathParams(raw): PathParams<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = blob_id(&raw)?;
    let stat = app
        .blobs
        .stat(&id)
        .await?
        .ok_or_else(|| ApiError::BlobNotFound(id.to_string()))?;
    let etag = format!("\"{id}\"");
    let builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "max-age=31536000, immutable");
    if none_match(&headers, &etag) {
        return Ok(answer(
            builder.status(StatusCode::NOT_MODIFIED),
            Body::empty(),
        ));
    }
    let (builder, start, end) = match wanted(&headers, stat.size) {
        Wanted::Whole => (builder.status(StatusCode::OK), 0, stat.size),
        Wanted::Part(first, last) => (
            builder.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {first}-{last}/{}", stat.size),
            ),
            first,
            last + 1,
        ),
        Wanted::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size: stat.size }),
    };
    let media_type = if stat.media_type.is_empty() {
        "application/octet-stream"
    } else {
        &stat.media_type
    };
    let builder = builder
        .header(header::CONTENT_TYPE, media_type)
        .header(header::CONTENT_LENGTH, end - start);
    Ok(answer(
        builder,
        Body::from_stream(chunks(app.blobs.clone(), id, start, end)),
    ))
}

/// The response of `builder`; its headers come from stored values that were
/// checked when stored, so a failure here is a defect, answered 500.
fn answer(builder: axum::http::response::Builder, body: Body) -> Response {
    builder
        .body(body)
        .unwrap_or_else(|e| ApiError::Internal(Box::new(e)).into_response())
}

/// The bytes `start..end` of a blob, a `CHUNK` at a time, read only as the
/// client takes them. A blob that ends early (removed meanwhile) fails the
/// body, so that the client sees a cut answer, not a short one.
fn chunks(
    blobs: Arc<dyn BlobStore>,
    id: BlobId,
    start: u64,
    end: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(Some(start), move |offset| {
        let (blobs, id) = (blobs.clone(), id.clone());
        async move {
            let offset = offset.filter(|o| *o < end)?;
            let len = (end - offset).min(CHUNK as u64);
            let piece = match blobs.read(&id, offset, len).await {
                Ok(piece) if !piece.is_empty() => piece,
                Ok(_) => return Some((Err(std::io::Error::other("the blob ended early")), None)),
                Err(e) => return Some((Err(std::io::Error::other(e)), None)),
            };
            let next = offset + piece.len() as u64;
            Some((Ok(Bytes::from(piece)), Some(next)))
        }
    })
}

/// Whether `If-None-Match` names this ETag (or `*`).
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// What a `Range` header asks of a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Whole,
    /// The first and last byte, both included.
    Part(u64, u64),
    Unsatisfiable,
}

/// Reads a single byte range. Anything else (another unit, several ranges,
/// a malformed one) is ignored and the whole blob served, as RFC 9110
/// allows; a range that starts past the end is unsatisfiable.
fn wanted(headers: &HeaderMap, size: u64) -> Wanted {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Wanted::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Wanted::Whole;
    };
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // `-N`: the last N bytes.
        (true, _, Some(n)) if n == 0 || size == 0 => Wanted::Unsatisfiable,
        (true, _, Some(n)) => Wanted::Part(size - n.min(size), size - 1),
        (false, Some(first), None) if last.trim().is_empty() => from(first, u64::MAX, size),
        (false, Some(first), Some(last)) if last >= first => from(first, last, size),
        _ => Wanted::Whole,
    }
}

fn from(first: u64, last: u64, size: u64) -> Wanted {
    if first >= size {
        Wanted::Unsatisfiable
    } else {
        Wanted::Part(first, last.min(size - 1))
    }
}

/// Remove a blob.
///
/// Refused with 409 while a run or a cached result refers to it (the answer
/// names them); a blob is otherwise removed by the retention sweep once
/// nothing holds it.
#[utoipa::path(
    delete,
    path = "/api/v1/blobs/{id}",
    params(("id" = String, Path, description = "The blob's id: blake3:HEX or the bare hex digits")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not a blob id", body = ErrorBody),
        (status = 404, description = "No such blob", body = ErrorBody),
        (status = 409, description = "Held by a run or a cache entry", body = ErrorBody),
        (status = 503, description = "The blob store or the state store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn delete(
    State(app): AppState,
    PathParams(raw): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    let id = blob_id(&raw)?;
    let not_found = || ApiError::BlobNotFound(id.to_string());
    if app.blobs.stat(&id).await?.is_none() {
        return Err(not_found());
    }
    let held = |holds: Vec<flowhost_core::blob::Hold>| ApiError::BlobHeld {
        id: id.to_string(),
        holders: holds.into_iter().map(|h| h.holder).collect(),
    };
    let (live, _) = live_holds(app.blobs.as_ref(), app.holders(), &id, Utc::now()).await?;
    if !live.is_empty() {
        return Err(held(live));
    }
    if app
        .blobs
        .remove_unheld(&id, DateTime::<Utc>::MAX_UTC)
        .await?
    {
        return Ok(StatusCode::NO_CONTENT);
    }
    // Held or removed in between.
    if app.blobs.stat(&id).await?.is_none() {
        return Err(not_found());
    }
    Err(held(app.blobs.holds(&id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, size: u64) -> Wanted {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        wanted(&headers, size)
    }

    #[test]
    fn single_byte_ranges_are_read_and_the_rest_ignored() {
        assert_eq!(range("bytes=0-9", 100), Wanted::Part(0, 9));
        assert_eq!(range("bytes=90-", 100), Wanted::Part(90, 99));
        assert_eq!(range("bytes=90-1000", 100), Wanted::Part(90, 99));
        assert_eq!(range("bytes=-10", 100), Wanted::Part(90, 99));
        assert_eq!(range("bytes=-1000", 100), Wanted::Part(0, 99));
        assert_eq!(range("bytes=100-", 100), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), Wanted::Unsatisfiable);
        for ignored in [
            "bytes=5-3",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=+1-2",
            "bytes=-",
            "bytes=x-",
        ] {
            assert_eq!(range(ignored, 100), Wanted::Whole, "{ignored}");
        }
    }

    #[test]
    fn media_types_are_guessed_from_the_extension() {
        assert_eq!(media_type_for("scan.PDF"), "application/pdf");
        assert_eq!(media_type_for("a.b.jpeg"), "image/jpeg");
        assert_eq!(media_type_for("README"), "application/octet-stream");
    }
}
