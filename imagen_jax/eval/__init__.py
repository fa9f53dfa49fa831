"""Evaluation: exact scoring of `shapes` samples, image metrics, FID / CLIP score with
user-supplied networks, and a Fashion-MNIST classifier for class-conditional samples.

    from imagen_jax import eval as ev
    ev.score(images, captions)                     # shapes: per-attribute accuracies, 'all'
    ev.psnr(a, b); ev.ssim(a, b)                   # images in [-1, 1] (data_range=2)
    ev.fid.fid(fake, real, ev.load_feature_extractor("my_fid:inception()"))
    clf = ev.load_classifier(ev.train_classifier("/tmp/fmnist_clf"))
    ev.evaluate_fashion(samples, labels, clf, real_test_images)

(`fid` here is the module, so that `import imagen_jax.eval.fid` keeps meaning the module; the
function is `imagen_jax.eval.fid.fid`, also exported as `fid_score`.)
"""

from imagen_jax.eval import fashion_classifier, fid, metrics, shapes_score
from imagen_jax.eval.fashion_classifier import (
    FashionClassifier,
    evaluate_fashion,
    load_classifier,
    load_fashion_split,
    parse_fashion_caption,
    train_classifier,
)
from imagen_jax.eval.fid import (
    clip_score,
    extract_features,
    load_clip_scorer,
    load_feature_extractor,
)
from imagen_jax.eval.fid import fid as fid_score
from imagen_jax.eval.metrics import feature_statistics, frechet_distance, psnr, ssim
from imagen_jax.eval.shapes_score import (
    Detection,
    ImageScore,
    ObjectSpec,
    SceneSpec,
    analyze_image,
    parse_caption,
    score,
    score_details,
)

__all__ = ["Detection", "FashionClassifier", "ImageScore", "ObjectSpec", "SceneSpec",
           "analyze_image", "clip_score", "evaluate_fashion", "extract_features",
           "fashion_classifier", "feature_statistics", "fid", "fid_score", "frechet_distance",
           "load_classifier", "load_clip_scorer", "load_fashion_split", "load_feature_extractor",
           "metrics", "parse_caption", "parse_fashion_caption", "psnr", "score",
           "score_details", "shapes_score", "ssim", "train_classifier"]
