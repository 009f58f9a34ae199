//! Trace context of HTTP spans: one SERVER span per served request, one CLIENT span per
//! outgoing request. Sampling and `traceparent` parsing are the OTel SDK's
//! (`opentelemetry_sdk::trace::Sampler`, `TraceContextPropagator`); the finished spans are
//! [`SpanRecord`](crate::model::span::SpanRecord)s, exported by `export::spans`.

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{
        SamplingDecision, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId,
        TraceState,
    },
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::Sampler, trace::ShouldSample};
use rand::Rng;

pub use crate::model::span::TraceRef;

/// The configured sampler.
#[derive(Debug, Clone)]
pub struct Sampling(Sampler);

impl Sampling {
    /// Names and argument as in OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
    pub fn parse(name: &str, arg: Option<f64>) -> Result<Self, String> {
        let ratio = || {
            let r = arg.unwrap_or(1.0);
            if (0.0..=1.0).contains(&r) {
                Ok(r)
            } else {
                Err(format!("sampler ratio {r} is not between 0 and 1"))
            }
        };
        let sampler = match name {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
            }
            other => {
                return Err(format!(
                    "unknown sampler {other:?}: expected always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ));
            }
        };
        Ok(Self(sampler))
    }

    fn sampled(&self, parent: Option<&Context>, trace_id: TraceId, kind: SpanKind) -> bool {
        let result = self.0.should_sample(parent, trace_id, "", &kind, &[], &[]);
        result.decision == SamplingDecision::RecordAndSample
    }
}

struct OneHeader<'a>(&'a str);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The remote parent in a `traceparent` header, when it is valid W3C trace context.
pub fn parse_traceparent(value: &str) -> Option<TraceRef> {
    let cx = TraceContextPropagator::new().extract(&OneHeader(value));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceRef {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    })
}

/// Ids and the sampling decision for a new span under `parent` (remote or local).
pub fn new_span(sampling: &Sampling, parent: Option<TraceRef>, kind: SpanKind) -> TraceRef {
    let mut rng = rand::rng();
    let span_id: [u8; 8] = loop {
        let id: [u8; 8] = rng.random();
        if id != [0; 8] {
            break id;
        }
    };
    let trace_id = match parent {
        Some(p) => p.trace_id,
        None => loop {
            let id: [u8; 16] = rng.random();
            if id != [0; 16] {
                break id;
            }
        },
    };
    let parent_cx = parent.map(|p| {
        let flags = if p.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(p.trace_id),
            SpanId::from_bytes(p.span_id),
            flags,
            true,
            TraceState::default(),
        ))
    });
    let sampled = sampling.sampled(parent_cx.as_ref(), TraceId::from_bytes(trace_id), kind);
    TraceRef {
        trace_id,
        span_id,
        sampled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_sampling() {
        let p =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(p.trace_id[0], 0x0a);
        assert_eq!(p.span_id[7], 0x31);
        assert!(p.sampled);
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
        let on = Sampling::parse("parentbased_always_on", None).unwrap();
        let child = new_span(&on, Some(p), SpanKind::Server);
        assert_eq!(child.trace_id, p.trace_id);
        assert!(child.sampled);
        let unsampled =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert!(!new_span(&on, Some(unsampled), SpanKind::Server).sampled);
        let off = Sampling::parse("always_off", None).unwrap();
        assert!(!new_span(&off, None, SpanKind::Server).sampled);
        assert!(Sampling::parse("traceidratio", Some(2.0)).is_err());
        assert!(Sampling::parse("nope", None).is_err());
    }
}
