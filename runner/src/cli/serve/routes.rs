//! The HTTP routes: OpenAI's and Ollama's endpoints, `/health`, and the chat
//! page. Errors are JSON: OpenAI's `{"error": {"message", "type", "code"}}`
//! under `/v1` (and elsewhere), Ollama's `{"error": "..."}` under `/api`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as Shared};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use strata_runner::batching::{Event, Finish};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::api::{self, BadRequest, GenParams};
use super::{Answer, Refusal, State};

/// The chat page, served from the binary.
const PAGE: &str = include_str!("page.html");

/// Which API's error shape a route answers with.
#[derive(Debug, Clone, Copy)]
enum Api {
    OpenAi,
    Ollama,
}

/// An error response.
struct ApiError {
    api: Api,
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(api: Api, status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            api,
            status,
            message: message.into(),
        }
    }

    fn refusal(api: Api, r: Refusal) -> ApiError {
        match r {
            Refusal::Loading(m) | Refusal::Busy(m) => {
                ApiError::new(api, StatusCode::SERVICE_UNAVAILABLE, m)
            }
            Refusal::Bad(m) => ApiError::new(api, StatusCode::BAD_REQUEST, m),
        }
    }

    fn bad(api: Api, b: BadRequest) -> ApiError {
        ApiError::new(api, StatusCode::BAD_REQUEST, b.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.api {
            Api::Ollama => json!({ "error": self.message }),
            Api::OpenAi => {
                let kind = match self.status {
                    StatusCode::BAD_REQUEST => "invalid_request_error",
                    StatusCode::UNAUTHORIZED => "authentication_error",
                    StatusCode::NOT_FOUND => "not_found_error",
                    StatusCode::SERVICE_UNAVAILABLE => "unavailable_error",
                    _ => "server_error",
                };
                json!({ "error": {
                    "message": self.message,
                    "type": kind,
                    "param": null,
                    "code": self.status.as_u16(),
                }})
            }
        };
        (self.status, json_body(&body)).into_response()
    }
}

/// A JSON response body with its content type.
fn json_body(v: &Value) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        v.to_string(),
    )
        .into_response()
}

/// The server's routes.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/api/chat", post(ollama_chat))
        .route("/api/generate", post(ollama_generate))
        .route("/api/tags", get(ollama_tags))
        .route("/api/version", get(ollama_version))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Answers CORS preflights, checks the API key (not for `/` and
/// `/health`) and logs one line per request (generating handlers log their
/// own line, with the token counts, when the answer ends).
async fn guard(Shared(s): Shared<Arc<State>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    // Browser pages on other origins (web UIs) may call the API, as with
    // llama.cpp's server: answer CORS preflights, allow any origin.
    if method == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        cors(&mut r);
        return r;
    }
    let mut resp = checked(&s, req, &path, &method, next).await;
    cors(&mut resp);
    resp
}

/// Adds the CORS headers that let any origin call the API.
fn cors(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
}

/// [`guard`] past the preflight: the key check and the log line.
async fn checked(s: &State, req: Request, path: &str, method: &Method, next: Next) -> Response {
    let api = if path.starts_with("/api/") {
        Api::Ollama
    } else {
        Api::OpenAi
    };
    if let Some(key) = &s.api_key {
        if path != "/" && path != "/health" {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if given != Some(key.as_str()) {
                let why = if given.is_none() {
                    "missing API key: send Authorization: Bearer KEY"
                } else {
                    "wrong API key"
                };
                log::info!("{method} {path} 401 ({why})");
                return ApiError::new(api, StatusCode::UNAUTHORIZED, why).into_response();
            }
        }
    }
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    // Answers with tokens log themselves when they end (with the counts).
    let generates = status.is_success() && GENERATING.contains(&path);
    if !generates {
        let line = format!(
            "{method} {path} {} {:.3}s",
            status.as_u16(),
            started.elapsed().as_secs_f64()
        );
        if path == "/health" && status.is_success() {
            log::debug!("{line}");
        } else {
            log::info!("{line}");
        }
    }
    resp
}

/// The routes that generate (and log their own line at the end).
const GENERATING: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/api/chat",
    "/api/generate",
];

async fn not_found(req: Request) -> Response {
    let path = req.uri().path().to_string();
    let api = if path.starts_with("/api/") {
        Api::Ollama
    } else {
        Api::OpenAi
    };
    ApiError::new(
        api,
        StatusCode::NOT_FOUND,
        format!("no route {} {path}", req.method()),
    )
    .into_response()
}

async fn page() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        PAGE,
    )
        .into_response()
}

async fn health(Shared(s): Shared<Arc<State>>) -> Response {
    match s.progress() {
        None => json_body(&json!({ "status": "ok", "model": s.name })),
        Some(p) => {
            let mut r = json_body(&json!({
                "status": "loading",
                "model": s.name,
                "progress": (p * 1000.0).round() / 1000.0,
                "message": format!("reading the model once: {:.0}%", p * 100.0),
            }));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}

async fn models(Shared(s): Shared<Arc<State>>) -> Response {
    json_body(&json!({
        "object": "list",
        "data": [{ "id": s.name, "object": "model", "created": s.created, "owned_by": "strata" }],
    }))
}

/// A conversation's prompt ids, as `runner generate --chat` makes them.
fn chat_prompt(s: &State, msgs: &[strata_runner::text::chat::Message]) -> Result<Vec<u32>, String> {
    let t = s.template.as_ref().ok_or_else(|| {
        format!(
            "the model {} has no chat template; use /v1/completions",
            s.name
        )
    })?;
    let text = t.render(msgs, true).map_err(|e| e.to_string())?;
    s.tokenizer.encode(&text, false).map_err(|e| e.to_string())
}

/// A plain prompt's ids (with the begin-of-sequence token where the model
/// adds one), as `runner generate` makes them.
fn text_prompt(s: &State, text: &str) -> Result<Vec<u32>, String> {
    s.tokenizer.encode(text, true).map_err(|e| e.to_string())
}

/// Unix seconds now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The whole answer, or the failure.
async fn collect(mut a: Answer) -> Result<(String, Finish), String> {
    let mut text = String::new();
    while let Some(ev) = a.events.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Done(f) => return Ok((text, f)),
            Event::Failed(e) => return Err(e),
        }
    }
    Err("the engine stopped before the answer was complete".into())
}

/// Streams an answer: `render` turns each event into body pieces (the last
/// event's pieces end the body). A client that goes away drops the pieces'
/// receiver, which ends the task and so frees the request's slot.
fn stream_body<F>(
    content_type: &'static str,
    mut a: Answer,
    first: Vec<String>,
    mut render: F,
) -> Response
where
    F: FnMut(Event) -> Vec<String> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<String>(64);
    tokio::spawn(async move {
        for p in first {
            if tx.send(p).await.is_err() {
                return;
            }
        }
        loop {
            // A client that leaves closes `tx`: stop waiting for the engine at
            // once, so that dropping `a.events` frees the slot at the next pass.
            let ev = tokio::select! {
                _ = tx.closed() => return,
                ev = a.events.recv() => ev,
            };
            let Some(ev) = ev else { return };
            let last = !matches!(ev, Event::Text(_));
            for p in render(ev) {
                if tx.send(p).await.is_err() {
                    return;
                }
            }
            if last {
                return;
            }
        }
    });
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `data: JSON\n\n`.
fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// One log line for an answered request.
fn log_answer(route: &str, f: &Finish) {
    log::info!(
        "POST {route} 200 prompt {} tokens, {} generated ({}), {:.2}s (first token {:.2}s, queued {:.2}s)",
        f.prompt_tokens,
        f.completion_tokens,
        f.reason.name(),
        f.total_secs,
        f.prompt_secs,
        f.queued_secs
    );
}

fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

/// The checked request: its prompt ids and parameters, handed to the engine.
fn start(
    s: &State,
    api: Api,
    prompt: impl FnOnce(usize) -> Result<(Vec<u32>, GenParams), ApiError>,
) -> Result<Answer, ApiError> {
    let ctx = s.ctx().map_err(|r| ApiError::refusal(api, r))?;
    let (ids, params) = prompt(ctx)?;
    s.submit(ids, params, ctx)
        .map_err(|r| ApiError::refusal(api, r))
}

/// The two OpenAI generation endpoints, which differ only in how the prompt
/// is given and how a choice is written.
#[derive(Debug, Clone, Copy)]
enum OpenAiKind {
    /// `/v1/chat/completions`: `messages`, answers as `message` / `delta`.
    Chat,
    /// `/v1/completions`: `prompt`, answers as `text`.
    Text,
}

impl OpenAiKind {
    fn route(self) -> &'static str {
        match self {
            OpenAiKind::Chat => "/v1/chat/completions",
            OpenAiKind::Text => "/v1/completions",
        }
    }

    /// The object of a whole answer, or of a chunk when `chunk`.
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (OpenAiKind::Chat, false) => "chat.completion",
            (OpenAiKind::Chat, true) => "chat.completion.chunk",
            (OpenAiKind::Text, _) => "text_completion",
        }
    }

    /// One choice: the whole text, or (when `chunk`) a piece of it.
    fn choice(self, text: &str, chunk: bool, finish: Value) -> Value {
        let mut c = json!({ "index": 0 });
        match (self, chunk) {
            (OpenAiKind::Chat, false) => {
                c["message"] = json!({ "role": "assistant", "content": text });
            }
            (OpenAiKind::Chat, true) if text.is_empty() && !finish.is_null() => {
                c["delta"] = json!({});
            }
            (OpenAiKind::Chat, true) => c["delta"] = json!({ "content": text }),
            (OpenAiKind::Text, _) => c["text"] = json!(text),
        }
        c["logprobs"] = Value::Null;
        c["finish_reason"] = finish;
        c
    }

    /// The prompt ids and sampling fields of a request body.
    fn prompt(self, s: &State, body: &[u8]) -> Result<(Vec<u32>, api::OpenAiSampling), ApiError> {
        let api = Api::OpenAi;
        let bad = |m: String| ApiError::new(api, StatusCode::BAD_REQUEST, m);
        match self {
            OpenAiKind::Chat => {
                let req: api::ChatRequest = api::parse(body).map_err(|b| ApiError::bad(api, b))?;
                let msgs = api::messages(req.messages).map_err(|b| ApiError::bad(api, b))?;
                Ok((chat_prompt(s, &msgs).map_err(bad)?, req.sampling))
            }
            OpenAiKind::Text => {
                let req: api::CompletionRequest =
                    api::parse(body).map_err(|b| ApiError::bad(api, b))?;
                let prompt = match req.prompt {
                    Some(api::Prompt::One(p)) => p,
                    Some(api::Prompt::Many(mut v)) if v.len() == 1 => v.remove(0),
                    Some(api::Prompt::Many(v)) => {
                        return Err(bad(format!(
                            "{} prompts: this server takes one prompt per request",
                            v.len()
                        )))
                    }
                    None => return Err(bad("prompt is missing".into())),
                };
                Ok((text_prompt(s, &prompt).map_err(bad)?, req.sampling))
            }
        }
    }
}

async fn chat_completions(Shared(s): Shared<Arc<State>>, body: Bytes) -> Response {
    openai(&s, OpenAiKind::Chat, &body).await
}

async fn completions(Shared(s): Shared<Arc<State>>, body: Bytes) -> Response {
    openai(&s, OpenAiKind::Text, &body).await
}

/// Answers an OpenAI generation request: one JSON object, or server-sent
/// events (chat's first chunk carries the role; the last one the
/// finish_reason; then the usage if asked; then `[DONE]`).
async fn openai(s: &State, kind: OpenAiKind, body: &[u8]) -> Response {
    let api = Api::OpenAi;
    let mut flags = (false, false);
    let answer = start(s, api, |ctx| {
        let (ids, sampling) = kind.prompt(s, body)?;
        flags = (
            sampling.stream.unwrap_or(false),
            sampling
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        );
        let params = sampling
            .params(&s.defaults, ctx)
            .map_err(|b| ApiError::bad(api, b))?;
        Ok((ids, params))
    });
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let (streamed, include_usage) = flags;
    let prefix = match kind {
        OpenAiKind::Chat => "chatcmpl",
        OpenAiKind::Text => "cmpl",
    };
    let id = format!("{prefix}-{}", s.id());
    let (model, created) = (s.name.clone(), now());
    let route = kind.route();
    if !streamed {
        return match collect(answer).await {
            Ok((text, f)) => {
                log_answer(route, &f);
                json_body(&json!({
                    "id": id, "object": kind.object(false), "created": created, "model": model,
                    "choices": [kind.choice(&text, false, json!(f.reason.name()))],
                    "usage": usage(&f),
                }))
            }
            Err(e) => ApiError::new(api, StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        };
    }
    let chunk = move |choices: Value| {
        json!({
            "id": id, "object": kind.object(true), "created": created, "model": model,
            "choices": choices,
        })
    };
    let first = match kind {
        OpenAiKind::Chat => {
            let mut c = kind.choice("", true, Value::Null);
            c["delta"] = json!({ "role": "assistant", "content": "" });
            vec![sse(&chunk(json!([c])))]
        }
        OpenAiKind::Text => Vec::new(),
    };
    stream_body("text/event-stream", answer, first, move |ev| match ev {
        Event::Text(t) => vec![sse(&chunk(json!([kind.choice(&t, true, Value::Null)])))],
        Event::Done(f) => {
            log_answer(&format!("{route} (stream)"), &f);
            let last = kind.choice("", true, json!(f.reason.name()));
            let mut out = vec![sse(&chunk(json!([last])))];
            if include_usage {
                let mut u = chunk(json!([]));
                u["usage"] = usage(&f);
                out.push(sse(&u));
            }
            out.push("data: [DONE]\n\n".into());
            out
        }
        Event::Failed(e) => {
            log::error!("POST {route} (stream) failed: {e}");
            vec![
                sse(&json!({ "error": { "message": e, "type": "server_error", "code": 500 } })),
                "data: [DONE]\n\n".into(),
            ]
        }
    })
}

/// RFC 3339 UTC time (Ollama's `created_at`).
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Ollama's closing fields (durations in nanoseconds).
fn ollama_done(v: &mut Value, f: &Finish) {
    let ns = |s: f64| (s * 1e9) as u64;
    v["done"] = json!(true);
    v["done_reason"] = json!(f.reason.name());
    v["total_duration"] = json!(ns(f.total_secs + f.queued_secs));
    v["load_duration"] = json!(0);
    v["prompt_eval_count"] = json!(f.prompt_tokens);
    v["prompt_eval_duration"] = json!(ns(f.prompt_secs));
    v["eval_count"] = json!(f.completion_tokens);
    v["eval_duration"] = json!(ns(f.total_secs - f.prompt_secs));
}

/// Answers an Ollama request: one JSON object, or NDJSON lines. `piece`
/// wraps a piece of text the way the endpoint names it.
async fn ollama_answer(
    s: &State,
    route: &'static str,
    answer: Answer,
    streamed: bool,
    piece: fn(&str) -> Value,
) -> Response {
    let model = s.name.clone();
    let line = move |text: &str| {
        let mut v = piece(text);
        v["model"] = json!(model);
        v["created_at"] = json!(rfc3339(SystemTime::now()));
        v["done"] = json!(false);
        v
    };
    if !streamed {
        return match collect(answer).await {
            Ok((text, f)) => {
                log_answer(route, &f);
                let mut v = line(&text);
                ollama_done(&mut v, &f);
                json_body(&v)
            }
            Err(e) => {
                ApiError::new(Api::Ollama, StatusCode::INTERNAL_SERVER_ERROR, e).into_response()
            }
        };
    }
    stream_body(
        "application/x-ndjson",
        answer,
        Vec::new(),
        move |ev| match ev {
            Event::Text(t) => vec![format!("{}\n", line(&t))],
            Event::Done(f) => {
                log_answer(route, &f);
                let mut v = line("");
                ollama_done(&mut v, &f);
                vec![format!("{v}\n")]
            }
            Event::Failed(e) => {
                log::error!("POST {route} (stream) failed: {e}");
                vec![format!("{}\n", json!({ "error": e }))]
            }
        },
    )
}

async fn ollama_chat(Shared(s): Shared<Arc<State>>, body: Bytes) -> Response {
    let api = Api::Ollama;
    let mut streamed = true;
    let answer = start(&s, api, |ctx| {
        let req: api::OllamaChat = api::parse(&body).map_err(|b| ApiError::bad(api, b))?;
        streamed = req.stream.unwrap_or(true);
        let params = req
            .options
            .params(&s.defaults, ctx)
            .map_err(|b| ApiError::bad(api, b))?;
        let msgs = api::messages(req.messages).map_err(|b| ApiError::bad(api, b))?;
        let ids =
            chat_prompt(&s, &msgs).map_err(|m| ApiError::new(api, StatusCode::BAD_REQUEST, m))?;
        Ok((ids, params))
    });
    match answer {
        Ok(a) => {
            ollama_answer(
                &s,
                "/api/chat",
                a,
                streamed,
                |t| json!({ "message": { "role": "assistant", "content": t } }),
            )
            .await
        }
        Err(e) => e.into_response(),
    }
}

async fn ollama_generate(Shared(s): Shared<Arc<State>>, body: Bytes) -> Response {
    let api = Api::Ollama;
    let mut streamed = true;
    let answer = start(&s, api, |ctx| {
        let req: api::OllamaGenerate = api::parse(&body).map_err(|b| ApiError::bad(api, b))?;
        streamed = req.stream.unwrap_or(true);
        let params = req
            .options
            .params(&s.defaults, ctx)
            .map_err(|b| ApiError::bad(api, b))?;
        let prompt = req.prompt.unwrap_or_default();
        let ids = if req.raw.unwrap_or(false) || s.template.is_none() {
            text_prompt(&s, &prompt)
        } else {
            let mut msgs = Vec::new();
            if let Some(sys) = req.system {
                msgs.push(strata_runner::text::chat::Message::new("system", sys));
            }
            msgs.push(strata_runner::text::chat::Message::new("user", prompt));
            chat_prompt(&s, &msgs)
        }
        .map_err(|m| ApiError::new(api, StatusCode::BAD_REQUEST, m))?;
        Ok((ids, params))
    });
    match answer {
        Ok(a) => {
            ollama_answer(
                &s,
                "/api/generate",
                a,
                streamed,
                |t| json!({ "response": t }),
            )
            .await
        }
        Err(e) => e.into_response(),
    }
}

async fn ollama_tags(Shared(s): Shared<Arc<State>>) -> Response {
    json_body(&json!({ "models": [{
        "name": s.name,
        "model": s.name,
        "modified_at": rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s.created)),
        "size": s.size,
        "digest": s.digest,
        "details": {
            "format": "strata",
            "family": s.family,
            "families": [s.family],
            "parameter_size": "",
            "quantization_level": s.quantization,
        },
    }]}))
}

async fn ollama_version() -> Response {
    json_body(&json!({ "version": env!("CARGO_PKG_VERSION") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_256_000);
        assert_eq!(rfc3339(t), "2026-12-03T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
        let leap = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400 + 3661);
        assert_eq!(rfc3339(leap), "2000-02-29T01:01:01.000000000Z");
    }
}
