//! A small span profiler for `limner bench --profile`: candle-transformers wraps its UNet layers
//! in TRACE spans (conv2d, linear, xa-attn, resnet2d, ...); this layer sums the time spent in
//! each, inclusive and exclusive of nested spans, so a benchmark can say where a step goes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::span;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[derive(Default, Clone, Copy)]
struct Totals {
    calls: u64,
    inclusive: Duration,
    exclusive: Duration,
}

/// Collected totals per span name, shared with the layer.
#[derive(Clone, Default)]
pub struct Profile(Arc<Mutex<HashMap<&'static str, Totals>>>);

struct Frame {
    name: &'static str,
    started: Instant,
    children: Duration,
}

thread_local! {
    static STACK: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

impl<S> Layer<S> for Profile
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let name = span.metadata().name();
            STACK.with(|s| {
                s.borrow_mut().push(Frame {
                    name,
                    started: Instant::now(),
                    children: Duration::ZERO,
                })
            });
        }
    }

    fn on_exit(&self, _id: &span::Id, _ctx: Context<'_, S>) {
        STACK.with(|s| {
            let mut stack = s.borrow_mut();
            let Some(frame) = stack.pop() else { return };
            let elapsed = frame.started.elapsed();
            if let Some(parent) = stack.last_mut() {
                parent.children += elapsed;
            }
            if let Ok(mut map) = self.0.lock() {
                let t = map.entry(frame.name).or_default();
                t.calls += 1;
                t.inclusive += elapsed;
                t.exclusive += elapsed.saturating_sub(frame.children);
            }
        });
    }
}

impl Profile {
    pub fn clear(&self) {
        if let Ok(mut map) = self.0.lock() {
            map.clear();
        }
    }

    /// Rows sorted by exclusive time: name, calls, inclusive ms, exclusive ms, share of total.
    pub fn report(&self) -> serde_json::Value {
        let map = self.0.lock().map(|m| m.clone()).unwrap_or_default();
        let total: f64 = map.values().map(|t| t.exclusive.as_secs_f64()).sum();
        let mut rows: Vec<_> = map.into_iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.exclusive));
        serde_json::Value::Array(
            rows.into_iter()
                .map(|(name, t)| {
                    serde_json::json!({
                        "span": name,
                        "calls": t.calls,
                        "inclusive_ms": t.inclusive.as_secs_f64() * 1000.0,
                        "exclusive_ms": t.exclusive.as_secs_f64() * 1000.0,
                        "share": if total > 0.0 { t.exclusive.as_secs_f64() / total } else { 0.0 },
                    })
                })
                .collect(),
        )
    }
}
