"""The metrics order things rightly, on synthetic features and on real MNIST."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnistgan.errors import UserError
from mnistgan.metrics import (
    METRICS,
    FeatureSet,
    compute,
    distances,
    evaluate,
    format_table,
    mode_dropping,
    reference,
    score,
)


def gaussians(n=4000, d=8, shift=0.0, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * scale + shift


# ---------------------------------------------------------------------------------------
# Pure functions on synthetic features


def test_fid_of_a_set_with_itself_is_zero_and_of_gaussians_matches_the_closed_form():
    a = gaussians()
    assert distances.fid(a, a) == pytest.approx(0, abs=1e-6)
    # N(0, I) vs N(mu, I): |mu|^2.
    b = gaussians(n=20000, seed=1, shift=torch.tensor([2.0] + [0.0] * 7))
    assert distances.fid(gaussians(n=20000), b) == pytest.approx(4.0, rel=0.05)
    # N(0, I) vs N(0, s^2 I) in d dimensions: d (1 - s)^2.
    c = gaussians(n=20000, seed=2, scale=2.0)
    assert distances.fid(gaussians(n=20000), c) == pytest.approx(8.0, rel=0.05)


def test_kid_is_about_zero_for_one_distribution_and_grows_with_distance():
    a, b, c = gaussians(seed=0), gaussians(seed=1), gaussians(seed=2, shift=1.0)
    same, same_std = distances.kid(a, b, subsets=10, subset_size=500)
    far, _ = distances.kid(a, c, subsets=10, subset_size=500)
    assert abs(same) < 0.02 < far
    assert same_std > 0


def test_kid_subsets_shrink_to_the_smaller_set_and_too_few_points_are_refused():
    mean, std = distances.kid(gaussians(n=50), gaussians(n=3000, seed=1), subsets=5)
    assert np.isfinite(mean) and np.isfinite(std)
    with pytest.raises(ValueError, match="at least 2"):
        distances.kid(gaussians(n=1), gaussians(n=10))


def test_knn_radii_and_nearest_distances_match_brute_force():
    x, y = gaussians(n=300, seed=4), gaussians(n=500, seed=5)
    d = torch.cdist(x, x)
    assert torch.allclose(distances.knn_radii(x, 3), d.kthvalue(4, dim=1).values, atol=1e-4)
    assert torch.allclose(distances.nearest_distances(x, y), torch.cdist(x, y).min(1).values,
                          atol=1e-4)


def test_precision_recall_of_a_matching_set_and_of_one_repeated_point():
    real = gaussians(n=1000)
    p, r = distances.precision_recall(real, gaussians(n=1000, seed=3))
    assert p > 0.8 and r > 0.8
    radii = distances.knn_radii(real, 3)
    assert distances.precision_recall(real, gaussians(n=1000, seed=3), real_radii=radii) == (p, r)
    p, r = distances.precision_recall(real, real[:1].repeat(1000, 1) + 1e-4 * gaussians(n=1000))
    assert p == 1.0 and r < 0.05


def test_classifier_score_extremes():
    confident = F.one_hot(torch.arange(1000) % 10, 10).float()
    assert distances.classifier_score(confident)[0] == pytest.approx(10, rel=1e-3)
    one_class = F.one_hot(torch.zeros(1000, dtype=torch.long), 10).float()
    assert distances.classifier_score(one_class)[0] == pytest.approx(1)


def test_class_histogram_from_probabilities_or_labels_and_its_entropy():
    labels = torch.tensor([0, 0, 3, 9])
    from_labels = distances.class_histogram(labels)
    assert from_labels.tolist() == [2, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert torch.equal(distances.class_histogram(F.one_hot(labels, 10).float()), from_labels)
    assert distances.entropy(torch.full((10,), 7)) == pytest.approx(np.log(10))
    assert str(distances.entropy(torch.tensor([5, 0, 0]))) == "0.0"


def test_memorisation_threshold_is_the_quantile_of_real_nearest_distances():
    train, heldout = gaussians(n=3000, seed=6), gaussians(n=2000, seed=7)
    threshold = distances.memorisation_threshold(heldout, train, quantile=0.05)
    assert distances.memorised_share(heldout, train, threshold) == pytest.approx(0.05, abs=0.002)
    assert distances.memorised_share(train[:200], train, threshold) == 1.0


def test_mode_dropping_counts_only_the_wanted_digits():
    counts = torch.tensor([100, 100, 0, 100, 100, 100, 100, 2, 100, 100])
    assert mode_dropping(counts, range(10)) == ([2], [7])
    # For a 3,5 run, expected share is 1/2 (rare below 12.5 %); other digits do not count.
    assert mode_dropping(torch.tensor([0, 0, 0, 90, 0, 10, 0, 0, 0, 0]), (3, 5)) == ([], [5])


# ---------------------------------------------------------------------------------------
# On real MNIST, in the classifier's feature space


@pytest.fixture(scope="module")
def ref(mnist_dir):
    return reference()


@pytest.fixture(scope="module")
def real(ref):
    return ref.heldout[:1000]


@pytest.fixture(scope="module")
def test_set(mnist_dir):
    from mnistgan.data import load_split

    return load_split("mnist", "test")


def blur(u8):
    x = u8.float().unsqueeze(1)
    return F.avg_pool2d(x, 3, stride=1, padding=1).squeeze(1).round().to(torch.uint8)


def test_fid_and_kid_order_real_blurred_noise(ref, real):
    noise = torch.randint(0, 256, real.shape, generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    out = [compute(x, ref, ["fid", "kid"]) for x in (real, blur(real), noise)]
    fid, kid = [o["fid"] for o in out], [o["kid"] for o in out]
    assert fid[0] < fid[1] < fid[2], fid
    assert kid[0] < kid[1] < kid[2], kid


def test_fid_of_real_features_against_themselves_is_zero(ref):
    assert distances.fid(ref.test.features, ref.test.features) == pytest.approx(0, abs=1e-3)


def test_one_digit_is_flagged_as_mode_collapse(ref, test_set):
    x, y = test_set
    ones = x[y == 1][:500]
    out = compute(ones, ref, ["classes", "classifier_score"])
    assert out["missing_digits"] == 9 and out["class_entropy"] < 0.1
    assert out["classifier_score"] < 1.2
    # Real test digits score near this classifier's ceiling: trained with label smoothing
    # 0.05, it is never fully confident, so the ceiling is ~7.9 rather than 10.
    assert compute(x[:2000], ref, ["classifier_score"])["classifier_score"] > 7


def test_a_rare_digit_is_flagged(ref, test_set):
    x, y = test_set
    few_sevens = torch.cat([x[y == d][: 3 if d == 7 else 100] for d in range(10)])
    result = evaluate(few_sevens)
    assert result["rare"] == [7] and result["missing"] == []
    assert result["mode_collapse"] == "rare: 7"
    assert "mode dropping: rare: 7" in format_table(result)


def test_copies_of_training_images_are_flagged_as_memorised(ref, real, mnist_dir):
    from mnistgan.data import load_split

    train_x, _ = load_split("mnist", "train")
    copies = train_x[:500]  # the bank is the first five sixths of the training set
    assert compute(copies, ref, ["memorisation"])["memorised"] > 0.9
    assert compute(real, ref, ["memorisation"])["memorised"] < 0.05


def test_precision_and_recall_of_real_images_and_of_one_repeated_image(ref, real):
    out = compute(real, ref, ["precision_recall"])
    assert out["precision"] > 0.7 and out["recall"] > 0.7
    out = compute(real[:1].repeat(1000, 1, 1), ref, ["precision_recall"])
    assert out["recall"] < 0.01


def test_evaluate_has_every_metric_and_the_floor(ref, real):
    result = evaluate(real[:500])
    keys = {"fid", "kid", "kid_std", "precision", "recall", "classifier_score", "classifier_score_std",
            "class_entropy", "missing_digits", "rare_digits", "memorised"}
    assert set(result["generated"]) == keys == set(result["real"])
    assert len(METRICS) == 6
    assert reference() is reference((), None)  # one cache entry, however it is asked for
    # The floor is held-out real data like `real`, so both columns are near one another.
    assert result["real"]["fid"] < 2 * result["generated"]["fid"] + 1
    assert result["mode_collapse"] == "none" and sum(result["histogram"]) == 500
    table = format_table(result)
    assert "real floor (500)" in table and "FID" in table and "mode dropping: none" in table
    result["real"]["fid"] = -1.0  # callers may edit the result; the cached floor stays whole
    assert evaluate(real[:500])["real"]["fid"] >= 0


def test_too_few_images_are_a_user_error(ref, real):
    with pytest.raises(UserError, match="at least 10"):
        compute(real[:5], ref)
    with pytest.raises(ValueError, match="unknown metric"):
        score(FeatureSet.of(real[:20]), ref, ["fdi"])


def test_digit_subset_reference(test_set):
    five = reference((5,))
    assert five.digits == (5,) and reference([5, 5]) is five
    x, y = test_set
    out = compute(x[y == 5][:300], five, ["classes", "fid"])
    assert out["missing_digits"] == 0 and out["class_entropy"] == pytest.approx(0, abs=1e-9)
    # Against a 5-only reference, a set of all ten digits is far away.
    assert compute(x[:300], five, ["fid"])["fid"] > 10 * out["fid"]


def test_evaluate_cli_on_npy_writes_json(tmp_path, ref, real):
    npy = tmp_path / "x.npy"
    np.save(npy, real[:300].numpy())
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "mnistgan", "evaluate", npy, "--json", out],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "real floor (300)" in proc.stdout
    data = json.loads(out.read_text())
    assert data["generated"]["fid"] >= 0 and data["samples"] == 300
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 28, 27), dtype=np.uint8))
    proc = subprocess.run([sys.executable, "-m", "mnistgan", "evaluate", bad],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "(N, 28, 28) uint8" in proc.stderr
