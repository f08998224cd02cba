//! Histogram buckets: every Lookout histogram is exported as a Prometheus histogram (buckets
//! that add up across replicas), never as a summary.
//!
//! Buckets are chosen by what a histogram measures, which its name says:
//!
//! | histograms | buckets |
//! |---|---|
//! | one processing step (`…_decode_seconds`, `…_preprocess_seconds`, `…_inference_seconds`, `…_render_seconds`, `…_commit_duration_seconds`) | [`STEP_SECONDS`]: 0.1 ms … 5 s |
//! | any other `…_seconds`: a frame's way through the pipeline (capture → published, predicted, shown, recorded) | [`PIPELINE_SECONDS`]: 5 ms … 60 s |
//! | `…_bytes`: a frame's JPEG | [`JPEG_BYTES`]: 4 KiB … 16 MiB |
//! | `…_records`: a batch | [`BATCH_RECORDS`]: 1 … 10 000 |
//!
//! A histogram whose name fits none of these still gets buckets ([`PIPELINE_SECONDS`]), so no
//! summary is ever exported.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// One step of work on one frame or batch: decoding, inference, drawing, a database commit.
pub const STEP_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04,
    0.05, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A frame's way from its capture through Kafka to a service: milliseconds on a quiet
/// pipeline, seconds when a consumer lags, up to the recorder's reorder window (15 s with
/// predictor replicas) and beyond.
pub const PIPELINE_SECONDS: &[f64] = &[
    0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.125, 0.15,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// JPEG frames: a few KiB (a small synthetic frame) to several MiB (4K at high quality).
pub const JPEG_BYTES: &[f64] = &[
    4096.0, 16384.0, 32768.0, 65536.0, 131072.0, 262144.0, 524288.0, 1048576.0, 2097152.0,
    4194304.0, 8388608.0, 16777216.0,
];

/// Records per batch (the log shipper's `--batch-size` is 500 by default).
pub const BATCH_RECORDS: &[f64] =
    &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// Name endings of histograms that time one step of work.
const STEP_SUFFIXES: &[&str] = &[
    "_decode_seconds",
    "_preprocess_seconds",
    "_inference_seconds",
    "_render_seconds",
    "_commit_duration_seconds",
];

/// The builder with every histogram's buckets set.
pub(crate) fn set(builder: PrometheusBuilder) -> Result<PrometheusBuilder, BuildError> {
    let mut b = builder
        .set_buckets(PIPELINE_SECONDS)?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), JPEG_BYTES)?
        .set_buckets_for_metric(Matcher::Suffix("_records".into()), BATCH_RECORDS)?;
    for suffix in STEP_SUFFIXES {
        b = b.set_buckets_for_metric(Matcher::Suffix((*suffix).into()), STEP_SECONDS)?;
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(name: &'static str, value: f64) -> String {
        let recorder = set(PrometheusBuilder::new()).unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || metrics::histogram!(name).record(value));
        handle.render()
    }

    #[test]
    fn histograms_have_the_buckets_their_names_call_for() {
        let step = rendered("lookout_predictor_inference_seconds", 0.02);
        assert!(step.contains("lookout_predictor_inference_seconds_bucket{le=\"0.0001\"} 0"));
        assert!(step.contains("lookout_predictor_inference_seconds_bucket{le=\"0.025\"} 1"));
        assert!(!step.contains("quantile"), "no summary: {step}");

        let pipeline = rendered("lookout_viewer_capture_to_shown_seconds", 12.0);
        assert!(pipeline.contains("_bucket{le=\"10\"} 0"), "{pipeline}");
        assert!(pipeline.contains("_bucket{le=\"20\"} 1"), "{pipeline}");

        let jpeg = rendered("lookout_camera_jpeg_bytes", 50_000.0);
        assert!(jpeg.contains("_bucket{le=\"65536\"} 1"), "{jpeg}");
        let batch = rendered("lookout_logship_batch_records", 3.0);
        assert!(batch.contains("_bucket{le=\"5\"} 1"), "{batch}");
        let other = rendered("lookout_something_else", 1.0);
        assert!(other.contains("_bucket{le=\"60\"} 1"), "never a summary: {other}");
    }

    #[test]
    fn buckets_increase() {
        for b in [STEP_SECONDS, PIPELINE_SECONDS, JPEG_BYTES, BATCH_RECORDS] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        }
    }
}
