//! Chat templates: the Jinja template a model ships to turn a conversation into a prompt,
//! rendered with minijinja the way transformers' `apply_chat_template` renders it with Jinja2.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};
use serde_json::Map;

use super::{kind, pycompat, read_json_object, SpecialTokens, TextError, TOKENIZER_CONFIG};

/// Standalone template file; transformers prefers it over the config's `chat_template`.
const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// Name of the template inside the minijinja environment.
const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant` (or `tool`, ... if the template knows them).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A model's chat template, compiled and ready to render.
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
    special: SpecialTokens,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Loads the chat template of a model folder: `DIR/chat_template.jinja` if it exists (it
    /// takes priority in transformers), else `chat_template` in `DIR/tokenizer_config.json`,
    /// either a string or a list of `{name, template}` objects, of which the one named
    /// `default` is used. `Ok(None)` if the model has no template. The special tokens
    /// (`bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`, `cls_token`,
    /// `mask_token`) come from tokenizer_config.json / special_tokens_map.json.
    pub fn load(dir: &Path) -> Result<Option<ChatTemplate>, TextError> {
        let config_path = dir.join(TOKENIZER_CONFIG);
        let config = read_json_object(&config_path)?;
        let jinja_path = dir.join(CHAT_TEMPLATE_FILE);
        let (source, origin) = match std::fs::read_to_string(&jinja_path) {
            Ok(source) => (source, jinja_path.display().to_string()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                match config_template(config.as_ref(), &config_path)? {
                    Some(source) => (source, config_path.display().to_string()),
                    None => return Ok(None),
                }
            }
            Err(source) => {
                return Err(TextError::Io {
                    path: jinja_path,
                    source,
                })
            }
        };
        let special = SpecialTokens::load(dir, config.as_ref())?;
        let mut env = environment();
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(&source))
            .map_err(|err| TextError::TemplateSyntax {
                origin: origin.clone(),
                message: error_message(&err),
            })?;
        Ok(Some(ChatTemplate {
            env,
            origin,
            special,
        }))
    }

    /// Renders the conversation as transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` does.
    ///
    /// The template sees `messages`, `add_generation_prompt`, `tools` and `documents` (both
    /// none), the model's special tokens (`bos_token`, `eos_token`, ...), the functions
    /// `raise_exception(message)` and `strftime_now(format)` (local time, as Python's
    /// `datetime.now().strftime`), a `tojson` filter that writes what Python's `json.dumps`
    /// writes (no HTML escaping, `ensure_ascii=False`, `indent`, `separators`, `sort_keys`), and
    /// Python string/dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, ...).
    /// Blocks are trimmed as Jinja2's `trim_blocks` + `lstrip_blocks`, as transformers sets.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        self.render_with(messages, add_generation_prompt, &Map::new())
    }

    /// [`Self::render`] with extra template variables, like the keyword arguments of
    /// `apply_chat_template`: `date_string` (pins Llama 3's date), `enable_thinking` (Qwen 3),
    /// `tools` (a list of JSON schemas), ... They override the special tokens of the same name
    /// but not `messages` or `add_generation_prompt`.
    ///
    /// Key order: Python dicts keep insertion order, which `tojson`, `.items()` and printed
    /// dicts show. Here maps (these JSON objects, and dict literals in the template) are
    /// sorted by key unless serde_json's and minijinja's `preserve_order` features are on.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &Map<String, serde_json::Value>,
    ) -> Result<String, TextError> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        for (name, token) in &self.special.tokens {
            ctx.insert((*name).to_string(), Value::from(token.as_str()));
        }
        ctx.insert("tools".to_string(), Value::from(()));
        ctx.insert("documents".to_string(), Value::from(()));
        for (name, value) in extra {
            ctx.insert(name.clone(), Value::from_serialize(value));
        }
        ctx.insert("messages".to_string(), Value::from_serialize(messages));
        ctx.insert(
            "add_generation_prompt".to_string(),
            Value::from(add_generation_prompt),
        );
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|err| self.render_error(&err))?;
        template.render(ctx).map_err(|err| self.render_error(&err))
    }

    /// Maps a minijinja error to [`TextError::TemplateRaised`] when it comes from
    /// `raise_exception`, else to [`TextError::TemplateRender`].
    fn render_error(&self, err: &Error) -> TextError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(current) = source {
            if let Some(raised) = current.downcast_ref::<Raised>() {
                return TextError::TemplateRaised {
                    origin: self.origin.clone(),
                    message: raised.0.clone(),
                };
            }
            source = current.source();
        }
        TextError::TemplateRender {
            origin: self.origin.clone(),
            message: error_message(err),
        }
    }
}

/// The `chat_template` entry of tokenizer_config.json: a string, or a list of
/// `{"name": ..., "template": ...}` objects (the `default` one is used). None if absent/null.
fn config_template(
    config: Option<&Map<String, serde_json::Value>>,
    path: &Path,
) -> Result<Option<String>, TextError> {
    use serde_json::Value as Json;
    let bad = |message: String| TextError::Config {
        path: path.to_path_buf(),
        message,
    };
    match config.and_then(|config| config.get("chat_template")) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(source)) => Ok(Some(source.clone())),
        Some(Json::Array(entries)) => {
            let mut names = Vec::new();
            for entry in entries {
                let name = entry.get("name").and_then(Json::as_str);
                let template = entry.get("template").and_then(Json::as_str);
                match (name, template) {
                    (Some("default"), Some(template)) => return Ok(Some(template.to_string())),
                    (Some(name), Some(_)) => names.push(name.to_string()),
                    _ => {
                        return Err(bad(
                            "`chat_template` list entries should be objects with string \
                             `name` and `template`"
                                .to_string(),
                        ))
                    }
                }
            }
            Err(bad(format!(
                "`chat_template` lists templates {names:?} but none is named \"default\""
            )))
        }
        Some(other) => Err(bad(format!(
            "`chat_template` should be a string or a list of {{name, template}} objects, \
             found {}",
            kind(other)
        ))),
    }
}

/// Replaces transformers' `{% generation %}` / `{% endgeneration %}` tags (which only mark
/// assistant text for training masks and render their body unchanged) by `{% if true %}` /
/// `{% endif %}`, keeping the whitespace-control markers, so that minijinja compiles them and
/// trims around them as Jinja2 does.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        match generation_tag(tag) {
            Some((len, open_marker, name, close_marker)) => {
                let replacement = if name == "generation" {
                    "if true"
                } else {
                    "endif"
                };
                let _ = write!(out, "{{%{open_marker} {replacement} {close_marker}%}}");
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `tag` starts with a `{% generation %}` or `{% endgeneration %}` tag (with optional `-`
/// or `+` markers), returns its length, the markers and the tag name.
fn generation_tag(tag: &str) -> Option<(usize, &str, &str, &str)> {
    let marker = |text: &str| -> usize { usize::from(text.starts_with(['-', '+'])) };
    let body = &tag[2..];
    let open_len = marker(body);
    let open_marker = &body[..open_len];
    let after_open = &body[open_len..];
    let name_start = after_open.len() - after_open.trim_start().len();
    let name_text = &after_open[name_start..];
    let name = ["endgeneration", "generation"]
        .into_iter()
        .find(|name| name_text.starts_with(name))?;
    let after_name = &name_text[name.len()..];
    let close_start = after_name.len() - after_name.trim_start().len();
    if close_start == 0 && !after_name.starts_with(['-', '+', '%']) {
        return None;
    }
    let close = &after_name[close_start..];
    let close_len = marker(close);
    if !close[close_len..].starts_with("%}") {
        return None;
    }
    let len = tag.len() - close.len() + close_len + 2;
    Some((len, open_marker, name, &close[..close_len]))
}

/// The minijinja environment configured like transformers' Jinja2 sandbox.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(pycompat::python_formatter);
    env.add_filter("tojson", pycompat::tojson);
    env.add_filter("string", pycompat::string_filter);
    env.add_filter("trim", pycompat::trim_filter);
    env.add_test("sequence", pycompat::is_sequence);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", pycompat::strftime_now);
    env
}

/// A minijinja error as one line: its message, then the messages of its causes.
fn error_message(err: &Error) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let _ = write!(message, ": {cause}");
        source = cause.source();
    }
    message
}

/// The error `raise_exception` attaches, so that render errors can tell it apart.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// `raise_exception(message)`: aborts rendering with the template's message.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// Test helpers shared with [`super::pycompat`]'s tests: templates compiled from source text.
#[cfg(test)]
pub(super) mod test_support {
    use super::*;

    /// A template from `source`, loaded from a temporary folder's tokenizer_config.json (with
    /// `bos_token` `<s>` and `eos_token` `</s>`); keep the folder while the template is used.
    pub(in crate::text) fn template_from_source(source: &str) -> (tempfile::TempDir, ChatTemplate) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = serde_json::json!({
            "bos_token": "<s>", "eos_token": "</s>", "chat_template": source
        });
        std::fs::write(dir.path().join(TOKENIZER_CONFIG), config.to_string()).expect("write");
        let template = ChatTemplate::load(dir.path())
            .expect("load")
            .expect("template present");
        (dir, template)
    }

    /// Renders `source` for the conversation `user: hi` with the extra variables `extra`.
    pub(in crate::text) fn render_source(
        source: &str,
        extra: serde_json::Value,
    ) -> Result<String, TextError> {
        let (_dir, template) = template_from_source(source);
        let extra = match extra {
            serde_json::Value::Object(map) => map,
            _ => Map::new(),
        };
        template.render_with(&[Message::new("user", "hi")], false, &extra)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::render_source;
    use super::*;

    /// The fixtures folder with one sub-folder per published template and goldens.json.
    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat")
    }

    #[test]
    fn matches_transformers_goldens_byte_for_byte() {
        let path = fixtures().join("goldens.json");
        let text = std::fs::read_to_string(&path).expect("read goldens.json");
        let goldens: serde_json::Value = serde_json::from_str(&text).expect("parse goldens");
        let cases = goldens["cases"].as_array().expect("cases");
        assert!(cases.len() >= 100, "only {} cases", cases.len());
        let mut templates: BTreeMap<String, ChatTemplate> = BTreeMap::new();
        let mut failures = Vec::new();
        for case in cases {
            let name = case["template"].as_str().expect("template");
            if !templates.contains_key(name) {
                let template = ChatTemplate::load(&fixtures().join(name))
                    .expect("load fixture")
                    .expect("fixture has a template");
                templates.insert(name.to_string(), template);
            }
            let template = &templates[name];
            let messages: Vec<Message> = case["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| {
                    Message::new(
                        m["role"].as_str().expect("role"),
                        m["content"].as_str().expect("content"),
                    )
                })
                .collect();
            let add = case["add_generation_prompt"].as_bool().expect("flag");
            let extra = case["extra"].as_object().expect("extra").clone();
            let label = format!(
                "{name}/{} add_generation_prompt={add} extra={:?}",
                case["conversation"].as_str().unwrap_or("?"),
                extra.keys().collect::<Vec<_>>()
            );
            let got = template.render_with(&messages, add, &extra);
            match (case.get("expected"), case.get("error"), got) {
                (Some(expected), _, Ok(got)) => {
                    if expected.as_str() != Some(got.as_str()) {
                        failures.push(format!(
                            "{label}\n--- expected\n{}\n--- got\n{got}",
                            expected.as_str().unwrap_or("?")
                        ));
                    }
                }
                (_, Some(error), Err(TextError::TemplateRaised { message, .. })) => {
                    if error.as_str() != Some(message.as_str()) {
                        failures.push(format!("{label}: raised {message:?}, expected {error}"));
                    }
                }
                (_, _, got) => failures.push(format!("{label}: unexpected result {got:?}")),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases differ:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n\n")
        );
    }

    #[test]
    fn smollm2_template_renders_the_golden_chat_prompt() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/smollm2/golden.json"
        );
        let text = std::fs::read_to_string(path).expect("read golden.json");
        let golden: serde_json::Value = serde_json::from_str(&text).expect("parse");
        let chat = golden["prompts"]
            .as_array()
            .expect("prompts")
            .iter()
            .find(|p| p["name"] == "chat")
            .expect("chat prompt");
        let template = ChatTemplate::load(&fixtures().join("smollm2"))
            .expect("load")
            .expect("present");
        let messages = [Message::new(
            "user",
            "What is the boiling point of water at sea level, in degrees Celsius?",
        )];
        assert_eq!(
            template.render(&messages, true).expect("render"),
            chat["text"].as_str().expect("text")
        );
    }

    #[test]
    fn raise_exception_carries_the_template_message() {
        let source = "{% if messages[0]['role'] != 'system' %}\
                      {{ raise_exception('Conversations must start with a system message & \"quotes\"') }}\
                      {% endif %}";
        let err = render_source(source, serde_json::Value::Null).expect_err("must fail");
        match &err {
            TextError::TemplateRaised { message, origin } => {
                assert_eq!(
                    message,
                    "Conversations must start with a system message & \"quotes\""
                );
                assert!(origin.ends_with("tokenizer_config.json"), "{origin}");
            }
            other => panic!("expected TemplateRaised, got {other:?}"),
        }
        assert!(err
            .to_string()
            .contains("rejected the conversation: Conversations must start"));
        // Raised from inside a macro too.
        let source =
            "{% macro check(m) %}{{ raise_exception('bad role: ' + m.role) }}{% endmacro %}\
                      {% for m in messages %}{{ check(m) }}{% endfor %}";
        match render_source(source, serde_json::Value::Null) {
            Err(TextError::TemplateRaised { message, .. }) => assert_eq!(message, "bad role: user"),
            other => panic!("expected TemplateRaised, got {other:?}"),
        }
    }

    #[test]
    fn other_errors_are_render_or_syntax_errors() {
        match render_source("{{ messages[0].content + 3 }}", serde_json::Value::Null) {
            Err(TextError::TemplateRender { message, .. }) => {
                assert!(!message.is_empty())
            }
            other => panic!("expected TemplateRender, got {other:?}"),
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG),
            r#"{"chat_template": "{% for m in messages %}{{ m.content }}"}"#,
        )
        .expect("write");
        let err = ChatTemplate::load(dir.path()).expect_err("must fail");
        assert!(matches!(err, TextError::TemplateSyntax { .. }), "{err:?}");
        assert!(err.to_string().contains("does not compile"), "{err}");
    }

    #[test]
    fn generation_tags_render_their_body() {
        let source = "{% for m in messages %}\n{%- generation -%}\n  [{{ m.content }}]\n{%- endgeneration %}\n{% endfor %}\n{% generation%}x{%endgeneration+%}";
        assert_eq!(
            rewrite_generation_tags(source),
            "{% for m in messages %}\n{%- if true -%}\n  [{{ m.content }}]\n{%- endif %}\n{% endfor %}\n{% if true %}x{% endif +%}"
        );
        assert_eq!(
            render_source(source, serde_json::Value::Null).expect("render"),
            "[hi]x"
        );
        // Other tags and look-alikes are left alone.
        for other in [
            "{% generations %}",
            "{% if generation %}",
            "{%",
            "{% generation",
        ] {
            assert_eq!(rewrite_generation_tags(other), other);
        }
    }

    #[test]
    fn loads_the_default_of_a_template_list_and_prefers_chat_template_jinja() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = serde_json::json!({
            "eos_token": "</s>",
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": "DEFAULT {{ eos_token }}"}
            ]
        });
        std::fs::write(dir.path().join(TOKENIZER_CONFIG), config.to_string()).expect("write");
        let template = ChatTemplate::load(dir.path())
            .expect("load")
            .expect("present");
        assert_eq!(template.render(&[], false).expect("render"), "DEFAULT </s>");

        std::fs::write(
            dir.path().join(CHAT_TEMPLATE_FILE),
            "FILE {{ eos_token }}\n",
        )
        .expect("write");
        let template = ChatTemplate::load(dir.path())
            .expect("load")
            .expect("present");
        assert_eq!(template.render(&[], false).expect("render"), "FILE </s>");
    }

    #[test]
    fn missing_or_malformed_templates() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(ChatTemplate::load(dir.path()).expect("no files").is_none());
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG),
            r#"{"chat_template": null}"#,
        )
        .expect("write");
        assert!(ChatTemplate::load(dir.path()).expect("null").is_none());

        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG),
            r#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#,
        )
        .expect("write");
        let err = ChatTemplate::load(dir.path()).expect_err("no default");
        assert!(
            err.to_string().contains("none is named \"default\""),
            "{err}"
        );

        std::fs::write(dir.path().join(TOKENIZER_CONFIG), r#"{"chat_template": 7}"#)
            .expect("write");
        let err = ChatTemplate::load(dir.path()).expect_err("wrong type");
        let message = err.to_string();
        assert!(message.contains("tokenizer_config.json"), "{message}");
        assert!(
            message.contains("`chat_template` should be a string"),
            "{message}"
        );
    }

    #[test]
    fn extra_variables_override_special_tokens_but_not_messages() {
        let out = render_source(
            "{{ bos_token }}|{{ messages | length }}|{{ add_generation_prompt }}|{{ tools }}",
            serde_json::json!({"bos_token": "<B>", "messages": [], "add_generation_prompt": true}),
        )
        .expect("render");
        assert_eq!(out, "<B>|1|False|None");
    }
}
