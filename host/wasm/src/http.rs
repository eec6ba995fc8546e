//! Outgoing HTTP for plugins (`wasi:http/outgoing-handler`), gated by the
//! plugin's allow-list: a request to any other host fails with
//! `HttpRequestDenied` and is recorded as a denied capability. Allowed
//! requests get the manifest's timeouts and response size limit.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::denials::Denials;
use crate::manifest::Grants;

/// The hooks of one step's `wasi:http`: its plugin's grants and where to
/// record a refused request.
pub struct HttpGate {
    pub grants: Arc<Grants>,
    pub denials: Denials,
}

type Io = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Io,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, Io), Error>> + Send> {
        drop(fut);
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        if !self.grants.allows_http(&authority) {
            self.denials.record(
                "http",
                format!(
                    "{} {}{} (not on the plugin's http.allow list)",
                    request.method(),
                    authority,
                    request.uri().path()
                ),
            );
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let limit = Duration::from_millis(self.grants.http_timeout_ms);
        let cap = |asked: Option<Duration>| Some(asked.map_or(limit, |a| a.min(limit)));
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: cap(options.connect_timeout),
            first_byte_timeout: cap(options.first_byte_timeout),
            between_bytes_timeout: cap(options.between_bytes_timeout),
        };
        let max = self.grants.http_max_response_bytes;
        Box::new(async move {
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            let response = response.map(|body| {
                Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX))
                    .map_err(move |e| match e.downcast::<Error>() {
                        Ok(e) => *e,
                        Err(e) if e.is::<LengthLimitError>() => {
                            Error::HttpResponseBodySize(Some(max))
                        }
                        Err(e) => Error::InternalError(Some(e.to_string())),
                    })
                    .boxed_unsync()
            });
            Ok((response, Box::new(io) as Io))
        })
    }
}
