//! `multipart/form-data` bodies: the parts of a blob upload, and an execute
//! request whose files become blob references among its inputs. Parts are
//! read as they arrive (multer); a file goes to the `BlobStore` a `CHUNK` at
//! a time, so no form is held whole. Text parts are held, at most
//! `limits.max_request_bytes` of them in all.

use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::StatusCode;
use flowhost_core::blob::BlobRef;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};

use super::ApiError;
use super::blobs::{media_type_for, store};
use super::limits::body_error;
use super::runs::ExecuteRequest;
use crate::app::App;

/// The form of an execute request, for the OpenAPI document.
pub(super) struct ExecuteForm;

impl utoipa::PartialSchema for ExecuteForm {
    fn schema() -> RefOr<Schema> {
        let text = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        ObjectBuilder::new()
            .description(Some(
                "Every part other than `inputs`, `flow_id` and `metadata` is one input, \
                 named by the part: a file part is stored as a blob and the input is its \
                 reference; a text part is a string, or any JSON value when the part's \
                 Content-Type is application/json.",
            ))
            .property("inputs", text("A JSON object of further inputs"))
            .property("flow_id", text("A UUID for the run"))
            .property("metadata", text("A JSON object recorded with the run"))
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(true)))
            .into()
    }
}

impl utoipa::ToSchema for ExecuteForm {}

/// The parts of a form that are not inputs.
const RESERVED: [&str; 3] = ["inputs", "flow_id", "metadata"];

async fn open(request: Request) -> Result<Multipart, ApiError> {
    Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::BadBody(e.body_text()))
}

/// The answer to a form that could not be read: the limits of a streamed
/// body, or what multer found wrong.
fn form_error(e: MultipartError, max: u64) -> ApiError {
    match body_error(&e) {
        ApiError::BadBody(_) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::BlobTooLarge(max)
        }
        ApiError::BadBody(_) => ApiError::BadBody(format!("malformed form: {}", e.body_text())),
        other => other,
    }
}

/// The part's name, which a form part must have.
fn part_name(field: &Field<'_>) -> Result<String, ApiError> {
    field
        .name()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::BadBody(
                "every part needs a name: Content-Disposition: form-data; name=\"...\"".into(),
            )
        })
}

/// Stores one part as a blob: of its own media type, else one guessed
/// from its file name (`text/plain` for a part that is not a file).
async fn store_part(app: &App, field: Field<'_>) -> Result<BlobRef, ApiError> {
    let media_type = match (field.content_type(), field.file_name()) {
        (Some(t), _) => t.to_owned(),
        (None, Some(file)) => media_type_for(file).to_owned(),
        (None, None) => "text/plain".to_owned(),
    };
    let max = app.config.blobs.max_bytes;
    store(app.blobs.as_ref(), &media_type, field, max, |e| {
        form_error(e, max)
    })
    .await
}

/// Stores every part of a form as a blob, in order.
pub(super) async fn store_parts(app: &App, request: Request) -> Result<Vec<BlobRef>, ApiError> {
    let max = app.config.blobs.max_bytes;
    let mut form = open(request).await?;
    let mut refs = Vec::new();
    while let Some(field) = form.next_field().await.map_err(|e| form_error(e, max))? {
        part_name(&field)?;
        refs.push(store_part(app, field).await?);
    }
    if refs.is_empty() {
        return Err(ApiError::BadBody(
            "the form has no part: send each blob as a part, e.g. curl -F file=@photo.png".into(),
        ));
    }
    Ok(refs)
}

/// An execute request sent as a form: file parts become blob references
/// under their names, text parts strings (JSON values when their
/// Content-Type is application/json); `inputs`, `flow_id` and `metadata`
/// are as in the JSON body. An input given twice is refused.
pub(super) async fn execute_form(app: &App, request: Request) -> Result<ExecuteRequest, ApiError> {
    let max = app.config.blobs.max_bytes;
    let mut form = open(request).await?;
    let mut request = ExecuteRequest::default();
    let mut more = Map::new();
    let mut text_budget = app.config.limits.max_request_bytes;
    while let Some(field) = form.next_field().await.map_err(|e| form_error(e, max))? {
        let name = part_name(&field)?;
        if field.file_name().is_some() {
            if RESERVED.contains(&name.as_str()) {
                return Err(ApiError::BadBody(format!(
                    "`{name}` must be a text part, not a file"
                )));
            }
            let stored = store_part(app, field).await?;
            add_input(&mut request.inputs, name, stored.to_json())?;
            continue;
        }
        let json = field
            .content_type()
            .and_then(|t| t.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        let text = read_text(field, &mut text_budget, app, max).await?;
        match name.as_str() {
            "inputs" => more = json_object(&name, &text)?,
            "flow_id" => request.flow_id = Some(text),
            "metadata" => request.metadata = json_object(&name, &text)?,
            _ if json => {
                let value = serde_json::from_str(&text)
                    .map_err(|e| ApiError::BadBody(format!("part `{name}` is not JSON: {e}")))?;
                add_input(&mut request.inputs, name, value)?;
            }
            _ => add_input(&mut request.inputs, name, Value::String(text))?,
        }
    }
    for (name, value) in more {
        add_input(&mut request.inputs, name, value)?;
    }
    Ok(request)
}

fn add_input(inputs: &mut Map<String, Value>, name: String, value: Value) -> Result<(), ApiError> {
    if inputs.contains_key(&name) {
        return Err(ApiError::BadBody(format!(
            "input `{name}` is given twice in the form"
        )));
    }
    inputs.insert(name, value);
    Ok(())
}

fn json_object(name: &str, text: &str) -> Result<Map<String, Value>, ApiError> {
    serde_json::from_str(text).map_err(|e| {
        ApiError::BadBody(format!(
            "part `{name}` must be a JSON object such as {{\"text\": \"...\"}}: {e}"
        ))
    })
}

/// A text part, counted against what is left of the form's text budget.
async fn read_text(
    mut field: Field<'_>,
    budget: &mut usize,
    app: &App,
    max: u64,
) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(piece) = field.next().await {
        let piece = piece.map_err(|e| form_error(e, max))?;
        if piece.len() > *budget {
            return Err(ApiError::BodyTooLarge(app.config.limits.max_request_bytes));
        }
        *budget -= piece.len();
        bytes.extend_from_slice(&piece);
    }
    String::from_utf8(bytes).map_err(|_| {
        ApiError::BadBody("a text part is not UTF-8: send binary data as a file part".into())
    })
}
