//! Logs and traces: the node's `tracing` subscriber, and OpenTelemetry traces exported over
//! OTLP/HTTP when `--otlp-endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) is set.
//!
//! Tracing is off by default and then costs a relaxed atomic load where a trace would start or
//! cross a node ([`enabled`]). When on, every `tracing` span at the log filter's level becomes
//! an OpenTelemetry span (REST requests, inbound socket events, store appends, bus publishes),
//! the W3C trace context of a publish travels in the bus envelope ([`traceparent`]), and each
//! receiving node opens one delivery span under it ([`delivery_span`]) — one per node
//! delivery, never one per recipient socket. The SDK reads `OTEL_SERVICE_NAME` (default here:
//! `switchboard`), `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER`/`_ARG` (default:
//! parent-based, always on); the node id is `service.instance.id`.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logs {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with `trace_id` and `span_id` while a traced span is active.
    Json,
}

/// What must stay alive while the node runs: dropping it flushes and stops the exporter.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the node's subscriber: logs to stderr under `filter`, and traces to `otlp`
/// (an OTLP/HTTP base URL; `/v1/traces` is added) when given. Must run inside the tokio
/// runtime: the exporter's batches are sent from a task.
pub fn init(filter: EnvFilter, logs: Logs, otlp: Option<&str>, node_id: &str) -> Result<Telemetry, String> {
    let provider = otlp.map(|url| provider(url, node_id)).transpose()?;
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer().with_tracer(p.tracer("switchboard"))
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match logs {
        Logs::Text => fmt.boxed(),
        Logs::Json if provider.is_some() => fmt.json().event_format(JsonWithTrace(format().json())).boxed(),
        Logs::Json => fmt.json().boxed(),
    };
    Registry::default()
        .with(otel)
        .with(fmt)
        .with(filter)
        .try_init()
        .map_err(|e| e.to_string())?;
    ENABLED.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { provider })
}

fn format() -> format::Format {
    format::Format::default()
}

fn provider(url: &str, node_id: &str) -> Result<SdkTracerProvider, String> {
    let endpoint = format!("{}/v1/traces", url.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("invalid value for --otlp-endpoint: {e}"))?;
    let detected = Resource::builder().build();
    let mut resource = Resource::builder().with_attribute(KeyValue::new("service.instance.id", node_id.to_owned()));
    let named = detected
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|n| !n.as_str().starts_with("unknown_service"));
    if !named {
        resource = resource.with_service_name("switchboard");
    }
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build())
}

/// The W3C `traceparent` of the current span, for a bus envelope; `None` when tracing is off.
/// An unsampled trace travels too, flagged so: receivers do not start traces of their own.
pub fn traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove("traceparent")
}

/// Makes `span` the root of its own trace (an inbound event, under a connection's span that
/// lives as long as the connection): logs keep the connection's context, traces stay short.
pub fn new_trace(span: &tracing::Span) {
    if enabled() {
        let _ = span.set_parent(Context::new());
    }
}

/// The span of one node's delivery of a bus envelope, a child of the publishing span whose
/// `traceparent` the envelope carried; disabled when tracing is off.
pub fn delivery_span(traceparent: Option<&str>, kind: &'static str, origin: &str) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("bus.deliver", kind, origin);
    if let Some(tp) = traceparent {
        let carrier = HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract_with_context(&Context::new(), &carrier));
        let _ = span.set_parent(parent);
    }
    span
}

/// The JSON line of the standard formatter, with `trace_id` and `span_id` of the event's span
/// added when it is traced.
struct JsonWithTrace(format::Format<format::Json>);

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    FormattedFields<N>: 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let ids = span.span_context();
        let body = line.trim_end();
        match body.strip_suffix('}') {
            Some(head) if ids.is_valid() => writeln!(
                writer,
                "{head},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
                ids.trace_id(),
                ids.span_id()
            ),
            _ => writeln!(writer, "{body}"),
        }
    }
}
