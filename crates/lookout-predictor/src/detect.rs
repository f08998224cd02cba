//! A detector's post-processing: from one score per anchor and class and one box per anchor
//! to the objects found.
//!
//! Per anchor the best class is kept (the background class and class ids without a label are
//! never chosen); anchors scoring under the threshold are dropped; then non-maximum
//! suppression runs per class (of two boxes of one class overlapping by more than the IoU
//! threshold, the lower-scoring one goes: a cat and a dog box may overlap freely); the best
//! `max_detections` remain, best first. Pure and deterministic: equal scores keep anchor order.

use serde::Deserialize;

/// How the model writes a box's four values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoxLayout {
    /// `ymin, xmin, ymax, xmax` (the TensorFlow Object Detection API's order).
    YminXminYmaxXmax,
    /// `xmin, ymin, xmax, ymax`.
    XminYminXmaxYmax,
}

/// An axis-aligned box in fractions of the model's input (0..=1), corners ordered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    /// Left edge.
    pub xmin: f32,
    /// Top edge.
    pub ymin: f32,
    /// Right edge.
    pub xmax: f32,
    /// Bottom edge.
    pub ymax: f32,
}

impl BBox {
    /// The box from the model's four values, clamped to the input and with its corners
    /// ordered.
    pub fn from_values(v: [f32; 4], layout: BoxLayout) -> Self {
        let [a, b, c, d] = v.map(|x| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) });
        let (x0, y0, x1, y1) = match layout {
            BoxLayout::YminXminYmaxXmax => (b, a, d, c),
            BoxLayout::XminYminXmaxYmax => (a, b, c, d),
        };
        Self { xmin: x0.min(x1), ymin: y0.min(y1), xmax: x0.max(x1), ymax: y0.max(y1) }
    }

    /// Width times height.
    pub fn area(&self) -> f32 {
        (self.xmax - self.xmin).max(0.0) * (self.ymax - self.ymin).max(0.0)
    }

    /// Intersection over union, 0 for boxes that do not overlap (or have no area).
    pub fn iou(&self, other: &Self) -> f32 {
        let w = (self.xmax.min(other.xmax) - self.xmin.max(other.xmin)).max(0.0);
        let h = (self.ymax.min(other.ymax) - self.ymin.max(other.ymin)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

/// The post-processing settings (the manifest's `[detection]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How the boxes output writes a box.
    pub layout: BoxLayout,
    /// The class id that means "no object", never reported.
    pub background: Option<u32>,
    /// Lowest score reported.
    pub score_threshold: f32,
    /// Of two boxes of one class overlapping more than this, the lower-scoring one goes.
    pub iou_threshold: f32,
    /// Most objects reported per frame.
    pub max_detections: usize,
}

/// One object found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    /// Class id (column of the scores output).
    pub class_id: u32,
    /// The class's score at this anchor.
    pub score: f32,
    /// Where, in fractions of the model's input.
    pub bbox: BBox,
}

/// The objects in one image: `scores` holds `classes` values per anchor, `boxes` 4 per anchor;
/// `named[c]` says whether class `c` has a label. Best first.
pub fn detect(
    scores: &[f32],
    boxes: &[f32],
    classes: usize,
    named: &[bool],
    settings: &Settings,
) -> Vec<Found> {
    debug_assert_eq!(scores.len() / classes, boxes.len() / 4, "one box per anchor");
    debug_assert_eq!(named.len(), classes);
    let mut candidates: Vec<Found> = scores
        .chunks_exact(classes)
        .zip(boxes.chunks_exact(4))
        .filter_map(|(row, b)| {
            let (class_id, score) = row
                .iter()
                .enumerate()
                .filter(|(c, _)| named[*c] && settings.background != Some(*c as u32))
                .fold(None, |best: Option<(usize, f32)>, (c, s)| match best {
                    Some((_, top)) if top >= *s => best,
                    _ if s.is_nan() => best,
                    _ => Some((c, *s)),
                })?;
            (score >= settings.score_threshold).then(|| Found {
                class_id: class_id as u32,
                score,
                bbox: BBox::from_values([b[0], b[1], b[2], b[3]], settings.layout),
            })
        })
        .collect();
    // Stable: equal scores keep anchor order.
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    non_maximum_suppression(candidates, settings.iou_threshold, settings.max_detections)
}

/// Per-class non-maximum suppression over `sorted` (best first): a box is kept unless a kept
/// box of its class overlaps it by more than `iou_threshold`. At most `max` are kept.
pub fn non_maximum_suppression(sorted: Vec<Found>, iou_threshold: f32, max: usize) -> Vec<Found> {
    debug_assert!(sorted.windows(2).all(|w| w[0].score >= w[1].score), "sorted best first");
    let mut kept: Vec<Found> = Vec::new();
    for candidate in sorted {
        if kept.len() == max {
            break;
        }
        let suppressed = kept.iter().any(|k| {
            k.class_id == candidate.class_id && k.bbox.iou(&candidate.bbox) > iou_threshold
        });
        if !suppressed {
            kept.push(candidate);
        }
    }
    kept
}

/// The best score of each class found, best first: what a detector reports as its top-k.
pub fn best_per_class(found: &[Found]) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::new();
    for f in found {
        match best.iter_mut().find(|(c, _)| *c == f.class_id) {
            Some((_, s)) => *s = s.max(f.score),
            None => best.push((f.class_id, f.score)),
        }
    }
    best.sort_by(|a, b| b.1.total_cmp(&a.1));
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings {
        layout: BoxLayout::XminYminXmaxYmax,
        background: Some(0),
        score_threshold: 0.3,
        iou_threshold: 0.5,
        max_detections: 10,
    };

    fn bbox(xmin: f32, ymin: f32, xmax: f32, ymax: f32) -> BBox {
        BBox { xmin, ymin, xmax, ymax }
    }

    /// Anchors as (box, scores of classes 0..3); class 0 is the background.
    fn run(anchors: &[([f32; 4], [f32; 3])], settings: &Settings) -> Vec<Found> {
        let scores: Vec<f32> = anchors.iter().flat_map(|(_, s)| *s).collect();
        let boxes: Vec<f32> = anchors.iter().flat_map(|(b, _)| *b).collect();
        detect(&scores, &boxes, 3, &[true; 3], settings)
    }

    #[test]
    fn iou_of_hand_made_boxes() {
        let a = bbox(0.0, 0.0, 0.5, 0.5);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&bbox(0.5, 0.5, 1.0, 1.0)), 0.0, "touching corners");
        // Half of a overlaps b, which is as large: 0.125 / (0.25 + 0.25 - 0.125).
        let iou = a.iou(&bbox(0.25, 0.0, 0.75, 0.5));
        assert!((iou - 1.0 / 3.0).abs() < 1e-6, "{iou}");
        // b inside a, a quarter of its area.
        let iou = a.iou(&bbox(0.0, 0.0, 0.25, 0.25));
        assert!((iou - 0.25).abs() < 1e-6, "{iou}");
        assert_eq!(bbox(0.2, 0.2, 0.2, 0.6).iou(&bbox(0.2, 0.2, 0.2, 0.6)), 0.0, "no area");
    }

    #[test]
    fn box_values_are_read_in_the_layout_clamped_and_ordered() {
        let yx = BBox::from_values([0.1, 0.2, 0.3, 0.4], BoxLayout::YminXminYmaxXmax);
        assert_eq!(yx, bbox(0.2, 0.1, 0.4, 0.3));
        let xy = BBox::from_values([0.1, 0.2, 0.3, 0.4], BoxLayout::XminYminXmaxYmax);
        assert_eq!(xy, bbox(0.1, 0.2, 0.3, 0.4));
        let wild = BBox::from_values([1.5, -0.2, 0.5, f32::NAN], BoxLayout::XminYminXmaxYmax);
        assert_eq!(wild, bbox(0.5, 0.0, 1.0, 0.0));
    }

    #[test]
    fn overlapping_boxes_of_one_class_keep_the_best() {
        let found = run(
            &[
                ([0.0, 0.0, 0.5, 0.5], [0.0, 0.8, 0.0]),
                // IoU 0.84 with the first, scores higher: the first goes.
                ([0.0, 0.0, 0.5, 0.42], [0.0, 0.9, 0.0]),
                // IoU 0.3 with the best: kept.
                ([0.25, 0.0, 0.75, 0.5], [0.0, 0.7, 0.0]),
                // Far away: kept.
                ([0.6, 0.6, 1.0, 1.0], [0.0, 0.4, 0.0]),
            ],
            &SETTINGS,
        );
        let got: Vec<(u32, f32)> = found.iter().map(|f| (f.class_id, f.score)).collect();
        assert_eq!(got, [(1, 0.9), (1, 0.7), (1, 0.4)]);
        assert_eq!(found[0].bbox, bbox(0.0, 0.0, 0.5, 0.42));
    }

    #[test]
    fn suppression_is_per_class() {
        // The same box, a cat (1) and a dog (2): both stay.
        let found = run(
            &[([0.1, 0.1, 0.9, 0.9], [0.0, 0.8, 0.1]), ([0.1, 0.1, 0.9, 0.88], [0.0, 0.2, 0.6])],
            &SETTINGS,
        );
        let got: Vec<(u32, f32)> = found.iter().map(|f| (f.class_id, f.score)).collect();
        assert_eq!(got, [(1, 0.8), (2, 0.6)]);
    }

    #[test]
    fn each_anchor_gives_its_best_class_and_scores_under_the_threshold_go() {
        let found = run(
            &[
                // Background wins the row but is never reported: class 2 at 0.5 is.
                ([0.0, 0.0, 0.2, 0.2], [0.99, 0.1, 0.5]),
                // Best class under the threshold: nothing.
                ([0.5, 0.5, 0.7, 0.7], [0.0, 0.29, 0.2]),
                // Exactly at the threshold: kept.
                ([0.8, 0.8, 1.0, 1.0], [0.0, 0.3, 0.1]),
            ],
            &SETTINGS,
        );
        let got: Vec<(u32, f32)> = found.iter().map(|f| (f.class_id, f.score)).collect();
        assert_eq!(got, [(2, 0.5), (1, 0.3)]);
    }

    #[test]
    fn classes_without_a_label_are_never_chosen() {
        let scores = [0.0, 0.9, 0.5];
        let found = detect(&scores, &[0.0, 0.0, 1.0, 1.0], 3, &[true, false, true], &SETTINGS);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].class_id, found[0].score), (2, 0.5));
    }

    #[test]
    fn at_most_max_detections_best_first() {
        let anchors: Vec<([f32; 4], [f32; 3])> = (0..20)
            .map(|i| {
                let x = i as f32 / 20.0;
                ([x, 0.0, x + 0.04, 0.04], [0.0, 0.31 + i as f32 * 0.01, 0.0])
            })
            .collect();
        let settings = Settings { max_detections: 5, ..SETTINGS };
        let found = run(&anchors, &settings);
        assert_eq!(found.len(), 5);
        let scores: Vec<f32> = found.iter().map(|f| f.score).collect();
        assert!(scores.windows(2).all(|w| w[0] > w[1]), "{scores:?}");
        assert!((scores[0] - 0.5).abs() < 1e-6, "{scores:?}");
    }

    #[test]
    fn nothing_found_in_nothing() {
        assert!(run(&[], &SETTINGS).is_empty());
        assert!(run(&[([0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0])], &SETTINGS).is_empty());
    }

    #[test]
    fn best_per_class_is_sorted_and_unique() {
        let f = |class_id, score| Found { class_id, score, bbox: bbox(0.0, 0.0, 1.0, 1.0) };
        let best = best_per_class(&[f(3, 0.5), f(1, 0.9), f(3, 0.7), f(2, 0.6)]);
        assert_eq!(best, [(1, 0.9), (3, 0.7), (2, 0.6)]);
    }
}
