//! The OpenAPI 3.1 description of every HTTP route, generated from the handlers' annotations
//! (`utoipa`) and served at `GET /api/openapi.json` without credentials.
//!
//! # Adding a route
//!
//! 1. Register it in the router ([`super::router`], or a router merged into it).
//! 2. Annotate its handler with `#[utoipa::path(...)]`: the method, the path exactly as the
//!    router spells it (same `{name}` placeholders), a `tag`, `params` (path ids as
//!    [`PathId`]; a query struct deriving `utoipa::IntoParams`), `request_body` (a type deriving
//!    `utoipa::ToSchema`: the type the handler really deserializes), and every status the
//!    handler can answer: its success body, then each error, as a reusable response
//!    (`(status = 400, response = BadRequest)`, see below) or, to say why, as
//!    `(status = 404, description = "…", body = ErrorBody)`. Read the handler and
//!    `DomainError`'s mapping in `error.rs`; do not list what it cannot answer. A page that is
//!    not JSON says so: `(status = 200, body = String, content_type = "text/html")`, as
//!    `/metrics` does with `text/plain`.
//! 3. Add the handler to `paths(...)` of [`ApiDoc`]. A second path served by the same handler
//!    goes in [`ALIASES`] instead; a route that needs no credentials goes in [`PUBLIC`].
//! 4. Derive `utoipa::ToSchema` on the response types (they live beside the code that builds
//!    them; the domain re-exports those of the backends).
//!
//! Every route outside [`PUBLIC`] gets the three credentials (API key as a bearer token or in
//! `X-API-Key`, a user JWT) and the `401` and `429` answers of the `Caller` extractor here,
//! in [`Credentials`]: handlers do not list them. `gateway/tests/openapi.rs` fails while the
//! router serves a path or a method that the description lacks, or the other way round.

use shared::MAX_ID_BYTES;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, Header, OpenApi as Document, Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToResponse, ToSchema};

pub use super::error::ErrorBody;

/// Routes that need no credentials.
pub const PUBLIC: &[&str] = &[
    "/health",
    "/ready",
    "/metrics",
    "/api/openapi.json",
    "/api/whoami",
    "/console",
    "/demo",
    "/assets/{name}",
];

/// Legacy paths (seed clients) served by the handler of another path: `(alias, canonical)`.
/// The alias gets a copy of the canonical path's operations, tagged `legacy`.
pub const ALIASES: &[(&str, &str)] = &[
    ("/websocket/stats", "/api/stats"),
    ("/websocket/presence/{user_id}", "/api/presence/{user_id}"),
    ("/websocket/bam/{id}/online", "/api/conversations/{id}/online"),
    ("/websocket/notify", "/api/notify"),
    ("/bams/{id}/messages", "/api/conversations/{id}/messages"),
];

/// The description, assembled from the annotated handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard REST API",
        description = "The REST API of a Switchboard node (PROTOCOL.md section 4). JSON in and out; \
            every failure is `{ error, code }` with the matching status."
    ),
    paths(
        super::ops::health,
        super::ops::ready,
        super::ops::metrics,
        serve,
        super::ops::stats,
        super::ops::presence,
        super::users::list_users,
        super::users::broadcast_message,
        super::users::message_user,
        super::users::disconnect_user,
        super::users::notify,
        super::users::broadcast_event,
        super::conversations::online,
        super::conversations::emit,
        super::conversations::create_conversation,
        super::conversations::get_conversation,
        super::conversations::add_member,
        super::conversations::remove_member,
        super::conversations::send_message,
        super::conversations::history,
        super::console::whoami,
        super::console::nodes,
        super::console::users_presence,
        super::console::rooms,
        super::console::dev_token,
        super::pages::console,
        super::pages::demo,
        super::pages::asset,
    ),
    components(
        schemas(ErrorBody, PathId, IdValue, SendMessageBody),
        responses(BadRequest, Unauthorized, Forbidden, NotFound, PayloadTooLarge, RateLimited, Unavailable)
    ),
    modifiers(&Credentials),
    tags(
        (name = "ops", description = "Health, readiness, metrics, counts and presence"),
        (name = "users", description = "Messages, notifications and broadcasts to connected users"),
        (name = "conversations", description = "Conversations, members, messages and history"),
        (name = "console", description = "The operator console's routes and the built-in pages (docs/console.md)"),
        (name = "legacy", description = "The seed clients' paths, served by the same handlers"),
    )
)]
pub struct ApiDoc;

/// The whole description, aliases included.
pub fn spec() -> Document {
    ApiDoc::openapi()
}

/// The OpenAPI 3.1 description of every route (this document).
#[utoipa::path(get, path = "/api/openapi.json", tag = "ops", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 description of every route", body = Object)))]
pub(super) async fn serve() -> axum::Json<Document> {
    axum::Json(spec())
}

fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(<ErrorBody as ToSchema>::name())))
            .build(),
    )
}

/// The reusable error answers, `(status = N, response = Name)` in an annotation.
macro_rules! error_responses {
    ($($name:ident: $description:literal,)*) => {$(
        #[doc = $description]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), error_response($description).build().into())
            }
        }
    )*};
}

error_responses! {
    BadRequest: "`bad_request`: invalid JSON or no `Content-Type: application/json`, a missing or wrongly typed field, a bad id or query parameter",
    Forbidden: "`forbidden`: a user token on a route that needs the API key or an admin token",
    NotFound: "`not_found`",
    PayloadTooLarge: "`payload_too_large`: the body is over `--max-payload`, or a message over `--max-message-bytes`",
    Unavailable: "`unavailable`: a store or Redis does not answer; nothing was done, try again",
    Unauthorized: "`unauthorized`: no credentials, or neither the API key nor a valid user token",
}

/// `rate_limited`, with `Retry-After`.
pub struct RateLimited;

impl<'r> ToResponse<'r> for RateLimited {
    fn response() -> (&'r str, RefOr<Response>) {
        let seconds = Header::new(ObjectBuilder::new().schema_type(Type::Integer));
        let response = error_response("`rate_limited`: a user token over `--rest-rate-limit`")
            .header("Retry-After", seconds)
            .build();
        ("RateLimited", response.into())
    }
}

/// The three credentials, and the answers of a failed authentication, on every route outside
/// [`PUBLIC`]; then the [`ALIASES`].
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The server API key (`--api-key`): `Authorization: Bearer KEY`. Every right.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKeyHeader",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "The server API key (`--api-key`) in `X-API-Key: KEY`. Every right.",
            ))),
        );
        components.add_security_scheme(
            "userToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A user JWT (`--jwt-secret`): acts as that user; every right with `admin: true`. \
                         Rate-limited per user (`--rest-rate-limit`).",
                    ))
                    .build(),
            ),
        );
        let credentials: Vec<SecurityRequirement> = ["apiKey", "apiKeyHeader", "userToken"]
            .into_iter()
            .map(|scheme| SecurityRequirement::new(scheme, Vec::<String>::new()))
            .collect();
        for (path, item) in doc.paths.paths.iter_mut() {
            if PUBLIC.contains(&path.as_str()) {
                continue;
            }
            for operation in operations(item) {
                operation.security = Some(credentials.clone());
                let responses = &mut operation.responses.responses;
                responses.insert("401".into(), Ref::from_response_name("Unauthorized").into());
                responses.insert("429".into(), Ref::from_response_name("RateLimited").into());
            }
        }
        for (alias, canonical) in ALIASES {
            let Some(mut item) = doc.paths.paths.get(*canonical).cloned() else {
                continue;
            };
            for operation in operations(&mut item) {
                operation.tags = Some(vec!["legacy".into()]);
                operation.operation_id = operation.operation_id.take().map(|id| format!("legacy_{id}"));
                let canonical = format!("The legacy path of `{canonical}`.");
                operation.description = Some(canonical);
            }
            doc.paths.paths.insert((*alias).to_owned(), item);
        }
    }
}

/// Every operation of a path.
pub fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn any() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::AnyValue)
}

/// The id rule (`shared::check_id`) as a pattern: white space (Rust's, which `str::trim`
/// removes) around 1 to 256 characters that start and end with neither white space nor a
/// control character and hold no control character. The rule counts bytes; JSON Schema counts
/// characters, so the description says it.
fn id_pattern() -> String {
    const SPACE: &str = r"[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";
    const EDGE: &str = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";
    const INSIDE: &str = r"[^\x00-\x1f\x7f-\x9f]";
    let inside = MAX_ID_BYTES - 2;
    format!("^{SPACE}*{EDGE}(?:{INSIDE}{{0,{inside}}}{EDGE})?{SPACE}*$")
}

fn id_string() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .pattern(Some(id_pattern()))
}

/// An id in a path: trimmed, 1 to 256 bytes, no control character.
pub struct PathId;

impl PartialSchema for PathId {
    fn schema() -> RefOr<Schema> {
        id_string()
            .description(Some(
                "An id: trimmed of surrounding white space, 1 to 256 bytes, no control character",
            ))
            .into()
    }
}

impl ToSchema for PathId {}

/// An id in a JSON body: a string by the id rule, or an integer (it becomes its decimal text).
pub struct IdValue;

impl PartialSchema for IdValue {
    fn schema() -> RefOr<Schema> {
        let integer = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(i64::MIN))
            .maximum(Some(u64::MAX));
        OneOfBuilder::new()
            .item(id_string())
            .item(integer)
            .description(Some(
                "An id: a string (trimmed, 1 to 256 bytes, no control character) or an integer",
            ))
            .into()
    }
}

impl ToSchema for IdValue {}

/// The body of `POST /api/conversations/{id}/messages`. The handler reads it leniently, as a
/// socket `message:send` payload (`inbound::send`); this is that shape.
pub struct SendMessageBody;

impl PartialSchema for SendMessageBody {
    fn schema() -> RefOr<Schema> {
        let nullable = |t: Type| SchemaType::from_iter([t, Type::Null]);
        let url = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^https?://"))
            .max_length(Some(2048));
        let temp_id = OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(64)),
            )
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some(
                "The sender's idempotency key, 1 to 64 bytes (a number becomes its text): a retry with \
                 the same key stores nothing and answers the stored message with 200",
            ));
        let kinds = ["text", "image", "file", "audio", "video", "system"];
        ObjectBuilder::new()
            .property("senderId", IdValue::schema())
            .required("senderId")
            .property(
                "content",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .description(Some("The text; with `metadata`, at most `--max-message-bytes` bytes")),
            )
            .required("content")
            .property(
                "type",
                ObjectBuilder::new()
                    .schema_type(nullable(Type::String))
                    .enum_values(Some(kinds.into_iter().map(Some).chain([None])))
                    .description(Some("`text` when absent")),
            )
            .property(
                "attachments",
                ArrayBuilder::new()
                    .schema_type(nullable(Type::Array))
                    .items(url)
                    .max_items(Some(10))
                    .description(Some("Up to 10 http(s) URLs of at most 2048 bytes")),
            )
            .property("tempId", temp_id)
            .property("metadata", any().description(Some("Any JSON, stored with the message")))
            .property("toUserId", any().description(Some("Accepted and ignored")))
            .description(Some(
                "`senderId` is required with the API key or an admin token, and ignored with a user token \
                 (the sender is that user). The seed clients' names are read too: `text` for `content` and \
                 `clientRandom` for `tempId` (when those are absent); `conversationId` is the path's.",
            ))
            .into()
    }
}

impl ToSchema for SendMessageBody {}
